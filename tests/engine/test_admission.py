"""Admission (PROTOCOL.md §5): every rejection code, the check order, atomicity of blocks, and
that a rejected line changes nothing — on a real dev chain over a temporary RocksDB log."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from conftest import (
    Keys,
    Lines,
    admit,
    admit_ok,
    encode,
    resign,
    signer_from_byte,
    snapshot,
)

from ledgerlog.engine.crypto import EMPTY_ROOT
from ledgerlog.engine.errors import Code

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
    ("sender with a final newline", _tx, lambda ln: ln["body"].update(sender=ln["body"]["sender"] + "\n")),
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
    line = ln.block([*txs, txs[-1]], tx_count=4)
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


@case(Code.CONFLICT, "provider_id reused with an integer out of range")  # was BAD_AMOUNT, ahead of its turn
def _(ln: Lines, k: Keys) -> dict:
    admit_ok(ln.chain, ln.provider(k.faucet, "prov-1"))
    return edited(lambda ln, k: ln.provider(k.faucet, "prov-1"), lambda line: line["body"].update(timestamp=2**63))(ln, k)


@case(Code.CONFLICT, "payout_id reused with an integer out of range")
def _(ln: Lines, k: Keys) -> dict:
    block1(ln)
    admit_ok(ln.chain, ln.payout("p", ALICE, 100))
    return edited(lambda ln, k: ln.payout("p", ALICE, 100), lambda line: line["body"].update(round_height=2**63))(ln, k)


@case(Code.BAD_AMOUNT, "a new provider_id with an integer out of range")
def _(ln: Lines, k: Keys) -> dict:
    return edited(lambda ln, k: ln.provider(k.faucet, "prov-new"), lambda line: line["body"].update(timestamp=-2**63 - 1))(ln, k)


@case(Code.CONFLICT, "provider_id reused by another owner")
def _(ln: Lines, k: Keys) -> dict:
    admit_ok(ln.chain, ln.provider(k.faucet, "shared"))
    return ln.provider(k.treasury, "shared")


# -- running the table --------------------------------------------------------------------


def test_every_code_has_cases():
    assert {code for code, _ in CASES.values()} == set(Code) - {  # §8: test_key_rotation.py, test_governance.py
        Code.BAD_ROTATION, Code.UNKNOWN_PARAMETER, Code.BAD_PARAMETER, Code.PRICE_TOO_HIGH}


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
