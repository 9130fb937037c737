"""The log contract (engine.log.base.Log), one suite run against every backend.

As in eventsourcing's persistence tests, the contract is a class (LogContract, plus the
PersistenceContract and ReadOnlyContract mixins for the backends that have those) that each
backend's Test class subclasses, saying how its log is opened. The Kafka backend runs on the
session's broker (tests/kafka_broker.py: Tansu on loopback, or LEDGERLOG_TEST_KAFKA); each test
gets its own topic and group prefix, so tests sharing the broker never see each other's topics.
Properties only the embedded log has are capability flags of the log (``contiguous_offsets``,
``keeps_state``).
"""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine.errors import LogError
from ledgerlog.engine.log import Log, MemoryLog, Record
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.engine.partitioner import partition_for

_RUN = uuid.uuid4().hex[:8]  # a broker given by LEDGERLOG_TEST_KAFKA may outlive this session

TOPICS = {"one": 1, "three": 3, "five": 5}


def rec(topic: str, key: bytes = b"k", value: bytes = b"v", *, ts: int = 1,
        partition: int | None = 0) -> Record:
    return Record(topic, key, value, ts, partition)


def everything(log: Log) -> dict[tuple[str, int], list[tuple[int, bytes, bytes, int]]]:
    return {(t, p): [(r.offset, r.key, r.value, r.timestamp) for r in log.scan(t, p)]
            for t, n in log.topics().items() for p in range(n)}


def _fill(log: Log) -> None:
    log.append([rec("three", b"k%d" % i, b"v%d" % i, ts=i, partition=None) for i in range(20)],
               state={b"tip": b"7"} if log.keeps_state else None)
    log.commit_positions("g", {("three", 0): 2, ("three", 2): 1})


