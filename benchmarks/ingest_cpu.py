"""CPU seconds per ingested line, main process and verify workers apart: a steadier yardstick
than wall time on a shared machine (other processes take wall time, not our CPU time).

``python -m benchmarks.ingest_cpu HISTORY.jsonl GENESIS.json [--passes N] [--workers W]`` admits
the history into a new chain N times and prints one JSON line per pass: lines, wall seconds,
main-process CPU seconds (``time.process_time``) and the verify workers' CPU seconds (their
``/proc/<pid>/stat`` utime + stime, read before the pool shuts down). GENESIS.json holds
``{"genesis": {...}}`` as ``benchmarks.history`` writes it. Compare two checkouts by running this
with each on ``PYTHONPATH``, alternating."""
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

__all__ = ["cpu_pass"]

_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_pass(history: str, genesis: dict[str, Any], workers: int) -> dict[str, Any]:
    """Admit ``history`` into a fresh chain: lines, wall, main and worker CPU seconds."""
    data_dir = tempfile.mkdtemp(prefix="ingest-cpu-")
    try:
        cfg = Config(data_dir=data_dir, verify_workers=workers)
        init_chain(cfg, genesis)
        with open_chain(cfg) as chain, open(history, "rb") as f:
            lines = [line.rstrip(b"\n") for line in f]
            admitter = chain.admitter
            wall, cpu = time.perf_counter(), time.process_time()
            summary = admitter.admit(lines)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            pool = admitter.verifier._pool
            pids = list(pool._processes) if pool is not None else []
            workers_cpu = sum(_proc_cpu(pid) for pid in pids)
        if summary.rejected:
            raise RuntimeError(f"the history was rejected: {summary.rejections[:3]}")
        return {"lines": summary.accepted, "wall_s": round(wall, 3), "main_cpu_s": round(cpu, 3),
                "workers_cpu_s": round(workers_cpu, 3), "total_cpu_s": round(cpu + workers_cpu, 3)}
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("history")
    ap.add_argument("genesis")
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    with open(args.genesis) as f:
        genesis = json.load(f)["genesis"]
    for _ in range(args.passes):
        print(json.dumps(cpu_pass(args.history, genesis, args.workers)), flush=True)


if __name__ == "__main__":
    main()
