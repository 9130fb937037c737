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
from ledgerlog.engine.log.kafka_config import KafkaConfig

from .repartition import Names

__all__ = ["Progress", "ProgressReader", "ensure_topics"]


def ensure_topics(kafka: KafkaConfig, names: Names, partitions: int) -> int:
    """Create the repartition topic (``partitions`` unless it exists: then its own count, which is
    returned), the progress topic and the lease topic (one partition per shard, one for the
    deriver)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from ledgerlog.engine.log.kafka import TOPIC_CONFIG

    admin = AdminClient(kafka.librdkafka("admin"))

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
    create(names.progress, 1)
    leases = create(names.leases, n + 1)
    if leases != n + 1:
        raise LogError(f"lease topic {names.leases} has {leases} partitions, not {n + 1} "
                       f"({names.movements} has {n}): delete it, it holds no records")
    return n


@dataclass
class Progress:
    """What the deriver has written, as one progress record says: the source positions it has
    derived up to, and per repartition partition the end of what it had written then."""

    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)
    height: int = 0
    events: int = 0

    def encode(self) -> bytes:
        return dumps({"positions": sorted([t, p, o] for (t, p), o in self.positions.items()),
                      "ends": self.ends, "height": self.height, "events": self.events})

    @classmethod
    def decode(cls, raw: bytes) -> Progress:
        d: dict[str, Any] = loads(raw)
        return cls({(t, p): o for t, p, o in d["positions"]}, list(d["ends"]), d["height"], d["events"])


class ProgressReader:
    """The newest progress record (read from the tail of the one-partition progress topic)."""

    def __init__(self, kafka: KafkaConfig, names: Names, timeout: float = 30.0) -> None:
        from confluent_kafka import Consumer

        self.topic, self.timeout = names.progress, timeout
        self._consumer = Consumer(kafka.librdkafka("consumer", {
            "group.id": f"ledgerlog-progress-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 2, "fetch.queue.backoff.ms": 5}))

    def latest(self) -> Progress | None:
        from confluent_kafka import KafkaError
        from confluent_kafka import TopicPartition as KTP

        c = self._consumer
        low, high = c.get_watermark_offsets(KTP(self.topic, 0), timeout=self.timeout)
        if high <= low:
            return None
        start, window = max(low, high - 4), 4
        while True:
            c.assign([KTP(self.topic, 0, start)])
            last: bytes | None = None
            deadline = time.monotonic() + self.timeout
            done = False
            while not done:
                for m in c.consume(500, 0.2):
                    err = m.error()
                    if err is None:
                        last = m.value()
                    elif err.code() == KafkaError._PARTITION_EOF:
                        done = True
                    else:
                        raise LogError(f"reading {self.topic}: {err}")
                if time.monotonic() > deadline:
                    raise LogError(f"reading {self.topic}: no end within {self.timeout:.0f} s")
            c.unassign()
            if last is not None:
                return Progress.decode(last)
            if start == low:
                return None
            window *= 4
            start = max(low, high - window)

    def close(self) -> None:
        self._consumer.close()
