"""Admission (PROTOCOL.md §5): every rejection code, the check order, atomicity of blocks, and
that a rejected line changes nothing — on a real dev chain over a temporary RocksDB log."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import (
    Keys,
    Lines,
    admit,
    admit_ok,
    encode,
    load_signer,
    resign,
    signer_from_byte,
    snapshot,
    supply,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import engine.admission.lines as lines_mod
from engine import avro
from engine import topics as T
from engine.admission.state import Account
from engine.admission.verify import Verifier
from engine.crypto import EMPTY_ROOT, H
from engine.errors import Code
from engine.partitioner import partition_for

POOR = signer_from_byte(0x11)     # a key with no funds and no genesis role
OUTSIDER = signer_from_byte(0x22)
ALICE = signer_from_byte(0xA1)
BOB = signer_from_byte(0xB0)
PROTOCOL_CODES = {c.value for c in Code} - {Code.DUPLICATE.value}


def flip(sig: str) -> str:
    """The same signature with its first hex digit changed: valid hex, does not verify."""
    return ("1" if sig[0] == "0" else "0") + sig[1:]


def bad_sig(line: dict[str, Any]) -> dict[str, Any]:
    line["signature"] = flip(line["signature"])
    return line


def _set(line: dict, **body: Any) -> dict:
    """Change body fields without signing again (for values that cannot be signed)."""
    line["body"].update(body)
    return line


def _hdr(line: dict, **header: Any) -> dict:
    line["header"].update(header)
    return line


def _tx0(block: dict, **body: Any) -> dict:
    block["transactions"][0]["body"].update(body)
    return block


def block1(ln: Lines) -> dict[str, Any]:
    """An empty block at height 1 by the pool's producer: a payout round of block_reward."""
    line = ln.block()
    admit_ok(ln.chain, line)
    return line


def with_provider(ln: Lines, k: Keys, *, price: int = 250, milli_kwh: int = 4000) -> None:
    """prov-1 (owner faucet, meter-1) with ``milli_kwh`` unsettled."""
    admit_ok(ln.chain, ln.provider(k.faucet, price_per_kwh=price))
    if milli_kwh:
        admit_ok(ln.chain, ln.reading(milli_kwh=milli_kwh))


# -- the case table: (expected code, build) where build does its setup and returns the line ----

CASES: dict[str, tuple[Code, Callable[[Lines, Keys], Any]]] = {}


def case(code: Code, name: str) -> Callable:
    def register(fn: Callable[[Lines, Keys], Any]) -> Callable:
        key = f"{code.value}:{name}"
        assert key not in CASES
        CASES[key] = (code, fn)
        return fn
    return register


def edited(build: Callable[[Lines, Keys], dict],
           edit: Callable[[dict], Any]) -> Callable[[Lines, Keys], dict]:
    def fn(ln: Lines, k: Keys) -> dict:
        line = build(ln, k)
        edit(line)
        return line
    return fn


def _tx(ln: Lines, k: Keys) -> dict:
    return ln.tx(k.faucet, ALICE, 5)


def _block_with_tx(ln: Lines, k: Keys) -> dict:
    return ln.block([ln.tx(k.faucet, ALICE, 5)])


def _share(ln: Lines, k: Keys) -> dict:
    return ln.share()


def _provider(ln: Lines, k: Keys) -> dict:
    return ln.provider(k.faucet)


# MALFORMED: structure ------------------------------------------------------------------------
for _name, _raw in {
    "not json": b"{not json", "empty line": b"", "truncated": b'{"type":"share"', "NaN": b'{"type":NaN}',
    "trailing garbage": b'{"type":"share"} x', "array": b"[1,2]", "string": b'"share"', "number": b"42",
    "null": b"null", "invalid utf-8": b'{"type":"\xff\xfe"}',
}.items():
    case(Code.MALFORMED, _name)(lambda ln, k, raw=_raw: raw)

