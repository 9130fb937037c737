"""The per-partition Merkle trees the log keeps (engine/logtree.py, PROTOCOL.md §9): equal to a
tree built from the records, for every size, through reopen, a refused write and a log written
before trees were kept; and with offsets that have gaps (Kafka)."""
from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlog.engine import storekeys as K
from ledgerlog.engine.errors import ProofError, StorageError
from ledgerlog.engine.log.base import LogRecord, Record
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.engine.log.memory import MemoryLog
from ledgerlog.engine.logtree import CHUNK, Trees, has_tree, leaf_input, leaf_of
from ledgerlog.engine.merkle import MemoryTree, verify_consistency, verify_inclusion

TOPICS = {"ledger.blocks": 1, "pool.shares": 3, "_checkpoints": 1, "_schemas": 1}


def _reference(log, topic: str, p: int) -> MemoryTree:
    return MemoryTree(leaf_of(r.key, r.timestamp, r.value) for r in log.scan(topic, p))


def _assert_matches(log, topic: str, p: int, sizes=None) -> None:
    ref = _reference(log, topic, p)
    trees = log.trees
    st_ = trees.state(topic, p)
    assert (st_.size, st_.root()) == (ref.size, ref.root())
    for n in sizes or range(1, ref.size + 1):
        root = ref.root(n)
        assert trees.root(topic, p, n) == root
        for i in {0, n // 2, n - 1}:
            offset, leaf, path = trees.inclusion(topic, p, i, n)
            assert (offset, leaf, path) == (i, ref.leaves[i], ref.inclusion(i, n))
            verify_inclusion(i, n, leaf, path, root)
        for m in {1, max(1, n // 3), n}:
            proof = trees.consistency(topic, p, m, n)
            assert proof == ref.consistency(m, n)
            verify_consistency(m, n, proof, ref.root(m), root)


def test_a_leaf_is_the_records_bytes_as_the_protocol_writes_them():
    key, ts, value = b"pool/3", 1_700_000_000_123, b"\x00\x00\x00\x00\x07avro"
    want = struct.pack(">I", 6) + key + struct.pack(">Q", ts) + value
    assert leaf_input(key, ts, value) == want
    assert leaf_of(key, ts, value) == hashlib.sha256(b"\x00" + want).digest()
    assert leaf_of(b"", -1, b"") == hashlib.sha256(b"\x00" + b"\x00" * 4 + b"\xff" * 8).digest()


def test_the_schema_registry_and_the_heads_have_no_tree():
    assert not has_tree("_schemas") and not has_tree("_checkpoints")
    assert has_tree("_genesis") and has_tree("ledger.keys") and has_tree("pool.shares")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12))
def test_trees_equal_a_tree_built_from_the_records(tmp_path_factory, batches):
    path = tmp_path_factory.mktemp("log") / "log"
    with EmbeddedLog(str(path), sync=False) as log:
        log.create_topics(TOPICS)
        for b, n in enumerate(batches):
            log.append([Record("pool.shares", b"w%d" % (i % 5), b"v%d-%d" % (b, i), 1000 + i) for i in range(n)]
                       + [Record("_checkpoints", b"x", b"head", 0, 0)])
        for p in range(3):
            _assert_matches(log, "pool.shares", p)
        assert log.trees.state("_checkpoints", 0).size == 0  # no tree: not a leaf source


def test_trees_survive_reopen_without_being_recomputed(tmp_path):
    path = str(tmp_path / "log")
    with EmbeddedLog(path, sync=False) as log:
        log.create_topics(TOPICS)
        log.append([Record("ledger.blocks", b"c", b"b%d" % i, i, 0) for i in range(3 * CHUNK + 5)])
        before = log.trees.states()
    with EmbeddedLog(path, read_only=True) as log:
        assert log.trees.states() == before
        _assert_matches(log, "ledger.blocks", 0)


def test_a_refused_write_leaves_the_tree_as_it_was(tmp_path, monkeypatch):
    with EmbeddedLog(str(tmp_path / "log"), sync=False) as log:
        log.create_topics(TOPICS)
        log.append([Record("ledger.blocks", b"c", b"one", 1, 0)])
        before = log.trees.state("ledger.blocks", 0)

        def refuse(wb):
            raise StorageError("disk full")
        monkeypatch.setattr(log, "_write", refuse)
        with pytest.raises(StorageError):
            log.append([Record("ledger.blocks", b"c", b"lost", 2, 0)])
        assert log.trees.state("ledger.blocks", 0) == before
        monkeypatch.undo()
        log.append([Record("ledger.blocks", b"c", b"two", 2, 0)])
        _assert_matches(log, "ledger.blocks", 0)


def test_a_log_written_before_trees_grows_them_once_at_a_writable_open(tmp_path):
    path = str(tmp_path / "log")
    with EmbeddedLog(path, sync=False) as log:
        log.create_topics(TOPICS)
        log.append([Record("pool.shares", b"w", b"v%d" % i, i, 1) for i in range(2 * CHUNK + 3)])
        want = log.trees.state("pool.shares", 1)
        db = log.raw()
        for key in [k for k in db.keys() if k.startswith((K.TREE_STATE_PREFIX, K.TREE_NODE_PREFIX))]:  # noqa: SIM118 - Rdict iterates items
            del db[key]  # as an older version left it
    with EmbeddedLog(path, read_only=True) as log:
        assert log.trees.state("pool.shares", 1).size == 0
        with pytest.raises(ProofError, match="beyond"):
            log.trees.inclusion("pool.shares", 1, 0, 1)
    with EmbeddedLog(path, sync=False) as log:
        assert log.trees.state("pool.shares", 1) == want
        _assert_matches(log, "pool.shares", 1)


def test_proofs_beyond_the_tree_are_refused(tmp_path):
    with EmbeddedLog(str(tmp_path / "log"), sync=False) as log:
        log.create_topics(TOPICS)
        log.append([Record("ledger.blocks", b"c", b"b", 1, 0)] * 3)
        t = log.trees
        for bad in (lambda: t.inclusion("ledger.blocks", 0, 3, 3), lambda: t.inclusion("ledger.blocks", 0, 0, 4),
                    lambda: t.inclusion("ledger.blocks", 0, -1, 3), lambda: t.consistency("ledger.blocks", 0, 0, 3),
                    lambda: t.consistency("ledger.blocks", 0, 4, 3), lambda: t.consistency("ledger.blocks", 0, 1, 4),
                    lambda: t.index_of("ledger.blocks", 0, 3), lambda: t.root("ledger.blocks", 0, 9),
                    lambda: t.inclusion("_checkpoints", 0, 0, 1)):
            with pytest.raises(ProofError):
                bad()


def test_the_memory_log_keeps_the_same_trees():
    log = MemoryLog()
    log.create_topics(TOPICS)
    for b in range(7):
        log.append([Record("pool.shares", b"k", b"%d.%d" % (b, i), i, 2) for i in range(b * 5)])
    _assert_matches(log, "pool.shares", 2)


class _GappedPartition:
    """A partition whose offsets have gaps, as transaction markers leave them on Kafka."""

    def __init__(self, n: int) -> None:
        self.records = [LogRecord("t", 0, 3 * i + 1, b"k", b"v%d" % i, i) for i in range(n)]
        self.store: dict[bytes, bytes] = {}
        self.trees = Trees(self.store.get, self.read, contiguous=False)
        self.trees.load([("t", 0)])

    def read(self, topic, partition, offset, max_records):
        return [r for r in self.records if r.offset >= offset][:max_records]

    def grow(self, upto: int) -> None:
        fold = self.trees.fold("t", 0)
        start = self.trees.state("t", 0).size
        fold.extend((r.offset, r.key, r.timestamp, r.value) for r in self.records[start:upto])
        self.store.update(fold.writes())
        self.trees.commit({("t", 0): fold.state})


def test_trees_over_offsets_with_gaps_map_index_and_offset():
    part = _GappedPartition(3 * CHUNK + 7)
    part.grow(CHUNK + 2)
    part.grow(len(part.records))
    ref = MemoryTree(leaf_of(r.key, r.timestamp, r.value) for r in part.records)
    n = ref.size
    assert part.trees.state("t", 0).root() == ref.root()
    assert part.trees.state("t", 0).next_offset == part.records[-1].offset + 1
    for i, rec in enumerate(part.records):
        assert part.trees.index_of("t", 0, rec.offset) == i
        offset, leaf, path = part.trees.inclusion("t", 0, i, n)
        assert (offset, leaf) == (rec.offset, ref.leaves[i])
        verify_inclusion(i, n, leaf, path, ref.root())
    with pytest.raises(ProofError, match="no data record"):
        part.trees.index_of("t", 0, 2)  # a marker's offset
    for m in range(1, n + 1, 5):
        verify_consistency(m, n, part.trees.consistency("t", 0, m, n), ref.root(m), ref.root())
