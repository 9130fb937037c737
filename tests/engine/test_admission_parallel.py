"""Parallel admission (lines prepared and signatures checked in worker processes) admits and
rejects exactly as sequential admission: the same summaries (codes, messages, line order), the
same log records byte for byte, the same Merkle trees and the same write-side state, over mixed
valid and invalid chunks, whatever the chunk size (shares made ahead for a stamp height that
a block in the same chunk then changes included)."""
from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Keys, Lines, admit, encode, resign
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_admission import ALICE, BOB, bad_sig

from ledgerlog.engine.admission.lines import ShareLine
from ledgerlog.engine.admission.prepare import prepare_lines, rebuild
from ledgerlog.engine.admission.verify import Verifier
from ledgerlog.engine.chain import Chain, init_chain, open_chain
from ledgerlog.engine.config import Config

OPS = ["tx", "tx", "block", "block", "share", "bad_sig", "malformed", "extra_field", "dup", "out_of_range",
       "block_bad_tx", "block_bad_root", "share_bad", "provider", "reading", "wrong_chain", "block_mempool"]


def _open(path: str, genesis: dict[str, Any], *, workers: int, chunk: int) -> Chain:
    cfg = Config(data_dir=path, sync=False, ingest_chunk=chunk)
    init_chain(cfg, genesis)
    ch = open_chain(cfg)
    ch.admitter.verifier.close()
    ch.admitter.verifier = Verifier(workers, min_parallel=1)
    ch.admitter.rules.signatures = ch.admitter.verifier.cache
    return ch


def _records(ch: Chain) -> list[tuple[str, int, int, bytes, bytes, int]]:
    out = []
    for topic in sorted(ch.log.topics()):
        if topic.startswith("_"):
            continue
        for p in range(ch.log.partition_count(topic)):
            out += [(topic, p, r.offset, r.key, r.value, r.timestamp) for r in ch.log.scan(topic, p)]
    return out


def _trees(ch: Chain) -> dict[tuple[str, int], bytes]:
    """Every partition's Merkle root, as the append folded it (from leaves the workers may have hashed)."""
    return {tp: state.root() for tp, state in ch.log.trees.states().items()}


def _state(ch: Chain) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in ch.log.state_items(b"") if k != b"lk"]  # "lk": each data dir's own log key


