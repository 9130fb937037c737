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
- ``read_only``: no producer is ever created (so no transactional id is fenced), the state store
  is opened read-only, and writes raise LogError.

Broker quirks handled (Tansu 0.6): ListOffsets answers the last batch's base offset + 1 (wrong
after a multi-record non-transactional batch; right for ours, whose last batch is a marker) and
0 for read_committed while a transaction is open; fetches are held for fetch.wait.max.ms even
with data at hand; aborted transactional records stay visible to read_committed readers. Ends
are therefore confirmed by reading the tail up to the partition's EOF whenever the listed offset
moved or cannot be trusted.

Configuration: ``KafkaLog(bootstrap, **conf)``; keys ``ledgerlog.*`` are this backend's
(``topic_prefix``, ``replication``, ``transactional.id``, ``state_dir``, ``chain``,
``timeout.ms``, ``retries``), ``producer.X``/``consumer.X``/``admin.X`` go to one client only,
anything else is a librdkafka setting for every client (e.g. security settings).
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KTP
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from ..errors import ConfigError, LedgerError, LogError
from .base import Log, LogRecord, Record, StateWrites, TopicPartition
from .kafka_state import STATE_FORMAT, LocalState

__all__ = ["STATE_FORMAT", "TOPIC_CONFIG", "TS_HEADER", "KafkaLog"]

_log = logging.getLogger("ledgerlog.kafka")
T = TypeVar("T")

#: Set explicitly on every topic created (Tansu reports only configs that were set explicitly).
TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete",
                "message.timestamp.type": "CreateTime"}
TS_HEADER = "ledgerlog.ts"
_I64 = struct.Struct(">q")
_PROBE_WINDOW = 16
_READ_BATCH = 10_000
_TRANSIENT = {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
              KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_COORDINATOR,
              KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
              KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
              KafkaError.CONCURRENT_TRANSACTIONS, KafkaError._WAIT_COORD}


