"""Rebuild: the first fold of a freshly ingested log, then ``reproject`` (blue/green: rebuild
beside the live stores, compare digests, swap) of every projection and of balances alone — the
operator's replacement for "delete chainstate and resync".

Reprojects use ``fold.workers`` processes as ``ledgerlog reproject`` does (projections spread
over processes; one projection is one process): each figure says how many it used, and the
figure for all projections also gives the rate of one process (``one_process``)."""
from __future__ import annotations

import os
import time
from typing import Any

from ledgerlog import projections
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.log.base import Log
from ledgerlog.streams.reproject import reproject, total_records
from ledgerlog.streams.runner import Runner

from .common import rate
from .rss import RssSampler

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
        workers_all = cfg.fold_workers or (os.cpu_count() or 1)  # as `ledgerlog reproject` resolves it
        live = Runner(log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch)
        try:
            t = time.perf_counter()
            live.catch_up()
            out["first_fold"] = _figure(log, names, time.perf_counter() - t, {})
            for key, chosen in (("rebuild_all", names), ("rebuild_balances", ["balances"])):
                runs = [workers_all, 1] if key == "rebuild_all" and workers_all > 1 else [1]
                figs = []
                for workers in runs:
                    t = time.perf_counter()
                    with RssSampler() as rss:  # this process and its build processes
                        res = reproject(log, chain.codec, chain.genesis, cfg.projections_dir, live, chosen,
                                        keep=False, workers=workers)
                    secs = time.perf_counter() - t
                    figs.append(_figure(log, chosen, secs, {"identical_digests": all(r["identical"] for r in res),
                                                            "workers": min(workers, len(chosen)),
                                                            "rss": rss.summary()}))
                out[key] = figs[0]
                if len(figs) > 1:
                    out[key]["one_process"] = figs[1]
        finally:
            live.close()
    return out
