"""Admission when a write fails and when callers race: a chunk whose append fails reports
nothing and leaves the log and the write side as if it never came (re-admitting gives the state
of a clean ingest); the chunk size never changes the result; callers in several threads
interleave whole chunks and see each other's writes."""
from __future__ import annotations

import threading

import pytest
from conftest import Lines, admit, encode, snapshot, supply
from test_admission import ALICE

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import StorageError


def _history(lines: Lines, keys, n: int) -> list[bytes]:
    f = keys.faucet
    out = []
    for i in range(n):
        out.append(encode(lines.tx(f, ALICE, 10 + i, nonce=i + 1)))
        out.append(encode(lines.share(job_id=f"j{i}", height=1, difficulty=1 + i)))
    return out


def test_a_failed_write_changes_nothing_and_readmitting_completes(chain, keys, lines, monkeypatch) -> None:
    chain.admitter.chunk = 4
    history = _history(lines, keys, 20)  # 40 lines, 10 chunks
    real, calls = chain.log.append, [0]

    def flaky(records, state=None):
        calls[0] += 1
        if calls[0] == 4:  # the fourth chunk's write fails
            raise StorageError("disk gone")
        return real(records, state)

    monkeypatch.setattr(chain.log, "append", flaky)
    with pytest.raises(StorageError, match="disk gone"):
        chain.admitter.admit(history)
    monkeypatch.setattr(chain.log, "append", real)
    # three chunks (12 lines) are in the log, and the write side holds exactly their state
    assert sum(chain.log.end_offsets("ledger.mempool")) + sum(chain.log.end_offsets("pool.shares")) == 12
    assert chain.write_state().account(keys.faucet.address).nonce == 0  # mempool only: nothing confirmed
    assert len(chain.write_state().pending(keys.faucet.address)) == 6
    total, expected = supply(chain)
    assert total == expected
    again = chain.admitter.admit(history)
    assert (again.accepted, again.duplicates, again.rejected) == (28, 12, 0)
    assert len(chain.write_state().pending(keys.faucet.address)) == 20


def test_the_chunk_size_never_changes_the_result(tmp_path, keys, lines, chain) -> None:
    history = _history(lines, keys, 30)
    states = []
    for chunk in (1, 7, 1000):
        cfg = Config(data_dir=str(tmp_path / f"c{chunk}"), sync=False, ingest_chunk=chunk)
        init_chain(cfg, chain.genesis.raw)
        with open_chain(cfg) as other:
            s = other.admitter.admit(history)
            assert (s.accepted, s.rejected) == (60, 0)
            states.append(snapshot(other))
    assert states[0] == states[1] == states[2]


def test_threads_admitting_at_once_interleave_whole_chunks(chain, keys, lines) -> None:
    chain.admitter.chunk = 3
    f = keys.faucet
    txs = [encode(lines.tx(f, ALICE, 5, nonce=i + 1)) for i in range(30)]  # nonces: order matters
    shares = [encode(lines.share(job_id=f"t{t}-{i}", height=1)) for t in range(3) for i in range(30)]
    results, errors = [], []

    def run(part: list[bytes]) -> None:
        try:
            results.append(chain.admitter.admit(part))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(part,)) for part in (txs, shares[:30], shares[30:60], shares[60:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted((r.accepted, r.rejected) for r in results) == [(30, 0)] * 4
    assert len(chain.write_state().pending(f.address)) == 30
    assert sum(chain.log.end_offsets("pool.shares")) == 90


def test_a_read_of_the_tip_during_an_append_leaves_no_stale_tip(chain, keys, lines, monkeypatch) -> None:
    """Another caller preparing its chunk reads the tip (the stamp its shares most likely get)
    without the admission lock, while a block's append is being written: what it read must not
    stay behind as the tip the rules check the next block against."""
    real = chain.log.append

    def append(records, state=None):
        chain.admitter._ahead()  # a concurrent prepare, between the batch taken and its write
        chain.write_state().tip()  # and a reader of the chain's state (retention, status)
        return real(records, state)
    monkeypatch.setattr(chain.log, "append", append)
    first = lines.block()
    assert admit(chain, first).accepted == 1
    monkeypatch.setattr(chain.log, "append", real)
    assert chain.admitter.state.tip().height == 1
    again = admit(chain, first)  # the same block again: a duplicate, not a second block at height 1
    assert (again.accepted, again.duplicates) == (0, 1)
    assert admit(chain, lines.block()).accepted == 1  # and the next height follows on
    assert chain.admitter.state.tip().height == 2
