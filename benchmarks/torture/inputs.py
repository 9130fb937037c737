"""What torture trials feed ledgerlog: a generated valid history (ops/histgen.py), poison lines
(valid, with values at the signed 64-bit edge: three max-difficulty shares of one worker, a
provider priced at 2^63-1 and readings near 2^63) and junk lines (random bytes, a BOM, UTF-16,
huge numbers, broken JSON) mixed in; and the id each admissible line is known by in the log."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from ledgerlog.engine.admission.lines import (
    BlockLine,
    RotationLine,
    ShareLine,
    SignedLine,
    parse_line,
)
from ledgerlog.engine.errors import Rejection
from ledgerlog.engine.signing import share_line, signed_line
from ledgerlog.ops.devtools.histgen import Keys, derive_signer, make_genesis, write_history

__all__ = ["I64", "LineId", "Workload", "junk_line", "line_id", "make_workload"]

I64 = (1 << 63) - 1
LineId = tuple[str, str]  # (kind, id): what admission dedupes a line by (PROTOCOL.md §5 DUPLICATE)

#: signed lines whose id is given in the body rather than the hash of it
_GIVEN_ID = {"provider": "provider_id", "settlement": "settlement_id", "payout": "payout_id"}


@dataclass(frozen=True)
class Workload:
    """One chain and its lines. ``history`` is valid in order; ``poison`` is valid anywhere in
    it, as long as its provider line comes before its readings (its wallet is its own)."""

    seed: int
    genesis: dict[str, Any]
    keys: Keys
    history: list[bytes]
    poison: list[bytes]
    poison_wallet: str
    poison_provider: str

    def mixed(self, rng: random.Random, junk: int) -> list[bytes]:
        """The history with the poison and ``junk`` junk lines put in at random places."""
        lines = list(self.history)
        provider, *rest = self.poison
        at = rng.randrange(len(lines) + 1)
        lines.insert(at, provider)
        for line in rest:  # readings (after the provider) and shares
            lines.insert(rng.randrange(at + 1, len(lines) + 1), line)
        for _ in range(junk):
            lines.insert(rng.randrange(len(lines) + 1), junk_line(rng))
        return lines


def make_workload(seed: int, events: int) -> Workload:
    """A history of about ``events`` log events on a fresh genesis, plus the poison lines."""
    genesis, keys = make_genesis(seed, wallets=8)
    poison = derive_signer(seed, "poison")
    genesis["allocations"][poison.address] = 10**12
    history: list[bytes] = []

    class _Collect:
        def write(self, data: bytes) -> None:
            history.extend(ln for ln in data.split(b"\n") if ln)

    write_history(_Collect(), genesis, keys, events=events, seed=seed)  # type: ignore[arg-type]
    chain_id, ts = genesis["chain_id"], genesis["timestamp"] + 1
    pid = "poison-prov"
    lines = [signed_line("provider", poison, {
        "chain_id": chain_id, "provider_id": pid, "owner": poison.address, "meter_id": "poison-meter",
        "stake": genesis["energy"]["min_stake"], "price_per_kwh": I64, "timestamp": ts})]
    lines += [signed_line("reading", keys.oracle, {
        "chain_id": chain_id, "meter_id": "poison-meter", "provider_id": pid, "milli_kwh": I64 - 7 - i,
        "timestamp": ts + 1 + i}) for i in range(3)]
    lines += [share_line(poison.address, "rig0", job_id=f"poison-{i}", height=1, difficulty=I64, timestamp=ts + i)
              for i in range(3)]
    return Workload(seed, genesis, keys, history, [json.dumps(x, separators=(",", ":")).encode() for x in lines],
                    poison.address, pid)


def junk_line(rng: random.Random) -> bytes:
    """One line admission must refuse (MALFORMED or BAD_AMOUNT) and nothing else; no newline in it."""
    addr = "ab" * 20
    share = {"type": "share", "worker": f"{addr}.rig", "job_id": f"j{rng.getrandbits(32)}", "height": 1,
             "difficulty": 1024, "accepted": True, "timestamp": 1}
    kind = rng.randrange(9)
    if kind == 0:
        out = rng.randbytes(rng.randrange(1, 300))
    elif kind == 1:  # a BOM before a well-formed share
        out = b"\xef\xbb\xbf" + json.dumps(share).encode()
    elif kind == 2:
        out = json.dumps(share).encode("utf-16")
    elif kind == 3:  # beyond 64 bits
        out = json.dumps({**share, "difficulty": rng.choice((1 << 64, I64 + 1, 10**40, -(10**30)))}).encode()
    elif kind == 4:
        out = json.dumps(share).encode()[:rng.randrange(1, 60)]
    elif kind == 5:
        out = b"[" * rng.randrange(100, 5000)
    elif kind == 6:
        out = rng.choice((b"NaN", b'{"type":"share","difficulty":Infinity}', b'"\\ud800"', b"{}", b"[]", b"null"))
    elif kind == 7:  # an unknown field
        out = json.dumps({**share, "extra": 1}).encode()
    else:
        out = json.dumps({**share, "difficulty": -rng.randrange(0, 10)}).encode()
    return out.replace(b"\n", b" ").replace(b"\r", b" ").strip() or b"\x00"


def line_id(line: bytes) -> LineId | None:
    """The id a line is admitted under (None for a line that cannot be admitted)."""
    try:
        item = parse_line(line)
        if isinstance(item, BlockLine):
            return ("block", item.header.id)
        if isinstance(item, ShareLine):
            return ("share", item.id)
        if isinstance(item, RotationLine):
            return ("rotation", item.signed.id)
        assert isinstance(item, SignedLine)
        given = _GIVEN_ID.get(item.kind)
        return (item.kind, item.signed.body[given] if given else item.signed.id)
    except Rejection:
        return None