for _name, _build, _edit in [
    ("missing type", _share, lambda ln: ln.pop("type")),
    ("unknown type", _tx, lambda ln: ln.update(type="transfer")),
    ("type not a string", _tx, lambda ln: ln.update(type=1)),
    ("type a list", _tx, lambda ln: ln.update(type=["transaction"])),
    ("type an object", _share, lambda ln: ln.update(type={"share": 1})),
    ("missing signature", _tx, lambda ln: ln.pop("signature")),
    ("missing body field", _tx, lambda ln: ln["body"].pop("memo")),
    ("missing header field", _block_with_tx, lambda ln: ln["header"].pop("tx_count")),
    ("missing transactions", _block_with_tx, lambda ln: ln.pop("transactions")),
    ("missing block tx pubkey", _block_with_tx, lambda ln: ln["transactions"][0].pop("pubkey")),
    ("missing share field", _share, lambda ln: ln.pop("job_id")),
    ("extra line field", _tx, lambda ln: ln.update(extra=1)),
    ("extra body field", _tx, lambda ln: ln["body"].update(extra="x")),
    ("extra header field", _block_with_tx, lambda ln: ln["header"].update(extra=0)),
    ("extra block tx field", _block_with_tx, lambda ln: ln["transactions"][0].update(type="transaction")),
    ("extra share field", _share, lambda ln: ln.update(extra=None)),
    ("amount as string", _tx, lambda ln: ln["body"].update(amount="5")),
    ("amount as bool", _tx, lambda ln: ln["body"].update(amount=True)),
    ("amount as float", _tx, lambda ln: ln["body"].update(amount=5.0)),
    ("nonce as float", _tx, lambda ln: ln["body"].update(nonce=1.5)),
    ("memo as number", _tx, lambda ln: ln["body"].update(memo=5)),
    ("chain_id null", _tx, lambda ln: ln["body"].update(chain_id=None)),
    ("body as list", _tx, lambda ln: ln.update(body=list(ln["body"].values()))),
    ("header as string", _block_with_tx, lambda ln: ln.update(header="h")),
    ("transactions as object", _block_with_tx,
     lambda ln: ln.update(transactions={"0": ln["transactions"][0]})),
    ("block tx as list", _block_with_tx, lambda ln: ln.update(transactions=[[1]])),
    ("tx_count as bool", _block_with_tx, lambda ln: ln["header"].update(tx_count=True)),
    ("height as float", _block_with_tx, lambda ln: ln["header"].update(height=1.0)),
    ("share accepted as int", _share, lambda ln: ln.update(accepted=1)),
    ("share difficulty as bool", _share, lambda ln: ln.update(difficulty=True)),
    ("share height as string", _share, lambda ln: ln.update(height="1")),
    ("stake as float", _provider, lambda ln: ln["body"].update(stake=1e6)),
    ("pubkey uppercase hex", _tx, lambda ln: ln.update(pubkey=ln["pubkey"].upper())),
    ("pubkey too short", _tx, lambda ln: ln.update(pubkey=ln["pubkey"][:-2])),
    ("signature not hex", _tx, lambda ln: ln.update(signature="zz" + ln["signature"][2:])),
    ("signature too long", _tx, lambda ln: ln.update(signature=ln["signature"] + "00")),
    ("sender uppercase hex", _tx, lambda ln: ln["body"].update(sender=ln["body"]["sender"].upper())),
    ("recipient 41 chars", _tx, lambda ln: ln["body"].update(recipient=ln["body"]["recipient"] + "0")),
    ("prev_hash not hex", _block_with_tx, lambda ln: ln["header"].update(prev_hash="g" * 64)),
    ("tx_root 63 chars", _block_with_tx, lambda ln: ln["header"].update(tx_root="0" * 63)),
    ("block tx signature short", _block_with_tx, lambda ln: ln["transactions"][0].update(signature="ab")),
    ("worker without rig", _share, lambda ln: ln.update(worker=ln["worker"].split(".")[0])),
    ("worker rig too long", _share, lambda ln: ln.update(worker=ln["worker"].split(".")[0] + "." + "r" * 33)),
    ("worker rig bad char", _share, lambda ln: ln.update(worker=ln["worker"] + "!")),
    ("worker address uppercase", _share, lambda ln: ln.update(worker=ln["worker"].upper())),
    ("empty provider_id", _provider, lambda ln: ln["body"].update(provider_id="")),
    ("provider_id over 256 chars", _provider, lambda ln: ln["body"].update(provider_id="p" * 257)),
    ("empty job_id", _share, lambda ln: ln.update(job_id="")),
]:
    case(Code.MALFORMED, _name)(edited(_build, _edit))


@case(Code.MALFORMED, "lone surrogate in a memo")
def _(ln: Lines, k: Keys) -> bytes:
    return encode(ln.tx(k.faucet, ALICE, 5, memo="MEMO")).replace(b'"MEMO"', b'"\\ud800"')


@case(Code.MALFORMED, "lone surrogate in a share with a 64-bit-overflowing integer")
def _(ln: Lines, k: Keys) -> bytes:
    return encode(ln.share(job_id="JOB", height=2**64)).replace(b'"JOB"', b'"\\udc80"')


@case(Code.MALFORMED, "malformed beats wrong chain")
def _(ln: Lines, k: Keys) -> dict:
    line = ln.tx(k.faucet, ALICE, 5, chain_id="other-chain")
    line["body"]["extra"] = 1
    return line


# WRONG_CHAIN ---------------------------------------------------------------------------------
case(Code.WRONG_CHAIN, "mempool tx")(lambda ln, k: ln.tx(k.faucet, ALICE, 5, chain_id="other-chain"))
case(Code.WRONG_CHAIN, "block header")(lambda ln, k: ln.block(chain_id="other-chain"))
case(Code.WRONG_CHAIN, "tx in a block")(
    lambda ln, k: ln.block([ln.tx(k.faucet, ALICE, 5, chain_id="ledgerlog-test")]))
case(Code.WRONG_CHAIN, "reading")(lambda ln, k: ln.reading(chain_id="x"))
case(Code.WRONG_CHAIN, "provider")(lambda ln, k: ln.provider(k.faucet, chain_id="x"))
case(Code.WRONG_CHAIN, "settlement")(lambda ln, k: ln.settlement(chain_id="x"))
case(Code.WRONG_CHAIN, "payout")(lambda ln, k: ln.payout(chain_id="x"))
case(Code.WRONG_CHAIN, "beats bad signature (tx)")(
    lambda ln, k: bad_sig(ln.tx(k.faucet, ALICE, 5, chain_id="x")))
case(Code.WRONG_CHAIN, "beats bad signature (block)")(lambda ln, k: bad_sig(ln.block(chain_id="x")))
case(Code.WRONG_CHAIN, "beats unknown oracle")(lambda ln, k: ln.reading(chain_id="x", signer=OUTSIDER))


