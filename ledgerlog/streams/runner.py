"""The embedded runner: folds each projection from its stored log positions, a batch at a time.

Per batch and projection: read up to ``batch`` records across its topic partitions, decode,
order by event height (folds are commutative; height order keeps history writes append-only),
fold into an overlay, then commit state, positions and digest in one WriteBatch. A crash at any
point resumes from the last committed positions: exactly-once effect without broker transactions.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from opentelemetry import trace

from ledgerlog.engine.codec import Codec
from ledgerlog.engine.errors import (
    AheadOfLogError,
    CorruptStoreError,
    NotReadyError,
    ProjectionFailedError,
    PrunedError,
    StorageError,
    UndecodableRecordError,
    UserCodeStuck,
)
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.base import Log, ahead_error

from . import catalog, layout
from .anchor import Anchor, anchor_root, seed
from .feed import EventDecoder, Feed, Spec, merge_specs, spec_of
from .parts import TP, owned
from .store import ProjectionStore

__all__ = ["FoldFailure", "ProjectionHandle", "Runner"]

_tracer = trace.get_tracer("ledgerlog.streams")  # API only: no-op spans unless ops sets up the SDK
log = logging.getLogger("ledgerlog.runner")


@dataclass(frozen=True)
class FoldFailure:
    """Where a projection's fold raised on an admitted event (a bug: PROTOCOL §7 says no event
    may make a fold fail), or (``in_initial``) its initial state did. The projection stops there;
    everything else goes on."""

    projection: str
    topic: str | None
    partition: int | None
    offset: int | None
    error: str
    in_initial: bool = False
    unreadable: bool = False  # the record at topic/partition/offset cannot be decoded

    @property
    def message(self) -> str:
        if self.unreadable:
            return (f"projection {self.projection} stopped: {self.error}; it folds on once that record is "
                    "gone from its log")
        if self.in_initial:
            what = f"its initial state raised {self.error}"
        else:
            where = (f"{self.topic}[{self.partition}] offset {self.offset}" if self.topic is not None
                     else "a batch it could not narrow to one record")
            what = f"its fold raised {self.error} at {where}"
        return (f"projection {self.projection} stopped: {what}; "
                f"fix the projection's code, then run `ledgerlog reproject {self.projection}`")

    def to_dict(self) -> dict[str, Any]:
        return {"projection": self.projection, "topic": self.topic, "partition": self.partition,
                "offset": self.offset, "error": self.error, "message": self.message}


@dataclass
class ProjectionHandle:
    module: ModuleType
    store: ProjectionStore
    version: int             # the projection version the store was built by
    events: int = 0          # folded by this runner since start
    last_commit: float = 0.0
    feed: Feed | None = None  # read-ahead of its partitions, created on first fold
    failed: FoldFailure | None = None  # its fold raised: it folds no more until rebuilt
    partitions: frozenset[TP] | None = None  # it folds only these (a part of a split rebuild)

    @property
    def stale(self) -> bool:
        """Built by an older projection version than the code's: it must be rebuilt."""
        return self.version != self.module.VERSION

    @property
    def name(self) -> str:
        return self.module.NAME


