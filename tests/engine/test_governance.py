"""Governance parameters (docs/PROTOCOL.md §8.5): treasury-signed changes admitted in check order,
applied to registrations from the height they were admitted at and not before, typed rejections
that change nothing, and the write-side fold (Kafka catch-up) reproducing admission's state."""
from __future__ import annotations

import copy

import pytest
from conftest import Keys, Lines, admit, admit_ok, signer_from_byte, snapshot

from ledgerlog.engine import topics as T
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.admission.state_fold import apply_event, order_key, seed_genesis
from ledgerlog.engine.errors import Code
from ledgerlog.engine.governance import I64_MAX, PARAMETERS
from ledgerlog.engine.log.memory import MemoryLog
from ledgerlog.engine.signing import Signer, rotation_line

OWNER = signer_from_byte(0x3C)


def codes(summary) -> list[str]:
    return [r["code"] for r in summary.rejections]


def events(chain, topic: str) -> list[dict]:
    return [chain.codec.decode(topic, r.value) for p in range(len(chain.log.end_offsets(topic)))
            for r in chain.log.scan(topic, p)]


def test_a_change_applies_from_its_height_and_registrations_before_keep_theirs(chain, keys, lines):
    lines.fund(OWNER)  # height 1
    low = chain.genesis.energy.min_stake
    admit_ok(chain, lines.provider(OWNER, "early", stake=low))  # stamped 1, under the genesis value
    admit_ok(chain, lines.governance("min_stake", 3 * low))     # stamped 1 too: in force from now on
    s = admit(chain, lines.provider(OWNER, "late", stake=3 * low - 1))
    assert codes(s) == [Code.STAKE_TOO_LOW.value] and "min_stake 3000000" in s.rejections[0]["message"]
    admit_ok(chain, lines.provider(OWNER, "late", stake=3 * low))
    [ev] = events(chain, T.GOVERNANCE)
    assert (ev["previous"], ev["seq"], ev["stamp_height"], ev["body"]["value"]) == (low, 1, 1, 3 * low)
    assert chain.write_state().parameter("min_stake", chain.genesis) == 3 * low
    registered = {e["body"]["provider_id"]: e["body"]["stake"] for e in events(chain, T.PROVIDERS)}
    assert registered == {"early": low, "late": 3 * low}  # the early one keeps its stake

    admit_ok(chain, lines.governance("max_price_per_kwh", 300), lines.block())
    s = admit(chain, lines.provider(OWNER, "dear", price_per_kwh=301, stake=3 * low))
    assert codes(s) == [Code.PRICE_TOO_HIGH.value]
    admit_ok(chain, lines.provider(OWNER, "dear", price_per_kwh=300, stake=3 * low))
    admit_ok(chain, lines.governance("min_stake", 1))  # lowered again: small stakes are welcome
    admit_ok(chain, lines.provider(OWNER, "small", stake=1))
    assert [e["seq"] for e in events(chain, T.GOVERNANCE)] == [1, 2, 3]


def test_stake_check_comes_before_price_and_funds(chain, keys, lines):
    admit_ok(chain, lines.governance("max_price_per_kwh", 10))
    poor = signer_from_byte(0x4D)
    assert codes(admit(chain, lines.provider(poor, stake=1, price_per_kwh=11))) == [Code.STAKE_TOO_LOW.value]
    assert codes(admit(chain, lines.provider(poor, price_per_kwh=11))) == [Code.PRICE_TOO_HIGH.value]
    assert codes(admit(chain, lines.provider(poor, price_per_kwh=10))) == [Code.INSUFFICIENT_FUNDS.value]


def _wrong_chain(ln: Lines, k: Keys) -> dict:
    return ln.governance(chain_id="other-chain")


def _rotated(ln: Lines, k: Keys) -> dict:
    new = Signer.generate()
    admit_ok(ln.chain, rotation_line(k.treasury, new, chain_id=ln.chain_id, role="treasury", timestamp=ln.now()))
    return ln.governance()  # by the retired treasury key


