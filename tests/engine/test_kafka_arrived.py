"""``arrived``: a Kafka reader takes what its consumer has fetched and waits only for the first
message. librdkafka's ``consume(n, timeout)`` waits the whole timeout unless n messages come, which
cost the sharded workers a tenth of a second at every fold round and every progress hop."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KTP
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine.log.kafka_client import arrived


class _Queue:
    """A consumer over a list of fetched messages that records every wait it is asked for."""

    def __init__(self, fetched: list[str], later: str | None = None) -> None:
        self.fetched, self.later = fetched, later
        self.waits: list[tuple[str, float]] = []

    def consume(self, n: int, timeout: float) -> list[str]:
        self.waits.append(("consume", timeout))
        out, self.fetched = self.fetched[:n], self.fetched[n:]
        return out

    def poll(self, timeout: float) -> str | None:
        self.waits.append(("poll", timeout))
        if self.fetched:
            return self.fetched.pop(0)
        got, self.later = self.later, None
        return got


def test_what_was_fetched_comes_without_a_wait() -> None:
    q = _Queue(["a", "b", "c"])
    assert arrived(q, 2, 5.0) == ["a", "b"]
    assert arrived(q, 2, 5.0) == ["c"]
    assert q.waits == [("consume", 0), ("consume", 0)]


def test_only_the_first_message_is_waited_for() -> None:
    q = _Queue([], later="x")
    assert arrived(q, 100, 5.0) == ["x"]
    assert ("consume", 5.0) not in q.waits and ("poll", 5.0) in q.waits
    assert arrived(q, 100, 0.2) == []
    assert arrived(q, 100, 0) == []  # no wait at all: nothing polled
    assert q.waits[-1] == ("consume", 0)


@pytest.mark.kafka
@pytest.mark.timeout(30)
def test_a_real_consumer_returns_one_message_long_before_its_wait(kafka_bootstrap: str) -> None:  # noqa: F811
    topic = f"arrived-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(20)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    p.produce(topic, b"one")
    assert p.flush(20) == 0
    c: Any = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic, "enable.auto.commit": False})
    try:
        c.assign([KTP(topic, 0, 0)])
        # consume(1000, 600) would hold this message for ten minutes: the test's timeout ends it
        got = arrived(c, 1000, 600)
        assert [m.value() for m in got] == [b"one"]
    finally:
        c.close()
