"""``python -m benchmarks.memory --events N``: memory over a long rebuild. Generates a signed
history of N events, ingests it, then folds every projection from scratch (the first fold, one
process) and reprojects them all (``fold.workers`` processes), sampling the RSS of the process
tree throughout. The goal is "under 1 GiB and flat" at 10M events, so the answer gives the peak,
the first and last quarter means and the series in tenths of the run. Writes
``<out>/memory.json``. Slow (10M events: about half an hour on 2 cores); not part of ``make bench``."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Any

from ledgerlog import projections
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.topics import EVENT_TOPICS
from ledgerlog.streams.reproject import reproject
from ledgerlog.streams.runner import Runner

from . import history
from .common import machine, rate, versions
from .ingest import ingest
from .rss import RssSampler


def _series(s: RssSampler, parts: int = 10) -> list[int]:
    values = [v for _, v in s.samples]
    if not values:
        return []
    step = max(1, len(values) // parts)
    return [round(max(values[i:i + step]) / (1 << 20)) for i in range(0, len(values), step)]


def _step(label: str, t0: float) -> None:
    print(f"[memory {time.monotonic() - t0:7.1f}s] {label}", flush=True)


def run(events: int, work: str, data: str | None = None) -> dict[str, Any]:
    """Generate and ingest ``events`` into ``work``, or (``data``) use an ingested data dir as
    it is (its projections too: the first fold then folds only what they lack)."""
    t0 = time.monotonic()
    out: dict[str, Any] = {"events": events, "machine": machine(), "versions": versions()}
    if data is None:
        _step(f"generating {events:,} events", t0)
        inputs = history.make_inputs(work, events)
        out["generate_seconds"] = inputs["seconds"]
        data = os.path.join(work, "data")
        _step("ingest", t0)
        out["ingest"] = ingest(data, inputs["genesis"], inputs["path"], inputs["stats"], runs=1, min_seconds=0)
        os.remove(inputs["path"])
    cfg = Config(data_dir=data)
    with open_chain(cfg, read_only=True) as chain:
        events = out["history_events"] = sum(sum(chain.log.end_offsets(t)) for t in EVENT_TOPICS)
        live = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, batch=cfg.fold_batch)
        try:
            _step("first fold, one process", t0)
            t = time.perf_counter()
            with RssSampler(interval=1.0) as rss:
                live.catch_up()
            secs = time.perf_counter() - t
            out["first_fold"] = {"seconds": round(secs, 3), "events_per_s": rate(events, secs),
                                 "rss": {**rss.summary(), "series_mib": _series(rss)}}
            workers = cfg.fold_processes
            _step(f"reproject all, {workers} processes", t0)
            t = time.perf_counter()
            with RssSampler(interval=1.0) as rss:
                res = reproject(chain.log, chain.codec, chain.genesis, cfg.projections_dir, live,
                                list(projections.ALL), keep=False, workers=workers)
            secs = time.perf_counter() - t
            out["reproject_all"] = {"seconds": round(secs, 3), "events_per_s": rate(events, secs),
                                    "workers": workers, "identical_digests": all(r["identical"] for r in res),
                                    "rss": {**rss.summary(), "series_mib": _series(rss)}}
        finally:
            live.close()
    out["seconds_total"] = round(time.monotonic() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--out", default="bench-out", help="where memory.json goes")
    ap.add_argument("--work", help="work in this directory (default: a temp dir, removed)")
    ap.add_argument("--data", help="measure an ingested data dir instead of generating one")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="ll-memory-")
    os.makedirs(work, exist_ok=True)
    try:
        res = run(args.events, work, args.data)
    finally:
        if args.work is None:
            time.sleep(1.5)  # reproject closes the replaced stores a second after the swap
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "memory.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2)
    for key in ("first_fold", "reproject_all"):
        r = res[key]
        print(f"{key}: {r['seconds']} s, {r['events_per_s']:,.0f} events/s, RSS peak {r['rss']['peak_mib']} MiB, "
              f"first/last quarter {r['rss']['first_quarter_mean_mib']}/{r['rss']['last_quarter_mean_mib']} MiB, "
              f"tenths {r['rss']['series_mib']}")
    if "ingest" in res:
        print(f"ingest: {res['ingest']['events_per_s']:,.0f} events/s")
    print(f"results: {path} ({res['seconds_total']} s)")


if __name__ == "__main__":
    main()