@case(Code.WRONG_CHAIN, "beats conflict (provider_id)")
def _(ln: Lines, k: Keys) -> dict:
    admit_ok(ln.chain, ln.provider(k.faucet, "prov-1"))
    return ln.provider(k.faucet, "prov-1", chain_id="x")


case(Code.WRONG_CHAIN, "beats conflict (block height)")(
    lambda ln, k: block1(ln) and ln.block(height=1, prev_hash=ln.chain.genesis.hash, chain_id="x"))


# BAD_SIGNATURE -------------------------------------------------------------------------------
case(Code.BAD_SIGNATURE, "mempool tx")(lambda ln, k: bad_sig(ln.tx(k.faucet, ALICE, 5)))
case(Code.BAD_SIGNATURE, "tx signed by another key than the sender's")(
    lambda ln, k: ln.tx(k.faucet, ALICE, 5, signer=ALICE))
case(Code.BAD_SIGNATURE, "tx signature over another body")(
    lambda ln, k: {**ln.tx(k.faucet, ALICE, 5), "signature": ln.tx(k.faucet, ALICE, 6)["signature"]})
case(Code.BAD_SIGNATURE, "pubkey not a curve point")(
    lambda ln, k: {**ln.tx(k.faucet, ALICE, 5), "pubkey": "ff" * 32})
case(Code.BAD_SIGNATURE, "block header")(lambda ln, k: bad_sig(ln.block()))
case(Code.BAD_SIGNATURE, "header producer is not the signer")(
    lambda ln, k: resign(_hdr(ln.block(), producer=k.faucet.address), k.producer))
case(Code.BAD_SIGNATURE, "tx in a block")(lambda ln, k: ln.block([bad_sig(ln.tx(k.faucet, ALICE, 5))]))
case(Code.BAD_SIGNATURE, "tx in a block signed by another key")(
    lambda ln, k: ln.block([ln.tx(k.faucet, ALICE, 5, signer=k.producer)]))
case(Code.BAD_SIGNATURE, "reading")(lambda ln, k: bad_sig(ln.reading()))
case(Code.BAD_SIGNATURE, "provider signed by another key than the owner's")(
    lambda ln, k: ln.provider(k.faucet, signer=k.treasury))
case(Code.BAD_SIGNATURE, "provider")(lambda ln, k: bad_sig(ln.provider(k.faucet)))
case(Code.BAD_SIGNATURE, "settlement not signed by the treasury")(
    lambda ln, k: ln.settlement(signer=k.faucet))
case(Code.BAD_SIGNATURE, "settlement")(lambda ln, k: bad_sig(ln.settlement()))
case(Code.BAD_SIGNATURE, "payout not signed by the pool")(lambda ln, k: ln.payout(signer=k.faucet))
case(Code.BAD_SIGNATURE, "payout")(lambda ln, k: bad_sig(ln.payout()))
case(Code.BAD_SIGNATURE, "beats bad height")(lambda ln, k: bad_sig(ln.block(height=5)))
case(Code.BAD_SIGNATURE, "beats unknown producer")(lambda ln, k: bad_sig(ln.block(producer=OUTSIDER)))
case(Code.BAD_SIGNATURE, "tx 0 bad signature beats tx 1 bad amount")(lambda ln, k: ln.block(
    [bad_sig(ln.tx(k.faucet, ALICE, 5, nonce=1)), ln.tx(k.faucet, BOB, 0, nonce=2)]))
case(Code.BAD_SIGNATURE, "tx 1 after a good tx 0")(lambda ln, k: ln.block(
    [ln.tx(k.faucet, ALICE, 5, nonce=1), bad_sig(ln.tx(k.faucet, BOB, 5, nonce=2))]))
case(Code.BAD_SIGNATURE, "beats bad amount (tx)")(lambda ln, k: bad_sig(ln.tx(k.faucet, ALICE, 0)))
case(Code.BAD_SIGNATURE, "beats bad amount (provider)")(lambda ln, k: bad_sig(ln.provider(k.faucet, stake=0)))
case(Code.BAD_SIGNATURE, "beats unknown provider (settlement)")(
    lambda ln, k: ln.settlement(provider_id="nobody", signer=k.faucet))
case(Code.BAD_SIGNATURE, "beats bad round (payout)")(lambda ln, k: bad_sig(ln.payout(round_height=9)))

# UNKNOWN_PRODUCER / UNKNOWN_ORACLE -----------------------------------------------------------
case(Code.UNKNOWN_PRODUCER, "key not in genesis")(lambda ln, k: ln.block(producer=OUTSIDER))
case(Code.UNKNOWN_PRODUCER, "beats bad height")(lambda ln, k: ln.block(producer=OUTSIDER, height=7))
case(Code.UNKNOWN_PRODUCER, "oracle key is not a producer key")(lambda ln, k: ln.block(producer=k.oracle))
case(Code.UNKNOWN_ORACLE, "key not in genesis")(lambda ln, k: ln.reading(signer=OUTSIDER))
case(Code.UNKNOWN_ORACLE, "producer key is not an oracle key")(lambda ln, k: ln.reading(signer=k.producer))
case(Code.UNKNOWN_ORACLE, "beats bad amount")(lambda ln, k: ln.reading(milli_kwh=0, signer=OUTSIDER))

