"""Building projections in parallel processes, each following the embedded log as a RocksDB
secondary instance (no lock, so it works beside a node).

The work is split into units: a projection, or one part of one that SPLITS_BY_PARTITION (a part
reads, decodes and folds only its share of the log's partitions, streams/parts.py, and the parts'
stores are merged at the end by the projection's ``merge``). Units are spread over the processes
by estimated cost (a process reads and decodes a record once for all of its units, so units that
share partitions stay together unless the balance needs them apart), and a projection is split
only when that lowers the costliest process. The caller folds the costliest group itself while
the others run in children forked from a fork server that has ledgerlog imported (a child starts
in milliseconds, not the half second of a fresh interpreter, and no thread of the caller is
forked). Every unit folds up to the same log ends, so parts can be merged; the caller then folds
the rest.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import resource
import shutil
import time
from collections.abc import Callable
from itertools import product
from typing import Any

from ledgerlog.engine.codec import Codec
from ledgerlog.engine.errors import ConfigError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.base import Log

from . import catalog
from .parts import TP, part_of
from .runner import Runner
from .store import ProjectionStore

__all__ = ["Unit", "plan_groups", "groups_by_work", "build_bulk", "catch_up_parallel", "ParallelBuild", "warm",
           "part_paths"]

log = logging.getLogger("ledgerlog.parallel")

#: (projection, part index, part count); (name, 0, 1) is the whole projection
Unit = tuple[str, int, int]
#: Relative cost of folding one record, per projection, against balances' (measured on the bench
#: history, reproject of each alone: chainstate writes a block's whole event and a row per
#: transaction and submission; balances writes a key per account and history span, not per row).
FOLD_COST = {"chainstate": 3.0, "payouts": 1.9, "energy": 2.2}
#: Relative cost of reading and decoding one record, paid once per process that reads its topic.
READ_COST = 0.6
#: Relative cost, per record of a split projection, of merging its parts' stores afterwards (in
#: the caller, once every part is done). Measured: balances' merge took 0.08 s of a 0.36 s build.
MERGE_COST = 0.4
#: A split is chosen only where the estimate of its build (the costliest process, then the
#: merge) is under this share of the best plan without it. Measured on 2 cores, the estimate was
#: 10% low: both processes run slower together (1.6x one core for two) and the parts end apart,
#: so on 2 cores a split of balances did not pay (0.40 s against 0.37 s whole); from 3 on it does.
SPLIT_GAIN = 0.75
SPLIT_GAIN_ENV = "LEDGERLOG_SPLIT_GAIN"  # overrides it (tests split small logs on 2 cores)
#: Below this many records a build is not worth spreading over processes, nor a projection worth
#: splitting into parts (process start and merge overheads); the environment variable overrides
#: it (tests spread small logs).
MIN_PARALLEL_RECORDS = 20_000
MIN_PARALLEL_RECORDS_ENV = "LEDGERLOG_PARALLEL_MIN_RECORDS"
#: A first fold further behind than this many records (all projections) is built in parallel.
FIRST_FOLD_MIN_LAG = 50_000
PARTS_DIR = "parts"
#: Where an older ledgerlog built account shards; a build left so is not resumed from them
LEGACY_SHARDS_DIR = "shards"
#: CPU seconds the build processes of this process have used, summed (their parent is the fork
#: server, so the caller's RUSAGE_CHILDREN never counts them): for benchmarks
CHILD_CPU_SECONDS = 0.0


def _context() -> Any:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # no effect once the server runs
    return ctx


def warm() -> None:
    """Start the fork server now, so it imports ledgerlog while the caller gets ready."""
    from multiprocessing import forkserver
    _context()
    forkserver.ensure_running()


def part_paths(path: str, count: int) -> list[str]:
    """Where the parts of the store at ``path`` are built (inside its directory, so removing a
    build removes its parts too)."""
    return [os.path.join(path, PARTS_DIR, f"{i}-of-{count}") for i in range(count)]


def _cost_fn(log_: Log, names: list[str], mods: dict[str, Any]) -> Callable[[list[Unit]], float]:
    records = {(t, p): end for n in names for t in mods[n].TOPICS for p, end in enumerate(log_.end_offsets(t))}

    def partitions(unit: Unit) -> list[TP]:
        n, i, k = unit
        return [(t, p) for t, p in records if t in mods[n].TOPICS and (k == 1 or part_of(t, p, k) == i)]

    def cost(group: list[Unit]) -> float:
        read: set[TP] = set()
        fold = 0.0
        for unit in group:
            mine = partitions(unit)
            read.update(mine)
            fold += FOLD_COST.get(unit[0], 1.0) * sum(records[tp] for tp in mine)
        return READ_COST * sum(records[tp] for tp in read) + fold
    return cost


def _assign(units: list[Unit], k: int, cost: Callable[[list[Unit]], float]) -> list[list[Unit]]:
    """``units`` in at most ``k`` groups with the lowest costliest group (parts of one projection
    in different groups)."""
    def valid(groups: list[list[Unit]]) -> bool:
        return all(len({n for n, _, _ in g}) == len(g) for g in groups)

    if k ** len(units) <= 50_000:  # small: try every assignment
        best: list[list[Unit]] | None = None
        best_cost = float("inf")
        for assign in product(range(k), repeat=len(units)):
            groups = [[u for u, g in zip(units, assign) if g == i] for i in range(k)]
            if not valid(groups):
                continue
            worst = max(cost(g) for g in groups if g)
            if worst < best_cost - 1e-9:
                best, best_cost = groups, worst
        return best or [units]
    greedy: list[list[Unit]] = [[] for _ in range(k)]  # costliest unit to the cheapest group
    for u in sorted(units, key=lambda x: -cost([x])):
        fits = [g for g in greedy if all(n != u[0] for n, _, _ in g)] or greedy
        min(fits, key=cost).append(u)
    return greedy


def plan_groups(log_: Log, names: list[str], workers: int, *, split: bool = True,
                projections_dir: str | None = None) -> list[list[Unit]]:
    """Split the work of building ``names`` (built-in, or registered in ``projections_dir``) into
    at most ``workers`` groups of similar estimated cost, costliest group first (the caller folds
    that one: it starts at once). Projections that SPLITS_BY_PARTITION are split into ``workers``
    parts where that pays (``SPLIT_GAIN``)."""
    mods = catalog.modules(projections_dir)
    cost = _cost_fn(log_, names, mods)
    k = max(1, workers)
    whole = [(n, 0, 1) for n in names]
    best = _assign(whole, min(k, len(names)), cost)
    records = {n: sum(sum(log_.end_offsets(t)) for t in mods[n].TOPICS) for n in names}
    parts = [(n, i, k) for n in names if getattr(mods[n], "SPLITS_BY_PARTITION", False)
             and records[n] >= min_parallel_records() for i in range(k)] if split and k > 1 else []
    if parts:
        parted = {n for n, _, _ in parts}
        option = _assign([u for u in whole if u[0] not in parted] + parts, k, cost)
        estimate = max(cost(g) for g in option if g) + MERGE_COST * sum(records[n] for n in parted)
        if estimate < split_gain() * max(cost(g) for g in best if g):
            best = option
    return sorted((g for g in best if g), key=cost, reverse=True)


def min_parallel_records() -> int:
    return int(_tuning(MIN_PARALLEL_RECORDS_ENV, MIN_PARALLEL_RECORDS, int))


def split_gain() -> float:
    return _tuning(SPLIT_GAIN_ENV, SPLIT_GAIN, float)


def _tuning(name: str, default: float, kind: type[int] | type[float]) -> float:
    """A tuning variable: ``default`` when unset or empty (as every LEDGERLOG_ setting), else a
    finite number >= 0 of ``kind``, or ConfigError naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r} must be a{'n integer' if kind is int else ' number'} >= 0; "
                          "fix it or unset it")
    return value


