"""Building projections in parallel processes: one process per group of projections, each
following the embedded log as a RocksDB secondary instance (no lock, so it works beside a node).

Folds are independent per projection, so a rebuild of several projections uses every core;
the work is split by the number of log records each projection reads."""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any, Callable

import projections
from engine.log.base import Log

__all__ = ["groups_by_work", "build_parallel"]


def groups_by_work(log: Log, names: list[str], workers: int) -> list[list[str]]:
    """Greedy split of ``names`` into at most ``workers`` groups of similar record counts."""
    work = {n: sum(sum(log.end_offsets(t)) for t in projections.ALL[n].TOPICS) for n in names}
    groups: list[list[str]] = [[] for _ in range(min(workers, len(names)))]
    loads = [0] * len(groups)
    for n in sorted(names, key=lambda x: -work[x]):
        i = loads.index(min(loads))
        groups[i].append(n)
        loads[i] += work[n]
    return [g for g in groups if g]


def _child(log_path: str, genesis_raw: dict[str, Any], projections_dir: str, paths: dict[str, str],
           batch: int, counter: Any, results: Any) -> None:
    from engine.codec import Codec, Registry
    from engine.genesis import Genesis
    from engine.log.embedded import EmbeddedLog

    from .runner import Runner

    log = EmbeddedLog(log_path, secondary=True)
    try:
        runner = Runner(log, Codec(Registry(log)), Genesis.from_dict(genesis_raw), projections_dir,
                        names=list(paths), batch=batch, paths=paths)

        def tick(n: int) -> None:
            with counter.get_lock():
                counter.value += n
        runner.catch_up(progress=tick)
        results.put({name: h.events for name, h in runner.handles.items()})
        runner.close()
    except BaseException as exc:  # reported to the parent, which falls back to folding itself
        results.put({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        log.close()


def build_parallel(log_path: str, genesis_raw: dict[str, Any], projections_dir: str,
                   groups: list[dict[str, str]], batch: int,
                   progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Fold each group (name -> build path) in its own process; events folded per projection.
    Raises RuntimeError if a child fails (the caller then builds in-process)."""
    ctx = mp.get_context("spawn")  # the caller may have threads (a node): never fork them
    counter, results = ctx.Value("q", 0), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(log_path, genesis_raw, projections_dir, g, batch, counter, results),
                         daemon=True, name=f"ledgerlog-build-{i}") for i, g in enumerate(groups)]
    for p in procs:
        p.start()
    seen, out, errors = 0, {}, []
    try:
        while any(p.is_alive() for p in procs) or not results.empty():
            while not results.empty():
                r = results.get()
                (errors.append(r["error"]) if "error" in r else out.update(r))
            with counter.get_lock():
                now = counter.value
            if progress and now > seen:
                progress(now - seen)
                seen = now
            time.sleep(0.1)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    failed = [p.name for p in procs if p.exitcode not in (0, None)]
    if errors or failed or len(out) < sum(len(g) for g in groups):
        raise RuntimeError(f"parallel build failed: {errors or failed or 'missing results'}")
    return out