# block structure -----------------------------------------------------------------------------
case(Code.BAD_HEIGHT, "skips a height")(lambda ln, k: ln.block(height=2))
case(Code.BAD_HEIGHT, "height zero")(lambda ln, k: ln.block(height=0))
case(Code.BAD_HEIGHT, "negative height")(lambda ln, k: ln.block(height=-1))
case(Code.BAD_HEIGHT, "beats bad prev_hash")(lambda ln, k: ln.block(height=2, prev_hash="0" * 64))
case(Code.BAD_HEIGHT, "far above the tip")(lambda ln, k: block1(ln) and ln.block(height=3))
case(Code.BAD_PREV_HASH, "height 1 not on genesis")(lambda ln, k: ln.block(prev_hash="0" * 64))
case(Code.BAD_PREV_HASH, "height 2 on genesis")(
    lambda ln, k: block1(ln) and ln.block(prev_hash=ln.chain.genesis.hash))
case(Code.BAD_PREV_HASH, "beats bad timestamp")(
    lambda ln, k: ln.block(prev_hash="1" * 64, timestamp=ln.chain.genesis.timestamp))
case(Code.BAD_TIMESTAMP, "height 1 at the genesis timestamp")(
    lambda ln, k: ln.block(timestamp=ln.chain.genesis.timestamp))
case(Code.BAD_TIMESTAMP, "height 1 before genesis")(
    lambda ln, k: ln.block(timestamp=ln.chain.genesis.timestamp - 1))
case(Code.BAD_TIMESTAMP, "same as the previous block")(
    lambda ln, k: ln.block(timestamp=block1(ln)["header"]["timestamp"]))
case(Code.BAD_TIMESTAMP, "beats bad tx_root")(
    lambda ln, k: ln.block(timestamp=ln.chain.genesis.timestamp, tx_root="1" * 64))
case(Code.BAD_TX_ROOT, "wrong root")(lambda ln, k: ln.block([ln.tx(k.faucet, ALICE, 5)], tx_root="ab" * 32))
case(Code.BAD_TX_ROOT, "empty block with a root")(lambda ln, k: ln.block(tx_root="ab" * 32))
case(Code.BAD_TX_ROOT, "count too high")(lambda ln, k: ln.block([ln.tx(k.faucet, ALICE, 5)], tx_count=2))
case(Code.BAD_TX_ROOT, "count too low")(lambda ln, k: ln.block([ln.tx(k.faucet, ALICE, 5)], tx_count=0))
case(Code.BAD_TX_ROOT, "beats a bad tx signature")(
    lambda ln, k: ln.block([bad_sig(ln.tx(k.faucet, ALICE, 5))], tx_root=EMPTY_ROOT))


@case(Code.BAD_TX_ROOT, "transactions reordered")
def _(ln: Lines, k: Keys) -> dict:
    line = ln.block([ln.tx(k.faucet, ALICE, 5, nonce=1), ln.tx(k.faucet, BOB, 5, nonce=2)])
    line["transactions"].reverse()
    return line


@case(Code.BAD_NONCE, "repeated last tx keeps the odd-level root (CVE-2012-2459 shape)")
def _(ln: Lines, k: Keys) -> dict:
    txs = [ln.tx(k.faucet, ALICE, 5, nonce=n) for n in (1, 2, 3)]
    root = ln.block(txs)["header"]["tx_root"]
    line = ln.block(txs + [txs[-1]], tx_count=4)
    assert line["header"]["tx_root"] == root  # the root cannot tell; the nonce rule does
    return line


# transactions: BAD_AMOUNT, FEE_TOO_LOW, BAD_NONCE, INSUFFICIENT_FUNDS -------------------------
case(Code.BAD_AMOUNT, "tx amount zero")(lambda ln, k: ln.tx(k.faucet, ALICE, 0))
case(Code.BAD_AMOUNT, "tx amount negative")(lambda ln, k: ln.tx(k.faucet, ALICE, -5))
case(Code.BAD_AMOUNT, "tx amount zero in a block")(lambda ln, k: ln.block([ln.tx(k.faucet, ALICE, 0)]))
case(Code.BAD_AMOUNT, "tx amount 2**63")(lambda ln, k: _set(ln.tx(k.faucet, ALICE, 5), amount=2**63))
case(Code.BAD_AMOUNT, "tx fee below -2**63")(lambda ln, k: _set(ln.tx(k.faucet, ALICE, 5), fee=-2**63 - 1))
case(Code.BAD_AMOUNT, "tx nonce 2**64 in a block")(
    lambda ln, k: _tx0(ln.block([ln.tx(k.faucet, ALICE, 5)]), nonce=2**64))
case(Code.BAD_AMOUNT, "header timestamp 2**63")(lambda ln, k: _hdr(ln.block(), timestamp=2**63))
case(Code.BAD_AMOUNT, "header tx_count beyond int32")(lambda ln, k: _hdr(ln.block(), tx_count=2**31))
case(Code.BAD_AMOUNT, "tx 0 bad amount beats tx 1 bad signature")(lambda ln, k: ln.block(
    [ln.tx(k.faucet, ALICE, 0, nonce=1), bad_sig(ln.tx(k.faucet, BOB, 5, nonce=2))]))
