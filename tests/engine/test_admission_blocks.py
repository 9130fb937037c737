"""Admission beyond the code table: size limits, pool rounds, whole blocks and the events they
become, the ingest summary of PROTOCOL.md §7, parallel signature checks, and the supply
invariant over a history."""
from __future__ import annotations

import json

import pytest
from conftest import (
    Keys,
    Lines,
    admit,
    admit_ok,
    encode,
    load_signer,
    signer_from_byte,
    snapshot,
    supply,
)
from test_admission import ALICE, BOB, POOR, bad_sig

import ledgerlog.engine.admission.lines as lines_mod
from ledgerlog.engine import avro
from ledgerlog.engine import topics as T
from ledgerlog.engine.admission.state import Account
from ledgerlog.engine.admission.verify import Verifier
from ledgerlog.engine.crypto import H
from ledgerlog.engine.partitioner import partition_for

# -- size limits (monkeypatched small) ----------------------------------------------------


def test_line_size_limit(chain, keys, lines, monkeypatch):
    line = encode(lines.tx(keys.faucet, ALICE, 5))
    monkeypatch.setattr(lines_mod, "MAX_LINE_BYTES", len(line) - 1)
    before = snapshot(chain)
    s = admit(chain, line)
    assert [r["code"] for r in s.rejections] == ["MALFORMED"]
    assert snapshot(chain) == before
    monkeypatch.setattr(lines_mod, "MAX_LINE_BYTES", len(line))
    assert admit(chain, line).accepted == 1


def test_block_transaction_limit(chain, keys, lines, monkeypatch):
    monkeypatch.setattr(lines_mod, "MAX_BLOCK_TXS", 2)
    three = lines.block([lines.tx(keys.faucet, ALICE, 5, nonce=n) for n in (1, 2, 3)])
    before = snapshot(chain)
    assert [r["code"] for r in admit(chain, three).rejections] == ["MALFORMED"]
    assert snapshot(chain) == before
    two = lines.block([lines.tx(keys.faucet, ALICE, 5, nonce=n) for n in (1, 2)])
    assert admit(chain, two).accepted == 1


def test_protocol_limits_are_the_defaults():
    assert lines_mod.MAX_LINE_BYTES == 16 * 1024 * 1024
    assert lines_mod.MAX_BLOCK_TXS == 10_000


# -- payout rounds need a block of the pool (two producers) -------------------------------


def test_payout_round_must_be_a_pool_block(chain_factory):
    other = signer_from_byte(0x33)
    chain = chain_factory(lambda g: g["producers"].append(other.pubkey))
    keys = Keys(*(load_signer(chain.config, n) for n in ("producer", "oracle", "treasury", "faucet")))
    ln = Lines(chain, keys)
    admit_ok(chain, ln.block(producer=other))      # height 1: not the pool's
    admit_ok(chain, ln.block())                    # height 2: the pool's
    before = snapshot(chain)
    s = admit(chain, ln.payout("p1", ALICE, 10, round_height=1))
    assert [r["code"] for r in s.rejections] == ["BAD_ROUND"]
    assert snapshot(chain) == before
    admit_ok(chain, ln.payout("p2", ALICE, 10, round_height=2))


def test_a_block_whose_fees_sum_past_64_bits_is_bad_amount(chain_factory):
    """Each fee is in range, but their sum is the block event's ``fees`` (PROTOCOL §7: every
    integer field of an event is signed 64-bit): a rejection with its code, not an error that
    refuses the whole chunk."""
    rich = signer_from_byte(0x44)
    chain = chain_factory(lambda g: g["allocations"].update({rich.address: 2**64}))  # genesis caps no allocation
    keys = Keys(*(load_signer(chain.config, n) for n in ("producer", "oracle", "treasury", "faucet")))
    ln = Lines(chain, keys)
    over = ln.block([ln.tx(rich, ALICE, 1, nonce=1, fee=2**62), ln.tx(rich, ALICE, 1, nonce=2, fee=2**62)])
    before = snapshot(chain)
    s = admit(chain, over, ln.share())
    assert [r["code"] for r in s.rejections] == ["BAD_AMOUNT"] and s.accepted == 1  # the share still goes in
    assert "fees" in s.rejections[0]["message"]
    assert snapshot(chain) != before
    admit_ok(chain, ln.block([ln.tx(rich, ALICE, 1, nonce=1, fee=2**62), ln.tx(rich, ALICE, 1, nonce=2, fee=2**62 - 1)]))


