"""The deriver: reads the balances events (merged in height order by the runner's Feed), writes the
rows each makes to the repartition topic (key: account; partition: murmur2 of it), and once the
broker has acknowledged a batch's rows, a progress record saying which source positions they
cover and where each repartition partition ended. It resumes from the newest progress record.

No broker transactions are needed (Tansu shows aborted ones to read_committed readers anyway): a
deriver killed between its rows and its progress record writes those rows again when resumed,
and the workers skip them by their source marks (repartition.py). The producer is idempotent, so
a partition's rows keep the order they were produced in. Two derivers at once (a rebalance that
has not yet stopped the old owner) only write duplicates, which are skipped the same way."""
from __future__ import annotations

import logging
import time
from typing import Any

from ledgerlog.engine.codec import Codec
from ledgerlog.engine.errors import LogError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.log.kafka_config import KafkaConfig
from ledgerlog.engine.partitioner import partition_for
from ledgerlog.projections import balances

from ..feed import EventDecoder, Feed, spec_of
from .repartition import SOURCES, Names, encode_rows
from .topics import Progress, ProgressReader

__all__ = ["Deriver"]

_log = logging.getLogger("ledgerlog.shards.deriver")
#: records read from a source partition at a time
READ_CHUNK = 10_000


class Deriver:
    """Derives the repartition topic of one chain, a batch at a time (``step``)."""

    def __init__(self, log: Log, codec: Codec, genesis: Genesis, kafka: KafkaConfig, names: Names,
                 partitions: int, *, batch: int = 20_000, timeout: float = 30.0) -> None:
        from confluent_kafka import Producer

        self.log, self.genesis, self.names = log, genesis, names
        self.partitions, self.batch, self.timeout = partitions, batch, timeout
        self.reader = ProgressReader(kafka, names, timeout)
        self.progress = self.reader.latest() or Progress(ends=[0] * partitions)
        if len(self.progress.ends) != partitions:
            raise LogError(f"{names.progress} speaks of {len(self.progress.ends)} partitions, "
                           f"{names.movements} has {partitions}")
        self.resumed_from = dict(self.progress.positions)
        # big chunks: on Kafka each chunk of a partition is a reassignment and a fetch round trip
        self.feed = Feed(log, EventDecoder(codec), SOURCES, self.progress.positions, chunk=READ_CHUNK,
                         fields={t: spec_of(balances.FIELDS[t]) for t in SOURCES})
        self.producer = Producer(kafka.librdkafka("producer", {
            "enable.idempotence": True, "acks": "all", "linger.ms": 5, "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 262_144}))
        self.rows = 0  # written by this deriver (duplicates of a resumed one included)

    def lag(self) -> int:
        """Source records not derived yet."""
        pos = self.progress.positions
        return sum(max(0, end - pos.get((t, p), 0)) for t in SOURCES
                   for p, end in enumerate(self.log.end_offsets(t)))

    def step(self) -> int:
        """Derive up to ``batch`` source events; returns how many (0: nothing new)."""
        ends = {t: self.log.end_offsets(t) for t in SOURCES}
        entries = self.feed.take_raw(self.batch, ends)
        if not entries:
            return 0
        written = list(self.progress.ends)
        errors: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                k, off = msg.partition(), msg.offset()
                if off >= written[k]:
                    written[k] = off + 1

        produce, poll, topic, n = self.producer.produce, self.producer.poll, self.names.movements, self.partitions
        tps, genesis = self.feed.tps, self.genesis
        count = 0
        for _h, i, off, ev in entries:
            t, p = tps[i]
            for key, value in encode_rows(genesis, t, p, off, ev):
                k = partition_for(key, n)
                while True:
                    try:
                        produce(topic, value, key, k, on_delivery=delivered)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        poll(0.05)
                count += 1
        self._flush(errors, "rows")
        self.rows += count
        feed_low = self.feed.low
        progress = Progress({tp: feed_low[i] for i, tp in enumerate(tps)}, written,
                            max(self.progress.height, entries[-1][0]), self.progress.events + len(entries))
        self.producer.produce(self.names.progress, progress.encode(), b"progress", 0, on_delivery=delivered)
        self._flush(errors, "progress")
        self.progress = progress
        return len(entries)

    def _flush(self, errors: list[str], what: str) -> None:
        left = self.producer.flush(self.timeout)
        if left or errors:
            raise LogError(f"deriver: {left} {what} undelivered to {self.names.base}; errors: {errors[:3]}")

    def run(self, until_idle: bool = False, stop: Any = None, idle_wait: float = 0.1) -> int:
        """Derive until stopped (``stop.is_set()``), or until nothing is left with ``until_idle``."""
        total = 0
        while stop is None or not stop.is_set():
            n = self.step()
            total += n
            if not n:
                if until_idle:
                    break
                time.sleep(idle_wait)
        return total

    def status(self) -> dict[str, Any]:
        p = self.progress
        return {"height": p.height, "events": p.events, "rows_written": self.rows, "ends": list(p.ends),
                "resumed_from": sum(self.resumed_from.values())}

    def close(self) -> None:
        try:
            self.producer.flush(self.timeout)
        finally:
            self.reader.close()
