"""Rebuild: the first fold of a freshly ingested log, then ``reproject`` (blue/green: rebuild
beside the live stores, compare digests, swap) of every projection and of balances alone — the
operator's replacement for "delete chainstate and resync"."""
from __future__ import annotations

import time
from typing import Any

import projections
from engine.chain import open_chain
from engine.config import Config
from engine.log.base import Log
from streams.reproject import reproject, total_records
from streams.runner import Runner

from .common import rate

__all__ = ["rebuild"]


def _events(log: Log, names: list[str]) -> int:
    """Log records in the topics the named projections read (each counted once)."""
    topics = {t for n in names for t in projections.ALL[n].TOPICS}
    return sum(sum(log.end_offsets(t)) for t in topics)


def _figure(log: Log, names: list[str], secs: float, extra: dict[str, Any]) -> dict[str, Any]:
    events = _events(log, names)
    return {"projections": names, "events": events, "records_folded": total_records(log, names),
            "seconds": round(secs, 3), "events_per_s": rate(events, secs), **extra}


def rebuild(data_dir: str) -> dict[str, dict[str, Any]]:
    """Fold the live projections (left in place for the query step), then time reprojects."""
    cfg = Config(data_dir=data_dir)
    out: dict[str, dict[str, Any]] = {}
    with open_chain(cfg, read_only=True) as chain:
        log, names = chain.log, list(projections.ALL)
        live = Runner(log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch)
        try:
            t = time.perf_counter()
            live.catch_up()
            out["first_fold"] = _figure(log, names, time.perf_counter() - t, {})
            for key, chosen in (("rebuild_all", names), ("rebuild_balances", ["balances"])):
                t = time.perf_counter()
                res = reproject(log, chain.codec, chain.genesis, cfg.projections_dir, live, chosen)
                secs = time.perf_counter() - t
                out[key] = _figure(log, chosen, secs, {"identical_digests": all(r["identical"] for r in res)})
        finally:
            live.close()
    return out