class History:
    """Builds lines on a builder chain (valid ones admitted there, so later blocks extend them)."""

    def __init__(self, chain: Chain, lines: Lines, keys: Keys) -> None:
        self.chain, self.ln, self.k = chain, lines, keys
        self.out: list[bytes] = []
        self.mempool: list[dict[str, Any]] = []

    def add(self, line: dict[str, Any] | bytes, *, keep: bool = True) -> None:
        raw = encode(line)
        self.out.append(raw)
        if keep:
            self.chain.admitter.admit([raw])

    def step(self, op: str, data: st.DataObject) -> None:
        ln, f = self.ln, self.k.faucet
        if op == "tx":
            tx = ln.tx(f, data.draw(st.sampled_from([ALICE, BOB])), data.draw(st.integers(1, 10**6)))
            self.add(tx)
            self.mempool.append(tx)
        elif op == "block_mempool":
            self.add(ln.block(self.mempool))
            self.mempool = []
        elif op == "block":
            n = self.chain.write_state().account(f.address).nonce + len(self.mempool)
            fresh = [ln.tx(f, BOB, 5, nonce=n + 1 + i) for i in range(data.draw(st.integers(0, 4)))]
            self.add(ln.block(self.mempool + fresh))
            self.mempool = []
        elif op == "block_bad_tx":
            n = self.chain.write_state().account(f.address).nonce + len(self.mempool)
            txs = [ln.tx(f, BOB, 5, nonce=n + 1 + i) for i in range(3)]
            i = data.draw(st.integers(0, 2))
            how = data.draw(st.sampled_from(["sig", "amount", "big", "fee", "nonce"]))
            if how == "sig":
                txs[i] = bad_sig(txs[i])
            elif how != "big":
                field, value = {"amount": ("amount", 0), "fee": ("fee", 1), "nonce": ("nonce", 99)}[how]
                txs[i]["body"][field] = value
                resign(txs[i], f)
            block = ln.block(self.mempool + txs)
            if how == "big":  # out of range: it cannot be signed, nor hashed into a tx_root
                block["transactions"][len(self.mempool) + i]["body"]["amount"] = 2**63
            self.add(block, keep=False)
        elif op == "block_bad_root":
            self.add(ln.block([ln.tx(f, BOB, 5, nonce=self.chain.write_state().account(f.address).nonce + 1)],
                              tx_root="0" * 64), keep=False)
        elif op == "share":
            self.add(ln.share(data.draw(st.sampled_from([ALICE, BOB])), job_id=data.draw(st.sampled_from("abc")),
                              difficulty=data.draw(st.integers(1, 5))))
        elif op == "share_bad":
            field, value = data.draw(st.sampled_from([("difficulty", 0), ("height", 2**63), ("timestamp", -(2**64))]))
            self.add({**ln.share(ALICE, job_id="z"), field: value}, keep=False)
        elif op == "bad_sig":
            self.add(bad_sig(ln.tx(f, ALICE, 7)), keep=False)
        elif op == "wrong_chain":
            self.add(ln.tx(f, ALICE, 7, chain_id="elsewhere"), keep=False)
        elif op == "out_of_range":
            tx = ln.tx(f, ALICE, 7)
            tx["body"]["timestamp"] = data.draw(st.sampled_from([2**63, -(2**63) - 1, 2**70]))
            self.add(tx, keep=False)
        elif op == "malformed":
            self.add(data.draw(st.sampled_from([b"not json", b"[]", b'{"type":"nope"}', b"\xff\xfe{", b"",
                                                b'{"type":"share"}'])), keep=False)
        elif op == "extra_field":
            self.add({**ln.tx(f, ALICE, 7), "extra": 1}, keep=False)
        elif op == "dup" and self.out:
            self.add(data.draw(st.sampled_from(self.out)), keep=False)
        elif op == "provider":
            self.add(ln.provider(f, data.draw(st.sampled_from(["p1", "p2"])),
                                 stake=data.draw(st.sampled_from([1, 2_000_000]))))
        elif op == "reading":
            self.add(ln.reading(data.draw(st.sampled_from(["p1", "p2"])), data.draw(st.integers(0, 9))))


@pytest.fixture
def chains(tmp_path) -> Iterator[list[Chain]]:
    opened: list[Chain] = []
    yield opened
    for ch in opened:
        ch.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.data())
def test_parallel_admission_equals_sequential(chain, keys, lines, tmp_path_factory, data) -> None:
    history = History(chain, lines, keys)
    for op in data.draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=30), label="ops"):
        history.step(op, data)
    chunk = data.draw(st.sampled_from([1, 2, 3, 5, 1000]), label="parallel chunk")
    base = tmp_path_factory.mktemp("runs")
    seq = _open(str(base / "seq"), chain.genesis.raw, workers=1, chunk=1000)
    par = _open(str(base / "par"), chain.genesis.raw, workers=2, chunk=chunk)
    try:
        want = seq.admitter.admit_numbered(enumerate(history.out, 1), ids=True).to_dict()
        got = par.admitter.admit_numbered(enumerate(history.out, 1), ids=True).to_dict()
        assert got == want
        assert _records(par) == _records(seq)
        assert _trees(par) == _trees(seq)
        assert _state(par) == _state(seq)
    finally:
        seq.close()
        par.close()


def test_parallel_admission_uses_the_workers(chain, keys, lines, tmp_path) -> None:
    """The parallel path really runs (not the inline one): its results equal inline ones."""
    f = keys.faucet
    batch = [lines.tx(f, ALICE, 5, nonce=1), lines.share(ALICE), bad_sig(lines.tx(f, ALICE, 5, nonce=2)),
             json.dumps({"type": "share"}), lines.tx(f, ALICE, 6, nonce=2)]
    par = _open(str(tmp_path / "par"), chain.genesis.raw, workers=2, chunk=2)
    try:
        got = admit(par, *batch)
        assert par.admitter.verifier.prepared_lines == len(batch)
        want = admit(chain, *batch)
        assert got.to_dict() == want.to_dict()
        assert _records(par) == _records(chain)
    finally:
        par.close()


