"""Ingest: history lines through admission (validation, signature checks) into the embedded log,
durable (each chunk of lines is one synced append), as ``ledgerlog ingest`` does it. Each pass
admits the whole history into a new chain; ``steady`` repeats passes (2 s a run, median of 3)."""
from __future__ import annotations

import os
import resource
import shutil
import time
from typing import Any

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config

from .common import RUNS, steady

__all__ = ["ingest"]


def _pass(cfg: Config, genesis: dict[str, Any], history: str) -> tuple[int, float]:
    """Admit ``history`` into a new chain at ``cfg.data_dir``: (lines accepted, seconds)."""
    shutil.rmtree(cfg.data_dir, ignore_errors=True)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain, open(history, "rb") as f:
        t = time.perf_counter()
        summary = chain.admitter.admit(line.rstrip(b"\n") for line in f)
        secs = time.perf_counter() - t
    if summary.rejected:
        raise RuntimeError(f"the generated history was rejected: {summary.rejections[:3]}")
    return summary.accepted, secs


def ingest(data_dir: str, genesis: dict[str, Any], history: str, stats: dict[str, Any], *,
           runs: int = RUNS, min_seconds: float | None = None) -> dict[str, Any]:
    """Admit every line of ``history`` into a new chain at ``data_dir`` (the last pass's chain is
    left there, closed). Rates are the median run's (``steady``: ``runs`` runs of passes lasting
    ``min_seconds``); ``runs_per_s`` and ``spread`` are of events."""
    cfg = Config(data_dir=data_dir)  # verify_workers 0: one per core, as `ledgerlog ingest` runs
    accepted: list[int] = []

    def one() -> tuple[float, float]:
        lines, secs = _pass(cfg, genesis, history)
        accepted.append(lines)
        return stats["events"], secs

    fig = steady(one, runs=runs, min_seconds=min_seconds)
    per_s, events = fig["per_s"], stats["events"]

    def part(n: int) -> float:  # the rate of a part of the history's events (lines, signed, shares)
        return round(per_s * n / events, 1)

    return {"lines": accepted[-1], "events": events, "seconds": fig["seconds"], "passes": len(accepted),
            "lines_per_s": part(accepted[-1]), "events_per_s": per_s,
            "signed_events_per_s": part(events - stats["shares"]), "shares_per_s": part(stats["shares"]),
            "runs_per_s": fig["runs_per_s"], "spread": fig["spread"],
            "durability": f"synced append per {cfg.ingest_chunk} lines",
            "verify_workers": cfg.verify_workers or os.cpu_count(),
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