class LogContract:
    """What every Log keeps. A backend's Test class subclasses it and defines ``open_log``; the
    properties only some logs have are their capability flags (``contiguous_offsets``, ``keeps_state``)."""

    def open_log(self, tmp_path, read_only: bool = False, broker: str | None = None) -> Log:
        """A log of the backend over ``tmp_path``'s storage (the same storage each call)."""
        raise NotImplementedError

    @pytest.fixture
    def broker(self) -> str | None:
        """The Kafka broker the backend needs (none by default)."""
        return None

    @pytest.fixture
    def log_factory(self, tmp_path, broker) -> Iterator[Callable[..., Log]]:
        """``open(read_only=False)``: a log of the backend under test; all closed at teardown."""
        opened: list[Log] = []

        def open_(read_only: bool = False) -> Log:
            log = self.open_log(tmp_path, read_only=read_only, broker=broker)
            opened.append(log)
            return log

        yield open_
        for log in reversed(opened):
            log.close()

    @pytest.fixture
    def log(self, log_factory) -> Log:
        lg = log_factory()
        lg.create_topics(TOPICS)
        return lg

    # -- topics ---------------------------------------------------------------------------

    def test_create_topics_is_idempotent(self, log):
        assert log.topics() == TOPICS
        log.create_topics(TOPICS)
        log.create_topics({"three": 3})
        assert log.topics() == TOPICS
        log.create_topics({"new": 2, "one": 1})
        assert log.topics() == {**TOPICS, "new": 2}
        assert log.end_offsets("new") == [0, 0]

    def test_create_topics_refuses_another_partition_count(self, log):
        log.append([rec("three", partition=1)])
        with pytest.raises(LogError):
            log.create_topics({"three": 4})
        with pytest.raises(LogError):
            log.create_topics({"one": 2})
        assert log.topics() == TOPICS
        assert log.end_offsets("three") == [0, 1, 0]

    def test_create_topics_refuses_zero_partitions(self, log):
        with pytest.raises(LogError):
            log.create_topics({"empty": 0})
        assert "empty" not in log.topics()

    # -- append and read ------------------------------------------------------------------

    def test_append_across_topics_returns_placements_in_order(self, log):
        out = log.append([rec("three", b"a", partition=2), rec("one", b"b"), rec("three", b"c", partition=2),
                          rec("five", b"d", partition=4), rec("three", b"e", partition=0)])
        assert out == [(2, 0), (0, 0), (2, 1), (4, 0), (0, 0)]
        assert log.end_offsets("three") == [1, 0, 2]
        assert log.end_offsets("one") == [1]
        assert log.end_offsets("five") == [0, 0, 0, 0, 1]
        assert [r.key for r in log.read("three", 2, 0)] == [b"a", b"c"]

    def test_offsets_grow_per_partition_contiguous_where_the_backend_says(self, log):
        seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
        for batch in range(6):
            out = log.append([rec("three", b"%d-%d" % (batch, i), partition=(batch + i) % 3)
                              for i in range(batch + 1)])
            for p, off in out:
                seen[p].append(off)
        for p, offs in seen.items():
            if log.contiguous_offsets:
                assert offs == list(range(len(offs)))
            else:  # gaps allowed (Kafka: a transaction marker after each append), order is not
                assert offs == sorted(set(offs)) and offs[0] >= 0
            assert log.end_offsets("three")[p] == offs[-1] + 1  # the end follows the last record
            assert [r.offset for r in log.read("three", p, 0)] == offs
            assert [r.offset for r in log.scan("three", p, batch=2)] == offs
            assert [r.offset for r in log.scan("three", p, offs[1])] == offs[1:]

    def test_records_keep_key_value_timestamp(self, log):
        log.append([rec("one", b"", b"", ts=0), rec("one", b"\x00key\xff", b"\x00" * 300, ts=1_700_000_000_123),
                    rec("one", b"k" * 1000, bytes(range(256)), ts=-5)])
        got = log.read("one", 0, 0)
        assert [(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp) for r in got] == [
            ("one", 0, 0, b"", b"", 0),
            ("one", 0, 1, b"\x00key\xff", b"\x00" * 300, 1_700_000_000_123),
            ("one", 0, 2, b"k" * 1000, bytes(range(256)), -5),
        ]

    def test_empty_append_changes_nothing(self, log):
        before = everything(log)
        assert log.append([]) == []
        assert everything(log) == before

    def test_read_from_offset_with_max_records(self, log):
        log.append([rec("one", value=b"%d" % i) for i in range(10)])
        assert [r.value for r in log.read("one", 0, 3, max_records=4)] == [b"3", b"4", b"5", b"6"]
        assert [r.offset for r in log.read("one", 0, 8)] == [8, 9]
        assert log.read("one", 0, 10) == []
        assert log.read("one", 0, 50) == []
        assert len(log.read("one", 0, 0, max_records=1)) == 1
        assert log.read("one", 0, 0, max_records=0) == []
        assert log.read("one", 0, 0, max_records=-1) == []
        assert log.read("one", 0, 5, max_records=-3) == []

    def test_read_does_not_cross_partitions_or_topics(self, log):
        log.append([rec("three", b"p0", partition=0), rec("three", b"p1", partition=1),
                    rec("five", b"f0", partition=0), rec("one", b"o")])
        assert [r.key for r in log.read("three", 0, 0)] == [b"p0"]
        assert [r.key for r in log.read("three", 1, 0)] == [b"p1"]
        assert log.read("three", 2, 0) == []
        assert [r.key for r in log.read("five", 0, 0)] == [b"f0"]

    def test_scan_reads_a_range_in_batches(self, log):
        log.append([rec("three", b"%d" % i, partition=1) for i in range(25)])
        assert [r.offset for r in log.scan("three", 1, batch=4)] == list(range(25))
        assert [r.offset for r in log.scan("three", 1, 7, 12, batch=2)] == [7, 8, 9, 10, 11]
        assert [r.offset for r in log.scan("three", 1, 20, batch=3)] == [20, 21, 22, 23, 24]
        assert list(log.scan("three", 1, 25)) == []
        assert list(log.scan("three", 0)) == []

    def test_placement_by_murmur2_of_the_key(self, log):
        keys = [b"alice", b"bob", b"", b"\xff" * 7] + [b"key-%d" % i for i in range(40)]
        out = log.append([rec("five", k, partition=None) for k in keys])
        assert [p for p, _ in out] == [partition_for(k, 5) for k in keys]
        assert len({p for p, _ in out}) > 1  # the keys do spread
        for k, (p, off) in zip(keys, out):
            [got] = log.read("five", p, off, 1)
            assert got.key == k
        assert all(p == 0 for p, _ in log.append([rec("one", k, partition=None) for k in keys]))

    def test_explicit_partition_is_honoured(self, log):
        key = b"alice"
        other = (partition_for(key, 5) + 2) % 5
        assert log.append([rec("five", key, partition=other)]) == [(other, 0)]
        assert [r.key for r in log.read("five", other, 0)] == [key]

    # each backend class runs this one inherited method: examples saved for one replay fine on another
    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
    @given(batches=st.lists(st.lists(st.tuples(st.binary(max_size=8), st.none() | st.integers(0, 2)),
                                     max_size=6), max_size=5))
    def test_random_batches_are_placed_and_numbered(self, log, batches):
        ends = log.end_offsets("three")
        for batch in batches:
            out = log.append([rec("three", k, b"%d" % i, partition=p) for i, (k, p) in enumerate(batch)])
            for (k, p), (got_p, off) in zip(batch, out):
                assert got_p == (partition_for(k, 3) if p is None else p)
                assert off == ends[got_p] if log.contiguous_offsets else off >= ends[got_p]
                ends[got_p] = off + 1
                assert log.read("three", got_p, off, 1)[0].key == k
        assert log.end_offsets("three") == ends

    # -- errors ---------------------------------------------------------------------------

    def test_unknown_topic_or_partition_is_a_log_error(self, log):
        with pytest.raises(LogError):
            log.append([rec("nope")])
        with pytest.raises(LogError):
            log.append([rec("three", partition=3)])
        with pytest.raises(LogError):
            log.append([rec("three", partition=-1)])
        with pytest.raises(LogError):
            log.append([rec("nope", partition=None)])
        with pytest.raises(LogError):
            log.read("nope", 0, 0)
        with pytest.raises(LogError):
            log.read("three", 3, 0)
        with pytest.raises(LogError):
            log.read("three", -1, 0)
        with pytest.raises(LogError):
            log.end_offsets("nope")
        with pytest.raises(LogError):
            list(log.scan("nope", 0))

    @pytest.mark.parametrize("bad", [rec("nope"), rec("three", partition=7), rec("one", partition=-1)])
    def test_a_failing_append_changes_nothing(self, log, bad):
        if log.keeps_state:
            log.append([], state={b"keep": b"1"})
        log.append([rec("three", b"x", partition=1)])
        records, offsets = everything(log), {t: log.end_offsets(t) for t in log.topics()}
        state = list(log.state_items(b"")) if log.keeps_state else None
        batch = [rec("three", b"a", partition=1), rec("one", b"b"), bad, rec("five", b"c", partition=None)]
        with pytest.raises(LogError):
            log.append(batch, state={b"new": b"2", b"keep": None} if log.keeps_state else None)
        assert everything(log) == records
        assert {t: log.end_offsets(t) for t in log.topics()} == offsets
        if log.keeps_state:
            assert list(log.state_items(b"")) == state
        # and the log still works afterwards, numbering on from where it was
        [(p, off)] = log.append([rec("three", b"y", partition=1)])
        assert p == 1 and (off == 1 if log.contiguous_offsets else off > 0)
        assert [r.key for r in log.read("three", 1, 0)] == [b"x", b"y"]

    # -- consumer groups ------------------------------------------------------------------

    def test_consumer_group_positions(self, log):
        assert log.positions("g") == {}
        log.commit_positions("g", {("three", 0): 5, ("three", 1): 7, ("one", 0): 0})
        assert log.positions("g") == {("three", 0): 5, ("three", 1): 7, ("one", 0): 0}
        log.commit_positions("g", {("three", 0): 9, ("five", 4): 1})
        assert log.positions("g") == {("three", 0): 9, ("three", 1): 7, ("one", 0): 0, ("five", 4): 1}
        log.commit_positions("g2", {("three", 2): 3})
        assert log.positions("g2") == {("three", 2): 3}
        assert ("three", 2) not in log.positions("g")
        assert log.positions("g-other") == {}

    # -- write-side state -----------------------------------------------------------------

    def test_state_written_and_deleted_with_appends(self, log):
        if not log.keeps_state:
            pytest.skip("backend keeps no write-side state")
        assert log.state_get(b"a/1") is None
        assert log.append([], state={b"a/1": b"one", b"a/2": b"two", b"b/1": b"bee"}) == []
        assert log.state_get(b"a/1") == b"one"
        assert list(log.state_items(b"a/")) == [(b"a/1", b"one"), (b"a/2", b"two")]
        assert list(log.state_items(b"")) == [(b"a/1", b"one"), (b"a/2", b"two"), (b"b/1", b"bee")]
        out = log.append([rec("one", b"r")], state={b"a/1": None, b"a/2": b"TWO", b"a/3": b"three"})
        assert out == [(0, 0)]
        assert log.state_get(b"a/1") is None
        assert list(log.state_items(b"a/")) == [(b"a/2", b"TWO"), (b"a/3", b"three")]
        log.append([], state={b"missing": None})  # deleting what is not there is fine
        assert log.state_get(b"missing") is None

    def test_state_read_many_at_once_in_order(self, log):
        if not log.keeps_state:
            pytest.skip("backend keeps no write-side state")
        log.append([], state={b"a/1": b"one", b"a/2": b"two"})
        assert log.state_get_many([]) == []
        assert log.state_get_many([b"a/2", b"nope", b"a/1", b"a/2"]) == [b"two", None, b"one", b"two"]


