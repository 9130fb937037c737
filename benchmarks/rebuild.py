"""Rebuild: the first fold of a freshly ingested log, then ``reproject`` (blue/green: rebuild
beside the live stores, compare digests, swap) of every projection and of balances alone — the
operator's replacement for "delete chainstate and resync".

Each figure is steady (``common.steady``): the whole operation repeats until a run has lasted
the plan's floor (2 s), three runs, median rate with the runs' spread. The first fold and the
reprojects use ``fold.workers`` processes as a node and ``ledgerlog reproject`` do (the work
spread by cost, balances split by log partition where that pays); each figure says how many,
and the figure for all projections also gives the rate of one process (``one_process``), the one
for balances the rate of balances split into parts by log partition whatever the planner would
choose (``in_parts``: what a split costs or saves on this machine)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ledgerlog import projections
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.log.base import Log
from ledgerlog.streams.parallel import SPLIT_GAIN_ENV, catch_up_parallel
from ledgerlog.streams.reproject import reproject, total_records
from ledgerlog.streams.runner import Runner

from .common import steady
from .rss import RssSampler

__all__ = ["rebuild"]


def _events(log: Log, names: list[str]) -> int:
    """Log records in the topics the named projections read (each counted once)."""
    topics = {t for n in names for t in projections.ALL[n].TOPICS}
    return sum(sum(log.end_offsets(t)) for t in topics)


def _figure(log: Log, names: list[str], fig: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    events = _events(log, names)
    per_s = fig["per_s"]
    return {"projections": names, "events": events, "records_folded": total_records(log, names),
            "seconds": round(events / per_s, 3) if per_s else None, "events_per_s": per_s,
            "steady": {k: fig[k] for k in ("runs_per_s", "spread", "units", "seconds")}, **extra}


@contextmanager
def _split_forced(on: bool) -> Iterator[None]:
    """Have the planner split what it can into parts, however little that pays."""
    if not on:
        yield
        return
    os.environ[SPLIT_GAIN_ENV] = "1000"
    try:
        yield
    finally:
        del os.environ[SPLIT_GAIN_ENV]


def rebuild(data_dir: str) -> dict[str, dict[str, Any]]:
    """Time first folds (into scratch stores), fold the live projections (left in place for the
    query step), then time reprojects."""
    cfg = Config(data_dir=data_dir)
    out: dict[str, dict[str, Any]] = {}
    with open_chain(cfg, read_only=True) as chain:
        log, names = chain.log, list(projections.ALL)
        workers = cfg.fold_processes  # as a node and `ledgerlog reproject` resolve it
        events = _events(log, names)

        def first_fold() -> tuple[float, float]:
            scratch = tempfile.mkdtemp(prefix="first-fold-", dir=data_dir)
            runner = Runner(log, chain.codec, chain.genesis, scratch, batch=cfg.fold_batch)
            try:
                t = time.perf_counter()
                catch_up_parallel(runner, workers)
                secs = time.perf_counter() - t
            finally:
                runner.close()
                shutil.rmtree(scratch, ignore_errors=True)
            return events, secs

        out["first_fold"] = _figure(log, names, steady(first_fold), {"workers": workers})
        live = Runner(log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch)
        try:
            catch_up_parallel(live, workers)
            for key, chosen in (("rebuild_all", names), ("rebuild_balances", ["balances"])):
                runs: list[tuple[int, str | None]] = [(workers, None)]
                if workers > 1:
                    runs.append((1, None) if key == "rebuild_all" else (workers, "in_parts"))
                figs = []
                for n, forced in runs:
                    identical: list[bool] = []

                    def one(chosen: list[str] = chosen, n: int = n, identical: list[bool] = identical
                            ) -> tuple[float, float]:
                        t = time.perf_counter()
                        res = reproject(log, chain.codec, chain.genesis, cfg.projections_dir, live, chosen,
                                        keep=False, workers=n)
                        secs = time.perf_counter() - t
                        identical.extend(r["identical"] for r in res)
                        return _events(log, chosen), secs

                    with RssSampler() as rss, _split_forced(forced is not None):  # with its build processes
                        fig = steady(one)
                    figs.append(_figure(log, chosen, fig, {"identical_digests": all(identical),
                                                           "workers": n, "rss": rss.summary()}))
                out[key] = figs[0]
                if len(figs) > 1:
                    out[key]["one_process" if key == "rebuild_all" else "in_parts"] = figs[1]
        finally:
            live.close()
    return out
