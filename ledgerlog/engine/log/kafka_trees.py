"""The Kafka backend's Merkle trees (PROTOCOL.md §9), kept in the local state store beside the
broker (kafka_state.py, keys ``h/``, ``n/``, ``c/``) by following the log.

Leaves are a partition's committed data records in offset order, as a read_committed reader sees
them: transaction markers take offsets and are not leaves, so the store keeps each chunk's first
offset (``Trees(contiguous=False)``). Nothing but records read back, or this process's own
committed records at offsets the broker acknowledged, is ever folded, so a tree (and a head made
from it) covers committed records only. Three ways keep the trees up to the log:

- after each committed append (``appended``), per partition it wrote: when the tree ends with
  this process's previous append to that partition (checked against its records read back once)
  and the new records sit right after that append's commit marker (one offset) without a gap, no
  other record can lie between them, and they are folded as produced; otherwise (first append to
  a partition since the open, another writer's records or an aborted transaction in between)
  the partition is read back from the tree's next offset to the append's end and folded as read;
- on a writer's open (``catch_up``): every tree is brought to its partition's end (records whose
  tree write a crash lost, other writers' records, a state dir deleted: the trees are rebuilt
  from the log), and a tree past the end is refused;
- ``KafkaLog.catch_up_trees`` (the head publisher calls it before publishing) does the same.

Measured on Tansu (2 cores, ingest chunks of 1000 lines, ~3,400 records an append): folding as
produced costs ~20 ms an append (~5% of ingest), reading back every append ~35%.

Tree writes are not synced: the log is their source, and a tree the store lost is caught up on
open. A read-only open reads the stored trees and never writes: what ``catch_up_trees`` folds
there stays in memory."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import LedgerError
from ..logtree import Trees, TreeState, has_tree
from .base import LogRecord, Record, TopicPartition, ahead_error

if TYPE_CHECKING:
    from .kafka import KafkaLog
    from .kafka_state import LocalState

__all__ = ["KafkaTrees"]

_log = logging.getLogger("ledgerlog.kafka")
#: Records read and folded per store write while following a partition.
BATCH = 10_000


class KafkaTrees:
    """The trees of one Kafka log, in ``store`` (``writable``) or in memory over it (read-only)."""

    def __init__(self, log: KafkaLog, store: LocalState, *, writable: bool) -> None:
        self._log = log
        self._store = store
        self._overlay: dict[bytes, bytes] | None = None if writable else {}
        self.trees = Trees(self._get, log.read, contiguous=False, pruned=log.pruned_leaves)
        self._loaded: set[TopicPartition] = set()
        #: partitions whose tree ends with this process's own last append to them, verified: the
        #: tree's next offset then (where that transaction's commit marker lies)
        self._tail: dict[TopicPartition, int] = {}

    def _get(self, key: bytes) -> bytes | None:
        if self._overlay is not None and key in self._overlay:
            return self._overlay[key]
        return self._store.raw_get(key)

    def _commit(self, writes: Mapping[bytes, bytes], states: Mapping[TopicPartition, TreeState]) -> None:
        """Store the folds' writes, then make their states current."""
        if self._overlay is not None:
            self._overlay.update(writes)
        else:
            self._store.raw_put(writes)
        self.trees.commit(states)

    def load(self, partitions: dict[str, int]) -> None:
        """(Re)read the stored trees of every partition of ``partitions`` (topic -> count)."""
        tps = {(t, p) for t, n in partitions.items() if has_tree(t) for p in range(n)}
        self.trees.load(sorted(tps))
        self._loaded = tps

    def _ensure(self, tps: Sequence[TopicPartition]) -> None:
        """Load the trees when a partition is new to them (a topic created since)."""
        if any(tp not in self._loaded for tp in tps):
            self.load(self._log.topics())

    # -- following ----------------------------------------------------------------------------
    def appended(self, records: Sequence[Record], out: Sequence[tuple[int, int]]) -> None:
        """Fold a committed append (``out``: each record's partition and offset). A failure is
        logged, not raised: the append stands, and the trees are caught up later."""
        mine: dict[TopicPartition, list[tuple[int, Record]]] = {}
        for r, (p, off) in zip(records, out):
            if has_tree(r.topic):
                mine.setdefault((r.topic, p), []).append((off, r))
        if not mine:
            return
        try:
            self._ensure(list(mine))
            writes: dict[bytes, bytes] = {}
            states: dict[TopicPartition, TreeState] = {}
            for tp, recs in mine.items():
                nxt = self.trees.state(*tp).next_offset
                first, last = recs[0][0], recs[-1][0]
                if self._tail.get(tp) == nxt and first == nxt + 1 and last - first == len(recs) - 1:
                    fold = self.trees.fold(*tp)
                    for off, r in recs:
                        fold.add(off, r.key, r.timestamp, r.value)
                    writes.update(fold.writes())
                    states[tp] = fold.state
                    self._tail[tp] = last + 1
                else:
                    self._tail.pop(tp, None)
                    if self._follow(tp, last + 1, {off: r for off, r in recs}):
                        self._tail[tp] = last + 1
            if states:
                self._commit(writes, states)
        except LedgerError as exc:
            self._tail.clear()
            _log.warning("the Merkle trees did not follow an append (%s); they catch up later", exc)

    def _follow(self, tp: TopicPartition, end: int, mine: Mapping[int, Record] | None = None) -> bool:
        """Fold ``tp``'s records from its tree's next offset up to ``end``, a store write per
        batch. True when it reached ``end`` and every record of ``mine`` (offset -> what this
        process produced there) was read back as produced."""
        topic, p = tp
        matched = 0
        while (at := self.trees.state(topic, p).next_offset) < end:
            recs = [r for r in self._log.read(topic, p, at, min(end - at, BATCH)) if r.offset < end]
            if not recs:
                break  # nothing more is readable (yet)
            fold = self.trees.fold(topic, p)
            for rec in recs:
                fold.add(rec.offset, rec.key, rec.timestamp, rec.value)
                if mine is not None and rec.offset in mine:
                    matched += _same(mine[rec.offset], rec)
            self._commit(fold.writes(), {tp: fold.state})
        return mine is not None and matched == len(mine) and self.trees.state(topic, p).next_offset == end

    def catch_up(self, ends: Mapping[str, Sequence[int]], *, check_ahead: bool) -> None:
        """Bring every tree to its partition's end (``ends``: topic -> end offsets). With
        ``check_ahead``, a tree past the end (a cluster that lost records, or another cluster)
        is refused, as the write-side state is."""
        self._ensure([(t, p) for t, e in ends.items() if has_tree(t) for p in range(len(e))])
        ahead = [(t, p, st.next_offset, e[p]) for t, e in sorted(ends.items()) if has_tree(t)
                 for p in range(len(e)) if (st := self.trees.state(t, p)).next_offset > e[p]]
        if ahead and check_ahead:
            raise ahead_error("the Merkle trees kept beside this node (<data_dir>/state)", ahead,
                              "point [kafka] at the cluster this node wrote to, or move <data_dir>/state "
                              "aside so the node rebuilds it from the log")
        for topic, e in sorted(ends.items()):
            if has_tree(topic):
                for p, end in enumerate(e):
                    if self.trees.state(topic, p).next_offset < end:
                        self._tail.pop((topic, p), None)
                        self._follow((topic, p), end)


def _same(produced: Record, read: LogRecord) -> bool:
    """Did the broker keep the record as produced (key, timestamp, value: what a leaf hashes)?"""
    return (produced.key, produced.timestamp, produced.value) == (read.key, read.timestamp, read.value)
