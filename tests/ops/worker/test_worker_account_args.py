"""A sharded worker's ``GET /accounts/<address>`` takes what the node's ``/v1/accounts`` takes
(docs/KAFKA.md: "as the node's"): an address of 40 lower-case hex characters and a height from 0
to 2^63-1 in plain digits, else 400 BAD_REQUEST. It answered 500 for a height of 2^64, the
current balance labelled with a height of 2^63, and a zero balance for an upper-case address."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ledgerlog.engine.genesis import Genesis
from ledgerlog.ops.devtools.histgen import make_genesis
from ledgerlog.ops.worker.http import WorkerHttp
from ledgerlog.streams.shards.engine import ShardEngine, _Owned
from ledgerlog.streams.shards.shard import Shard, shard_path


@pytest.fixture
def worker(tmp_path: Any) -> Iterator[tuple[TestClient, str, Genesis]]:
    """The worker's app over an engine with one serving shard (only what ``account`` reads)."""
    raw, _keys = make_genesis(41, wallets=3)
    (tmp_path / "genesis.json").write_text(json.dumps(raw))
    genesis = Genesis.load(str(tmp_path / "genesis.json"))
    eng = ShardEngine.__new__(ShardEngine)
    eng.partitions = 1
    eng._lock, eng._batch_lock = threading.Lock(), threading.Lock()
    eng._owned = {0: _Owned(gained_at=0.0, target=0, state="serving")}
    eng._shards = {0: Shard(shard_path(str(tmp_path), 1, 0), genesis, "t", 0, 1)}
    http = WorkerHttp(eng, {"id": "w1", "url": "http://127.0.0.1:1"})
    try:
        with TestClient(http.app, raise_server_exceptions=False) as c:
            yield c, next(iter(genesis.allocations)), genesis
    finally:
        eng._shards[0].close()


@pytest.mark.parametrize("query", [f"?height={2**64}", f"?height={2**63}", "?height=-1", "?height=1.0",
                                   "?height=%2B1", "?height=" + "9" * 40, "UPPER"])
def test_account_arguments_the_node_refuses_are_400(worker, query) -> None:
    c, addr, _ = worker
    path = f"/accounts/{addr.upper()}" if query == "UPPER" else f"/accounts/{addr}{query}"
    r = c.get(path)
    assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST", (path, r.status_code, r.text)


def test_the_arguments_the_node_takes_are_answered(worker) -> None:
    c, addr, genesis = worker
    assert c.get(f"/accounts/{addr}").json()["balance"] == genesis.allocations[addr]
    at = c.get(f"/accounts/{addr}?height={2**63 - 1}")
    assert at.status_code == 200 and at.json()["balance"] == genesis.allocations[addr]
