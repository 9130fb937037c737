"""The Kafka log backend (confluent-kafka / librdkafka), for any Kafka-protocol broker.

- Topics are created by an AdminClient with their configs set explicitly (retention.ms=-1: the
  log is the source of truth and is never expired); ``ledgerlog.topic_prefix`` is prepended to
  every topic and group name on the broker and stripped again, so several chains (or tests) can
  share a cluster.
- ``append`` is one broker transaction per call (acks=all, idempotence, ``transactional.id``):
  all its records become visible together or not at all; a second admitting node with the same
  transactional id fences the first. Records are placed by ``Log.place`` (murmur2, as on the
  embedded log) and produced to that explicit partition. Nothing is sent before every record is
  known to be placeable, so a bad record fails the append without a transaction.
- ``read`` assigns one reused read_committed consumer (no group) to the partition and drains it
  in batches; a read continuing where the previous one stopped keeps the prefetch. Offsets have
  gaps (``contiguous_offsets = False``): every transaction leaves a commit marker that takes an
  offset. ``end_offsets`` is therefore not the high watermark but the offset after the last
  readable record, so ``position >= end`` still means "read it all" (no phantom lag).
- Timestamps > 0 travel as the Kafka record timestamp; others (0 and negative, which Kafka
  cannot carry) in a ``ledgerlog.ts`` header.
- Consumer-group positions are committed and listed without joining the group (no rebalance,
  none of Tansu's join delay).
- Write-side state (``ledgerlog.state_dir``): a local RocksDB holding the admission state and
  the log positions it reflects. ``append(records, state)`` commits the transaction first, then
  state + positions in one WriteBatch (synced per ``sync``); a crash between the two leaves
  records beyond the stored positions, which ``state_fold.catch_up`` folds in on the next open.
  A failure that may leave records readable without their state (an unknown transaction
  outcome, or aborted records a broker still shows) refuses further appends until reopened.
- Merkle trees (PROTOCOL.md §9, kafka_trees.py): kept in the same local store, by following
  the log: folded after each committed append, caught up on open and by ``catch_up_trees``.
  Without a state dir the log keeps none (``trees`` is None).
- ``read_only``: no producer is ever created (so no transactional id is fenced), the state store
  is opened read-only, and writes raise LogError.

Broker quirks handled (Tansu 0.6): ListOffsets answers the last batch's base offset + 1 (wrong
after a multi-record non-transactional batch; right for ours, whose last batch is a marker) and
0 for read_committed while a transaction is open; fetches are held for fetch.wait.max.ms even
with data at hand; aborted transactional records stay visible to read_committed readers. Ends
are therefore confirmed by reading the tail up to the partition's EOF whenever the listed offset
moved or cannot be trusted.

Configuration: ``KafkaLog(config)`` with a ``KafkaConfig`` (kafka_config.py: brokers, TLS, SASL,
other librdkafka settings and this backend's options), or ``KafkaLog(bootstrap, **table)`` with
a ``[kafka]`` table's keys. The parts: kafka_client.py (shared plumbing), kafka_topics.py
(admin: topics, end offsets, group positions), kafka_produce.py (transactions), kafka_read.py
(reading, end offsets, the read_uncommitted probe), kafka_state.py (the local state store),
kafka_trees.py (the trees kept in it), kafka_prune.py (DeleteRecords, only where enabled; a
partition's start is the broker's low watermark).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

from ..errors import LedgerError, LogError
from ..logtree import has_tree
from ..prunepoint import PrunePoint
from .base import Log, LogRecord, Record, StateWrites, TopicPartition
from .kafka_client import Broker
from .kafka_config import KafkaConfig
from .kafka_produce import Transactions
from .kafka_prune import KafkaPrune
from .kafka_read import TS_HEADER, Reader
from .kafka_state import STATE_FORMAT, LocalState
from .kafka_topics import TOPIC_CONFIG, Topics
from .kafka_trees import KafkaTrees

__all__ = ["STATE_FORMAT", "TOPIC_CONFIG", "TS_HEADER", "KafkaConfig", "KafkaLog"]


class KafkaLog(Log):
    """The log on Kafka-protocol brokers (see the module docstring)."""

    atomic_state = False
    contiguous_offsets = False

    def __init__(self, config: KafkaConfig | str, *, read_only: bool = False, sync: bool = True,
                 **table: str) -> None:
        """``config``: the connection config, or the brokers (``host:port[,...]``) with the
        ``[kafka]`` table's keys in ``table``."""
        if isinstance(config, str):
            config = KafkaConfig.from_table(config, table)
        elif table:
            raise TypeError("KafkaLog(config) takes no further settings: set them on the KafkaConfig")
        if not config.bootstrap:
            raise LogError("kafka:// needs HOST:PORT[,HOST:PORT]")
        self.config = config
        self.bootstrap = config.bootstrap
        self.read_only = read_only
        self.prefix = config.topic_prefix
        self.state_dir = config.state_dir
        self.transactional_id = config.resolved_transactional_id
        self._broker = Broker(config)
        self._write_lock = threading.Lock()   # appends, state writes
        self._state: LocalState | None = None
        self._topics = Topics(self._broker)
        self._reader = Reader(self._broker, self._topics)
        self._tx = Transactions(self._broker, self._reader.read)
        self._trees: KafkaTrees | None = None
        if self.state_dir:
            try:
                self._state = LocalState(self.state_dir, read_only=read_only, sync=sync)
            except LedgerError:
                if not read_only:
                    raise
        self._prune = KafkaPrune(self, self._topics, self._state)
        try:
            topics = self._topics.fetch()
            if self._state is not None:
                self._trees = KafkaTrees(self, self._state, writable=not read_only)
                self._trees.load(topics)
                self.trees = self._trees.trees
            if not read_only and self._state is not None:
                # an admitting chain: fence an earlier producer of this transactional id first, so
                # a transaction it left open (a crash, an outage) is aborted before the state and
                # the trees are caught up from the log; else records it shows later are appended
                # a second time
                self._tx.get_producer()
                self._catch_up_trees(check_ahead=True)
        except BaseException:
            self.close()
            raise

    def _writable(self) -> None:
        if self.read_only:
            raise LogError(f"kafka log {self.bootstrap} is open read-only")

    # -- topics -----------------------------------------------------------------------------
    def topics(self) -> dict[str, int]:
        return self._topics.fetch()

    def partition_count(self, topic: str) -> int:
        return self._topics.partition_count(topic)

    def create_topics(self, partitions: Mapping[str, int]) -> None:
        self._writable()
        self._topics.create(partitions)
        if self._trees is not None:
            with self._write_lock:
                self._trees.load(self._topics.fetch())

    # -- append -------------------------------------------------------------------------------
    def append(self, records: Sequence[Record], state: StateWrites | None = None) -> list[tuple[int, int]]:
        self._writable()
        if state:
            self._local_state()
        placed = [self.place(r) for r in records]  # every record is valid before anything is sent
        with self._write_lock:
            if self._tx.poisoned:
                raise LogError(self._tx.poisoned)
            out = self._tx.append(records, placed) if records else []
            ends: dict[TopicPartition, int] = {}
            for r, (p, off) in zip(records, out):
                ends[(r.topic, p)] = max(ends.get((r.topic, p), 0), off + 1)
            self._reader.appended(ends)
            if state is not None and self._state is not None:
                try:
                    self._write_state(state, ends)
                except LedgerError as exc:
                    self._tx.poisoned = (f"the write-side state could not be written after a committed "
                                         f"append ({exc}); reopen the chain to catch it up from the log")
                    raise
            if self._trees is not None and out:
                self._trees.appended(records, out)
            return out

    @property
    def writable(self) -> bool:
        """False once a failed transaction made this log refuse appends until reopened (or ``recover``)."""
        return self._tx.poisoned is None

    def recover(self) -> None:
        """After an append of unknown outcome: what a reopen does, in place. A new producer (its
        transactions' start fences the old one and aborts what it left open) and the trees caught
        up from the log; the caller then catches the write-side state up (``state_fold.catch_up``).
        LogError while the broker cannot be reached (appends stay refused)."""
        with self._write_lock:
            if self._tx.poisoned is None:
                return
            self._tx.producer = None
            self._tx.get_producer()
        self._catch_up_trees(check_ahead=True)
        with self._write_lock:
            self._tx.poisoned = None

    # -- Merkle trees (kafka_trees.py) --------------------------------------------------------
    def catch_up_trees(self) -> None:
        """Fold what the log holds beyond the trees (another writer's records; an append whose
        tree upkeep failed); the head publisher calls it before publishing."""
        self._catch_up_trees(check_ahead=False)

    def _catch_up_trees(self, *, check_ahead: bool) -> None:
        if self._trees is None:
            return
        ends = {t: self.end_offsets(t) for t in self.topics() if has_tree(t)}  # outside the lock
        with self._write_lock:
            self._trees.catch_up(ends, check_ahead=check_ahead)

    # -- write-side state (kafka_state.py) ----------------------------------------------------
    @property
    def keeps_state(self) -> bool:
        return self._state is not None

    def _local_state(self) -> LocalState:
        if self._state is None:
            raise LogError("this kafka log keeps no write-side state (no ledgerlog.state_dir)")
        return self._state

    def _write_state(self, state: StateWrites, positions: Mapping[TopicPartition, int]) -> None:
        """State changes and the positions they reflect, in one local write."""
        self._local_state().write(state, positions)

    def commit_state(self, state: StateWrites, positions: Mapping[TopicPartition, int]) -> None:
        self._writable()
        self._local_state()
        with self._write_lock:
            self._write_state(state, positions)

    def state_positions(self) -> dict[TopicPartition, int]:
        return self._local_state().positions()

    def state_get(self, key: bytes) -> bytes | None:
        if self._state is None:
            return super().state_get(key)
        return self._state.get(key)

    def state_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        if self._state is None:
            yield from super().state_items(prefix)
            return
        yield from self._state.items(prefix)

    # -- reading ------------------------------------------------------------------------------
    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[LogRecord]:
        self._prune.check_read(topic, partition, offset)
        return self._reader.read(topic, partition, offset, max_records)

    # -- pruning (kafka_prune.py) -------------------------------------------------------------
    def start_offsets(self, topic: str) -> list[int]:
        """The broker's low watermarks (past the prune point this node recorded)."""
        return self._prune.start_offsets(topic)

    def prune_point(self) -> PrunePoint | None:
        return self._prune.point

    def prune_refusal(self) -> str | None:
        return self._prune.refusal()

    def pruned_leaves(self, topic: str, partition: int) -> tuple[int, int]:
        """(leaves below the start, the start offset) of a partition (the trees read the stored
        hashes of those leaves)."""
        return self._prune.pruned_leaves(topic, partition)

    def prune(self, point: PrunePoint, progress: Callable[[int], None] | None = None) -> None:
        with self._write_lock:
            self._prune.prune(point, progress)

    def end_offsets(self, topic: str) -> list[int]:
        return self._reader.end_offsets(topic)

    def uncommitted_offsets(self, topic: str, partition: int, start: int, stop: int) -> list[int]:
        return self._reader.uncommitted_offsets(topic, partition, start, stop)

    # -- consumer groups ----------------------------------------------------------------------
    def commit_positions(self, group: str, positions: Mapping[TopicPartition, int]) -> None:
        """Commit a group's offsets without joining it (no rebalance, no Tansu join delay)."""
        self._writable()
        self._topics.commit_positions(group, positions)

    def positions(self, group: str) -> dict[TopicPartition, int]:
        return self._topics.positions(group)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        self._tx.close()
        self._reader.close()
        self._topics.close()
        self._trees = None
        if self._state is not None:
            self._state.close()
            self._state = None