case(Code.BAD_AMOUNT, "beats fee too low")(lambda ln, k: ln.tx(k.faucet, ALICE, 0, fee=1))
case(Code.BAD_AMOUNT, "share difficulty zero")(lambda ln, k: ln.share(difficulty=0))
case(Code.BAD_AMOUNT, "share difficulty negative")(lambda ln, k: ln.share(difficulty=-1024))
case(Code.BAD_AMOUNT, "share height 2**63")(lambda ln, k: ln.share(height=2**63))
case(Code.BAD_AMOUNT, "share timestamp below -2**63")(lambda ln, k: ln.share(timestamp=-2**63 - 1))
case(Code.BAD_AMOUNT, "reading milli_kwh zero")(lambda ln, k: ln.reading(milli_kwh=0))
case(Code.BAD_AMOUNT, "reading milli_kwh 2**63")(lambda ln, k: _set(ln.reading(), milli_kwh=2**63))
case(Code.BAD_AMOUNT, "reading beats unknown provider")(
    lambda ln, k: ln.reading(provider_id="nobody", milli_kwh=-1))
case(Code.BAD_AMOUNT, "provider stake zero beats stake too low")(lambda ln, k: ln.provider(k.faucet, stake=0))
case(Code.BAD_AMOUNT, "provider price zero")(lambda ln, k: ln.provider(k.faucet, price_per_kwh=0))
case(Code.BAD_AMOUNT, "settlement milli_kwh zero")(lambda ln, k: ln.settlement(milli_kwh=0, amount=0))
case(Code.BAD_AMOUNT, "settlement amount zero")(lambda ln, k: with_provider(ln, k) or ln.settlement(amount=0))
case(Code.BAD_AMOUNT, "settlement beats unknown provider")(
    lambda ln, k: ln.settlement(provider_id="nobody", amount=-1))
case(Code.BAD_AMOUNT, "payout amount zero")(lambda ln, k: block1(ln) and ln.payout(amount=0))
case(Code.BAD_AMOUNT, "payout beats bad round")(lambda ln, k: ln.payout(amount=-1, round_height=5))
case(Code.BAD_AMOUNT, "payout round_height 2**64")(lambda ln, k: _set(ln.payout(), round_height=2**64))
case(Code.FEE_TOO_LOW, "mempool tx")(lambda ln, k: ln.tx(k.faucet, ALICE, 5, fee=ln.min_fee - 1))
case(Code.FEE_TOO_LOW, "zero fee")(lambda ln, k: ln.tx(k.faucet, ALICE, 5, fee=0))
case(Code.FEE_TOO_LOW, "tx in a block")(lambda ln, k: ln.block([ln.tx(k.faucet, ALICE, 5, fee=999)]))
case(Code.FEE_TOO_LOW, "tx 0 low fee beats tx 1 wrong chain")(lambda ln, k: ln.block(
    [ln.tx(k.faucet, ALICE, 5, nonce=1, fee=1), ln.tx(k.faucet, BOB, 5, nonce=2, chain_id="x")]))
case(Code.FEE_TOO_LOW, "beats bad nonce")(lambda ln, k: ln.tx(k.faucet, ALICE, 5, fee=0, nonce=9))
case(Code.BAD_NONCE, "mempool nonce skips")(lambda ln, k: ln.tx(k.faucet, ALICE, 5, nonce=2))
case(Code.BAD_NONCE, "mempool nonce zero")(lambda ln, k: ln.tx(k.faucet, ALICE, 5, nonce=0))
case(Code.BAD_NONCE, "beats insufficient funds")(lambda ln, k: ln.tx(POOR, ALICE, 5, nonce=2))
case(Code.BAD_NONCE, "in a block, nonce skips")(lambda ln, k: ln.block([ln.tx(k.faucet, ALICE, 5, nonce=2)]))


@case(Code.BAD_NONCE, "mempool: pending txs of the sender count")
def _(ln: Lines, k: Keys) -> dict:
    admit_ok(ln.chain, ln.tx(k.faucet, ALICE, 5, nonce=1))
    return ln.tx(k.faucet, BOB, 5, nonce=1)


@case(Code.BAD_NONCE, "mempool: confirmed nonce counts")
def _(ln: Lines, k: Keys) -> dict:
    admit_ok(ln.chain, ln.block([ln.tx(k.faucet, ALICE, 5, nonce=1)]))
    return ln.tx(k.faucet, BOB, 5, nonce=1)


@case(Code.BAD_NONCE, "in a block: earlier txs of the sender count")
def _(ln: Lines, k: Keys) -> dict:
    return ln.block([ln.tx(k.faucet, ALICE, 5, nonce=1), ln.tx(k.faucet, BOB, 5, nonce=1)])


@case(Code.BAD_NONCE, "new block repeating a confirmed tx")
def _(ln: Lines, k: Keys) -> dict:
    tx = ln.tx(k.faucet, ALICE, 5, nonce=1)
    admit_ok(ln.chain, ln.block([tx]))
    return ln.block([tx])


@case(Code.BAD_NONCE, "block repeating a tx twice")
def _(ln: Lines, k: Keys) -> dict:
    tx = ln.tx(k.faucet, ALICE, 5, nonce=1)
    return ln.block([tx, tx])


case(Code.INSUFFICIENT_FUNDS, "mempool tx of an empty account")(lambda ln, k: ln.tx(POOR, ALICE, 5))
case(Code.INSUFFICIENT_FUNDS, "tx in a block of an empty account")(
    lambda ln, k: ln.block([ln.tx(POOR, ALICE, 5)]))