def _kerr(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return True
    err = _kerr(exc)
    return err is not None and not err.fatal() and (err.retriable() or err.code() in _TRANSIENT)


def _timestamp(msg: Message, headers: list[tuple[str, bytes | None]]) -> int:
    for name, val in headers:
        if name == TS_HEADER and val is not None and len(val) == 8:
            return _I64.unpack(val)[0]
    return msg.timestamp()[1]


class _AppendFailed(Exception):
    pass


class KafkaLog(Log):
    atomic_state = False
    contiguous_offsets = False

    def __init__(self, bootstrap: str, *, read_only: bool = False, sync: bool = True, **conf: str) -> None:
        if not bootstrap:
            raise LogError("kafka:// needs HOST:PORT[,HOST:PORT]")
        own = {k[len("ledgerlog."):]: str(v) for k, v in conf.items() if k.startswith("ledgerlog.")}
        common: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _log,
                                  "error_cb": self._on_error}
        scoped: dict[str, dict[str, Any]] = {"producer": {}, "consumer": {}, "admin": {}}
        for k, v in conf.items():
            if k.startswith("ledgerlog."):
                continue
            head, _, rest = k.partition(".")
            if head in scoped and rest:
                scoped[head][rest] = v
            else:
                common[k] = v
        self.bootstrap = bootstrap
        self.read_only = read_only
        self.prefix = own.get("topic_prefix", "")
        try:
            self.replication = int(own.get("replication", "1"))
            self.timeout = int(own.get("timeout.ms", "15000")) / 1000.0
            self.retries = max(1, int(own.get("retries", "4")))
        except ValueError as exc:
            raise ConfigError(f"[kafka] ledgerlog.replication, timeout.ms and retries are integers: {exc}") from exc
        self.state_dir = own.get("state_dir") or None
        # one admitting node per chain: the transactional id names the chain (genesis hash) when
        # known, so a second node on the same chain fences the first
        basis = own.get("chain") or (os.path.abspath(self.state_dir) if self.state_dir else bootstrap)
        self.transactional_id = own.get("transactional.id") or (
            f"ledgerlog-{self.prefix}{hashlib.blake2b(basis.encode(), digest_size=8).hexdigest()}")
        self._common, self._scoped = common, scoped
        self._last_error: str | None = None
        self._admin = AdminClient({**common, **scoped["admin"]})
        self._producer: Producer | None = None
        self._reader: Consumer | None = None
        self._reader_topics: set[str] = set()
        self._groups: dict[str, Consumer] = {}
        self._write_lock = threading.Lock()   # appends, state writes
        self._read_lock = threading.Lock()    # the reader consumer
        self._ends_lock = threading.Lock()    # the end cache
        self._ends: dict[TopicPartition, tuple[int | None, int]] = {}  # -> (listed offset, end)
        self._assigned: tuple[TopicPartition, int] | None = None     # reader at (tp, next offset)
        self._poisoned: str | None = None
        self._topics: dict[str, int] = {}
        self._state: LocalState | None = None
        if self.state_dir:
            try:
                self._state = LocalState(self.state_dir, read_only=read_only, sync=sync)
            except LedgerError:
                if not read_only:
                    raise
        try:
            self._topics = self._fetch_topics()
            if not read_only and self._state is not None:
                # an admitting chain: fence an earlier producer of this transactional id first, so
                # a transaction it left open (a crash, an outage) is aborted before the state is
                # caught up from the log; else records it shows later are appended a second time
                self._get_producer()
        except BaseException:
            self.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------
    def _on_error(self, err: KafkaError) -> None:
        self._last_error = str(err)
        if err.fatal():
            _log.error("kafka fatal error: %s", err)

    def _real(self, topic: str) -> str:
        return self.prefix + topic

    def _fail(self, what: str, exc: BaseException) -> LogError:
        extra = f" (last client error: {self._last_error})" if self._last_error else ""
        return LogError(f"kafka {self.bootstrap}: {what}: {exc}{extra}")

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` with bounded retries and backoff on transient broker errors."""
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.retries) | stop_after_delay(self.timeout),
                                    reraise=True,
                                    wait=wait_exponential(multiplier=0.1, max=2.0),
                                    retry=retry_if_exception(_transient)):
                with attempt:
                    return fn()
        except LogError:
            raise
        except (KafkaException, TimeoutError, RuntimeError, ValueError, TypeError) as exc:
            raise self._fail(what, exc) from exc
        raise AssertionError("unreachable")

    def _writable(self) -> None:
        if self.read_only:
            raise LogError(f"kafka log {self.bootstrap} is open read-only")

    # -- topics -----------------------------------------------------------------------------
    def _fetch_topics(self) -> dict[str, int]:
        def fetch() -> dict[str, int]:
            md = self._admin.list_topics(timeout=self.timeout)
            out = {}
            for name, t in md.topics.items():
                if name.startswith("__") or not name.startswith(self.prefix) or t.error is not None:
                    continue
                if len(name) > len(self.prefix):
                    out[name[len(self.prefix):]] = len(t.partitions)
            return out
        return self._retry("listing topics", fetch)

    def topics(self) -> dict[str, int]:
        self._topics = self._fetch_topics()
        return dict(self._topics)

    def partition_count(self, topic: str) -> int:
        n = self._topics.get(topic)
        if n is None:
            self._topics = self._fetch_topics()
            n = self._topics.get(topic)
            if n is None:
                raise LogError(f"unknown topic {topic!r}")
        return n

    def create_topics(self, partitions: Mapping[str, int]) -> None:
        self._writable()
        for topic, n in partitions.items():
            if n < 1:
                raise LogError(f"topic {topic} needs at least one partition")
        have = self.topics()
        for topic, n in partitions.items():
            if topic in have and have[topic] != n:
                raise LogError(f"topic {topic} exists with {have[topic]} partitions, not {n}")
        missing = {t: n for t, n in partitions.items() if t not in have}
        if not missing:
            return
        new = [NewTopic(self._real(t), num_partitions=n, replication_factor=self.replication,
                        config=dict(TOPIC_CONFIG)) for t, n in missing.items()]
        futures = self._retry("creating topics", lambda: self._admin.create_topics(
            new, operation_timeout=self.timeout, request_timeout=self.timeout))
        for real, fut in futures.items():
            try:
                fut.result(timeout=self.timeout)
            except KafkaException as exc:
                err = _kerr(exc)
                if err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise self._fail(f"creating topic {real}", exc) from exc
        deadline = time.monotonic() + self.timeout
        while True:  # metadata may lag the creation
            have = self.topics()
            if all(have.get(t) == n for t, n in missing.items()):
                return
            wrong = {t: have[t] for t, n in missing.items() if t in have and have[t] != n}
            if wrong:
                raise LogError(f"topics exist with other partition counts: {wrong}")
            if time.monotonic() > deadline:
                raise LogError(f"kafka {self.bootstrap}: topics {sorted(missing)} not in the metadata "
                               f"after {self.timeout:.0f} s")
            time.sleep(0.05)

    # -- append -------------------------------------------------------------------------------
    def _get_producer(self) -> Producer:
        if self._producer is None:
            conf = {**self._common, "transactional.id": self.transactional_id, "acks": "all",
                    "enable.idempotence": True, "partitioner": "murmur2_random", "linger.ms": 5,
                    "transaction.timeout.ms": max(60_000, int(self.timeout * 2000)),
                    **self._scoped["producer"]}
            try:
                producer = Producer(conf)
            except (KafkaException, ValueError, TypeError) as exc:
                raise self._fail("creating the producer", exc) from exc
            self._retry("initialising transactions", lambda: producer.init_transactions(self.timeout))
            self._producer = producer
        return self._producer

    def append(self, records: Sequence[Record], state: StateWrites | None = None) -> list[tuple[int, int]]:
        self._writable()
        if state:
            self._local_state()
        placed = [self.place(r) for r in records]  # every record is valid before anything is sent
        with self._write_lock:
            if self._poisoned:
                raise LogError(self._poisoned)
            out = self._transaction(records, placed) if records else []
            ends: dict[TopicPartition, int] = {}
            for r, (p, off) in zip(records, out):
                ends[(r.topic, p)] = max(ends.get((r.topic, p), 0), off + 1)
            with self._ends_lock:
                for tp, end in ends.items():  # the commit marker follows the last record
                    self._remember_end(tp, end + 1, end)
            if state is not None and self._state is not None:
                try:
                    self._write_state(state, ends)
                except LedgerError as exc:
                    self._poisoned = (f"the write-side state could not be written after a committed "
                                      f"append ({exc}); reopen the chain to catch it up from the log")
                    raise
            return out

    def _transaction(self, records: Sequence[Record], placed: list[int]) -> list[tuple[int, int]]:
        producer = self._get_producer()
        got: dict[tuple[str, int], list[int]] = {}  # (real topic, partition) -> delivered offsets
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                got.setdefault((msg.topic(), msg.partition()), []).append(msg.offset())

        began = False
        produce = producer.produce
        real = {t: self._real(t) for t in {r.topic for r in records}}
        try:
            producer.begin_transaction()
            began = True
            for r, p in zip(records, placed):
                kw: dict[str, Any] = {"timestamp": r.timestamp} if r.timestamp > 0 else \
                    {"headers": [(TS_HEADER, _I64.pack(r.timestamp))]}
                while True:
                    try:
                        produce(real[r.topic], r.value, r.key, p, on_delivery, **kw)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        producer.poll(0.05)
            left = producer.flush(self.timeout)
            if left or errors or sum(map(len, got.values())) != len(records):
                raise _AppendFailed(f"{left} records undelivered; errors: {errors[:3]}")
            self._retry("committing the transaction", lambda: producer.commit_transaction(self.timeout))
        except (KafkaException, _AppendFailed, LogError, BufferError) as exc:
            if began:
                self._after_failure(producer, got, exc)
            else:
                self._drop_producer()
            if isinstance(exc, LogError):
                raise
            raise self._fail("append failed", exc) from exc
        # a partition's records are delivered in produce order (idempotent producer); their
        # offsets, sorted, are the records' offsets in the order they were produced
        cursor = {tp: iter(sorted(offs)) for tp, offs in got.items()}
        return [(p, next(cursor[(real[r.topic], p)])) for r, p in zip(records, placed)]

    def _drop_producer(self) -> None:
        self._producer = None  # librdkafka releases it when collected

    def _after_failure(self, producer: Producer, got: Mapping[tuple[str, int], list[int]],
                       exc: BaseException) -> None:
        """Abort what can be aborted; when the outcome is unknown or the broker shows aborted
        records to read_committed readers (Tansu 0.6 does), refuse further appends until the
        chain is reopened and the state caught up from the log."""
        try:
            producer.abort_transaction(self.timeout)
        except KafkaException as abort_exc:
            self._drop_producer()
            self._poisoned = (f"a transaction failed ({exc}) and could not be aborted ({abort_exc}); "
                              "its records may be on the log: reopen the chain to catch up from it")
            return
        for (real, p), offs in got.items():
            if not offs or not real.startswith(self.prefix):
                continue
            try:
                visible = any(x.offset == offs[0] for x in self.read(real[len(self.prefix):], p, offs[0], 1))
            except LogError:
                visible = True
            if visible:
                self._poisoned = (f"an aborted transaction's records are visible to read_committed "
                                  f"readers on this broker ({exc}); reopen the chain to catch up")
            break

    # -- write-side state (engine/log/kafka_state.py) ---------------------------------------
    @property
    def keeps_state(self) -> bool:  # type: ignore[override]
        return self._state is not None

    def _local_state(self) -> LocalState:
        if self._state is None:
            raise LogError("this kafka log keeps no write-side state (no ledgerlog.state_dir)")
        return self._state

    def _write_state(self, state: StateWrites, positions: Mapping[TopicPartition, int]) -> None:
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
    def _get_reader(self) -> Consumer:
        if self._reader is None:
            conf = {**self._common, "group.id": f"ledgerlog-reader-{uuid.uuid4().hex[:12]}",
                    "isolation.level": "read_committed", "enable.auto.commit": False,
                    "enable.partition.eof": True, "auto.offset.reset": "error",
                    # Tansu holds every fetch for fetch.wait.max.ms, even with data at hand; and
                    # librdkafka pauses a full queue's fetching for fetch.queue.backoff.ms (1 s)
                    "fetch.wait.max.ms": 2, "fetch.queue.backoff.ms": 5,
                    **self._scoped["consumer"]}
            try:
                self._reader = Consumer(conf)
            except (KafkaException, ValueError, TypeError) as exc:
                raise self._fail("creating the consumer", exc) from exc
        return self._reader

    def _check_partition(self, topic: str, partition: int) -> None:
        if not 0 <= partition < self.partition_count(topic):
            raise LogError(f"unknown topic partition {topic}[{partition}]")

    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[LogRecord]:
        self._check_partition(topic, partition)
        if max_records <= 0:
            return []
        tp = (topic, partition)
        offset = max(offset, 0)
        end = self._cached_end(tp)
        if offset >= end:
            end = self.end_offsets(topic)[partition]
            if offset >= end:
                return []
        with self._read_lock:
            out, _eof = self._fetch(tp, offset, max_records, end)
        if out:
            with self._ends_lock:
                self._remember_end(tp, None, out[-1].offset + 1)
        return out

    def _fetch(self, tp: TopicPartition, offset: int, max_records: int,
               stop_at: int | None) -> tuple[list[LogRecord], int | None]:
        """Records of ``tp`` from ``offset`` until ``max_records``, the partition's end (EOF, whose
        offset is returned) or a record at or past ``stop_at``-1 (nothing readable lies beyond)."""
        topic, partition = tp
        real = self._real(topic)
        c = self._get_reader()
        if self._assigned != (tp, offset):
            try:
                if real not in self._reader_topics:
                    # librdkafka waits ~1 s for a topic's metadata on its first assign; asking first
                    # takes a millisecond
                    c.list_topics(real, timeout=self.timeout)
                    self._reader_topics.add(real)
                c.assign([KTP(real, partition, offset)])
            except KafkaException as exc:
                raise self._fail(f"assigning {topic}[{partition}]", exc) from exc
        self._assigned = None
        out: list[LogRecord] = []
        append = out.append
        eof: int | None = None
        deadline = time.monotonic() + self.timeout
        while len(out) < max_records:
            try:
                msgs = c.consume(min(max_records - len(out), _READ_BATCH), 0)
                if not msgs:
                    m = c.poll(0.1)
                    if m is None:
                        if time.monotonic() > deadline:
                            raise self._fail(f"reading {topic}[{partition}] at {offset}",
                                             TimeoutError(f"no answer within {self.timeout:.0f} s"))
                        continue
                    msgs = [m]
            except KafkaException as exc:
                raise self._fail(f"reading {topic}[{partition}]", exc) from exc
            deadline = time.monotonic() + self.timeout
            for m in msgs:
                if m.error() is None:
                    off = m.offset()
                    if off < offset or m.partition() != partition or m.topic() != real:
                        continue  # left over from an earlier assignment
                    hdrs = m.headers()
                    append(LogRecord(topic, partition, off, m.key() or b"", m.value() or b"",
                                     m.timestamp()[1] if hdrs is None else _timestamp(m, hdrs)))
                    offset = off + 1
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    if m.partition() == partition and m.topic() == real:
                        eof = m.offset()
                else:
                    raise LogError(f"kafka {self.bootstrap}: reading {topic}[{partition}]: {m.error()}")
            if eof is not None or (stop_at is not None and offset >= stop_at):
                break
        if len(out) >= max_records and eof is None:
            self._assigned = (tp, offset)  # the next read likely continues here: keep the prefetch
        else:
            try:
                c.unassign()
            except KafkaException:
                pass
        return out, eof

    def uncommitted_offsets(self, topic: str, partition: int, start: int, stop: int) -> list[int]:
        """Offsets of the data records in [start, stop) as a read_uncommitted reader sees them:
        committed, aborted and open transactions' records alike; only control records
        (transaction markers) stay unseen. ``verify`` asks this about gaps between the records a
        read_committed reader saw."""
        self._check_partition(topic, partition)
        if stop <= start:
            return []
        real = self._real(topic)
        conf = {**self._common, "group.id": f"ledgerlog-probe-{uuid.uuid4().hex[:12]}",
                "isolation.level": "read_uncommitted", "enable.auto.commit": False,
                "enable.partition.eof": True, "auto.offset.reset": "error", "fetch.wait.max.ms": 2,
                **self._scoped["consumer"]}
        try:
            c = Consumer(conf)
        except (KafkaException, ValueError, TypeError) as exc:
            raise self._fail("creating the consumer", exc) from exc
        out: list[int] = []
        try:
            c.assign([KTP(real, partition, max(start, 0))])
            deadline = time.monotonic() + self.timeout
            while True:
                m = c.poll(0.1)
                if m is None:
                    if time.monotonic() > deadline:
                        raise self._fail(f"reading {topic}[{partition}] at {start}",
                                         TimeoutError(f"no answer within {self.timeout:.0f} s"))
                    continue
                deadline = time.monotonic() + self.timeout
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        return out
                    raise LogError(f"kafka {self.bootstrap}: reading {topic}[{partition}]: {m.error()}")
                if m.offset() >= stop:
                    return out
                if m.offset() >= start:
                    out.append(m.offset())
        except KafkaException as exc:
            raise self._fail(f"reading {topic}[{partition}]", exc) from exc
        finally:
            try:
                c.close()
            except (KafkaException, RuntimeError):
                pass

    # -- end offsets --------------------------------------------------------------------------
    def _remember_end(self, tp: TopicPartition, listed: int | None, end: int) -> None:
        """Cache (under _ends_lock): ends only grow; ``listed`` None keeps the listed offset."""
        old = self._ends.get(tp)
        if old is None:
            self._ends[tp] = (listed, end)
        else:
            self._ends[tp] = (old[0] if listed is None else listed, max(old[1], end))

    def _cached_end(self, tp: TopicPartition) -> int:
        with self._ends_lock:
            got = self._ends.get(tp)
        return got[1] if got else 0

    def _list_offsets(self, topic: str, n: int, committed: bool = True) -> list[int]:
        """The broker's end offsets: last stable offsets (read_committed) or high watermarks."""
        real = self._real(topic)
        level = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED

        def query() -> list[int]:
            futures = self._admin.list_offsets({KTP(real, p): OffsetSpec.latest() for p in range(n)},
                                               isolation_level=level, request_timeout=self.timeout)
            got = {tp.partition: f.result(timeout=self.timeout).offset for tp, f in futures.items()}
            return [got[p] for p in range(n)]
        return self._retry(f"listing end offsets of {topic}", query)

    def end_offsets(self, topic: str) -> list[int]:
        n = self.partition_count(topic)
        listed = self._list_offsets(topic, n)
        out = []
        hwms: list[int] | None = None
        for p, lso in enumerate(listed):
            tp = (topic, p)
            with self._ends_lock:
                cached = self._ends.get(tp)
            if cached is not None and cached[0] == lso:
                out.append(cached[1])
                continue
            if lso == 0 and cached is None:  # empty, or Tansu hiding data behind an open transaction
                hwms = hwms or self._list_offsets(topic, n, committed=False)
                end = 0 if hwms[p] == 0 else self._probe_end(tp, 0, 0)
            else:
                end = self._probe_end(tp, lso, cached[1] if cached else 0)
            trusted = lso > (cached[1] if cached else 0) or lso == end == 0
            with self._ends_lock:
                self._remember_end(tp, lso if trusted else None, end)
                out.append(self._ends[tp][1])
        return out

    def _probe_end(self, tp: TopicPartition, listed: int, known: int) -> int:
        """The offset after the last readable record, given the listed (last stable) offset and
        an end already known to be reached. Reads the tail forward to the partition's EOF, then
        further back if the tail holds only markers. A listed offset at or below ``known`` is not
        trusted (Tansu 0.6 lists 0 for read_committed while a transaction is open, and the last
        batch's base offset + 1 after a non-transactional batch): the read from ``known`` to EOF
        decides."""
        if listed <= known:
            with self._read_lock:
                recs, _ = self._fetch(tp, known, 1 << 62, None)
            return recs[-1].offset + 1 if recs else known
        lo, hi = max(known, listed - _PROBE_WINDOW), None
        while True:
            with self._read_lock:
                recs, _eof = self._fetch(tp, lo, 1 << 62, hi)
            if recs:
                return recs[-1].offset + 1
            if lo <= known:
                return known
            hi, lo = lo, max(known, lo - 2 * (listed - lo))

    # -- consumer groups ----------------------------------------------------------------------
    def _group(self, group: str) -> Consumer:
        c = self._groups.get(group)
        if c is None:
            conf = {**self._common, "group.id": self._real(group), "enable.auto.commit": False,
                    **self._scoped["consumer"]}
            c = self._groups[group] = Consumer(conf)
        return c

    def commit_positions(self, group: str, positions: Mapping[TopicPartition, int]) -> None:
        """Commit a group's offsets without joining it (no rebalance, no Tansu join delay)."""
        self._writable()
        if not positions:
            return
        for topic, p in positions:
            self._check_partition(topic, p)
        offsets = [KTP(self._real(t), p, off) for (t, p), off in positions.items()]
        c = self._group(group)
        got = self._retry(f"committing positions of group {group}",
                          lambda: c.commit(offsets=offsets, asynchronous=False))
        bad = [str(tp.error) for tp in got or [] if tp.error is not None]
        if bad:
            raise LogError(f"kafka {self.bootstrap}: committing positions of group {group}: {bad[:3]}")

    def positions(self, group: str) -> dict[TopicPartition, int]:
        def query() -> list[KTP]:
            futures = self._admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(self._real(group))], request_timeout=self.timeout)
            return [tp for f in futures.values() for tp in f.result(timeout=self.timeout).topic_partitions]
        out = {}
        try:
            listed = self._retry(f"reading positions of group {group}", query)
        except LogError as exc:
            if isinstance(exc.__cause__, KafkaException) and (err := _kerr(exc.__cause__)) is not None \
                    and err.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return {}
            raise
        for tp in listed:
            if tp.offset >= 0 and tp.topic.startswith(self.prefix) and tp.error is None:
                out[(tp.topic[len(self.prefix):], tp.partition)] = tp.offset
        return out

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout)
            self._producer = None
        for c in [self._reader, *self._groups.values()]:
            if c is not None:
                try:
                    c.close()
                except (KafkaException, RuntimeError):
                    pass
        self._reader = None
        self._reader_topics.clear()
        self._groups.clear()
        if self._state is not None:
            self._state.close()
            self._state = None