def groups_by_work(log_: Log, names: list[str], workers: int, projections_dir: str | None = None) -> list[list[str]]:
    """Whole projections only: ``plan_groups`` without parts, as names."""
    return [[n for n, _, _ in g] for g in plan_groups(log_, names, workers, split=False,
                                                      projections_dir=projections_dir)]


def _runner_args(units: list[Unit], paths: dict[str, str]) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """(name -> store path, name -> part) for a Runner folding ``units``."""
    where, parts = {}, {}
    for n, i, k in units:
        if k > 1:
            where[n] = part_paths(paths[n], k)[i]
            parts[n] = (i, k)
        else:
            where[n] = paths[n]
    return where, parts


def _child(log_path: str, genesis_raw: dict[str, Any], projections_dir: str, units: list[Unit],
           paths: dict[str, str], until: dict[str, list[int]], batch: int, counter: Any, results: Any,
           tuning: Any, owner: int) -> None:
    from ledgerlog.engine.procs import exit_with_parent
    exit_with_parent(owner)  # a killed reproject must not leave builds running (and stores locked)
    from ledgerlog.engine import rocks
    rocks.configure(tuning)  # the parent's RocksDB sizes (nothing is inherited from the caller)
    from ledgerlog.engine.codec import Codec, Registry
    from ledgerlog.engine.log.embedded import EmbeddedLog

    log_ = EmbeddedLog(log_path, secondary=True)
    try:
        where, parts = _runner_args(units, paths)
        runner = Runner(log_, Codec(Registry(log_)), Genesis.from_dict(genesis_raw), projections_dir,
                        names=list(where), batch=batch, paths=where, bulk=True, parts=parts)

        def tick(n: int) -> None:
            with counter.get_lock():
                counter.value += n
        runner.catch_up(until=until, progress=tick)
        folded = {f"{n}/{i}/{k}": runner.handles[n].events for n, i, k in units}
        runner.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        results.put({**folded, "cpu_seconds": usage.ru_utime + usage.ru_stime})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which falls back to folding itself
        results.put({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        log_.close()


class ParallelBuild:
    """Fold each group of units in its own process, up to the log ends ``until``. ``poll``
    reports progress, ``wait`` returns events folded per unit ("name/i/k") or raises
    RuntimeError if a child failed (the caller then folds its projections itself, from what the
    child committed)."""

    def __init__(self, log_path: str, genesis_raw: dict[str, Any], projections_dir: str,
                 groups: list[list[Unit]], paths: dict[str, str], until: dict[str, list[int]],
                 batch: int) -> None:
        ctx = _context()
        self._counter, self._results = ctx.Value("q", 0), ctx.Queue()
        from ledgerlog.engine.rocks import tuning
        self._procs = [ctx.Process(target=_child, args=(log_path, genesis_raw, projections_dir, g, paths, until,
                                                        batch, self._counter, self._results, tuning(),
                                                        os.getpid()),
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
        global CHILD_CPU_SECONDS
        while not self._results.empty():
            r = self._results.get()
            CHILD_CPU_SECONDS += r.pop("cpu_seconds", 0.0)
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
                time.sleep(0.02)
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


def _plan_build(log_: Log, mods: dict[str, Any], projections_dir: str, paths: dict[str, str],
                workers: int) -> list[list[Unit]]:
    """The groups ``build_bulk`` folds in parallel; none where it does not apply (one worker, a
    log other than the embedded one, a small log)."""
    if workers < 2 or not log_.supports_parallel_rebuild or log_.path is None or not paths:
        return []
    names = list(paths)
    if sum(sum(log_.end_offsets(t)) for t in {t for n in names for t in mods[n].TOPICS}) < min_parallel_records():
        return []
    split_ok = {n: _splittable(log_, paths[n]) for n in names}
    groups = plan_groups(log_, names, workers, projections_dir=projections_dir)
    if any(k > 1 and not split_ok[n] for g in groups for n, _, k in g):
        groups = plan_groups(log_, names, workers, split=False, projections_dir=projections_dir)
    return groups


def _splittable(log_: Log, path: str) -> bool:
    """May the build at ``path`` be folded in parts? Not on a pruned log (builds start from the
    anchor there), nor once the store itself was started whole (a resumed whole build)."""
    if log_.prune_point() is not None:
        return False
    if not ProjectionStore.exists(path):
        return True
    store = ProjectionStore(path, read_only=True)
    try:
        folded = bool(store.positions())
        merged = store.initialised and folded
    finally:
        store.close()
    if not os.path.isdir(os.path.join(path, PARTS_DIR)):
        return not folded  # a new store (its initial state alone): the merge replaces it
    if merged:  # killed after the merge committed, before its parts were removed
        shutil.rmtree(os.path.join(path, PARTS_DIR), ignore_errors=True)
    return not merged


def build_bulk(log_: Log, codec: Codec, genesis: Genesis, projections_dir: str, paths: dict[str, str],
               batch: int, workers: int, progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """The bulk of building the stores at ``paths`` (name -> store path) in parallel, when the log
    is embedded and there are cores to spread the work over: this process folds the costliest
    group while children fold the others, all up to the log's ends as of now; split projections'
    parts are then merged. Events folded per projection; nothing when it does not apply
    (the caller folds everything in-process)."""
    mods = catalog.modules(projections_dir)
    for path in paths.values():  # an older ledgerlog's account shards: never merged as parts
        shutil.rmtree(os.path.join(path, LEGACY_SHARDS_DIR), ignore_errors=True)
    groups = _plan_build(log_, mods, projections_dir, paths, workers)
    split = {n for g in groups for n, _, k in g if k > 1}
    for n, path in paths.items():
        if n not in split:  # folded whole from here: the parts a killed split build left are no use
            shutil.rmtree(os.path.join(path, PARTS_DIR), ignore_errors=True)
    if len(groups) < 2 or log_.path is None:
        return {}
    topics = {t for n in paths for t in mods[n].TOPICS}
    warm()
    until = {t: log_.end_offsets(t) for t in topics}
    job = ParallelBuild(log_.path, genesis.raw, projections_dir, groups[1:], paths, until, batch).start()
    folded: dict[str, int] = {}
    ok = True
    try:
        where, parts = _runner_args(groups[0], paths)
        mine = Runner(log_, codec, genesis, projections_dir, names=list(where), batch=batch, paths=where,
                      bulk=True, parts=parts)
        try:
            def tick(n: int) -> None:
                if progress is not None:
                    progress(n)
                job.poll(progress)
            mine.catch_up(until=until, progress=tick)
            folded.update((f"{n}/{i}/{k}", mine.handles[n].events) for n, i, k in groups[0])
        finally:
            mine.close()
    finally:
        try:
            folded.update(job.wait(progress))
        except RuntimeError as exc:
            ok = False
            log.warning("%s; folding in this process instead", exc)
    return _merge(paths, groups, folded, ok, mods, until)


def _merge(paths: dict[str, str], groups: list[list[Unit]], folded: dict[str, int], ok: bool,
           mods: dict[str, Any], until: dict[str, list[int]]) -> dict[str, int]:
    """Merge the parts of each split projection into its store; events folded per projection (its
    parts' counts added up: each folded its own partitions)."""
    out: dict[str, int] = {}
    split = {n: k for g in groups for n, _, k in g if k > 1}
    for n, k in split.items():
        if not ok:  # a part is behind: the merge waits for a later build (which resumes the parts)
            continue
        ends = {(t, p): end for t in mods[n].TOPICS for p, end in enumerate(until[t]) if end}
        store = ProjectionStore(paths[n], bulk=True)
        try:
            store.absorb(part_paths(paths[n], k), mods[n].merge, ends)
        except ValueError as exc:  # a part stopped early (its fold failed): the caller folds it whole
            log.warning("%s; folding %s in this process instead", exc, n)
            continue
        finally:
            store.close()
        shutil.rmtree(os.path.join(paths[n], PARTS_DIR), ignore_errors=True)
    merged = {n for n in split if ok and not os.path.isdir(os.path.join(paths[n], PARTS_DIR))}
    for key, events in folded.items():
        n, _, count = key.split("/")
        if count == "1":
            out[n] = events
        elif n in merged:
            out[n] = out.get(n, 0) + events
    return out


def catch_up_parallel(runner: Runner, workers: int, progress: Callable[[int], None] | None = None) -> int:
    """``runner.catch_up()``, with the bulk of it in ``workers`` processes when its projections
    are far behind (a node's first fold): the stores of the projections behind are closed, built
    in place as a rebuild builds (``build_bulk``), and opened again; the runner folds the rest."""
    log_ = runner.log
    lag = runner.lag()
    behind = [n for n, h in runner.handles.items() if h.failed is None and lag[n] > 0]
    if (workers < 2 or runner.read_only or not log_.supports_parallel_rebuild or log_.path is None
            or sum(lag[n] for n in behind) < FIRST_FOLD_MIN_LAG
            or len(plan_groups(log_, behind, workers, projections_dir=runner.projections_dir)) < 2):
        return runner.catch_up(progress=progress)
    order = list(runner.handles)
    kept = {n: runner.handles.pop(n) for n in behind}
    runner.reset_feeds()
    paths = {n: h.store.path for n, h in kept.items()}
    folded: dict[str, int] = {}
    try:
        for h in kept.values():
            h.store.close()
        folded = build_bulk(log_, runner.codec, runner.genesis, runner.projections_dir, paths, runner.batch,
                            workers, progress)
    finally:
        for n, h in kept.items():
            runner.handles[n] = runner.open_handle(h.module, paths[n], h.version)
            runner.handles[n].events = h.events + folded.get(n, 0)
        runner.handles = {n: runner.handles[n] for n in order}  # the order they had
    return sum(folded.values()) + runner.catch_up(progress=progress)
