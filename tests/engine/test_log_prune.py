"""The embedded log's prune (engine/log/embedded.py, engine/prunepoint.py): records below the new
start are gone (reads there raise PRUNED, end offsets stay), the prune point and starts survive a
reopen, a prune is idempotent, and every root, inclusion and consistency proof of any size is what
it was before (the pruned leaves' hashes stand in for their records)."""
from __future__ import annotations

import pytest

from ledgerlog.engine.errors import LogError, PrunedError, PruneUnsupportedError
from ledgerlog.engine.log.base import Record
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.engine.log.memory import MemoryLog
from ledgerlog.engine.merkle import verify_consistency, verify_inclusion
from ledgerlog.engine.prunepoint import PrunePoint

TOPICS = {"pool.shares": 2, "_schemas": 1}
N = 137  # leaves in partition 1: eight full chunks and a partial one
START = 43  # the prune start: inside a chunk (32..47)


def _fill(log: EmbeddedLog) -> None:
    log.create_topics(TOPICS)
    log.append([Record("pool.shares", b"w%d" % (i % 7), b"value-%d" % i, 1000 + i, 1) for i in range(N)])
    log.append([Record("_schemas", b"s", b"{}", 1, 0)])


def _proofs(log: EmbeddedLog) -> dict[str, object]:
    t = log.trees
    out: dict[str, object] = {"roots": [t.root("pool.shares", 1, n) for n in range(N + 1)]}
    out["inclusion"] = [t.inclusion("pool.shares", 1, i, n) for n in (1, 17, START, START + 1, 64, N)
                        for i in (0, min(n - 1, 16), n - 1)]
    out["consistency"] = [t.consistency("pool.shares", 1, m, n) for m in (1, 15, 16, START, START + 5, 100)
                          for n in (m, 64, N) if m <= n]
    return out


def test_a_pruned_log_keeps_its_ends_refuses_reads_below_its_start_and_every_proof(tmp_path):
    path = str(tmp_path / "log")
    with EmbeddedLog(path, sync=False) as log:
        _fill(log)
        before = _proofs(log)
        ends = log.end_offsets("pool.shares")
        point = PrunePoint(9, {("pool.shares", 0): 0, ("pool.shares", 1): START}, {}, (8, "ab" * 32, 5), "archive/h9")
        log.prune(point)
        assert log.end_offsets("pool.shares") == ends
        assert log.start_offsets("pool.shares") == [0, START]
        with pytest.raises(PrunedError, match=r"below height 9.*archive/h9"):
            log.read("pool.shares", 1, START - 1, 5)
        assert [r.offset for r in log.read("pool.shares", 1, START, 2)] == [START, START + 1]
        assert next(iter(log.scan("pool.shares", 1))).offset == START  # scan starts at the log start
        assert _proofs(log) == before
        assert log.raw().get(b"r/pool.shares\x00\x00\x00\x00\x01" + (0).to_bytes(8, "big")) is None
    with EmbeddedLog(path, read_only=True) as log:  # it all survives a reopen
        got = log.prune_point()
        assert got is not None and got.height == 9 and got.leaves[("pool.shares", 1)] == START
        assert log.start_offsets("pool.shares") == [0, START]
        assert _proofs(log) == before
        roots = before["roots"]
        assert isinstance(roots, list)
        for i, n in ((0, N), (START - 1, N), (START, N), (5, 40)):
            offset, leaf, path_ = log.trees.inclusion("pool.shares", 1, i, n)
            assert offset == i
            verify_inclusion(i, n, leaf, path_, roots[n])
        verify_consistency(20, N, log.trees.consistency("pool.shares", 1, 20, N), roots[20], roots[N])


def test_a_prune_run_again_changes_nothing_and_a_start_never_moves_back(tmp_path):
    with EmbeddedLog(str(tmp_path / "log"), sync=False) as log:
        _fill(log)
        log.prune(PrunePoint(5, {("pool.shares", 1): 20}))
        log.prune(PrunePoint(5, {("pool.shares", 1): 20}))
        log.prune(PrunePoint(6, {("pool.shares", 1): 10}))  # below the start: the start stays
        assert log.start_offsets("pool.shares") == [0, 20]
        with pytest.raises(LogError, match="ends at"):
            log.prune(PrunePoint(7, {("pool.shares", 1): N + 1}))


def test_logs_that_cannot_prune_say_why(tmp_path):
    path = str(tmp_path / "log")
    with EmbeddedLog(path, sync=False) as log:
        _fill(log)
    with EmbeddedLog(path, read_only=True) as log:
        assert "read-only" in (log.prune_refusal() or "")
    mem = MemoryLog()
    assert mem.prune_refusal() is not None
    with pytest.raises(PruneUnsupportedError):
        mem.prune(PrunePoint(1, {}))