case(Code.INSUFFICIENT_FUNDS, "fee counts")(
    lambda ln, k: ln.fund(ALICE, amount=10_000) or ln.tx(ALICE, BOB, 9_001))


@case(Code.INSUFFICIENT_FUNDS, "mempool: pending txs spend")
def _(ln: Lines, k: Keys) -> dict:
    ln.fund(ALICE, amount=1_000_000)
    admit_ok(ln.chain, ln.tx(ALICE, BOB, 1_000_000 - ln.min_fee))
    return ln.tx(ALICE, BOB, 1)


@case(Code.INSUFFICIENT_FUNDS, "in a block: earlier txs spend")
def _(ln: Lines, k: Keys) -> dict:
    ln.fund(ALICE, amount=1_000_000)
    return ln.block([ln.tx(ALICE, BOB, 500_000, nonce=1), ln.tx(ALICE, BOB, 500_000, nonce=2)])


case(Code.INSUFFICIENT_FUNDS, "stake of an empty account")(lambda ln, k: ln.provider(POOR))


@case(Code.INSUFFICIENT_FUNDS, "stake: pending txs spend")
def _(ln: Lines, k: Keys) -> dict:
    ln.fund(ALICE, amount=2_000_000)
    admit_ok(ln.chain, ln.tx(ALICE, BOB, 1_500_000))
    return ln.provider(ALICE, stake=1_000_000)


@case(Code.INSUFFICIENT_FUNDS, "settlement beyond the treasury")
def _(ln: Lines, k: Keys) -> dict:
    with_provider(ln, k, price=10**15, milli_kwh=2000)  # due 2 * 10**15, the treasury holds 10**15
    return ln.settlement(milli_kwh=2000, amount=2 * 10**15)


@case(Code.INSUFFICIENT_FUNDS, "payout: the pool's pending txs spend")
def _(ln: Lines, k: Keys) -> dict:
    block1(ln)
    admit_ok(ln.chain, ln.tx(k.producer, k.faucet, ln.chain.genesis.block_reward - ln.min_fee))
    return ln.payout(amount=1)


# energy and pool rules -----------------------------------------------------------------------
case(Code.UNKNOWN_PROVIDER, "reading for no provider")(lambda ln, k: ln.reading(provider_id="nobody"))
case(Code.UNKNOWN_PROVIDER, "reading from another meter")(
    lambda ln, k: with_provider(ln, k, milli_kwh=0) or ln.reading(meter_id="meter-2"))
case(Code.UNKNOWN_PROVIDER, "settlement for no provider")(lambda ln, k: ln.settlement(provider_id="nobody"))
case(Code.STAKE_TOO_LOW, "one below min_stake")(
    lambda ln, k: ln.provider(k.faucet, stake=ln.chain.genesis.energy.min_stake - 1))