REFUSED = {
    "signed by the oracle": (Code.BAD_SIGNATURE, lambda ln, k: ln.governance(signer=k.oracle)),
    "signed by a stranger": (Code.BAD_SIGNATURE, lambda ln, k: ln.governance(signer=signer_from_byte(0x5E))),
    "retired treasury key": (Code.BAD_SIGNATURE, _rotated),
    "bad signature": (Code.BAD_SIGNATURE, lambda ln, k: {**ln.governance(), "signature": "00" * 64}),
    "wrong chain": (Code.WRONG_CHAIN, _wrong_chain),
    "unknown parameter": (Code.UNKNOWN_PARAMETER, lambda ln, k: ln.governance("settlement_fee", 5)),
    "parameter case": (Code.UNKNOWN_PARAMETER, lambda ln, k: ln.governance("MIN_STAKE", 5)),
    "negative min_stake": (Code.BAD_PARAMETER, lambda ln, k: ln.governance("min_stake", -1)),
    "zero max price": (Code.BAD_PARAMETER, lambda ln, k: ln.governance("max_price_per_kwh", 0)),
    "value beyond 64 bits": (Code.BAD_AMOUNT, lambda ln, k: {**ln.governance(), "body": {
        **ln.governance()["body"], "value": 1 << 63}}),
    "value a string": (Code.MALFORMED, lambda ln, k: {**ln.governance(), "body": {
        **ln.governance()["body"], "value": "5"}}),
    "extra field": (Code.MALFORMED, lambda ln, k: {**ln.governance(), "seq": 1}),
    "empty parameter": (Code.MALFORMED, lambda ln, k: ln.governance("")),
    "unknown beats range": (Code.UNKNOWN_PARAMETER, lambda ln, k: ln.governance("fee", -1)),
    "signer beats parameter": (Code.BAD_SIGNATURE, lambda ln, k: ln.governance("fee", -1, signer=k.oracle)),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_changes_are_typed_and_change_nothing(chain, keys, lines, name):
    code, build = REFUSED[name]
    line = build(lines, keys)
    before = snapshot(chain)
    s = admit(chain, line)
    assert (s.accepted, s.rejected, codes(s)) == (0, 1, [code.value]), s.to_dict()
    assert snapshot(chain) == before
    assert chain.write_state().parameter("min_stake", chain.genesis) == chain.genesis.energy.min_stake
    assert chain.write_state().governance_seq() == 0


def test_duplicate_change_is_counted_apart(chain, keys, lines):
    line = lines.governance()
    admit_ok(chain, line)
    before = snapshot(chain)
    s = admit(chain, copy.deepcopy(line))
    assert (s.accepted, s.duplicates, s.rejected) == (0, 1, 0)
    assert snapshot(chain) == before
    again = lines.governance()  # the same change with a new timestamp is a new change
    admit_ok(chain, again)
    assert chain.write_state().governance_seq() == 2


def test_new_treasury_key_governs_after_a_rotation(chain, keys, lines):
    new = Signer.generate()
    admit_ok(chain, rotation_line(keys.treasury, new, chain_id=lines.chain_id, role="treasury",
                                  timestamp=lines.now()))
    admit_ok(chain, lines.governance("min_stake", 42, signer=new))
    assert chain.write_state().parameter("min_stake", chain.genesis) == 42


def test_range_table() -> None:
    assert set(PARAMETERS) == {"min_stake", "max_price_per_kwh"}
    assert (PARAMETERS["min_stake"].lo, PARAMETERS["min_stake"].hi) == (0, I64_MAX)
    assert (PARAMETERS["max_price_per_kwh"].lo, PARAMETERS["max_price_per_kwh"].hi) == (1, I64_MAX)


def test_write_side_fold_reproduces_admission(chain, keys, lines):
    lines.fund(OWNER)
    admit_ok(chain, lines.governance("min_stake", 10), lines.governance("max_price_per_kwh", 500))
    admit_ok(chain, lines.provider(OWNER, "a", stake=10), lines.block(), lines.governance("min_stake", 20))
    admit(chain, lines.governance("min_stake", -5), lines.governance("nope", 1))  # refused: nothing folds
    folded = WriteState(MemoryLog())
    seed_genesis(folded, chain.genesis)
    evs = [(t, ev) for t in T.EVENT_TOPICS for ev in events(chain, t)]
    for topic, ev in sorted(evs, key=lambda te: order_key(*te)):
        apply_event(folded, topic, ev, chain.genesis)
    batch = folded.take_batch()
    stored = dict(chain.log.state_items(b""))
    for key in (b"gv/min_stake", b"gv/max_price_per_kwh", b"gseq"):
        assert batch[key] == stored[key]
    assert stored[b"gv/min_stake"] == b"[20,3]" and stored[b"gseq"] == b"3"
    gov = {k: v for k, v in stored.items() if k.startswith(b"id/g/")}
    assert gov and all(batch[k] == v for k, v in gov.items()) and len(gov) == 3
