"""Appending to the Kafka backend: one broker transaction per append (acks=all, idempotence, a
``transactional.id`` naming the chain), so an append's records become visible together or not
at all, and a second admitting node of the chain fences the first. A failure that may leave
records readable without the write-side state refuses further appends until reopened."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ..errors import LogError
from .base import LogRecord, Record
from .kafka_client import Broker
from .kafka_read import I64, TS_HEADER

__all__ = ["Transactions"]


class _AppendFailed(Exception):
    pass


class Transactions:
    """The transactional producer of one log; callers serialise ``append`` (the log's write lock)."""

    def __init__(self, broker: Broker, read: Callable[[str, int, int, int], list[LogRecord]]) -> None:
        self.broker = broker
        self._read = read  # to tell whether an aborted transaction's records are visible
        self.producer: Producer | None = None
        #: Why appends are refused until the log is reopened (None: they are not).
        self.poisoned: str | None = None

    def get_producer(self) -> Producer:
        """The producer, created and its transactions initialised (fencing an earlier producer
        of the same transactional id) on first use."""
        b = self.broker
        if self.producer is None:
            conf = b.client_conf("producer", {
                "transactional.id": b.config.resolved_transactional_id, "acks": "all",
                "enable.idempotence": True, "partitioner": "murmur2_random", "linger.ms": 5,
                "transaction.timeout.ms": max(60_000, int(b.timeout * 2000))})
            try:
                producer = Producer(conf)
            except (KafkaException, ValueError, TypeError) as exc:
                raise b.fail("creating the producer", exc) from exc
            b.retry("initialising transactions", lambda: producer.init_transactions(b.timeout))
            self.producer = producer
        return self.producer

    def append(self, records: Sequence[Record], placed: list[int]) -> list[tuple[int, int]]:
        """Produce ``records`` to their ``placed`` partitions in one transaction; their offsets."""
        b = self.broker
        producer = self.get_producer()
        got: dict[tuple[str, int], list[int]] = {}  # (real topic, partition) -> delivered offsets
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            offset = msg.offset()
            if err is not None:
                errors.append(str(err))
            elif offset is None or offset < 0:  # a retried produce the broker took as a duplicate of one
                errors.append("delivered without an offset (an answer of the broker was lost)")  # it wrote
            else:
                got.setdefault((msg.topic() or "", msg.partition() or 0), []).append(offset)

        began = False
        produce = producer.produce
        real = {t: b.real(t) for t in {r.topic for r in records}}
        try:
            producer.begin_transaction()
            began = True
            for r, p in zip(records, placed):
                kw: dict[str, Any] = {"timestamp": r.timestamp} if r.timestamp > 0 else \
                    {"headers": [(TS_HEADER, I64.pack(r.timestamp))]}
                while True:
                    try:
                        produce(real[r.topic], r.value, r.key, p, on_delivery, **kw)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        producer.poll(0.05)
            left = producer.flush(b.timeout)
            if left or errors or sum(map(len, got.values())) != len(records):
                raise _AppendFailed(f"{left} records undelivered; errors: {errors[:3]}")
            b.retry("committing the transaction", lambda: producer.commit_transaction(b.timeout))
        except (KafkaException, _AppendFailed, LogError, BufferError) as exc:
            if began:
                self._after_failure(producer, got, len(records), exc)
            else:
                self.producer = None  # librdkafka releases it when collected
            if isinstance(exc, LogError):
                raise
            raise b.fail("append failed", exc) from exc
        # a partition's records are delivered in produce order (idempotent producer); their
        # offsets, sorted, are the records' offsets in the order they were produced
        cursor = {tp: iter(sorted(offs)) for tp, offs in got.items()}
        return [(p, next(cursor[(real[r.topic], p)])) for r, p in zip(records, placed)]

    def _after_failure(self, producer: Producer, got: Mapping[tuple[str, int], list[int]], produced: int,
                       exc: BaseException) -> None:
        """Abort what can be aborted; when the outcome is unknown or the broker shows aborted
        records to read_committed readers (Tansu 0.6 does), refuse further appends until the
        chain is reopened and the state caught up from the log."""
        prefix = self.broker.prefix
        try:
            producer.abort_transaction(self.broker.timeout)
        except KafkaException as abort_exc:
            self.producer = None
            self.poisoned = (f"a transaction failed ({exc}) and could not be aborted ({abort_exc}); "
                             "its records may be on the log: reopen the chain to catch up from it")
            return
        if sum(map(len, got.values())) < produced:
            # records whose outcome is unknown (an answer lost, the queue purged at a timeout):
            # they may be on the log, and this producer's sequence numbers no longer match the
            # broker's (its next records could be taken as duplicates and dropped)
            self.producer = None
            self.poisoned = (f"a transaction failed ({exc}) with records of unknown outcome; they may be on "
                             "the log: reopen the chain to catch up from it")
            return
        for (real, p), offs in got.items():
            if not offs or not real.startswith(prefix):
                continue
            try:
                visible = any(x.offset == offs[0] for x in self._read(real[len(prefix):], p, offs[0], 1))
            except LogError:
                visible = True
            if visible:
                self.poisoned = (f"an aborted transaction's records are visible to read_committed "
                                 f"readers on this broker ({exc}); reopen the chain to catch up")
            break

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(self.broker.timeout)
            self.producer = None
