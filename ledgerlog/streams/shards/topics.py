"""The sharded projection's topics on the broker (repartition, progress, leases), created with the
chain's replication and configs (kept forever: the repartition topic is what a moved partition is
rebuilt from), and the few broker reads the deriver and the workers share."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ledgerlog.engine.errors import LogError
from ledgerlog.engine.intjson import dumps, loads
from ledgerlog.engine.log.kafka_client import logged
from ledgerlog.engine.log.kafka_config import KafkaConfig

from .repartition import FETCH_WAIT_MS, Names

__all__ = ["Progress", "ProgressReader", "ensure_topics"]


def ensure_topics(kafka: KafkaConfig, names: Names, partitions: int, sources: int) -> int:
    """Create the repartition topic (``partitions`` unless it exists: then its own count, which is
    returned), the progress topic (one partition per derive lease: per source partition, ``sources``
    of them) and the lease topic (one partition per shard, then one per derive lease)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from ledgerlog.engine.log.kafka import TOPIC_CONFIG

    admin = AdminClient(logged(kafka.librdkafka("admin")))

    def count(topic: str) -> int | None:  # all topics: asking for one may auto-create it (Tansu)
        md = admin.list_topics(timeout=10).topics.get(topic)
        return len(md.partitions) if md is not None and md.error is None and md.partitions else None

    def create(topic: str, n: int) -> int:
        fut = admin.create_topics([NewTopic(topic, n, kafka.replication, config=dict(TOPIC_CONFIG))])[topic]
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise LogError(f"creating {topic}: {exc}") from exc
        deadline = time.monotonic() + 30
        while (got := count(topic)) is None:  # metadata may lag the creation
            if time.monotonic() > deadline:
                raise LogError(f"topic {topic} not in the metadata after 30 s")
            time.sleep(0.1)
        return got

    n = count(names.movements) or create(names.movements, partitions)
    for topic, want in ((names.progress, sources), (names.leases, n + sources)):
        got = create(topic, want)
        if got != want:
            raise LogError(f"SHARD_TOPICS: {topic} has {got} partitions, not {want} ({names.movements} has {n}, "
                           f"the chain's balances topics {sources}): delete the {names.base} topics and the "
                           "workers' shards/ directories, then start the workers again")
    return n


@dataclass
class Progress:
    """What the deriver of one source partition (a derive lease) has written, as its newest
    progress record says: the source offset it has derived up to, per repartition partition the end
    of the rows it had written then, and ``bound``: a height no row it writes later is below (the
    next event's height, or the tip when it had derived everything), which lets a shard fold the
    rows of all sources in height order (shard.py)."""

    topic: str = ""
    partition: int = 0
    position: int = 0
    ends: list[int] = field(default_factory=list)
    bound: int = 0
    height: int = -1   # the last derived event's height (-1: none yet)
    events: int = 0    # events derived (duplicates of a resumed deriver not counted twice)

    def encode(self) -> bytes:
        return dumps({"source": [self.topic, self.partition], "position": self.position, "ends": self.ends,
                      "bound": self.bound, "height": self.height, "events": self.events})

    @classmethod
    def decode(cls, raw: bytes) -> Progress:
        d: dict[str, Any] = loads(raw)
        t, p = d["source"]
        return cls(t, p, d["position"], list(d["ends"]), d["bound"], d["height"], d["events"])


class ProgressReader:
    """The newest progress record of each derive lease (partition j of the progress topic holds
    lease j's records), read from the partitions' tails."""

    def __init__(self, kafka: KafkaConfig, names: Names, timeout: float = 30.0) -> None:
        from confluent_kafka import Consumer

        self.topic, self.timeout = names.progress, timeout
        self._consumer = Consumer(logged(kafka.librdkafka("consumer", {
            "group.id": f"ledgerlog-progress-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": FETCH_WAIT_MS, "fetch.queue.backoff.ms": 5})))
        self._following: set[int] = set()
        self._ended: set[int] = set()  # followed leases read to an end since ``follow``

    @property
    def caught_up(self) -> bool:
        """Has every followed lease been read to an end since ``follow``? Until then the newest
        records ``poll`` gave are not every lease's newest: too low to measure a catch-up by."""
        return self._following <= self._ended

    def follow(self, leases: list[int]) -> None:
        """Read ``leases``' records from a few before their tails on, as ``poll`` is called: one
        assignment kept, no offset requests (what the workers do all along)."""
        from confluent_kafka import TopicPartition as KTP

        c = self._consumer
        starts = []
        for j in leases:
            low, high = c.get_watermark_offsets(KTP(self.topic, j), timeout=self.timeout)
            starts.append(KTP(self.topic, j, max(low, high - 4)))  # Tansu may list an end below the true one
        c.assign(starts)
        self._following, self._ended = set(leases), set()

    def poll(self, timeout: float) -> dict[int, Progress]:
        """The newest record of each followed lease that wrote one since the last call."""
        from confluent_kafka import KafkaError

        from ledgerlog.engine.log.kafka_client import arrived

        got: dict[int, bytes] = {}
        for m in arrived(self._consumer, 1000, timeout):
            err = m.error()
            if err is None:
                j, value = m.partition(), m.value()
                if j in self._following and value is not None:
                    got[j] = value  # a partition's records come in offset order: the last one stays
            elif err.code() == KafkaError._PARTITION_EOF:
                self._ended.add(m.partition())
            elif err.fatal():
                raise LogError(f"reading {self.topic}: {err}")
        return {j: Progress.decode(raw) for j, raw in got.items()}

    def latest(self, lease: int = 0) -> Progress | None:
        return self.latest_of([lease]).get(lease)

    def latest_of(self, leases: list[int]) -> dict[int, Progress]:
        """The newest record of each of ``leases`` that has one. A tail is read from a few records
        before the listed end to the partition's EOF (Tansu may list an end below the true one),
        further back when that window holds no record."""
        from confluent_kafka import TopicPartition as KTP

        c = self._consumer
        marks = {j: c.get_watermark_offsets(KTP(self.topic, j), timeout=self.timeout) for j in leases}
        window = 4
        todo = {j: max(low, high - window) for j, (low, high) in marks.items() if high > low}
        out: dict[int, Progress] = {}
        while todo:
            found = self._tails(todo)
            out.update({j: Progress.decode(raw) for j, raw in found.items()})
            window *= 4
            todo = {j: max(marks[j][0], marks[j][1] - window) for j, start in todo.items()
                    if j not in found and start > marks[j][0]}
        return out

    def _tails(self, starts: dict[int, int]) -> dict[int, bytes]:
        """The last record of each partition read from its start offset to its EOF."""
        from confluent_kafka import KafkaError
        from confluent_kafka import TopicPartition as KTP

        from ledgerlog.engine.log.kafka_client import arrived

        c = self._consumer
        c.assign([KTP(self.topic, j, o) for j, o in starts.items()])
        last: dict[int, bytes] = {}
        left = set(starts)
        deadline = time.monotonic() + self.timeout
        try:
            while left:
                for m in arrived(c, 500, 0.2):
                    err = m.error()
                    if err is None:
                        j, value = m.partition(), m.value()
                        if j is not None and value is not None:
                            last[j] = value
                    elif err.code() == KafkaError._PARTITION_EOF:
                        left.discard(m.partition())
                    else:
                        raise LogError(f"reading {self.topic}: {err}")
                if time.monotonic() > deadline:
                    raise LogError(f"reading {self.topic}: no end within {self.timeout:.0f} s")
        finally:
            c.unassign()
        return last

    def close(self) -> None:
        self._consumer.close()
