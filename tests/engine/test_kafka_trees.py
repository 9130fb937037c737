"""The Merkle trees of a Kafka log (PROTOCOL.md §9; engine/log/kafka_trees.py) equal a MemoryTree
over the records a read_committed reader reads back: roots for every size, inclusion and
consistency proofs that verify, and index_of across the offsets transaction markers take; through
other writers' records (plain, committed and aborted transactions) between this log's own
appends, a reopen with the state dir kept, and a state dir deleted (the trees rebuilt from the
log). A chain on Kafka publishes signed heads on close to the cluster's ``_checkpoints`` whose
roots are those of the records."""
from __future__ import annotations

import shutil
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import AheadOfLogError, ProofError
from ledgerlog.engine.log import Log, Record
from ledgerlog.engine.log.kafka import KafkaLog
from ledgerlog.engine.logtree import CHUNK, has_tree, leaf_of
from ledgerlog.engine.merkle import MemoryTree, verify_consistency, verify_inclusion
from ledgerlog.engine.treehead import check_head_signature
from ledgerlog.ops.devtools.histgen import generate, make_genesis

pytestmark = pytest.mark.kafka

TOPICS = {"t": 2, "u": 1}


def _open(bootstrap: str, prefix: str, state: Any, read_only: bool = False) -> KafkaLog:
    return KafkaLog(bootstrap, read_only=read_only, sync=False,
                    **{"ledgerlog.topic_prefix": prefix, "ledgerlog.state_dir": str(state)})


def _append(log: Log, topic: str, partition: int, n: int, tag: str, ts: int = 1000) -> None:
    """One transaction of ``n`` records (timestamps 0 and below travel in a header)."""
    log.append([Record(topic, b"k%d" % i, f"{tag}-{i}".encode(), ts + i, partition) for i in range(n)])


def _foreign(bootstrap: str, prefix: str, topic: str, partition: int, tag: str, *,
             transaction: str | None = None) -> None:
    """Another writer's records: plain, or in a transaction it commits or aborts."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap}
    if transaction:
        conf["transactional.id"] = f"foreign-{uuid.uuid4().hex[:8]}"
    p = Producer(conf)
    if transaction:
        p.init_transactions(30)
        p.begin_transaction()
    for i in range(3):
        p.produce(prefix + topic, f"{tag}-{i}".encode(), b"f%d" % i, partition, timestamp=5000 + i)
    if transaction == "commit":
        p.commit_transaction(30)
    elif transaction == "abort":
        p.abort_transaction(30)
    else:
        assert p.flush(30) == 0


def _check(log: Log, topic: str, partition: int) -> MemoryTree:
    """The log's tree of a partition is the tree over the records read back: every root,
    sampled inclusion and consistency proofs, and index_of for every record (markers: none)."""
    recs = list(log.scan(topic, partition))
    mt = MemoryTree(leaf_of(r.key, r.timestamp, r.value) for r in recs)
    trees = log.trees
    assert trees is not None
    n = len(recs)
    st = trees.state(topic, partition)
    assert (st.size, st.next_offset) == (n, recs[-1].offset + 1 if recs else 0)
    assert trees.root(topic, partition) == mt.root()
    for size in range(n + 1):
        assert trees.root(topic, partition, size) == mt.root(size), size
    sizes = sorted({s for s in (1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, n - 1, n) if 1 <= s <= n})
    for size in sizes:
        for i in sorted({0, size // 2, size - 1}):
            offset, leaf, path = trees.inclusion(topic, partition, i, size)
            assert (offset, leaf) == (recs[i].offset, mt.leaves[i])
            verify_inclusion(i, size, leaf, path, mt.root(size))
        verify_consistency(size, n, trees.consistency(topic, partition, size, n), mt.root(size), mt.root())
    for i, r in enumerate(recs):
        assert trees.index_of(topic, partition, r.offset) == i
    holes = sorted(set(range(st.next_offset)) - {r.offset for r in recs})  # transaction markers
    for off in holes[:3]:
        with pytest.raises(ProofError):
            trees.index_of(topic, partition, off)
    return mt


def test_trees_follow_transactions_and_other_writers(tmp_path, kafka_bootstrap):  # noqa: F811
    prefix = f"trees-{uuid.uuid4().hex[:10]}."
    log = _open(kafka_bootstrap, prefix, tmp_path / "state")
    try:
        log.create_topics(TOPICS)
        for i, n in enumerate((5, 12, 1, 20)):  # chunks of 16 leaves span transactions
            _append(log, "t", 0, n, f"a{i}")
        _append(log, "t", 1, 3, "b", ts=0)  # timestamp 0: in the header, as read back
        # between this log's own appends: another writer's plain records, a committed and an
        # aborted transaction (Tansu 0.6 still shows aborted records: leaves if they are read)
        _foreign(kafka_bootstrap, prefix, "t", 0, "plain")
        _append(log, "t", 0, 7, "a4")
        _foreign(kafka_bootstrap, prefix, "t", 0, "committed", transaction="commit")
        _foreign(kafka_bootstrap, prefix, "t", 0, "aborted", transaction="abort")
        _append(log, "t", 0, 9, "a5")
        _append(log, "t", 0, 4, "a6")
        _foreign(kafka_bootstrap, prefix, "u", 0, "alone")  # no append of ours follows it
        assert log.trees is not None and log.trees.state("u", 0).size == 0
        log.catch_up_trees()
        keys = {r.key for r in log.scan("t", 0)}
        assert {b"f0", b"k0"} <= keys
        t0 = _check(log, "t", 0)
        assert 2 * CHUNK + 10 <= t0.size < log.trees.state("t", 0).next_offset  # markers took offsets
        _check(log, "t", 1)
        assert log.trees.state("u", 0).size == 3
        assert log.trees.state("t", 1).size == 3
    finally:
        log.close()

    log = _open(kafka_bootstrap, prefix, tmp_path / "state")  # reopened: the stored trees
    try:
        assert log.trees is not None and log.trees.root("t", 0) == t0.root()
        _append(log, "t", 0, 2, "a7")
        t0 = _check(log, "t", 0)
    finally:
        log.close()

    shutil.rmtree(tmp_path / "state")  # the trees are rebuilt from the log
    log = _open(kafka_bootstrap, prefix, tmp_path / "state")
    try:
        assert log.trees is not None and log.trees.state("t", 0).size == t0.size
        assert _check(log, "t", 0).root() == t0.root()
        _foreign(kafka_bootstrap, prefix, "t", 1, "late")
    finally:
        log.close()

    ro = _open(kafka_bootstrap, prefix, tmp_path / "state", read_only=True)
    try:  # a read-only open folds what the store lacks in memory, and writes nothing
        assert ro.trees is not None and ro.trees.state("t", 1).size == 3
        ro.catch_up_trees()
        _check(ro, "t", 1)
        assert ro.trees.state("t", 1).size == 6
    finally:
        ro.close()
    ro = _open(kafka_bootstrap, prefix, tmp_path / "state", read_only=True)
    try:
        assert ro.trees is not None and ro.trees.state("t", 1).size == 3
    finally:
        ro.close()


def test_trees_ahead_of_the_log_are_refused(tmp_path, kafka_bootstrap):  # noqa: F811
    """A state dir whose trees hold more than the cluster's log (another cluster, or one that
    lost records) is refused on a writer's open, as the write-side state is."""
    log = _open(kafka_bootstrap, f"ahead-{uuid.uuid4().hex[:10]}.", tmp_path / "state")
    try:
        log.create_topics(TOPICS)
        _append(log, "t", 0, 3, "x")
    finally:
        log.close()
    other = f"ahead-{uuid.uuid4().hex[:10]}."
    fresh = _open(kafka_bootstrap, other, tmp_path / "other")
    try:
        fresh.create_topics(TOPICS)
    finally:
        fresh.close()
    with pytest.raises(AheadOfLogError, match=r"Merkle trees .* t\[0\] at offset 3, the log ends at 0"):
        _open(kafka_bootstrap, other, tmp_path / "state")


