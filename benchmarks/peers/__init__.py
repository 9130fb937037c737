"""The peers: other ways to keep the same ledger, each folding the same neutral transfer events
(benchmarks.history) in its own child process, bounded in time. A peer that cannot run here
(not installed, broker trouble, timeout) is recorded as ``{"error": ...}`` and the run goes on."""
from __future__ import annotations

import os
import tempfile
from typing import Any

from ledgerlog.ops.devtools.tansu import tansu

from ..common import Plan, run_json

__all__ = ["PEERS", "run_peers"]

#: name -> (module, needs a Kafka-protocol broker)
PEERS: dict[str, tuple[str, bool]] = {
    "sqlite": ("benchmarks.peers.sqlite_naive", False),
    "eventsourcing": ("benchmarks.peers.eventsourcing_peer", False),
    "quixstreams": ("benchmarks.peers.quix", True),
    "faust": ("benchmarks.peers.faust_peer", True),
}


def _limit(name: str, plan: Plan) -> int | None:
    if name == "eventsourcing":
        return plan.eventsourcing_cap
    if PEERS[name][1]:
        return plan.stream_cap
    return None


def run_peers(names: list[str], events_path: str, total: int, plan: Plan, work: str) -> dict[str, Any]:
    """Figures of each named peer over the first events of ``events_path`` (``total`` in all)."""
    out: dict[str, Any] = {}
    for name in names:
        module, needs_broker = PEERS[name]
        peer_work = tempfile.mkdtemp(prefix=f"peer-{name}-", dir=work)
        limit = _limit(name, plan)
        args = {"events": events_path, "work": peer_work, "limit": limit, "max_seconds": plan.stream_seconds}
        try:
            if needs_broker:
                with tansu(os.path.join(peer_work, "broker.log")) as bootstrap:
                    res = run_json(module, {**args, "bootstrap": bootstrap}, timeout=plan.peer_timeout)
            else:
                res = run_json(module, args, timeout=plan.peer_timeout)
        except Exception as exc:  # noqa: BLE001 - the broker did not start, ...
            res = {"error": f"{type(exc).__name__}: {exc}"}
        if limit is not None and limit < total and "error" not in res:
            res["capped_at"] = limit
        out[name] = res
    return out
