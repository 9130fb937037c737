"""The deriver: turns the balances events of the source partitions it holds (derive leases: one per
partition of the balances topics, so several workers derive in parallel) into rows on the
repartition topic (key: account; partition: murmur2 of it), and once the broker has acknowledged
a batch's rows, writes one progress record per lease that moved: the source offset reached, per
repartition partition the end of that lease's rows, and the height bound its later rows respect
(topics.Progress). A lease resumes from its newest progress record, wherever it runs.

One consumer reads every held source partition (each in offset order, in which heights never fall:
admission stamps the tip), so each lease's rows are in height order; the rows of different leases interleave in a
repartition partition as the derivers happen to run, and the shard merges them back into height
order with the bounds (shard.py). No broker transactions are needed (Tansu shows aborted ones to
read_committed readers anyway): a lease killed between its rows and its progress record writes
those rows again when resumed, and the workers skip them by their source marks (repartition.py).
The producer is idempotent, so a partition keeps the rows of one producer in produce order. Two
derivers of one lease at once (a rebalance that has not yet stopped the old owner) only write
duplicates, which are skipped the same way."""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ledgerlog.engine import topics as T
from ledgerlog.engine.codec import Codec
from ledgerlog.engine.errors import LogError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.log.kafka_client import logged
from ledgerlog.engine.log.kafka_config import KafkaConfig
from ledgerlog.engine.movements import event_height
from ledgerlog.projections import balances

from ..feed import EventDecoder, spec_of
from .repartition import FETCH_WAIT_MS, Names, pack_rows, source_partitions
from .topics import Progress, ProgressReader

__all__ = ["Deriver"]

_log = logging.getLogger("ledgerlog.shards.deriver")
#: How often librdkafka reports the producer's state (``wait_writable`` reads its idempotence state)
_STATS_MS = 100

@dataclass
class _Lease:
    """One held source partition: what its newest progress record says (``recorded``), where this
    deriver is (``now``), and the events read but not derived yet: (offset, height, event)."""

    j: int
    recorded: Progress
    now: Progress
    ahead: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    read_to: int = 0  # the offset after the last record read
    at_end: bool = False  # the consumer reported the partition's end at ``read_to``
    recorded_once: bool = False  # a progress record exists (else the first step writes one)


@dataclass
class _Step:
    """One step's rows in flight: what each lease it moved will record once they are all
    acknowledged (``now`` as of the step, and the ends its own rows reached)."""

    moved: list[tuple[_Lease, Progress]]
    unacked: int = 0


