"""engine.partitioner is Kafka's default partitioner, bit for bit (UtilsTest.testMurmur2)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlog.engine.partitioner import murmur2, partition_for

KAFKA_VECTORS = [
    ("21", -973932308),
    ("foobar", -790332482),
    ("a-little-bit-long-string", -985981536),
    ("a-little-bit-longer-string", -1486304829),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ("abc", 479470107),
    ("", 275646681),
]


@pytest.mark.parametrize(("text", "expected"), KAFKA_VECTORS)
def test_murmur2_matches_kafka(text, expected):
    assert murmur2(text.encode()) == expected


def test_partition_of_a_known_key():
    assert partition_for(b"foobar", 50) == 16


def test_partition_uses_kafka_to_positive_not_abs():
    # murmur2("21") is negative; Kafka masks the sign bit (toPositive), it does not negate.
    h = murmur2(b"21")
    assert h < 0
    assert partition_for(b"21", 1000) == (h & 0x7FFFFFFF) % 1000 != abs(h) % 1000


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=64), partitions=st.integers(1, 10_000))
def test_partition_always_in_range(key, partitions):
    h = murmur2(key)
    assert -(1 << 31) <= h < (1 << 31)
    p = partition_for(key, partitions)
    assert 0 <= p < partitions
    assert p == (h & 0x7FFFFFFF) % partitions
    assert partition_for(key, partitions) == p  # deterministic
