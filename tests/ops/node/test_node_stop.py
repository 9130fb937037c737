"""Stopping a node while an admin action holds its projections (a swap, a prune's catch-up, a
compaction: an action can outlive the HTTP server's graceful timeout): the last fold waits for
it, so two folds never write one store at once, and the stores close before it goes on."""
from __future__ import annotations

import threading

from conftest import Lines, admit_ok

from ledgerlog.ops.node.lifecycle import Node


def test_stop_waits_for_an_action_holding_the_projections(chain, keys):
    cfg = chain.config
    chain.close()
    node = Node(cfg)
    node.start()
    lines = Lines(node.chain, keys)
    admit_ok(node.chain, lines.share())
    assert node.queries.sync()
    node.fold_lock.acquire()  # an admin action under way
    stopper = threading.Thread(target=node.stop)
    try:
        stopper.start()
        stopper.join(1.0)
        assert stopper.is_alive()  # waiting for the action, not folding beside it
        assert all(h.store.db is not None for h in node.runner.handles.values())  # nothing closed yet
    finally:
        node.fold_lock.release()
    stopper.join(60)
    assert not stopper.is_alive()
    assert all(h.store.db is None for h in node.runner.handles.values())  # drained and closed