class Deriver:
    """Derives the leases it holds (``hold``; by default every source partition), a batch at a
    time (``step``)."""

    def __init__(self, log: Log, codec: Codec, genesis: Genesis, kafka: KafkaConfig, names: Names,
                 partitions: int, *, leases: Iterable[int] | None = None, batch: int = 20_000,
                 timeout: float = 30.0) -> None:
        from confluent_kafka import Consumer, Producer

        self.log, self.genesis, self.names = log, genesis, names
        self.partitions, self.batch, self.timeout = partitions, batch, timeout
        self.sources = source_partitions(log)
        self.reader = ProgressReader(kafka, names, timeout)
        decoder = EventDecoder(codec)
        self._decode = {t: decoder.for_topic(t, spec_of(balances.FIELDS[t])) for t in balances.TOPICS}
        # one consumer assigned every held source partition: fetches of all of them in flight at once
        self.consumer = Consumer(logged(kafka.librdkafka("consumer", {
            "group.id": f"ledgerlog-deriver-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
            "isolation.level": "read_committed", "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": FETCH_WAIT_MS, "fetch.queue.backoff.ms": 5})))
        self._real = {t: kafka.topic_prefix + t for t in balances.TOPICS}
        self._logical = {r: t for t, r in self._real.items()}
        for real in self._real.values():  # librdkafka waits ~1 s for metadata on a first assign otherwise
            self.consumer.list_topics(real, timeout=timeout)
        self._writable = threading.Event()
        self.producer = Producer({**logged(kafka.librdkafka("producer", {
            # gapless: a row that fails stops the producer rather than leaving a gap that later
            # rows of its partition jump (a resumed lease's rewrite of it would be taken for a
            # duplicate and skipped)
            "enable.idempotence": True, "enable.gapless.guarantee": True, "acks": "all", "linger.ms": 5,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 262_144,
            "statistics.interval.ms": _STATS_MS})), "stats_cb": self._stats})
        self.leases: dict[int, _Lease] = {}
        self._steps: list[_Step] = []  # in step order: a step's progress is written after every earlier one's
        self._errors: list[str] = []  # delivery errors, raised by the next step
        self.records = 0  # row records written by this deriver (duplicates of a resumed lease included)
        self._tip: tuple[int, int] = (-1, 0)  # (ledger.blocks' end offset, the tip height there)
        self._by_tp: dict[tuple[str, int], _Lease] = {}
        self.hold(range(len(self.sources)) if leases is None else leases)

    def _stats(self, raw: str) -> None:
        if not self._writable.is_set() and json.loads(raw).get("eos", {}).get("idemp_state") == "Assigned":
            self._writable.set()

    def wait_writable(self, timeout: float = 10.0) -> bool:
        """Wait until the producer has its idempotent producer id (librdkafka asks for it half a
        second after the producer starts, if no broker was connected yet, and holds every write
        until then): a worker is ready when it can write, not half a second later."""
        deadline = time.monotonic() + timeout
        while not self._writable.is_set() and time.monotonic() < deadline:
            self.producer.poll(0.05)
        return self._writable.is_set()

    # -- leases ---------------------------------------------------------------------------------
    def hold(self, leases: Iterable[int], known: dict[int, Progress] | None = None) -> None:
        """Derive exactly ``leases`` from now on; a newly held one resumes from its newest record
        (``known`` ones from the record given: an older record than the newest only makes rows
        that are written twice, which the shards skip)."""
        self.drain()  # a lease given up has its progress recorded before another deriver takes it
        want = set(leases)
        gone = [j for j in self.leases if j not in want]
        for j in gone:
            del self.leases[j]
        new = sorted(j for j in want if j not in self.leases)
        if not new:
            if gone:
                self._assign()
            return
        found = {j: known[j] for j in new if known and j in known}
        missing = [j for j in new if j not in found]
        if missing:
            found.update(self.reader.latest_of(missing))
        for j in new:
            t, p = self.sources[j]
            rec = found.get(j) or Progress(t, p, 0, [0] * self.partitions)
            if (rec.topic, rec.partition) != (t, p) or len(rec.ends) != self.partitions:
                raise LogError(f"SHARD_TOPICS: {self.names.progress} partition {j} speaks of {rec.topic}/{rec.partition} "
                               f"over {len(rec.ends)} partitions, not {t}/{p} over {self.partitions}: delete the "
                               f"{self.names.base} topics and the workers' shards/ directories")
            self.leases[j] = _Lease(j, rec, _copy(rec), read_to=rec.position, recorded_once=j in found)
        self._assign()

    def _assign(self) -> None:
        from confluent_kafka import TopicPartition as KTP

        self._by_tp = {(self._real[lz.now.topic], lz.now.partition): lz for lz in self.leases.values()}
        self.consumer.assign([KTP(t, p, lz.read_to) for (t, p), lz in self._by_tp.items()])

    @property
    def events(self) -> int:
        """Events the held leases have derived (as their progress records count them)."""
        return sum(lease.now.events for lease in self.leases.values())

    def lag(self) -> int:
        """Source records of the held leases not derived yet."""
        ends = {t: self.log.end_offsets(t) for t in {self.sources[j][0] for j in self.leases}}
        return sum(max(0, ends[lease.now.topic][lease.now.partition] - lease.now.position)
                   for lease in self.leases.values())

    # -- deriving -------------------------------------------------------------------------------
    def step(self) -> int:
        """Derive what the consumer has of the held leases (up to ``batch`` records); returns how
        many events (0: nothing new). The rows go out without waiting: each step's progress
        records (for every lease that moved, or whose bound rose) are written once its rows and
        every earlier step's are acknowledged, checked at each step; a step with nothing new waits
        for all of them, so an idle deriver's progress is complete."""
        self._raise_errors()
        if not self.leases:
            return 0
        tip = self._tip_height()  # read before the ends are seen: what lands after is at least this high
        self._read()
        produce, poll, topic, n = self.producer.produce, self.producer.poll, self.names.movements, self.partitions
        genesis = self.genesis
        count = rows = 0  # events, records
        step = _Step([])
        for lease in self.leases.values():
            now = lease.now
            if lease.ahead:
                t, p = now.topic, now.partition
                ends = [0] * n  # the ends this step's rows of the lease reach
                taken, lease.ahead = lease.ahead, []
                for k, key, value in pack_rows(genesis, t, p, [(off, ev) for off, _h, ev in taken], n):
                    full_since = None
                    while True:
                        try:
                            produce(topic, value, key, k, on_delivery=self._delivered(step, ends))
                            break
                        except BufferError:  # the local queue is full: let it drain, for a while
                            full_since = full_since or time.monotonic()
                            if time.monotonic() - full_since > self.timeout:  # a revoke waits for this step
                                raise LogError(f"deriver: {self.names.movements} took no rows for "
                                               f"{self.timeout:.0f} s (broker unreachable?)") from None
                            poll(0.05)
                    step.unacked += 1
                    rows += 1
                now.position, now.height, now.events = taken[-1][0] + 1, taken[-1][1], now.events + len(taken)
                count += len(taken)
            else:
                ends = []
            # heights never fall along a partition: its last event's bounds the rest; at its end, the tip
            now.bound = max(tip if lease.at_end else now.height, now.height, now.bound)
            if ends or not lease.recorded_once or (now.position, now.bound) != (lease.recorded.position,
                                                                                 lease.recorded.bound):
                step.moved.append((lease, Progress(now.topic, now.partition, now.position, ends, now.bound,
                                                   now.height, now.events)))
                lease.recorded, lease.recorded_once = _copy(now), True  # (what it will record)
        self.records += rows
        if step.moved:
            self._steps.append(step)
        if count:
            poll(0)  # acknowledgements so far
            self._record_acknowledged()
        else:
            self.drain()
        return count

    def _delivered(self, step: _Step, ends: list[int]) -> Any:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                self._errors.append(str(err))
                return
            k, off = msg.partition(), msg.offset()
            if off >= ends[k]:
                ends[k] = off + 1
            step.unacked -= 1
        return report

    def _record_acknowledged(self) -> None:
        """Write the progress records of the leading steps whose rows are all acknowledged."""
        done = 0
        for step in self._steps:
            if step.unacked:
                break
            done += 1
            for lease, rec in step.moved:
                acked = lease.now.ends  # the ends of every acknowledged step so far
                for k, end in enumerate(rec.ends):
                    if end > acked[k]:
                        acked[k] = end
                rec.ends = list(acked)
                self.producer.produce(self.names.progress, rec.encode(), b"progress", lease.j,
                                      on_delivery=self._progress_delivered)
        del self._steps[:done]

    def drain(self) -> None:
        """Wait until every row written is acknowledged and every progress record is written
        (also those an earlier step queued once its rows were acknowledged)."""
        if self._steps:
            self._flush("rows")
            self._record_acknowledged()
        self._flush("progress")

    def _raise_errors(self) -> None:
        if self._errors:
            raise LogError(f"deriver: undelivered to {self.names.base}: {self._errors[:3]}")

    def _read(self) -> None:
        """Consume what has arrived (up to ``batch`` records) into the leases' buffers, decoded."""
        from confluent_kafka import KafkaError

        from ledgerlog.engine.log.kafka_client import arrived

        decode, logical, by_tp = self._decode, self._logical, self._by_tp
        msgs = arrived(self.consumer, self.batch, 0.05)
        for m in msgs:
            lease = by_tp.get((m.topic(), m.partition()))
            if lease is None:
                continue  # left over from an earlier assignment
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    # the end (past a transaction's commit marker, so maybe above read_to)
                    lease.at_end = (m.offset() or 0) >= lease.read_to
                    continue
                if err.fatal():
                    raise LogError(f"deriver: reading {m.topic()}: {err}")
                _log.warning("deriver: reading %s: %s", m.topic(), err)  # librdkafka retries
                continue
            off = m.offset()
            if off < lease.read_to:
                continue
            t = logical[m.topic()]
            ev = decode[t](m.value(), 0)
            lease.ahead.append((off, event_height(t, ev), ev))
            lease.read_to, lease.at_end = off + 1, False

    def _tip_height(self) -> int:
        """The height of the last block on ``ledger.blocks`` (0 before the first)."""
        end = self.log.end_offsets(T.BLOCKS)[0]
        if end != self._tip[0]:
            recs = self.log.read(T.BLOCKS, 0, end - 1, 1) if end > 0 else []
            height = event_height(T.BLOCKS, self._decode[T.BLOCKS](recs[-1].value, 0)) if recs else 0
            self._tip = (end, height)
        return self._tip[1]

    def _progress_delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def _flush(self, what: str) -> None:
        left = self.producer.flush(self.timeout)
        if left or self._errors:
            raise LogError(f"deriver: {left} {what} undelivered to {self.names.base}; errors: {self._errors[:3]}")

    def run(self, until_idle: bool = False, stop: Any = None, idle_wait: float = 0.1) -> int:
        """Derive until stopped (``stop.is_set()``), or until nothing is left with ``until_idle``."""
        total = 0
        while stop is None or not stop.is_set():
            n = self.step()
            total += n
            if not n:
                if until_idle and self.idle():
                    break
                if not until_idle:
                    time.sleep(idle_wait)
        return total

    def idle(self) -> bool:
        """Has every held lease derived all its partition had (as the consumer last saw its end),
        and recorded it?"""
        return not self._steps and all(lz.at_end and not lz.ahead for lz in self.leases.values())

    def status(self) -> dict[str, Any]:
        return {"leases": {str(j): {"source": f"{lz.now.topic}/{lz.now.partition}", "position": lz.now.position,
                                    "height": lz.now.height, "bound": lz.now.bound, "events": lz.now.events}
                           for j, lz in sorted(list(self.leases.items()))},  # (list: one step under the GIL)
                "events": self.events, "records_written": self.records}

    def close(self) -> None:
        try:
            self.drain()
            self.producer.flush(self.timeout)
        finally:
            self.reader.close()
            self.consumer.close()


def _copy(p: Progress) -> Progress:
    return Progress(p.topic, p.partition, p.position, list(p.ends), p.bound, p.height, p.events)