def test_a_dead_worker_costs_one_chunk_inline_then_new_workers(chain, keys, lines, tmp_path) -> None:
    """A verify worker killed (OOM, kill -9) breaks its pool: the chunk in hand is parsed inline,
    with the same result, and the next chunk gets a new pool; ingest never stops."""
    f = keys.faucet
    batch = [lines.tx(f, ALICE, 5 + i, nonce=i + 1) for i in range(6)] + [lines.share(ALICE)]
    par = _open(str(tmp_path / "par"), chain.genesis.raw, workers=2, chunk=2)
    try:
        verifier = par.admitter.verifier
        assert admit(par, *batch[:2]).accepted == 2  # the pool runs
        for proc in list(verifier._pool._processes.values()):  # type: ignore[union-attr]
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # the pool, broken by the first, already ended the others
                pass
            proc.join(10)
        got = admit(par, *batch[2:])
        assert verifier.pools_lost == 1  # forgotten: the next chunk starts new workers
        assert got.accepted == len(batch) - 2, got.to_dict()
        assert admit(chain, *batch).accepted == len(batch)
        assert _records(par) == _records(chain)
        before = verifier.prepared_lines
        assert admit(par, lines.tx(f, BOB, 5, nonce=7), lines.tx(f, BOB, 6, nonce=8)).accepted == 2
        assert verifier.prepared_lines == before + 2 and verifier.pools_lost == 1  # on the new workers
    finally:
        par.close()


def test_a_share_made_ahead_for_another_stamp_height_gets_its_own(chain, keys, lines, tmp_path) -> None:
    """A worker makes a share's record for the stamp height it guesses; admitted at another
    height, the share's record is the one inline admission makes, and so is its Merkle leaf."""
    shares = [encode(lines.share(ALICE, job_id=job)) for job in "xyz"]
    other = _open(str(tmp_path / "other"), chain.genesis.raw, workers=1, chunk=1000)
    try:
        for share, guess in zip(shares, (7, 0, 2**40)):
            [flat], _ = prepare_lines([share], (), chain.admitter._ahead()._replace(stamp=guess))
            item = rebuild(flat)
            assert isinstance(item, ShareLine) and item.stamp == guess and item.value is not None
            assert other.admitter._admit_chunk([1], [item]).accepted == 1
        admit(chain, *shares)
        assert _records(other) == _records(chain)
        assert _trees(other) == _trees(chain)
    finally:
        other.close()


def test_shares_after_a_block_in_the_same_chunk(chain, keys, lines, tmp_path) -> None:
    """Shares sent with the tip of before a block (in another slice, or after a block that is then
    rejected) are stamped with the tip they are admitted at."""
    f = keys.faucet
    block = lines.block([lines.tx(f, BOB, 5, nonce=1)])
    bad_root = {**block, "header": {**block["header"], "tx_root": "0" * 64}}
    batch = [lines.share(ALICE, job_id="a"), bad_root, lines.share(ALICE, job_id="b"), block,
             lines.share(BOB, job_id="c"), lines.share(BOB, job_id="d")]
    par = _open(str(tmp_path / "par"), chain.genesis.raw, workers=2, chunk=len(batch))
    try:
        got = admit(par, *batch)
        assert par.admitter.verifier.prepared_lines == len(batch)
        want = admit(chain, *batch)
        assert got.to_dict() == want.to_dict() and want.accepted == 5
        assert _records(par) == _records(chain)
        assert _trees(par) == _trees(chain)
    finally:
        par.close()


def test_a_chunk_of_shares_alone_is_admitted_inline(chain, keys, lines, tmp_path) -> None:
    """Unsigned lines gain nothing from the pool on 2 cores: a chunk without a signature stays
    inline, a chunk with one goes to the workers, and both admit as sequential admission does."""
    shares = [lines.share(ALICE, job_id=f"j{i}") for i in range(4)]
    par = _open(str(tmp_path / "par"), chain.genesis.raw, workers=2, chunk=len(shares))
    try:
        got = admit(par, *shares)
        assert par.admitter.verifier.prepared_lines == 0
        mixed = [lines.share(BOB, job_id="m"), lines.tx(keys.faucet, ALICE, 5, nonce=1)]
        got_mixed = admit(par, *mixed)
        assert par.admitter.verifier.prepared_lines == len(mixed)
        assert got.to_dict() == admit(chain, *shares).to_dict()
        assert got_mixed.to_dict() == admit(chain, *mixed).to_dict()
        assert _records(par) == _records(chain)
    finally:
        par.close()
