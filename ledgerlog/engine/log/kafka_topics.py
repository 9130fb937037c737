"""The Kafka backend's admin side: listing and creating topics (retention off: the log is the
source of truth), listing end offsets, and consumer-group positions, committed and listed without
joining the group (no rebalance, none of Tansu's join delay)."""
from __future__ import annotations

import time
from collections.abc import Mapping

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
)
from confluent_kafka import TopicPartition as KTP
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from ..errors import ConfigError, LogError
from ..topics import DEFAULT_PARTITIONS
from .base import TopicPartition
from .kafka_client import Broker, kafka_error

__all__ = ["TOPIC_CONFIG", "Topics"]

#: Set explicitly on every topic created (Tansu reports only configs that were set explicitly).
TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete",
                "message.timestamp.type": "CreateTime"}


def _another_chains(name: str) -> bool:
    """Is ``name`` (this log's prefix taken off) a topic of another chain on the same cluster, one
    with a longer prefix (``m5.ledger.blocks`` seen by a chain without one)? Not this chain's: it
    got trees and signed heads, and ``verify`` found them mismatched."""
    return name not in DEFAULT_PARTITIONS and any(name.endswith("." + t) for t in DEFAULT_PARTITIONS)


class Topics:
    """Topics, end offsets and group positions of one log (names without the prefix)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        try:  # the first client a log makes: a [kafka] setting librdkafka refuses is found here
            self.admin = AdminClient(broker.client_conf("admin"))
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"kafka {broker.bootstrap}: the client refuses the [kafka] settings of config.toml "
                              f"({exc}); fix or remove the setting it names") from exc
        self.known: dict[str, int] = {}
        self._groups: dict[str, Consumer] = {}

    # -- topics -----------------------------------------------------------------------------
    def fetch(self) -> dict[str, int]:
        """Topic -> partition count, as the broker lists them now (and remembered)."""
        b = self.broker

        def fetch() -> dict[str, int]:
            md = self.admin.list_topics(timeout=b.timeout)
            out = {}
            for name, t in md.topics.items():
                if name.startswith("__") or not name.startswith(b.prefix) or t.error is not None:
                    continue
                rest = name[len(b.prefix):]
                if rest and not _another_chains(rest):
                    out[rest] = len(t.partitions)
            return out
        self.known = b.retry("listing topics", fetch)
        return dict(self.known)

    def partition_count(self, topic: str) -> int:
        n = self.known.get(topic)
        if n is None:
            n = self.fetch().get(topic)
            if n is None:
                raise LogError(f"unknown topic {topic!r}")
        return n

    def check_partition(self, topic: str, partition: int) -> None:
        if not 0 <= partition < self.partition_count(topic):
            raise LogError(f"unknown topic partition {topic}[{partition}]")

    def create(self, partitions: Mapping[str, int]) -> None:
        """Create missing topics; an existing topic with another partition count is an error."""
        b = self.broker
        for topic, n in partitions.items():
            if n < 1:
                raise LogError(f"topic {topic} needs at least one partition")
        have = self.fetch()
        for topic, n in partitions.items():
            if topic in have and have[topic] != n:
                raise LogError(f"topic {topic} exists with {have[topic]} partitions, not {n}")
        missing = {t: n for t, n in partitions.items() if t not in have}
        if not missing:
            return
        new = [NewTopic(b.real(t), num_partitions=n, replication_factor=b.config.replication,
                        config=dict(TOPIC_CONFIG)) for t, n in missing.items()]
        futures = b.retry("creating topics", lambda: self.admin.create_topics(
            new, operation_timeout=b.timeout, request_timeout=b.timeout))
        for real, fut in futures.items():
            try:
                fut.result(timeout=b.timeout)
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise b.fail(f"creating topic {real}", exc) from exc
        deadline = time.monotonic() + b.timeout
        while True:  # metadata may lag the creation
            have = self.fetch()
            if all(have.get(t) == n for t, n in missing.items()):
                return
            wrong = {t: have[t] for t, n in missing.items() if t in have and have[t] != n}
            if wrong:
                raise LogError(f"topics exist with other partition counts: {wrong}")
            if time.monotonic() > deadline:
                raise LogError(f"kafka {b.bootstrap}: topics {sorted(missing)} not in the metadata "
                               f"after {b.timeout:.0f} s")
            time.sleep(0.05)

    def list_offsets(self, topic: str, n: int, committed: bool = True, earliest: bool = False) -> list[int]:
        """The broker's end offsets: last stable offsets (read_committed) or high watermarks; with
        ``earliest``, the low watermarks (where a partition starts after DeleteRecords)."""
        b = self.broker
        real = b.real(topic)
        level = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED
        spec = OffsetSpec.earliest() if earliest else OffsetSpec.latest()

        def query() -> list[int]:
            futures = self.admin.list_offsets({KTP(real, p): spec for p in range(n)},
                                              isolation_level=level, request_timeout=b.timeout)
            got = {tp.partition: f.result(timeout=b.timeout).offset for tp, f in futures.items()}
            return [got[p] for p in range(n)]
        return b.retry(f"listing end offsets of {topic}", query)

    # -- consumer groups ----------------------------------------------------------------------
    def _group(self, group: str) -> Consumer:
        c = self._groups.get(group)
        if c is None:
            conf = self.broker.client_conf("consumer", {"group.id": self.broker.real(group),
                                                        "enable.auto.commit": False})
            try:
                c = self._groups[group] = Consumer(conf)
            except (KafkaException, ValueError, TypeError) as exc:
                raise self.broker.fail("creating the consumer", exc) from exc
        return c

    def commit_positions(self, group: str, positions: Mapping[TopicPartition, int]) -> None:
        """Commit a group's offsets without joining it."""
        b = self.broker
        if not positions:
            return
        for topic, p in positions:
            self.check_partition(topic, p)
        offsets = [KTP(b.real(t), p, off) for (t, p), off in positions.items()]
        c = self._group(group)
        got = b.retry(f"committing positions of group {group}",
                      lambda: c.commit(offsets=offsets, asynchronous=False))
        bad = [str(tp.error) for tp in got or [] if tp.error is not None]
        if bad:
            raise LogError(f"kafka {b.bootstrap}: committing positions of group {group}: {bad[:3]}")

    def positions(self, group: str) -> dict[TopicPartition, int]:
        """A group's committed next offsets ({} for a group the broker does not know)."""
        b = self.broker

        def query() -> list[KTP]:
            futures = self.admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(b.real(group))], request_timeout=b.timeout)
            return [tp for f in futures.values() for tp in f.result(timeout=b.timeout).topic_partitions]
        out = {}
        try:
            listed = b.retry(f"reading positions of group {group}", query)
        except LogError as exc:
            if isinstance(exc.__cause__, KafkaException) and (err := kafka_error(exc.__cause__)) is not None \
                    and err.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return {}
            raise
        for tp in listed:
            if tp.offset >= 0 and tp.topic.startswith(b.prefix) and tp.error is None:
                out[(tp.topic[len(b.prefix):], tp.partition)] = tp.offset
        return out

    def close(self) -> None:
        for c in self._groups.values():
            try:
                c.close()
            except (KafkaException, RuntimeError):
                pass
        self._groups.clear()