# -- blocks are admitted whole ------------------------------------------------------------


def test_a_block_is_admitted_whole_or_not_at_all(chain, keys, lines):
    txs = [lines.tx(keys.faucet, ALICE, 100, nonce=1), lines.tx(keys.faucet, BOB, 200, nonce=2),
           lines.tx(POOR, ALICE, 5, nonce=1)]
    before = snapshot(chain)
    s = admit(chain, lines.block(txs))
    assert [r["code"] for r in s.rejections] == ["INSUFFICIENT_FUNDS"]
    assert "transaction 2" in s.rejections[0]["message"]
    assert snapshot(chain) == before
    st = chain.write_state()
    assert (st.account(ALICE.address).balance, st.account(keys.faucet.address).nonce) == (0, 0)

    block = lines.block(txs[:2])
    admit_ok(chain, block)
    offsets, _ = snapshot(chain)
    assert offsets[T.BLOCKS] == [before[0][T.BLOCKS][0] + 1]
    assert sum(offsets[T.TRANSACTIONS]) == sum(before[0][T.TRANSACTIONS]) + 2
    st = chain.write_state()
    assert st.account(ALICE.address).balance == 100 and st.account(BOB.address).balance == 200
    assert st.account(keys.faucet.address).nonce == 2
    assert st.tip().height == 1


def test_admitted_block_events(chain, keys, lines):
    lines.fund(ALICE, amount=5000)  # height 1; ALICE can then pay in height 2
    txs = [lines.tx(keys.faucet, ALICE, 100, nonce=2, fee=1500), lines.tx(ALICE, BOB, 10, nonce=1, fee=1000)]
    block = lines.block(txs)
    admit_ok(chain, block)
    log, codec = chain.log, chain.codec
    [brec] = log.read(T.BLOCKS, 0, 1)
    ev = codec.decode_record(brec)
    assert brec.key == chain.genesis.chain_id.encode() and brec.timestamp == block["header"]["timestamp"]
    assert ev["header"] == block["header"] and ev["hash"] == chain.write_state().tip().hash
    assert (ev["fees"], ev["reward"], ev["pubkey"]) == (2500, chain.genesis.block_reward,
                                                        keys.producer.pubkey)
    for i, tx in enumerate(txs):
        sender = tx["body"]["sender"]
        p = partition_for(sender.encode(), chain.log.topics()[T.TRANSACTIONS])
        found = [codec.decode_record(r) for r in log.scan(T.TRANSACTIONS, p) if r.key == sender.encode()]
        got = [e for e in found if e["height"] == 2]
        assert len(got) == 1 and got[0]["body"] == tx["body"] and got[0]["index"] == i
        assert got[0]["txid"] == ev["txids"][i] and got[0]["block_hash"] == ev["hash"]
    st = chain.write_state()
    reward = chain.genesis.block_reward
    assert st.account(keys.producer.address).balance == 2 * reward + 1000 + 2500


def test_mempool_is_settled_by_blocks(chain, keys, lines):
    f = keys.faucet
    t1, t2 = lines.tx(f, ALICE, 5, nonce=1), lines.tx(f, ALICE, 6, nonce=2)
    admit_ok(chain, t1, t2)
    st = chain.write_state()
    assert len(st.pending(f.address)) == 2 and len(list(st.mempool())) == 2
    other1 = lines.tx(f, BOB, 7, nonce=1)           # confirms nonce 1: t1 can never apply
    admit_ok(chain, lines.block([other1]))
    [brec] = chain.log.read(T.BLOCKS, 0, 0)
    assert chain.codec.decode_record(brec)["evicted"] == [H(avro.encode("TransactionBody", t1["body"]))]
    assert [e[0] for e in chain.write_state().pending(f.address)] == [2]
    assert admit(chain, t1).duplicates == 1          # the evicted id stays admitted
    admit_ok(chain, lines.block([t2]))               # the pending nonce 2 confirms
    assert chain.write_state().pending(f.address) == ()
    assert list(chain.write_state().mempool()) == []
    assert admit(chain, t2).duplicates == 1