class Runner:
    """Folds the given projections (default: all) from a log into their stores."""

    def __init__(self, log: Log, codec: Codec, genesis: Genesis, projections_dir: str, *,
                 names: Iterable[str] | None = None, batch: int = 20_000, read_only: bool = False,
                 paths: dict[str, str] | None = None, skip_corrupt: bool = False,
                 anchor_dir: str | None = None, bulk: bool = False,
                 parts: dict[str, tuple[int, int]] | None = None,
                 modules: dict[str, ModuleType] | None = None) -> None:
        """``skip_corrupt``: leave out live stores that fail to open as corrupt, ahead of the log
        or behind its start (listed in ``corrupt``) instead of failing, so a rebuild can replace
        them. ``anchor_dir``: where the anchor of a pruned log is (default: beside
        ``projections_dir``); a store created new starts as a copy of its anchor store. ``bulk``:
        the stores write without RocksDB's write-ahead log until ``end_bulk`` (a rebuild).
        ``parts``: name -> (index, count) for stores (at ``paths``) that fold one part of the
        partitions of a projection that SPLITS_BY_PARTITION (a parallel rebuild merges them).
        ``modules``: projections to fold beside the built-ins and the registered ones (a
        notebook's)."""
        self.log, self.codec, self.genesis = log, codec, genesis
        self.anchor_dir = anchor_dir or anchor_root(projections_dir)
        self.batch = batch
        self.read_only = read_only
        self.bulk = bulk
        self.parts = parts or {}
        self._progress = 0  # events folded, for progress reports
        self.handles: dict[str, ProjectionHandle] = {}
        self._cond = threading.Condition()
        self.projections_dir = projections_dir
        self.corrupt: dict[str, str] = {}
        self._decoder = EventDecoder(codec)
        self._feed: Feed | None = None  # shared by all handles (step)
        self._feed_handles: list[ProjectionHandle] = []
        available = {**catalog.modules(projections_dir), **(modules or {})}  # built-ins, registered, given
        chosen = list(names) if names is not None else list(available)
        try:
            for name in chosen:
                module = available[name] if name in available else catalog.module(projections_dir, name)
                if paths and name in paths:
                    self.handles[name] = self.open_handle(module, paths[name], module.VERSION)
                    continue
                path, version = layout.live_path(projections_dir, module)
                try:
                    self.handles[name] = self.open_handle(module, path, version)
                except (CorruptStoreError, AheadOfLogError, PrunedError) as exc:
                    if not skip_corrupt:
                        raise
                    self.corrupt[name] = str(exc)
                    continue
                if not read_only and layout.read_pointer(projections_dir, name, "live") is None:
                    layout.write_pointer(projections_dir, name, "live", os.path.basename(path), version)
        except BaseException:
            self.close()
            raise

    def open_handle(self, module: ModuleType, path: str, version: int) -> ProjectionHandle:
        """Open (creating and initialising if new) one projection store, or one part's store."""
        part = self.parts.get(module.NAME)
        if part is None:
            return self._open_live(module, path, version)
        # a part of a build: no anchor (builds are not split on a pruned log); the first part
        # starts from the initial state, the others from nothing (the merge adds them up)
        store = ProjectionStore(path, bulk=self.bulk)
        failed = self._initialise(module, store, initial=part[0] == 0) if not store.initialised else None
        return ProjectionHandle(module, store, version, partitions=owned(self.log, module.TOPICS, part),
                                failed=failed)

    def _open_live(self, module: ModuleType, path: str, version: int) -> ProjectionHandle:
        """Open (creating and initialising if new) one projection store. On a pruned log a new
        store starts as a copy of the anchor's (a fold from offset 0 would miss what was pruned)."""
        if not self.read_only and not ProjectionStore.exists(path):
            anchor = Anchor.load(self.anchor_dir)
            if anchor is not None and (anchor.covers(module) or self._pruned(module)):
                if os.path.isdir(path):  # no store, only what a killed sharded build left: in the way
                    shutil.rmtree(path)
                seed(anchor, module, path)
            elif self._pruned(module):
                point = self.log.prune_point()
                raise PrunedError(f"projection {module.NAME} cannot be built from offset 0: the log was pruned "
                                  f"below height {point.height if point else '?'} and there is no anchor at "
                                  f"{self.anchor_dir}; restore the data dir from a snapshot")
        store = ProjectionStore(path, read_only=self.read_only, bulk=self.bulk)
        ahead = self.log.ahead(store.positions())
        if ahead:  # never serve state the log does not hold
            store.close()
            raise ahead_error(f"projection {module.NAME}", ahead,
                              f"rebuild it from the log with `ledgerlog reproject {module.NAME}`, "
                              "or restore the whole data dir from a snapshot")
        behind = self._behind_start(module, store)
        if behind:  # it could fold no further: the records it needs next were pruned
            store.close()
            t, p, off, start = behind
            raise PrunedError(f"projection {module.NAME} has folded {t}[{p}] up to offset {off}, below the "
                              f"log's start {start} (pruned): rebuild it from the anchor with "
                              f"`ledgerlog reproject {module.NAME}`")
        failed = self._initialise(module, store) if not self.read_only and not store.initialised else None
        return ProjectionHandle(module, store, version, failed=failed)

    def _initialise(self, module: ModuleType, store: ProjectionStore, initial: bool = True) -> FoldFailure | None:
        """Write the initial state into an uninitialised store (emptied first: whatever is in it is
        not a state, e.g. a killed merge's part). A user projection whose ``initial`` raises stops
        alone, as a failing fold does (the store stays uninitialised for its rebuild); a built-in's
        error propagates."""
        store.reset()
        txn = store.begin()
        try:
            if initial:
                module.initial(self.genesis, txn)
        except Exception as exc:
            if not catalog.is_user(module):
                raise
            failure = FoldFailure(module.NAME, None, None, None, catalog.describe(exc), in_initial=True)
            log.error("%s", failure.message)
            return failure
        store.commit(txn, {}, initialised=True)
        return None

    def _pruned(self, module: ModuleType) -> bool:
        """Has the log lost records of a topic ``module`` reads?"""
        point = self.log.prune_point()
        return point is not None and any(off > 0 for (t, _p), off in point.starts.items() if t in module.TOPICS)

    def _behind_start(self, module: ModuleType, store: ProjectionStore) -> tuple[str, int, int, int] | None:
        """(topic, partition, stored offset, log start) where ``store`` has not reached the start."""
        point = self.log.prune_point()
        if point is None:
            return None
        pos = store.positions()
        for (t, p), start in sorted(point.starts.items()):
            if t in module.TOPICS and pos.get((t, p), 0) < start:
                return t, p, pos.get((t, p), 0), start
        return None

    # -- folding --------------------------------------------------------------------------------
    def _ends(self, topics: Iterable[str], until: dict[str, list[int]] | None) -> dict[str, list[int]]:
        ends = {t: self.log.end_offsets(t) for t in topics}
        if until is not None:
            ends = {t: [min(e, u) for e, u in zip(ends[t], until[t])] for t in ends}
        return ends

    def fold_batch(self, handle: ProjectionHandle, until: dict[str, list[int]] | None = None) -> int:
        """Fold up to ``batch`` new records into one projection (not past ``until``, topic -> end
        offsets, when given); returns how many."""
        ends = self._ends(handle.module.TOPICS, until)
        positions = handle.store.positions()
        if handle.feed is None or not handle.feed.aligned(positions):
            handle.feed = Feed(self.log, self._decoder, handle.module.TOPICS, positions,
                               fields=_fields([handle.module]), partitions=handle.partitions)
        if handle.failed is not None:
            return 0
        with _gc_paused():
            try:
                events, new_positions, height = handle.feed.take(self.batch, ends)
            except UndecodableRecordError as err:
                self._stop_unreadable(err)
                return 0
            return self._fold(handle, handle.feed, events, new_positions, height)

    def _fold(self, handle: ProjectionHandle, feed: Feed, events: list[tuple[str, dict[str, Any]]],
              new_positions: dict[tuple[str, int], int], height: int) -> int:
        """Fold one batch into ``handle`` and commit it; ``feed`` picked the events (its
        ``picked`` holds their coordinates). A fold that raises stops this projection alone."""
        if not events:
            return 0
        with _tracer.start_as_current_span("ledgerlog.fold_batch", attributes={
                "ledgerlog.projection": handle.name, "ledgerlog.events": len(events)}):
            txn = handle.store.begin()
            try:
                self._call_fold(handle, events, txn)
            except StorageError:  # the disk failed a read: the caller's storage fault, not the fold's bug
                raise
            except Exception as exc:  # noqa: BLE001 - a bug in one fold must not stop the others
                self._stop_failed(handle, feed, events, exc)
                return 0
            handle.store.commit(txn, new_positions, height=height)
        handle.events += len(events)
        self._progress += len(events)
        handle.last_commit = time.time()
        with self._cond:
            self._cond.notify_all()
        return len(events)

    def _stop_unreadable(self, err: UndecodableRecordError) -> None:
        """Stop every projection reading the topic of a record that cannot be decoded, there."""
        for h in self.handles.values():
            if h.failed is None and err.topic in h.module.TOPICS:
                h.failed = FoldFailure(h.name, err.topic, err.partition, err.offset, str(err), unreadable=True)
                log.error("%s", h.failed.message)
        self.reset_feeds()
        with self._cond:
            self._cond.notify_all()

    def _stop_failed(self, handle: ProjectionHandle, feed: Feed,
                     events: list[tuple[str, dict[str, Any]]], exc: Exception) -> None:
        """Mark ``handle`` failed at the first event of the batch its fold raises on (found by
        folding the batch again one event at a time into a scratch overlay: only on failure)."""
        coords: tuple[str | None, int | None, int | None] = (None, None, None)
        error = catalog.describe(exc)
        scratch = handle.store.begin()
        picked = feed.picked
        stuck = isinstance(exc, UserCodeStuck)  # each event of a search could be stuck as long
        for i, ev in enumerate([] if stuck else events):
            try:
                self._call_fold(handle, [ev], scratch)
            except Exception as one:  # noqa: BLE001
                if i < len(picked):
                    topic, partition = feed.tps[picked[i][1]]
                    coords = (topic, partition, picked[i][2])
                error = catalog.describe(one)
                break
        handle.failed = FoldFailure(handle.name, *coords, error)
        handle.feed = None
        log.error("%s", handle.failed.message, exc_info=exc)
        with self._cond:
            self._cond.notify_all()

    def failures(self) -> dict[str, FoldFailure]:
        """The projections whose fold raised, by name."""
        return {n: h.failed for n, h in self.handles.items() if h.failed is not None}

    def check_usable(self, name: str) -> ProjectionHandle:
        """The handle of ``name``; ProjectionFailedError if its fold stopped on a bad event,
        NotReadyError if older code built its store (rebuilt before a node serves it, but a
        read-only look cannot rebuild it)."""
        h = self.handles[name]
        if h.failed is not None:
            raise ProjectionFailedError(h.failed.message)
        if h.stale:
            raise NotReadyError(
                f"projection {name} was built by version {h.version} and this ledgerlog folds version "
                f"{h.module.VERSION}; it is rebuilt when the process holding its store is done (or by "
                f"`ledgerlog reproject {name}`): ask again then")
        return h

    def _shared_feed(self, handles: list[ProjectionHandle],
                     positions: list[dict[tuple[str, int], int]]) -> Feed:
        """One feed for all ``handles``: every record is read and decoded once, whichever of
        them fold it. Made anew when the handles change or one of them is behind it."""
        feed = self._feed
        same = len(handles) == len(self._feed_handles) and all(
            a is b for a, b in zip(handles, self._feed_handles))
        if feed is None or not same or not all(
                feed.covers(h.module.TOPICS, pos, h.partitions) for h, pos in zip(handles, positions)):
            topics = [t for h in handles for t in h.module.TOPICS]
            start: dict[tuple[str, int], int] = {}
            for h, pos in zip(handles, positions):
                for t in h.module.TOPICS:
                    for p in range(len(self.log.end_offsets(t))):
                        if h.partitions is None or (t, p) in h.partitions:
                            off = pos.get((t, p), 0)
                            start[(t, p)] = min(start.get((t, p), off), off)
            whole = all(h.partitions is None for h in handles)
            feed = self._feed = Feed(self.log, self._decoder, topics, start,
                                     fields=_fields([h.module for h in handles]),
                                     partitions=None if whole else frozenset(start))
            self._feed_handles = list(handles)
        return feed

    def step(self, until: dict[str, list[int]] | None = None) -> int:
        """One batch for every projection; returns records folded (summed over projections).

        The projections share one feed: up to ``batch`` records across all their partitions are
        read, decoded once and handed to each projection that reads their topic."""
        with _gc_paused():
            return self._step(until)

    def _step(self, until: dict[str, list[int]] | None) -> int:
        while True:
            handles = [h for h in self.handles.values() if h.failed is None]
            if not handles:
                return 0
            if len(handles) == 1:
                return self.fold_batch(handles[0], until)
            positions = [h.store.positions() for h in handles]
            feed = self._shared_feed(handles, positions)
            try:
                entries = feed.take_raw(self.batch, self._ends(feed.topics, until))
                break
            except UndecodableRecordError as err:  # the readers of its topic stop; the rest go on
                self._stop_unreadable(err)
        if not entries:
            return 0
        total = 0
        for h, pos in zip(handles, positions):
            total += self._fold(h, feed, *feed.select(entries, h.module.TOPICS, pos, h.partitions))
        return total

    def catch_up(self, max_seconds: float | None = None, until: dict[str, list[int]] | None = None,
                 progress: Any = None) -> int:
        """Fold until every projection has reached the log's end (as of each batch)."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        total = 0
        trimmed = time.monotonic()
        while True:
            before = self._progress
            n = self.step(until)
            total += n
            if progress is not None and self._progress > before:
                progress(self._progress - before)
            if n == 0 or (deadline is not None and time.monotonic() > deadline):
                _trim_heap()
                return total
            if time.monotonic() - trimmed > 2.0:
                _trim_heap()
                trimmed = time.monotonic()

    # -- positions and lag ----------------------------------------------------------------------
    def lag(self) -> dict[str, int]:
        """Records each projection has yet to fold."""
        ends = {t: self.log.end_offsets(t) for t in {t for h in self.handles.values() for t in h.module.TOPICS}}
        out = {}
        for name, h in self.handles.items():
            pos = h.store.positions()
            out[name] = sum(end - pos.get((t, p), 0) for t in h.module.TOPICS for p, end in enumerate(ends[t]))
        return out

    def positions(self, name: str) -> dict[str, list[int]]:
        h = self.handles[name]
        pos = h.store.positions()
        return {t: [pos.get((t, p), 0) for p in range(len(self.log.end_offsets(t)))] for t in h.module.TOPICS}

    def wait_caught_up(self, targets: dict[str, list[int]], timeout: float) -> bool:
        """Block until every projection has folded at least to ``targets`` (topic -> end offsets);
        not for ones that cannot fold now (stopped on an event, or a disk refuses writes: reads
        answer from what it committed rather than each wait out ``timeout``; the folds go on
        together, so one refused store holds up the others too)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if all(self._reached(h, targets) for h in self.handles.values() if h.failed is None):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or any(h.store.writes_refused for h in self.handles.values()):
                    return False
                self._cond.wait(min(left, 0.05))

    @staticmethod
    def _reached(h: ProjectionHandle, targets: dict[str, list[int]]) -> bool:
        pos = h.store.positions()
        return all(pos.get((t, p), 0) >= end for t in h.module.TOPICS
                   for p, end in enumerate(targets.get(t, [])))

    def _call_fold(self, handle: ProjectionHandle, events: list[Any], txn: Any) -> None:
        """The projection's fold over ``events``."""
        handle.module.fold(self.genesis, events, txn)

    def reset_feeds(self) -> None:
        """Forget the read-ahead of every projection (their stores are about to change under them)."""
        self._feed, self._feed_handles = None, []
        for h in self.handles.values():
            h.feed = None

    def end_bulk(self) -> None:
        """Flush the stores written in bulk; they write with RocksDB's write-ahead log from now on."""
        self.bulk = False
        for h in self.handles.values():
            h.store.end_bulk()

    def digests(self) -> dict[str, str]:
        return {name: h.store.digest_hex() for name, h in self.handles.items()}

    def close(self) -> None:
        """Close every store, even when one fails to (the first error is raised after)."""
        first: BaseException | None = None
        for h in self.handles.values():
            try:
                h.store.close()
            except Exception as exc:  # noqa: BLE001 - re-raised below
                first = first or exc
        self.handles.clear()
        if first is not None:
            raise first


def _fields(modules: list[ModuleType]) -> dict[str, Spec | None]:
    """Per topic, the fields the modules' folds read (their ``FIELDS``; everything for a module
    that declares none for a topic it reads)."""
    out: dict[str, Spec | None] = {}
    for m in modules:
        declared = getattr(m, "FIELDS", {})
        for t in m.TOPICS:
            spec = spec_of(declared[t]) if t in declared else None
            out[t] = merge_specs(out[t], spec) if t in out else spec
    return out


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is read and folded: it allocates hundreds of
    thousands of acyclic containers (decoded events, state rows), and the collector's passes over
    them cost more than the fold. Collection resumes after the batch."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _load_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _trim_heap() -> None:
    """Hand freed heap back to the OS. A batch allocates and frees hundreds of MB of events and
    rows; glibc keeps them in its arenas (measured: 387 MiB resident after a 1M-event fold with
    every store closed, 121 MiB after a trim), which a rebuild beside a running node cannot spare."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
