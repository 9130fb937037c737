"""``python -m benchmarks.prune --events N [--fraction F]``: what `ledgerlog prune` costs on a
generated log of about N events: the whole prune below ``tip * F`` and its phases (archive,
anchor, delete with compaction), the log's bytes before and after (both compacted, so the
difference is what pruning reclaimed, not compaction), the archive's and anchor's bytes, and a
reproject after the prune (from the anchor) against one of the same log unpruned. Prints a
table and writes ``<out>/prune.json``. Timings are for reading, never asserted."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Any

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.data.lines import numbered_lines
from ledgerlog.ops.data.prune import prune
from ledgerlog.ops.data.storage import compact_offline, dir_bytes
from ledgerlog.ops.devtools.histgen import make_genesis, write_history
from ledgerlog.streams.reproject import reproject
from ledgerlog.streams.runner import Runner

from .common import machine

SEED = 11
WALLETS = 64


def _ingest(cfg: Config, path: str) -> float:
    t = time.perf_counter()
    with open_chain(cfg) as chain, open(path, "rb") as f:
        summary = chain.admitter.admit_numbered(numbered_lines(f))
        assert summary.rejected == 0, summary.to_dict()
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch)
        try:
            runner.catch_up()
        finally:
            runner.close()
    return time.perf_counter() - t


def _reproject(cfg: Config) -> float:
    with open_chain(cfg, read_only=True) as chain:
        live = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch)
        try:
            t = time.perf_counter()
            reproject(chain.log, chain.codec, chain.genesis, cfg.projections_dir, live, workers=cfg.fold_processes)
            return time.perf_counter() - t
        finally:
            live.close()


def run(events: int, fraction: float, work: str) -> dict[str, Any]:
    genesis, keys = make_genesis(SEED, wallets=WALLETS)
    history = os.path.join(work, "history.jsonl")
    stats = write_history(history, genesis, keys, events=events, seed=SEED)
    cfg = Config(data_dir=os.path.join(work, "data"), fold_workers=os.cpu_count() or 1)
    init_chain(cfg, genesis)
    ingest_s = _ingest(cfg, history)
    compact_offline(cfg)
    log_before = dir_bytes(cfg.log_path)
    unpruned = Config(data_dir=os.path.join(work, "unpruned"), fold_workers=cfg.fold_workers)
    shutil.copytree(cfg.data_dir, unpruned.data_dir)
    with open_chain(cfg) as chain:
        tip = chain.write_state().tip().height
        height = max(1, int(tip * fraction))
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch)
        try:
            t = time.perf_counter()
            summary = prune(chain, runner, height)
            prune_s = time.perf_counter() - t
        finally:
            runner.close()
    compact_offline(cfg)  # as after any delete: what is left once RocksDB has dropped the tombstones
    log_after = dir_bytes(cfg.log_path)
    return {
        "events": stats.to_dict(), "ingest_seconds": round(ingest_s, 2), "tip": tip, "height": height,
        "records_pruned": summary["records"], "prune_seconds": round(prune_s, 2),
        "archive_seconds": summary["archive"]["seconds"], "anchor_seconds": summary["anchor"]["seconds"],
        "delete_seconds": summary["delete_seconds"],
        "log_bytes_before": log_before, "log_bytes_after": log_after, "reclaimed_bytes": log_before - log_after,
        "log_bytes_right_after_prune": summary["log_bytes"]["after"],
        "archive_bytes": summary["archive"]["bytes"], "anchor_bytes": dir_bytes(cfg.anchor_dir),
        "reproject_seconds_pruned": round(_reproject(cfg), 2),
        "reproject_seconds_unpruned": round(_reproject(unpruned), 2),
        "machine": machine(),
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--fraction", type=float, default=0.5, help="prune below tip * FRACTION")
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="ledgerlog-bench-prune-")
    try:
        r = run(args.events, args.fraction, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "prune.json"), "w", encoding="utf-8") as f:
        json.dump(r, f, indent=1)
    n = r["records_pruned"]
    rows = [("log events", f"{r['events'].get('events', '?')}"),
            ("pruned below height", f"{r['height']} of {r['tip']}: {n:,} records"),
            ("prune, total", f"{r['prune_seconds']} s ({n / max(r['prune_seconds'], 1e-9):,.0f} records/s)"),
            ("  archive", f"{r['archive_seconds']} s, {_mib(r['archive_bytes'])}"),
            ("  anchor", f"{r['anchor_seconds']} s, {_mib(r['anchor_bytes'])}"),
            ("  delete + compaction", f"{r['delete_seconds']} s"),
            ("log bytes (compacted) before / after", f"{_mib(r['log_bytes_before'])} / {_mib(r['log_bytes_after'])}"),
            ("reclaimed", f"{_mib(r['reclaimed_bytes'])} ({r['reclaimed_bytes'] / max(r['log_bytes_before'], 1):.0%})"),
            ("reproject after / without the prune", f"{r['reproject_seconds_pruned']} s / {r['reproject_seconds_unpruned']} s")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