def test_later_lines_of_one_call_see_earlier_ones(chain, keys, lines):
    f = keys.faucet
    tx1, tx2 = lines.tx(f, ALICE, 5, nonce=1), lines.tx(f, ALICE, 5, nonce=2)
    block = lines.block([lines.tx(keys.treasury, ALICE, 5, nonce=1)])
    share = lines.share()
    s = admit(chain, tx1, tx2, block, share, tx2, block, share, lines.tx(f, ALICE, 5, nonce=2))
    assert (s.accepted, s.duplicates, s.rejected) == (4, 3, 1)
    assert [(r["line"], r["code"]) for r in s.rejections] == [(8, "BAD_NONCE")]


# -- the summary of PROTOCOL.md §7 --------------------------------------------------------


def test_summary_shape_and_line_numbers(chain, keys, lines):
    chain.admitter.chunk = 2  # line numbers run on across chunks
    good = [lines.share(job_id=f"j{i}") for i in range(3)]
    s = admit(chain, good[0], b"nope", good[1], good[0], bad_sig(lines.tx(keys.faucet, ALICE, 5)), good[2],
              lines.tx(POOR, ALICE, 5))
    d = s.to_dict()
    assert list(d) == ["accepted", "duplicates", "rejected", "rejections"]
    assert (d["accepted"], d["duplicates"], d["rejected"]) == (3, 1, 3)
    assert [(r["line"], r["code"]) for r in d["rejections"]] == [
        (2, "MALFORMED"), (5, "BAD_SIGNATURE"), (7, "INSUFFICIENT_FUNDS")]
    assert all(set(r) == {"line", "code", "message"} for r in d["rejections"])
    assert json.loads(json.dumps(d)) == d
    assert d["rejected"] == len(d["rejections"])  # `ingest` exits 1 exactly when this is non-zero


def test_duplicates_alone_are_not_rejections(chain, lines):
    share = lines.share()
    admit_ok(chain, share)
    d = admit(chain, share, share).to_dict()
    assert d == {"accepted": 0, "duplicates": 2, "rejected": 0, "rejections": []}  # exit 0


def test_first_line_numbering(chain):
    s = chain.admitter.admit([b"x", b"y"], first_line=10)
    assert [r["line"] for r in s.rejections] == [10, 11]


def test_empty_input(chain):
    before = snapshot(chain)
    assert admit(chain).to_dict() == {"accepted": 0, "duplicates": 0, "rejected": 0, "rejections": []}
    assert snapshot(chain) == before


def test_parallel_signature_checks_report_the_same_codes(chain, keys, lines):
    chain.admitter.verifier = Verifier(2, min_parallel=1)  # closed with the chain
    f = keys.faucet
    batch = [lines.tx(f, ALICE, 5, nonce=1), bad_sig(lines.tx(f, ALICE, 5, nonce=2)),
             {**lines.tx(f, ALICE, 5, nonce=2), "body": {**lines.tx(f, ALICE, 5)["body"], "amount": 2**63}},
             lines.block([bad_sig(lines.tx(f, BOB, 5, nonce=1))]), bad_sig(lines.tx(f, ALICE, 5, nonce=1)),
             lines.tx(f, ALICE, 5, nonce=2, chain_id="x"), lines.tx(f, ALICE, 9, nonce=2)]
    s = admit(chain, *batch)
    assert (s.accepted, s.duplicates) == (2, 0)
    assert [(r["line"], r["code"]) for r in s.rejections] == [
        (2, "BAD_SIGNATURE"), (3, "BAD_AMOUNT"), (4, "BAD_SIGNATURE"), (5, "BAD_SIGNATURE"),
        (6, "WRONG_CHAIN")]


@pytest.mark.parametrize("parallel", [False, True])
def test_a_block_confirming_mempool_transactions_reuses_their_verified_signatures(chain, keys, lines, parallel):
    if parallel:
        chain.admitter.verifier = Verifier(2, min_parallel=1)  # closed with the chain
        chain.admitter.rules.signatures = chain.admitter.verifier.cache
    cache = chain.admitter.verifier.cache
    f = keys.faucet
    first, second = lines.tx(f, ALICE, 5, nonce=1), lines.tx(f, BOB, 7, nonce=2)
    admit_ok(chain, first, second)
    # the same body under another signature is not the verified one: still checked, and refused
    forged = {**second, "signature": bad_sig(dict(second))["signature"]}
    before = snapshot(chain)
    s = admit(chain, lines.block([first, forged]))
    assert [r["code"] for r in s.rejections] == ["BAD_SIGNATURE"] and snapshot(chain) == before
    hits = cache.hits
    s = admit(chain, lines.block([first, second]))
    assert s.accepted == 1
    assert cache.hits - hits == 2  # neither was verified again
    assert chain.write_state().tx_status(H(avro.encode("TransactionBody", second["body"]))) == "c"


