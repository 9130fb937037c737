"""Chains sharing one Kafka cluster: a chain without a topic prefix does not take another chain's
prefixed topics for its own (it built trees and signed heads for them, and `verify` reported
their trees mismatched)."""
from __future__ import annotations

import uuid

import pytest
from kafka_broker import tansu_or_skip

from ledgerlog.engine import topics as T
from ledgerlog.engine.log.kafka import KafkaLog
from ledgerlog.ops.devtools.tansu import tansu

pytestmark = pytest.mark.kafka


def test_an_unprefixed_chain_leaves_another_chain_s_prefixed_topics_alone(tmp_path) -> None:
    tansu_or_skip()
    with tansu(tmp_path / "broker.log", grace=0) as bootstrap:  # a broker of its own: no other test's topics
        other = KafkaLog(bootstrap, **{"ledgerlog.topic_prefix": f"m{uuid.uuid4().hex[:6]}."})
        plain = KafkaLog(bootstrap)
        try:
            other.create_topics({T.BLOCKS: 1, T.TRANSACTIONS: 2, T.SCHEMAS: 1})
            plain.create_topics({T.BLOCKS: 1, "t": 1})
            assert plain.topics() == {T.BLOCKS: 1, "t": 1}
            assert other.topics() == {T.BLOCKS: 1, T.TRANSACTIONS: 2, T.SCHEMAS: 1}
        finally:
            other.close()
            plain.close()