case(Code.STAKE_TOO_LOW, "beats insufficient funds")(lambda ln, k: ln.provider(POOR, stake=1))
case(Code.OVER_SETTLEMENT, "more milli_kwh than unsettled")(
    lambda ln, k: with_provider(ln, k) or ln.settlement(milli_kwh=4001, amount=4001 * 250 // 1000))
case(Code.OVER_SETTLEMENT, "nothing credited yet")(
    lambda ln, k: with_provider(ln, k, milli_kwh=0) or ln.settlement(milli_kwh=4, amount=1))
case(Code.OVER_SETTLEMENT, "amount above price")(
    lambda ln, k: with_provider(ln, k) or ln.settlement(amount=1001))
case(Code.OVER_SETTLEMENT, "amount below price")(
    lambda ln, k: with_provider(ln, k) or ln.settlement(amount=999))
case(Code.OVER_SETTLEMENT, "amount rounds down")(
    lambda ln, k: with_provider(ln, k, price=333) or ln.settlement(milli_kwh=1000, amount=334))
case(Code.OVER_SETTLEMENT, "beats insufficient funds")(
    lambda ln, k: with_provider(ln, k, price=10**15, milli_kwh=2000)
    or ln.settlement(milli_kwh=2001, amount=2001 * 10**12))


@case(Code.OVER_SETTLEMENT, "settled milli_kwh are no longer unsettled")
def _(ln: Lines, k: Keys) -> dict:
    with_provider(ln, k)
    admit_ok(ln.chain, ln.settlement("set-1", milli_kwh=3000, amount=750))
    return ln.settlement("set-2", milli_kwh=1004, amount=251)


case(Code.BAD_ROUND, "no block at round_height")(lambda ln, k: ln.payout(round_height=1))
case(Code.BAD_ROUND, "round_height zero")(lambda ln, k: block1(ln) and ln.payout(round_height=0))
case(Code.BAD_ROUND, "negative round_height")(lambda ln, k: block1(ln) and ln.payout(round_height=-1))
case(Code.BAD_ROUND, "more than reward + fees")(
    lambda ln, k: block1(ln) and ln.payout(amount=ln.chain.genesis.block_reward + 1))
case(Code.BAD_ROUND, "beats insufficient funds")(lambda ln, k: ln.payout(amount=10**12, round_height=3))


@case(Code.BAD_ROUND, "the round's payouts together exceed reward + fees")
def _(ln: Lines, k: Keys) -> dict:
    admit_ok(ln.chain, ln.block([ln.tx(k.faucet, ALICE, 5, fee=7000)]))
    cap = ln.chain.genesis.block_reward + 7000
    admit_ok(ln.chain, ln.payout("p1", ALICE, cap - 10))
    return ln.payout("p2", BOB, 11)


# DUPLICATE (every id kind) and CONFLICT ------------------------------------------------------


def _again(build: Callable[[Lines, Keys], dict], edit: Callable[[dict], Any] = lambda ln: None) -> Callable:
    """Admit a line, then offer it (optionally edited) again."""
    def fn(ln: Lines, k: Keys) -> dict:
        line = build(ln, k)
        admit_ok(ln.chain, line)
        line = copy.deepcopy(line)
        edit(line)
        return line
    return fn


def _setup_then(setup: Callable[[Lines, Keys], Any], build: Callable[[Lines, Keys], dict]) -> Callable:
    return lambda ln, k: setup(ln, k) or build(ln, k)


def _provider_ready(ln: Lines, k: Keys) -> None:
    with_provider(ln, k)


case(Code.DUPLICATE, "mempool txid")(_again(_tx))
case(Code.DUPLICATE, "mempool txid with another signature")(_again(_tx, bad_sig))
case(Code.DUPLICATE, "block at its height")(_again(_block_with_tx))
case(Code.DUPLICATE, "block with a bad signature")(_again(_block_with_tx, bad_sig))
case(Code.DUPLICATE, "reading id")(
    _again(_setup_then(_provider_ready, lambda ln, k: ln.reading(milli_kwh=5))))
case(Code.DUPLICATE, "reading with a bad signature")(
    _again(_setup_then(_provider_ready, lambda ln, k: ln.reading(milli_kwh=5)), bad_sig))
case(Code.DUPLICATE, "provider_id")(_again(_provider))
case(Code.DUPLICATE, "provider with a bad signature")(_again(_provider, bad_sig))
case(Code.DUPLICATE, "settlement_id")(_again(_setup_then(_provider_ready, lambda ln, k: ln.settlement())))
case(Code.DUPLICATE, "payout_id")(
    _again(_setup_then(lambda ln, k: block1(ln) and None, lambda ln, k: ln.payout())))
case(Code.DUPLICATE, "share")(_again(_share))
case(Code.DUPLICATE, "share with its keys in another order")(
    _again(_share, lambda ln: [ln.update({key: ln.pop(key)}) for key in sorted(ln)]))


@case(Code.DUPLICATE, "mempool tx after its block confirmed it")
def _(ln: Lines, k: Keys) -> dict:
    tx = ln.tx(k.faucet, ALICE, 5)
    admit_ok(ln.chain, tx, ln.block([tx]))
    return tx


@case(Code.DUPLICATE, "an older block")
def _(ln: Lines, k: Keys) -> dict:
    first = block1(ln)
    admit_ok(ln.chain, ln.block())
    return first


case(Code.CONFLICT, "another block at an admitted height")(
    lambda ln, k: block1(ln) and ln.block(height=1, prev_hash=ln.chain.genesis.hash))
case(Code.CONFLICT, "conflict beats bad signature")(
    lambda ln, k: block1(ln) and bad_sig(ln.block(height=1, prev_hash=ln.chain.genesis.hash)))


@case(Code.CONFLICT, "provider_id with another body")
def _(ln: Lines, k: Keys) -> dict:
    admit_ok(ln.chain, ln.provider(k.faucet, "prov-1", price_per_kwh=250))
    return ln.provider(k.faucet, "prov-1", price_per_kwh=999)


@case(Code.CONFLICT, "settlement_id with another body")
def _(ln: Lines, k: Keys) -> dict:
    with_provider(ln, k)
    admit_ok(ln.chain, ln.settlement("s", milli_kwh=2000, amount=500))
    return ln.settlement("s", milli_kwh=1000, amount=250)


@case(Code.CONFLICT, "payout_id with another body")
def _(ln: Lines, k: Keys) -> dict:
    block1(ln)
    admit_ok(ln.chain, ln.payout("p", ALICE, 100))
    return ln.payout("p", BOB, 100)


@case(Code.CONFLICT, "provider_id reused by another owner")
def _(ln: Lines, k: Keys) -> dict:
    admit_ok(ln.chain, ln.provider(k.faucet, "shared"))
    return ln.provider(k.treasury, "shared")


# -- running the table --------------------------------------------------------------------


def test_every_code_has_cases():
    assert {code for code, _ in CASES.values()} == set(Code) - {Code.BAD_ROTATION}  # §8: test_key_rotation.py


@pytest.mark.parametrize("name", sorted(CASES))
def test_rejection_code(chain, keys, lines, name):
    code, build = CASES[name]
    line = build(lines, keys)
    before = snapshot(chain)
    s = admit(chain, line)
    if code is Code.DUPLICATE:
        assert (s.accepted, s.duplicates, s.rejected, s.rejections) == (0, 1, 0, [])
    else:
        assert (s.accepted, s.duplicates, s.rejected) == (0, 0, 1), s.to_dict()
        [rej] = s.rejections
        assert (rej["line"], rej["code"]) == (1, code.value), rej
        assert isinstance(rej["message"], str) and rej["message"]
    assert snapshot(chain) == before


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


# -- fuzzing: mutated valid lines ---------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
INTS = st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64]) | st.integers()


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for key, v in obj.items():
            out += _paths(v, prefix + (key,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _base_line(ln: Lines, k: Keys, kind: str, data: st.DataObject) -> dict:
    f = k.faucet
    if kind == "tx":
        return ln.tx(f, ALICE, data.draw(st.integers(1, 10**6)))
    if kind == "block":
        n = ln.chain.write_state().account(f.address).nonce
        return ln.block([ln.tx(f, BOB, 5, nonce=n + 1 + i) for i in range(data.draw(st.integers(0, 2)))])
    if kind == "share":
        return ln.share(job_id=data.draw(st.sampled_from(["a", "b"])),
                        difficulty=data.draw(st.integers(1, 9)))
    if kind == "reading":
        return ln.reading(milli_kwh=data.draw(st.integers(1, 10)))
    if kind == "provider":
        return ln.provider(f, data.draw(st.sampled_from(["prov-1", "prov-2", "prov-3"])))
    if kind == "settlement":
        return ln.settlement(data.draw(st.sampled_from(["s1", "s2"])), milli_kwh=4, amount=1)
    return ln.payout(data.draw(st.sampled_from(["p1", "p2"])), ALICE, 1000, round_height=1)


def _mutate(line: dict, k: Keys, data: st.DataObject) -> dict | bytes:
    how = data.draw(st.sampled_from(["none", "delete", "add", "replace", "int", "string", "bytes", "resign"]))
    paths = _paths(line)
    if how == "delete":
        path = data.draw(st.sampled_from(paths[1:]))
        parent = _get(line, path[:-1])
        del parent[path[-1]]
    elif how == "add":
        target = data.draw(st.sampled_from([p for p in paths if isinstance(_get(line, p), dict)]))
        _get(line, target)[data.draw(st.text(max_size=6))] = data.draw(JSON)
    elif how == "replace":
        path = data.draw(st.sampled_from(paths))
        if not path:
            return encode(json.dumps(data.draw(JSON)))
        _get(line, path[:-1])[path[-1]] = data.draw(JSON)
    elif how in ("int", "string", "resign"):
        kinds = int if how != "string" else str
        leaves = [p for p in paths
                  if p and isinstance(_get(line, p), kinds) and not isinstance(_get(line, p), bool)]
        if leaves:
            path = data.draw(st.sampled_from(leaves))
            value = data.draw(INTS) if kinds is int else data.draw(
                st.text(alphabet="0123456789abcdefABX.\ud800", max_size=70))
            _get(line, path[:-1])[path[-1]] = value
        if how == "resign":
            signer = data.draw(st.sampled_from([k.faucet, k.producer, k.oracle, k.treasury, ALICE]))
            try:
                resign(line, signer)
            except Exception:  # noqa: BLE001, S110 - a body that no longer encodes stays as it is
                pass
    elif how == "bytes":
        raw = bytearray(encode(line))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, 2**16 - 1)) * len(raw) >> 16  # not len-bound: lengths vary
            op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
            if op == "flip":
                raw[i] = data.draw(st.integers(0, 255))
            elif op == "insert":
                raw.insert(i, data.draw(st.integers(0, 255)))
            elif op == "delete" and len(raw) > 1:
                del raw[i]
            elif op == "truncate":
                raw = raw[:max(i, 1)]
        return bytes(raw)
    return line