# -- supply invariant over a valid history ------------------------------------------------


def test_supply_invariant_over_a_history(chain, keys, lines):
    f, pool = keys.faucet, keys.producer
    pending: dict[str, dict] = {}

    def mempool(name: str, line: dict) -> dict:
        pending[name] = line
        return line

    steps = [
        lambda: lines.block([lines.tx(f, ALICE, 5_000_000, nonce=1), lines.tx(f, BOB, 3_000_000, nonce=2)]),
        lambda: mempool("alice", lines.tx(ALICE, BOB, 100_000)),
        lambda: lines.share(ALICE, job_id="a", height=1, difficulty=10),
        lambda: lines.provider(ALICE, "p-a", stake=2_000_000, price_per_kwh=300),
        lambda: lines.reading("p-a", 5000),
        lambda: lines.settlement("s-a", "p-a", milli_kwh=3000, amount=900),
        lambda: lines.block([lines.tx(BOB, ALICE, 7, nonce=1, fee=5000)]),
        lambda: lines.payout("pay-a", ALICE, 1_000_000, round_height=1),
        lambda: lines.payout("pay-b", BOB, 2_000_000, round_height=2),
        lambda: mempool("pool", lines.tx(pool, ALICE, 123)),
        lambda: lines.block([]),
        lambda: lines.share(BOB, job_id="b", height=3, difficulty=5),
        lambda: lines.block([pending["pool"], pending["alice"], lines.tx(ALICE, BOB, 1, nonce=2)]),
    ]
    for step in steps:
        admit_ok(chain, step())
        total, expected = supply(chain)
        assert total == expected
    st = chain.write_state()
    assert st.tip().height == 4
    alice = 5_000_000 - 101_000 - 2_000_000 + 900 + 7 + 1_000_000 + 123 - 1 - 1_000
    assert st.account(ALICE.address) == Account(alice, 2_000_000, 2)
    assert st.account(keys.treasury.address).balance == 10**15 - 900
    assert st.pending(ALICE.address) == () and st.pending(pool.address) == ()
    # invalid lines in between change nothing, so the invariant and every balance stay
    before = snapshot(chain)
    s = admit(chain, lines.payout("pay-c", BOB, 10**10, round_height=4), lines.tx(BOB, ALICE, 10**15))
    assert [r["code"] for r in s.rejections] == ["BAD_ROUND", "INSUFFICIENT_FUNDS"]
    assert snapshot(chain) == before


def test_a_line_at_the_limit_counts_without_its_ending_lf_or_crlf():
    """A line of exactly the limit was taken with LF but refused with CRLF (the CR counted);
    one byte over is cut to limit + 1 (admission: MALFORMED) and the rest of it skipped."""
    import io

    from ledgerlog.ops.data.lines import numbered_lines
    at, over = b"x" * 8, b"y" * 9
    for end in (b"\n", b"\r\n"):
        text = at + end + over + end + b"  \r\n" + at + end + over * 3 + end + b"z"
        assert list(numbered_lines(io.BytesIO(text), limit=8)) == [
            (1, at), (2, over), (4, at), (5, over), (6, b"z")]
    assert list(numbered_lines(io.BytesIO(at + b"\r"), limit=8)) == [(1, at)]  # a last line's lone CR


@pytest.mark.parametrize("digits", [20, 4300, 4301, 100_000])
def test_an_integer_out_of_range_is_bad_amount_however_many_digits_it_has(chain, keys, lines, digits):
    """PROTOCOL §7: an integer outside the signed 64-bit range is BAD_AMOUNT. One of more than
    4300 digits (past what CPython converts) was MALFORMED; now the same, in its turn of §5."""
    share = encode(lines.share(difficulty=1024)).replace(b'"difficulty":1024', b'"difficulty":' + b"9" * digits)
    tx = encode(lines.tx(keys.faucet, ALICE, 777)).replace(b'"amount":777', b'"amount":-' + b"9" * digits)
    before = snapshot(chain)
    for raw in (share, tx):
        assert [r["code"] for r in admit(chain, raw).rejections] == ["BAD_AMOUNT"]
    assert snapshot(chain) == before
    bad = share.replace(b'"type":"share"', b'"type":"nope"')  # and a line malformed besides stays MALFORMED
    assert [r["code"] for r in admit(chain, bad).rejections] == ["MALFORMED"]
