"""Reading the Kafka backend: one reused read_committed consumer (no group) drains a partition
in batches, skipping transaction markers; end offsets are the offset after the last readable
record, confirmed by reading the tail where the broker's listed offset cannot be trusted (Tansu
0.6); and a read_uncommitted probe tells ``verify`` what lies in the gaps between records."""
from __future__ import annotations

import struct
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as KTP

from ..errors import LogError
from .base import LogRecord, TopicPartition
from .kafka_client import Broker, arrived
from .kafka_topics import Topics

__all__ = ["I64", "Reader", "TS_HEADER"]

#: Timestamps Kafka cannot carry (0 and negative) travel in this header, as a big-endian i64.
TS_HEADER = "ledgerlog.ts"
I64 = struct.Struct(">q")
_PROBE_WINDOW = 16
_READ_BATCH = 10_000


Headers = list[tuple[str, "str | bytes | None"]] | dict[str, "str | bytes | None"]


def _timestamp(msg: Message, headers: Headers) -> int:
    """The record's timestamp: the TS_HEADER's where it has one, else Kafka's."""
    for name, val in (headers.items() if isinstance(headers, dict) else headers):
        if name == TS_HEADER and isinstance(val, bytes) and len(val) == 8:
            return int(I64.unpack(val)[0])
    return int(msg.timestamp()[1])


