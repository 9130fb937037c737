"""The embedded log: one RocksDB under ``<data_dir>/log`` holding records, end offsets,
consumer-group positions and the write-side state, so one WriteBatch commits them together."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

from rocksdict import Checkpoint, DbClosedError, Rdict

from .. import storekeys as K
from ..errors import LogError, PrunedError, StorageError, StoreLockedError
from ..logtree import Trees, TreeState, has_tree, leaf_of, pruned_leaf
from ..procs import alive
from ..prunepoint import PrunePoint
from ..rocks import (
    WriteBatch,
    WriteGuard,
    iter_prefix,
    map_error,
    open_store,
    reopen_store,
    write_options,
)
from .base import Log, LogRecord, Record, StateWrites, TopicPartition

__all__ = ["EmbeddedLog"]

_HEAD = K.RECORD_HEAD  # the record layout (storekeys): timestamp, key length; then key, then value
_T = TypeVar("_T")


def _borrowed(exc: BaseException) -> bool:
    """rocksdict's "Already (mutably) borrowed": another thread is inside the same handle (a
    close() during a recovery holds it while a read comes in)."""
    return isinstance(exc, RuntimeError) and "borrowed" in str(exc)


_SCRATCH_PREFIX = "ledgerlog-secondary-"


def _scratch_dir() -> str:
    """A new directory for a secondary instance's own files (RocksDB's info log), named after this
    process. Those of processes that no longer run (a build child killed before it closed its
    log) are removed first, so killed builds do not pile up in the temp dir."""
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        pid = name[len(_SCRATCH_PREFIX):].partition("-")[0] if name.startswith(_SCRATCH_PREFIX) else ""
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-")


class EmbeddedLog(Log):
    """Records, ends, group positions, write-side state and the partitions' Merkle trees in one
    local RocksDB: an append's records, state and tree nodes are one WriteBatch."""

    atomic_state = True
    ends_are_local = True
    supports_parallel_rebuild = True
    supports_checkpoint = True
    trees: Trees

    def __init__(self, path: str, *, read_only: bool = False, sync: bool = True, secondary: bool = False) -> None:
        """``secondary``: follow a log another process writes (no lock; ``catch_up()`` to see more)."""
        self.path: str = path
        self.read_only = read_only or secondary
        self._scratch = _scratch_dir() if secondary else None
        try:
            self._db = open_store(path, K.LOG_FORMAT, read_only=self.read_only, secondary_dir=self._scratch)
        except BaseException:
            self._drop_scratch()
            raise
        self._write_opts = write_options(sync)
        self._lock = threading.Lock()
        self._closing = False  # a recovery is closing the database to open it anew (_reopen)
        self._guard = WriteGuard(path, self._reopen)
        self._starts: dict[TopicPartition, int] = {}
        self._prune: PrunePoint | None = None
        self.trees = Trees(lambda key: self._reading(lambda db: db.get(key)), self.read, contiguous=True,
                           pruned=self._pruned_leaves)
        self._load_ends()
        if not self.read_only:
            self._grow_trees()

    def _reopen(self) -> None:
        """After a write the disk refused: open the store anew (RocksDB keeps a database stopped
        until then) and reload the end offsets, which a write that failed late may have moved. If
        it cannot be opened for writing yet, it is opened read-only so reads go on. Meanwhile new
        reads wait (``_closing``): readers on other threads borrowing the handle back to back
        could otherwise keep close() from ever getting it, and the reopen would find it locked."""
        self._closing = True
        try:
            self._close_and_reopen()
        finally:
            self._closing = False

    def _close_and_reopen(self) -> None:
        for _ in range(5000):  # a reader already inside holds it for a moment
            try:
                self._db.close()
            except RuntimeError as exc:
                if _borrowed(exc):
                    time.sleep(0.001)
                    continue
            except Exception:  # noqa: BLE001 - a stopped database reports its error again on close
                pass
            break
        def loaded(db: Rdict) -> None:
            self._db = db
            self._closing = False  # the new database is in place: reads go on (_load_ends reads too)
            self._load_ends()
        for _ in range(400):  # the closed handle holds the LOCK until a read still iterating it lets go
            try:
                loaded(open_store(self.path, K.LOG_FORMAT, create=False))
                return
            except StoreLockedError:
                time.sleep(0.005)
            except StorageError:
                break
        reopen_store(self.path, K.LOG_FORMAT, loaded)

    def _load_ends(self) -> None:
        self._topics = self._load_topics()
        self._ends: dict[TopicPartition, int] = {}
        for topic, n in self._topics.items():
            for p in range(n):
                raw = self._db.get(K.end_key(topic, p))
                self._ends[(topic, p)] = K.U64.unpack(raw)[0] if raw else 0
        n = len(K.LOG_START_PREFIX)
        self._starts = {K.split_topic_partition(k[n:]): K.U64.unpack(v)[0]
                        for k, v in iter_prefix(self._db, K.LOG_START_PREFIX)}
        raw_point = self._db.get(K.PRUNE_KEY)
        self._prune = PrunePoint.decode(raw_point) if raw_point else None
        self.trees.load(self._ends)

    def _grow_trees(self, batch: int = 20_000) -> None:
        """Bring every tree up to its partition's end: once, for a log written before trees were
        kept (every append keeps them since); a no-op otherwise."""
        for (topic, p), end in self._ends.items():
            if not has_tree(topic):
                continue
            while (at := self.trees.state(topic, p).next_offset) < end:
                fold = self.trees.fold(topic, p)
                fold.extend((r.offset, r.key, r.timestamp, r.value) for r in self.read(topic, p, at, batch))
                wb = WriteBatch(raw_mode=True)
                for k, v in fold.writes().items():
                    wb.put(k, v)
                with self._lock:
                    self._write(wb)
                self.trees.commit({(topic, p): fold.state})

    def catch_up(self) -> None:
        """Secondary instances: see what the writing process has appended since."""
        if self._scratch is None:
            return
        try:
            self._db.try_catch_up_with_primary()
        except Exception as exc:
            raise map_error(exc, self.path) from exc
        self._load_ends()

    def _drop_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _load_topics(self) -> dict[str, int]:
        n = len(K.TOPIC_PREFIX)
        return {k[n:].decode(): K.U32.unpack(v)[0] for k, v in iter_prefix(self._db, K.TOPIC_PREFIX)}

    def _write(self, wb: WriteBatch) -> None:
        """Callers hold ``_lock`` (a recovery swaps the database)."""
        if self.read_only:
            raise LogError(f"{self.path} is open read-only")
        self._guard.write(self._db, wb, self._write_opts)

    @property
    def writable(self) -> bool:
        """False while the disk refuses this log's writes."""
        return self._guard.error is None

    def recover(self) -> None:
        """Probe the disk and reopen now (not waiting for the next write); raises while the
        fault holds."""
        with self._lock:
            self._guard.recover(force=True)

    def create_topics(self, partitions: Mapping[str, int]) -> None:
        with self._lock:
            wb = WriteBatch(raw_mode=True)
            for topic, n in partitions.items():
                have = self._topics.get(topic)
                if have is not None and have != n:
                    raise LogError(f"topic {topic} exists with {have} partitions, not {n}")
                if have is None:
                    if n < 1:
                        raise LogError(f"topic {topic} needs at least one partition")
                    wb.put(K.topic_key(topic), K.U32.pack(n))
            if not wb.is_empty():
                self._write(wb)
                self._topics = self._load_topics()
                for topic, n in self._topics.items():
                    for p in range(n):
                        self._ends.setdefault((topic, p), 0)
                self.trees.load(self._ends)

    def topics(self) -> dict[str, int]:
        return dict(self._topics)

    def partition_count(self, topic: str) -> int:  # once per appended record: no copy of topics()
        n = self._topics.get(topic)
        if n is None:
            raise LogError(f"unknown topic {topic!r}")
        return n

    def append(self, records: Sequence[Record], state: StateWrites | None = None) -> list[tuple[int, int]]:
        with self._lock:
            wb = WriteBatch(raw_mode=True)
            put, head, u64 = wb.put, _HEAD.pack, K.U64.pack
            ends: dict[TopicPartition, int] = {}
            prefixes: dict[TopicPartition, bytes] = {}
            leaves: dict[TopicPartition, list[tuple[int, bytes]] | None] = {}
            out = []
            for r in records:
                p = self.place(r)
                tp = (r.topic, p)
                off = ends.get(tp)
                if off is None:
                    off = self._ends[tp]
                    prefixes[tp] = K.record_prefix(r.topic, p)
                    leaves[tp] = [] if has_tree(r.topic) else None
                ends[tp] = off + 1
                put(prefixes[tp] + u64(off), head(r.timestamp, len(r.key)) + r.key + r.value)
                grows = leaves[tp]
                if grows is not None:
                    grows.append((off, leaf_of(r.key, r.timestamp, r.value) if r.leaf is None else r.leaf))
                out.append((p, off))
            for (topic, p), end in ends.items():
                wb.put(K.end_key(topic, p), K.U64.pack(end))
            grown: dict[TopicPartition, TreeState] = {}
            for (topic, p), grows in leaves.items():
                if grows:
                    fold = self.trees.fold(topic, p)
                    fold.extend_leaves(grows)
                    for node_key, node in fold.writes().items():
                        put(node_key, node)
                    grown[(topic, p)] = fold.state
            for k, v in (state or {}).items():
                if v is None:
                    wb.delete(K.STATE_PREFIX + k)
                else:
                    wb.put(K.STATE_PREFIX + k, v)
            if wb.is_empty():
                return out
            self._write(wb)
            self._ends.update(ends)
            self.trees.commit(grown)
            return out

    def _reading(self, read: Callable[[Rdict], _T]) -> _T:
        """``read(db)``, again on the new database if a recovery swapped it meanwhile (rocksdict
        raises DbClosedError, or RuntimeError while close() holds it): a reader never fails
        because the disk came back."""
        for _ in range(3):
            if self._closing:  # a recovery is swapping the database: wait for the new one
                with self._lock:
                    pass
            db = self._db
            try:
                return read(db)
            except (DbClosedError, RuntimeError) as exc:
                if isinstance(exc, RuntimeError) and not _borrowed(exc):
                    raise
                with self._lock:  # held by the recovery until the new database is in place
                    pass
        return read(self._db)

    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[LogRecord]:
        if (topic, partition) not in self._ends:
            raise LogError(f"unknown topic partition {topic}[{partition}]")
        if max_records <= 0:
            return []
        start = self._starts.get((topic, partition), 0)
        if offset < start:
            raise self._below_start(topic, partition, offset, start)
        return self._reading(lambda db: self._read(db, topic, partition, offset, max_records))

    def _read(self, db: Rdict, topic: str, partition: int, offset: int, max_records: int) -> list[LogRecord]:
        prefix = K.record_prefix(topic, partition)
        out: list[LogRecord] = []
        try:
            for key, val in iter_prefix(db, prefix, K.record_key(topic, partition, max(offset, 0))):
                ts, klen = _HEAD.unpack_from(val)
                start = _HEAD.size
                out.append(LogRecord(topic, partition, K.U64.unpack_from(key, len(prefix))[0],
                                     val[start:start + klen], val[start + klen:], ts))
                if len(out) >= max_records:
                    break
        except (DbClosedError, RuntimeError) as exc:
            if isinstance(exc, DbClosedError) or _borrowed(exc):
                raise  # swapped by a recovery: _reading reads again
            raise map_error(exc, self.path) from exc
        except Exception as exc:
            raise map_error(exc, self.path) from exc
        return out

    def end_offsets(self, topic: str) -> list[int]:
        n = self.partition_count(topic)
        return [self._ends[(topic, p)] for p in range(n)]

    # -- pruning --------------------------------------------------------------------------------
    def start_offsets(self, topic: str) -> list[int]:
        n = self.partition_count(topic)
        return [self._starts.get((topic, p), 0) for p in range(n)]

    def prune_point(self) -> PrunePoint | None:
        return self._prune

    def prune_refusal(self) -> str | None:
        return f"{self.path} is open read-only" if self.read_only else None

    def _pruned_leaves(self, topic: str, partition: int) -> tuple[int, int]:
        start = self._starts.get((topic, partition), 0)
        return start, start  # index = offset

    def _below_start(self, topic: str, partition: int, offset: int, start: int) -> Exception:
        what = f"offset {offset} of {topic}[{partition}] (the log starts at offset {start})"
        if self._prune is not None:
            return self._prune.error(what)
        return PrunedError(f"{what}: the log no longer holds it")

    def prune(self, point: PrunePoint, progress: Callable[[int], None] | None = None) -> None:
        """Store the leaf hashes of the records below ``point.starts``, then, in one synced
        write, the new start offsets and ``point`` with a range deletion of those records; then
        compact the deleted ranges so their space is reclaimed. Killed anywhere, the log is
        either as before (leaf hashes aside, which are only read below the start) or pruned."""
        if self.read_only:
            raise LogError(f"{self.path} is open read-only")
        todo: dict[TopicPartition, tuple[int, int]] = {}
        for tp, stop in point.starts.items():
            if tp not in self._ends:
                raise LogError(f"unknown topic partition {tp[0]}[{tp[1]}]")
            if stop > self._ends[tp]:
                raise LogError(f"cannot prune {tp[0]}[{tp[1]}] below offset {stop}: it ends at {self._ends[tp]}")
            have = self._starts.get(tp, 0)
            if stop > have:
                todo[tp] = (have, stop)
        for (topic, p), (lo, hi) in sorted(todo.items()):
            if has_tree(topic):
                self._store_leaves(topic, p, lo, hi, progress)
            elif progress is not None:
                progress(hi - lo)
        starts = {**self._starts, **{tp: hi for tp, (_lo, hi) in todo.items()}}
        point = replace(point, starts={tp: starts.get(tp, 0) for tp in point.starts},
                        leaves={tp: starts.get(tp, 0) for tp in point.starts if has_tree(tp[0])})
        wb = WriteBatch(raw_mode=True)
        for (topic, p), (_lo, hi) in todo.items():
            wb.put(K.log_start_key(topic, p), K.U64.pack(hi))
            wb.delete_range(K.record_key(topic, p, 0), K.record_key(topic, p, hi))
        wb.put(K.PRUNE_KEY, point.encode())
        with self._lock:
            if self.read_only:
                raise LogError(f"{self.path} is open read-only")
            self._guard.write(self._db, wb, write_options(True))
            self._starts = starts
            self._prune = point
        for (topic, p), (_lo, hi) in sorted(todo.items()):
            try:
                self._db.compact_range(K.record_key(topic, p, 0), K.record_key(topic, p, hi))
            except Exception as exc:
                raise map_error(exc, self.path) from exc

    def _store_leaves(self, topic: str, partition: int, lo: int, hi: int,
                      progress: Callable[[int], None] | None, batch: int = 20_000) -> None:
        """The leaf hash of every record of [lo, hi), a write per ``batch`` records."""
        if self.trees.state(topic, partition).next_offset < hi:
            raise LogError(f"{topic}[{partition}]: its Merkle tree ends before offset {hi}; cannot prune there")
        at = lo
        while at < hi:
            recs = self.read(topic, partition, at, min(batch, hi - at))
            if not recs or recs[0].offset != at:
                raise LogError(f"{topic}[{partition}]: offset {at} holds no record; cannot prune there")
            wb = WriteBatch(raw_mode=True)
            for r in recs:
                wb.put(*pruned_leaf(topic, partition, r.offset, r.offset, leaf_of(r.key, r.timestamp, r.value), True))
            with self._lock:
                self._write(wb)
            at = recs[-1].offset + 1
            if progress is not None:
                progress(len(recs))

    def commit_positions(self, group: str, positions: Mapping[TopicPartition, int]) -> None:
        wb = WriteBatch(raw_mode=True)
        for (topic, p), off in positions.items():
            wb.put(K.group_key(group, topic, p), K.U64.pack(off))
        with self._lock:
            self._write(wb)

    def positions(self, group: str) -> dict[TopicPartition, int]:
        prefix = K.group_prefix(group)
        out = {}
        for key, val in iter_prefix(self._db, prefix):
            out[K.split_topic_partition(key[len(prefix):])] = K.U64.unpack(val)[0]
        return out

    def state_get(self, key: bytes) -> bytes | None:
        full = K.STATE_PREFIX + key
        return self._read_now(lambda db: db.get(full))

    def state_get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """One RocksDB multi-get (a chunk's dedupe lookups cost one call, not one per line)."""
        full: list[Any] = [K.STATE_PREFIX + k for k in keys]
        return self._read_now(lambda db: cast("list[bytes | None]", db[full]))

    def _read_now(self, read: Callable[[Rdict], _T]) -> _T:
        """``read(db)`` on the current database without the ``_reading`` detour unless a recovery
        is closing it or swapped it meanwhile (the state reads of admission's hot path)."""
        if self._closing:
            return self._reading(read)
        try:
            return read(self._db)
        except (DbClosedError, RuntimeError):  # swapped by a recovery meanwhile: read the new one
            return self._reading(read)

    def state_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        n = len(K.STATE_PREFIX)
        for k, v in iter_prefix(self._db, K.STATE_PREFIX + prefix):
            yield k[n:], v

    def raw(self) -> Rdict:
        return self._db

    def checkpoint(self, dest: str) -> None:
        try:
            Checkpoint(self._db).create_checkpoint(dest)
        except Exception as exc:
            raise map_error(exc, self.path) from exc

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None  # type: ignore[assignment]
            self._guard.close()
            try:
                db.close()
            except Exception as exc:  # e.g. a full disk: the memtable cannot be flushed (the WAL holds it)
                raise map_error(exc, self.path) from exc
            finally:
                self._drop_scratch()
            return
        self._drop_scratch()