def test_chain_on_kafka_publishes_heads_on_close(tmp_path, kafka_bootstrap):  # noqa: F811
    genesis, keys = make_genesis(31, wallets=6)
    lines = list(generate(genesis, keys, events=240, seed=31))
    cfg = Config(data_dir=str(tmp_path / "data"), log_url=f"kafka://{kafka_bootstrap}", sync=False,
                 ingest_chunk=40, kafka={"ledgerlog.topic_prefix": f"heads-{uuid.uuid4().hex[:10]}."})
    init_chain(cfg, genesis)
    sizes: dict[tuple[str, int], int] = {}
    for part in (lines[:150], lines[150:]):
        with open_chain(cfg) as chain:
            assert chain.admitter.admit(part).rejected == 0
            pubkey = chain.log_pubkey
        with open_chain(cfg, read_only=True) as chain:
            log = chain.log
            heads: dict[tuple[str, int], dict[str, Any]] = {}
            for rec in log.scan(T.CHECKPOINTS, 0):
                signed = chain.codec.decode(T.CHECKPOINTS, rec.value)
                check_head_signature(signed, [pubkey])
                head = signed["head"]
                assert rec.key == f"{head['topic']}/{head['partition']}".encode()
                tp = (head["topic"], head["partition"])
                assert head["tree_size"] >= heads.get(tp, {"tree_size": 0})["tree_size"]
                heads[tp] = head
            grown = {(t, p) for t in log.topics() if has_tree(t) for p, end in enumerate(log.end_offsets(t)) if end}
            assert grown and set(heads) == grown
            assert log.trees is not None
            for (topic, p), head in heads.items():
                recs = list(log.scan(topic, p))
                mt = MemoryTree(leaf_of(r.key, r.timestamp, r.value) for r in recs)
                assert head["chain_id"] == chain.genesis.chain_id
                assert head["tree_size"] == len(recs) == log.trees.state(topic, p).size
                assert bytes.fromhex(head["root_hash"]) == mt.root()
                before = sizes.get((topic, p))
                if before:  # the head before this session's is a prefix of this one
                    verify_consistency(before, len(recs), log.trees.consistency(topic, p, before, len(recs)),
                                       mt.root(before), mt.root())
                sizes[(topic, p)] = len(recs)
    assert any(n > CHUNK for n in sizes.values())
