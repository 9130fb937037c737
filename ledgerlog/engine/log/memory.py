"""In-memory log for tests: same contract as the embedded backend, nothing on disk."""
from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence

from ..errors import LogError
from ..logtree import TreeFold, Trees, has_tree
from .base import Log, LogRecord, Record, StateWrites, TopicPartition

__all__ = ["MemoryLog"]


class MemoryLog(Log):
    """Topics as lists in memory, for tests."""

    atomic_state = True
    ends_are_local = True
    trees: Trees

    def __init__(self) -> None:
        self._parts: dict[str, list[list[LogRecord]]] = {}
        self._groups: dict[str, dict[TopicPartition, int]] = {}
        self._state: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._tree_store: dict[bytes, bytes] = {}
        self.trees = Trees(self._tree_store.get, self.read, contiguous=True)

    def create_topics(self, partitions: Mapping[str, int]) -> None:
        with self._lock:
            for topic, n in partitions.items():
                have = self._parts.get(topic)
                if have is not None and len(have) != n:
                    raise LogError(f"topic {topic} exists with {len(have)} partitions, not {n}")
                if have is None:
                    if n < 1:
                        raise LogError(f"topic {topic} needs at least one partition")
                    self._parts[topic] = [[] for _ in range(n)]
            self.trees.load((t, p) for t, parts in self._parts.items() for p in range(len(parts)))

    def topics(self) -> dict[str, int]:
        return {t: len(p) for t, p in self._parts.items()}

    def append(self, records: Sequence[Record], state: StateWrites | None = None) -> list[tuple[int, int]]:
        with self._lock:
            placed = [(r, self.place(r)) for r in records]  # validate all before changing anything
            ends: dict[TopicPartition, int] = {}
            out = []
            for r, p in placed:
                off = ends.get((r.topic, p), len(self._parts[r.topic][p]))
                ends[(r.topic, p)] = off + 1
                out.append((p, off))
            folds: dict[TopicPartition, TreeFold] = {}
            for (r, p), (_, off) in zip(placed, out):
                self._parts[r.topic][p].append(LogRecord(r.topic, p, off, r.key, r.value, r.timestamp))
                if has_tree(r.topic):
                    fold = folds.get((r.topic, p)) or folds.setdefault((r.topic, p), self.trees.fold(r.topic, p))
                    fold.add(off, r.key, r.timestamp, r.value)
            for fold in folds.values():
                self._tree_store.update(fold.writes())
            self.trees.commit({tp: fold.state for tp, fold in folds.items()})
            for k, v in (state or {}).items():
                if v is None:
                    self._state.pop(k, None)
                else:
                    self._state[k] = v
            return out

    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[LogRecord]:
        parts = self._parts.get(topic)
        if parts is None or not 0 <= partition < len(parts):
            raise LogError(f"unknown topic partition {topic}[{partition}]")
        start = max(offset, 0)
        return parts[partition][start:start + max(max_records, 0)]

    def end_offsets(self, topic: str) -> list[int]:
        if topic not in self._parts:
            raise LogError(f"unknown topic {topic!r}")
        return [len(p) for p in self._parts[topic]]

    def commit_positions(self, group: str, positions: Mapping[TopicPartition, int]) -> None:
        with self._lock:
            self._groups.setdefault(group, {}).update(positions)

    def positions(self, group: str) -> dict[TopicPartition, int]:
        return dict(self._groups.get(group, {}))

    def state_get(self, key: bytes) -> bytes | None:
        return self._state.get(key)

    def state_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k in sorted(k for k in self._state if k.startswith(prefix)):
            yield k, self._state[k]
