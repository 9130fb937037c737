"""Ingest: history lines through admission (validation, signature checks) into the embedded log,
durable (each chunk of lines is one synced append), as ``ledgerlog ingest`` does it."""
from __future__ import annotations

import os
import resource
import time
from typing import Any

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config

from .common import rate

__all__ = ["ingest"]


def ingest(data_dir: str, genesis: dict[str, Any], history: str, stats: dict[str, Any]) -> dict[str, Any]:
    """Admit every line of ``history`` into a new chain at ``data_dir`` (left there, closed)."""
    cfg = Config(data_dir=data_dir)  # verify_workers 0: one per core, as `ledgerlog ingest` runs
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain, open(history, "rb") as f:
        t = time.perf_counter()
        summary = chain.admitter.admit(line.rstrip(b"\n") for line in f)
        secs = time.perf_counter() - t
    if summary.rejected:
        raise RuntimeError(f"the generated history was rejected: {summary.rejections[:3]}")
    events = stats["events"]
    signed = events - stats["shares"]
    return {"lines": summary.accepted, "events": events, "seconds": round(secs, 3),
            "lines_per_s": rate(summary.accepted, secs), "events_per_s": rate(events, secs),
            "signed_events_per_s": rate(signed, secs), "shares_per_s": rate(stats["shares"], secs),
            "durability": f"synced append per {cfg.ingest_chunk} lines", "verify_workers": cfg.verify_workers or os.cpu_count(),
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