_FUZZ = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _ready(ln: Lines, k: Keys) -> None:
    """A history the fuzzed lines can build on (once per test, not per example)."""
    if ln.chain.write_state().tip().height == 0:
        block1(ln)
        with_provider(ln, k, milli_kwh=100)


@_FUZZ
@given(data=st.data())
def test_fuzzed_line_is_admitted_or_changes_nothing(chain, keys, lines, data):
    _ready(lines, keys)
    kind = data.draw(st.sampled_from(["tx", "block", "share", "reading", "provider", "settlement", "payout"]))
    line = _mutate(_base_line(lines, keys, kind, data), keys, data)
    before = snapshot(chain)
    s = admit(chain, line)
    event("outcome", "accepted" if s.accepted else "duplicate" if s.duplicates else s.rejections[0]["code"])
    assert s.accepted + s.duplicates + s.rejected == 1
    assert len(s.rejections) == s.rejected
    for r in s.rejections:
        assert r["code"] in PROTOCOL_CODES and r["line"] == 1 and r["message"]
    if not s.accepted:
        assert snapshot(chain) == before
    total, expected = supply(chain)
    assert total == expected


@_FUZZ
@given(data=st.data())
def test_fuzzed_batches_keep_the_summary_consistent(chain, keys, lines, data):
    _ready(lines, keys)
    batch = []
    for _ in range(data.draw(st.integers(1, 5))):
        kind = data.draw(st.sampled_from(["tx", "share", "reading", "provider", "settlement", "payout"]))
        batch.append(_mutate(_base_line(lines, keys, kind, data), keys, data))
    before = snapshot(chain)
    s = admit(chain, *batch)
    assert s.accepted + s.duplicates + s.rejected == len(batch)
    numbers = [r["line"] for r in s.rejections]
    assert numbers == sorted(set(numbers)) and all(1 <= n <= len(batch) for n in numbers)
    assert {r["code"] for r in s.rejections} <= PROTOCOL_CODES
    if not s.accepted:
        assert snapshot(chain) == before
    total, expected = supply(chain)
    assert total == expected
