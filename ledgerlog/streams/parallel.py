"""Building projections in parallel processes: one process per group of projections, each
following the embedded log as a RocksDB secondary instance (no lock, so it works beside a node).

Folds are independent per projection, so a rebuild of several projections uses every core;
the work is split by the estimated cost of each projection's records (a process reads and decodes
a record once for all of its projections, so the split also keeps projections that share topics
apart only when it must). The caller folds one group itself while the others run in children."""
from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from itertools import product
from typing import Any

from ledgerlog.engine.log.base import Log

from . import catalog

__all__ = ["groups_by_work", "build_parallel", "ParallelBuild"]

#: Relative cost of folding one record, per projection (measured on the bench history: chainstate
#: writes a block's whole event and a row per transaction and submission); others count 1.
FOLD_COST = {"chainstate": 1.35}
#: Relative cost of reading and decoding one record, paid once per process that reads its topic.
READ_COST = 0.6


def groups_by_work(log: Log, names: list[str], workers: int, projections_dir: str | None = None) -> list[list[str]]:
    """Split ``names`` (built-in or registered in ``projections_dir``) into at most ``workers``
    groups of similar estimated cost, costliest group first (the caller folds that one: it starts
    at once, while children are still starting)."""
    mods = catalog.modules(projections_dir)
    records = {t: sum(log.end_offsets(t)) for n in names for t in mods[n].TOPICS}

    def cost(group: list[str]) -> float:
        topics = {t for n in group for t in mods[n].TOPICS}
        return (READ_COST * sum(records[t] for t in topics)
                + sum(FOLD_COST.get(n, 1.0) * records[t] for n in group for t in mods[n].TOPICS))

    k = max(1, min(workers, len(names)))
    if k ** len(names) <= 50_000:  # small: try every assignment
        best: list[list[str]] | None = None
        best_cost = float("inf")
        for assign in product(range(k), repeat=len(names)):
            groups = [[n for n, g in zip(names, assign) if g == i] for i in range(k)]
            worst = max(cost(g) for g in groups if g)
            if worst < best_cost - 1e-9:
                best, best_cost = groups, worst
        groups = best or [names]
    else:  # greedy: costliest projection to the cheapest group
        groups = [[] for _ in range(k)]
        for n in sorted(names, key=lambda x: -cost([x])):
            min(groups, key=cost).append(n)
    return sorted((g for g in groups if g), key=cost, reverse=True)


def _child(log_path: str, genesis_raw: dict[str, Any], projections_dir: str, paths: dict[str, str],
           batch: int, counter: Any, results: Any, tuning: Any) -> None:
    from ledgerlog.engine.procs import exit_with_parent
    exit_with_parent()  # a killed reproject must not leave builds running (and stores locked)
    from ledgerlog.engine import rocks
    rocks.configure(tuning)  # the parent's RocksDB sizes (spawned: nothing is inherited)
    from ledgerlog.engine.codec import Codec, Registry
    from ledgerlog.engine.genesis import Genesis
    from ledgerlog.engine.log.embedded import EmbeddedLog

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
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which falls back to folding itself
        results.put({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        log.close()


class ParallelBuild:
    """Fold each group (name -> build path) in its own process. ``poll`` reports progress,
    ``wait`` returns events folded per projection or raises RuntimeError if a child failed (the
    caller then folds its projections itself, from what the child committed)."""

    def __init__(self, log_path: str, genesis_raw: dict[str, Any], projections_dir: str,
                 groups: list[dict[str, str]], batch: int) -> None:
        ctx = mp.get_context("spawn")  # the caller may have threads (a node): never fork them
        self._counter, self._results = ctx.Value("q", 0), ctx.Queue()
        from ledgerlog.engine.rocks import tuning
        self._procs = [ctx.Process(target=_child, args=(log_path, genesis_raw, projections_dir, g, batch,
                                                        self._counter, self._results, tuning()),
                                   daemon=True, name=f"ledgerlog-build-{i}") for i, g in enumerate(groups)]
        self._expected = sum(len(g) for g in groups)
        self._seen = 0
        self._out: dict[str, int] = {}
        self._errors: list[str] = []

    def start(self) -> ParallelBuild:
        for p in self._procs:
            p.start()
        return self

    def poll(self, progress: Callable[[int], None] | None = None) -> None:
        while not self._results.empty():
            r = self._results.get()
            (self._errors.append(r["error"]) if "error" in r else self._out.update(r))
        with self._counter.get_lock():
            now = self._counter.value
        if progress and now > self._seen:
            progress(now - self._seen)
        self._seen = now

    def wait(self, progress: Callable[[int], None] | None = None) -> dict[str, int]:
        try:
            while any(p.is_alive() for p in self._procs) or not self._results.empty():
                self.poll(progress)
                time.sleep(0.05)
            self.poll(progress)
        finally:
            for p in self._procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
        failed = [p.name for p in self._procs if p.exitcode not in (0, None)]
        if self._errors or failed or len(self._out) < self._expected:
            raise RuntimeError(f"parallel build failed: {self._errors or failed or 'missing results'}")
        return self._out


def build_parallel(log_path: str, genesis_raw: dict[str, Any], projections_dir: str,
                   groups: list[dict[str, str]], batch: int,
                   progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Fold each group (name -> build path) in its own process; events folded per projection.
    Raises RuntimeError if a child fails (the caller then builds in-process)."""
    return ParallelBuild(log_path, genesis_raw, projections_dir, groups, batch).start().wait(progress)