class PersistenceContract:
    """For backends whose data a new instance sees after a closed one wrote it."""

    def test_data_survives_close_and_reopen(self, log_factory, log):
        _fill(log)
        want = (everything(log), {t: log.end_offsets(t) for t in TOPICS}, log.positions("g"),
                list(log.state_items(b"")) if log.keeps_state else None)
        log.close()
        again = log_factory()
        assert again.topics() == TOPICS
        assert (everything(again), {t: again.end_offsets(t) for t in TOPICS}, again.positions("g"),
                list(again.state_items(b"")) if again.keeps_state else None) == want
        p, off = again.append([rec("three", partition=0)])[0]
        assert p == 0 and (off == want[1]["three"][0] if again.contiguous_offsets else off >= want[1]["three"][0])
        assert again.end_offsets("three")[0] == off + 1


class ReadOnlyContract:
    """For backends that open read-only beside an open writer."""

    def test_read_only_open_sees_data_and_refuses_writes(self, log_factory, log):
        _fill(log)
        want = everything(log)
        ro = log_factory(read_only=True)  # beside the open writer: it takes no lock
        assert ro.topics() == TOPICS
        assert everything(ro) == want
        assert ro.positions("g") == log.positions("g")
        if ro.keeps_state:
            assert ro.state_get(b"tip") == b"7"
        with pytest.raises(LogError):
            ro.append([rec("one")])
        with pytest.raises(LogError):
            ro.append([], state={b"tip": b"8"})
        with pytest.raises(LogError):
            ro.commit_positions("g", {("one", 0): 1})
        with pytest.raises(LogError):
            ro.create_topics({"brand-new": 1})
        log.close()
        ro2 = log_factory(read_only=True)
        assert everything(ro2) == want
        assert ro2.end_offsets("one") == [0]


class TestMemoryLog(LogContract):
    def open_log(self, tmp_path, read_only: bool = False, broker: str | None = None) -> Log:
        return MemoryLog()


class TestEmbeddedLog(LogContract, PersistenceContract, ReadOnlyContract):
    def open_log(self, tmp_path, read_only: bool = False, broker: str | None = None) -> Log:
        return EmbeddedLog(str(tmp_path / "log"), read_only=read_only)


@pytest.mark.kafka
class TestKafkaLog(LogContract, PersistenceContract, ReadOnlyContract):
    @pytest.fixture
    def broker(self, kafka_bootstrap: str) -> str:  # noqa: F811 - the session fixture
        return kafka_bootstrap

    def open_log(self, tmp_path, read_only: bool = False, broker: str | None = None) -> Log:
        from ledgerlog.engine.log.kafka import KafkaLog
        test = hashlib.blake2b(str(tmp_path).encode(), digest_size=5).hexdigest()
        return KafkaLog(broker or "", read_only=read_only, sync=False, **{
            "ledgerlog.topic_prefix": f"contract-{_RUN}-{test}.",
            "ledgerlog.state_dir": str(tmp_path / "kafka-state")})