class Reader:
    """Records and end offsets of one log's partitions."""

    def __init__(self, broker: Broker, topics: Topics) -> None:
        self.broker, self.topics = broker, topics
        self._consumer: Consumer | None = None
        self._consumer_topics: set[str] = set()
        self._read_lock = threading.Lock()    # the reader consumer
        self._ends_lock = threading.Lock()    # the end cache
        self._ends: dict[TopicPartition, tuple[int | None, int]] = {}  # -> (listed offset, end)
        self._assigned: tuple[TopicPartition, int] | None = None     # reader at (tp, next offset)

    def _get_consumer(self) -> Consumer:
        if self._consumer is None:
            conf = self.broker.client_conf("consumer", {
                "group.id": f"ledgerlog-reader-{uuid.uuid4().hex[:12]}",
                "isolation.level": "read_committed", "enable.auto.commit": False,
                "enable.partition.eof": True, "auto.offset.reset": "error",
                # Tansu holds every fetch for fetch.wait.max.ms, even with data at hand; and
                # librdkafka pauses a full queue's fetching for fetch.queue.backoff.ms (1 s)
                "fetch.wait.max.ms": 2, "fetch.queue.backoff.ms": 5})
            try:
                self._consumer = Consumer(conf)
            except (KafkaException, ValueError, TypeError) as exc:
                raise self.broker.fail("creating the consumer", exc) from exc
        return self._consumer

    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[LogRecord]:
        self.topics.check_partition(topic, partition)
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

    def _fetch(self, tp: TopicPartition, offset: int, max_records: int, stop_at: int | None,
               *, fresh: bool = False) -> tuple[list[LogRecord], int | None]:
        """Records of ``tp`` from ``offset`` until ``max_records``, the partition's end (EOF, whose
        offset is returned) or a record at or past ``stop_at``-1 (nothing readable lies beyond).
        ``fresh``: never continue a kept prefetch, whose queued EOF may predate newer records."""
        b = self.broker
        topic, partition = tp
        real = b.real(topic)
        c = self._get_consumer()

        def assign(at: int) -> None:
            try:
                if real not in self._consumer_topics:
                    # librdkafka waits ~1 s for a topic's metadata on its first assign; asking first
                    # takes a millisecond
                    c.list_topics(real, timeout=b.timeout)
                    self._consumer_topics.add(real)
                c.assign([KTP(real, partition, at)])
            except KafkaException as exc:
                raise b.fail(f"assigning {topic}[{partition}]", exc) from exc

        continued = not fresh and self._assigned == (tp, offset)
        if not continued:
            assign(offset)
        self._assigned = None
        out: list[LogRecord] = []
        append = out.append
        eof: int | None = None
        deadline = time.monotonic() + b.timeout
        while len(out) < max_records:
            try:
                msgs = arrived(c, min(max_records - len(out), _READ_BATCH), 0.1)
                if not msgs:
                    if time.monotonic() > deadline:
                        raise b.fail(f"reading {topic}[{partition}] at {offset}",
                                     TimeoutError(f"no answer within {b.timeout:.0f} s"))
                    continue
            except KafkaException as exc:
                raise b.fail(f"reading {topic}[{partition}]", exc) from exc
            deadline = time.monotonic() + b.timeout
            for m in msgs:
                err = m.error()
                if err is None:
                    off = m.offset()
                    if off is None or off < offset or m.partition() != partition or m.topic() != real:
                        continue  # left over from an earlier assignment
                    hdrs = m.headers()
                    append(LogRecord(topic, partition, off, m.key() or b"", m.value() or b"",
                                     m.timestamp()[1] if hdrs is None else _timestamp(m, hdrs)))
                    offset = off + 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    if m.partition() == partition and m.topic() == real:
                        eof = m.offset()
                else:
                    raise LogError(f"kafka {b.bootstrap}: reading {topic}[{partition}]: {err}")
            if eof is not None and continued and stop_at is not None and offset < stop_at:
                # the kept prefetch queued this EOF before the records up to stop_at were
                # written: read them afresh (once)
                continued, eof = False, None
                assign(offset)
                continue
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
        (transaction markers) stay unseen."""
        b = self.broker
        self.topics.check_partition(topic, partition)
        if stop <= start:
            return []
        real = b.real(topic)
        conf = b.client_conf("consumer", {
            "group.id": f"ledgerlog-probe-{uuid.uuid4().hex[:12]}", "isolation.level": "read_uncommitted",
            "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "error",
            "fetch.wait.max.ms": 2})
        try:
            c = Consumer(conf)
        except (KafkaException, ValueError, TypeError) as exc:
            raise b.fail("creating the consumer", exc) from exc
        out: list[int] = []
        try:
            c.assign([KTP(real, partition, max(start, 0))])
            deadline = time.monotonic() + b.timeout
            while True:
                m = c.poll(0.1)
                if m is None:
                    if time.monotonic() > deadline:
                        raise b.fail(f"reading {topic}[{partition}] at {start}",
                                     TimeoutError(f"no answer within {b.timeout:.0f} s"))
                    continue
                deadline = time.monotonic() + b.timeout
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return out
                    raise LogError(f"kafka {b.bootstrap}: reading {topic}[{partition}]: {err}")
                off = m.offset()
                if off is None or off >= stop:
                    return out
                if off >= start:
                    out.append(off)
        except KafkaException as exc:
            raise b.fail(f"reading {topic}[{partition}]", exc) from exc
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

    def appended(self, ends: dict[TopicPartition, int]) -> None:
        """A committed append ended these partitions here; its commit marker follows."""
        with self._ends_lock:
            for tp, end in ends.items():
                self._remember_end(tp, end + 1, end)

    def _cached_end(self, tp: TopicPartition) -> int:
        with self._ends_lock:
            got = self._ends.get(tp)
        return got[1] if got else 0

    def end_offsets(self, topic: str) -> list[int]:
        n = self.topics.partition_count(topic)
        listed = self.topics.list_offsets(topic, n)
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
                hwms = hwms or self.topics.list_offsets(topic, n, committed=False)
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
                recs, _ = self._fetch(tp, known, 1 << 62, None, fresh=True)
            return recs[-1].offset + 1 if recs else known
        lo, hi = max(known, listed - _PROBE_WINDOW), None
        while True:
            with self._read_lock:
                recs, _eof = self._fetch(tp, lo, 1 << 62, hi, fresh=True)
            if recs:
                return recs[-1].offset + 1
            if lo <= known:
                return known
            hi, lo = lo, max(known, lo - 2 * (listed - lo))

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError):
                pass
        self._consumer = None
        self._consumer_topics.clear()
