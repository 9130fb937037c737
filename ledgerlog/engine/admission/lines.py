"""Parsing ingest lines (PROTOCOL.md §4) into typed items; every structural fault is MALFORMED.

msgspec decodes a line straight from its bytes into Structs made from ``BODY_FIELDS``: exact keys,
exact JSON types (no bool for an integer, no float), lowercase hex of the right length and the
``type`` tag, in one C pass. Integers outside the Avro range are
not structural faults: msgspec keeps them exact, and ``Signed.canonical`` raises BAD_AMOUNT when
the canonical bytes are first needed (PROTOCOL.md §5: "a value outside the signed 64-bit range"),
so that check keeps its place in §5's order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import GenericAlias
from typing import Annotated, Any, Literal, Union, get_args

import msgspec
from msgspec import Meta
from msgspec.structs import asdict

from .. import avro
from ..crypto import H, canonical_json_flat
from ..errors import Code, Rejection

__all__ = ["MAX_LINE_BYTES", "MAX_BLOCK_TXS", "Signed", "BlockLine", "ShareLine", "RotationLine", "Item",
           "parse_line", "KINDS", "ROLES"]

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_BLOCK_TXS = 10_000
I64 = (-(1 << 63), (1 << 63) - 1)
I32 = (-(1 << 31), (1 << 31) - 1)
_MAX_ID = 256
_Role = Literal["producer", "oracle", "pool", "treasury", "log"]
#: Roles whose signing key a ``rotation`` line can replace (docs/PROTOCOL.md §8).
ROLES: tuple[str, ...] = get_args(_Role)

#: Field kinds per signed body, in the normative order of PROTOCOL.md §2.
BODY_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "TransactionBody": (("chain_id", "string"), ("sender", "address"), ("recipient", "address"),
                        ("amount", "long"), ("fee", "long"), ("nonce", "long"), ("timestamp", "long"),
                        ("memo", "string")),
    "BlockHeader": (("chain_id", "string"), ("height", "long"), ("prev_hash", "hex64"),
                    ("timestamp", "long"), ("producer", "address"), ("tx_root", "hex64"), ("tx_count", "int")),
    "ReadingBody": (("chain_id", "string"), ("meter_id", "id"), ("provider_id", "id"),
                    ("milli_kwh", "long"), ("timestamp", "long")),
    "ProviderBody": (("chain_id", "string"), ("provider_id", "id"), ("owner", "address"), ("meter_id", "id"),
                     ("stake", "long"), ("price_per_kwh", "long"), ("timestamp", "long")),
    "SettlementBody": (("chain_id", "string"), ("settlement_id", "id"), ("provider_id", "id"),
                       ("milli_kwh", "long"), ("amount", "long"), ("timestamp", "long")),
    "PayoutBody": (("chain_id", "string"), ("payout_id", "id"), ("address", "address"), ("amount", "long"),
                   ("round_height", "long"), ("timestamp", "long")),
    "KeyRotationBody": (("chain_id", "string"), ("role", "role"), ("old_pubkey", "hex64"),
                        ("new_pubkey", "hex64"), ("timestamp", "long")),
    "GovernanceBody": (("chain_id", "string"), ("parameter", "id"), ("value", "long"), ("timestamp", "long")),
}
#: Line type -> body schema, for the lines shaped {"type","body","pubkey","signature"}.
SIGNED_KINDS = {"transaction": "TransactionBody", "reading": "ReadingBody", "provider": "ProviderBody",
                "settlement": "SettlementBody", "payout": "PayoutBody", "governance": "GovernanceBody"}
KINDS = ("block", "share", *SIGNED_KINDS, "rotation")

# -- the line shapes as msgspec types --------------------------------------------------------
#: Patterns and how a rejection names them; "\Z", as "$" would also match before a final newline.
_PATTERNS = {r"^[0-9a-f]{40}\Z": "a 40-character lowercase hex address",
             r"^[0-9a-f]{64}\Z": "64 lowercase hex characters",
             r"^[0-9a-f]{128}\Z": "128 lowercase hex characters",
             r"^[0-9a-f]{40}\.[A-Za-z0-9_-]{1,32}\Z": "<40-hex address>.<rig>, rig matching [A-Za-z0-9_-]{1,32}"}
_Address, _Hex64, _Hex128, _Worker = (Annotated[str, Meta(pattern=p)] for p in _PATTERNS)
_Ident = Annotated[str, Meta(min_length=1, max_length=_MAX_ID)]
_TYPES = {"string": str, "id": _Ident, "address": _Address, "hex64": _Hex64, "long": int, "int": int,
          "role": _Role}
_BODIES = {name: msgspec.defstruct(name, [(f, _TYPES[kind]) for f, kind in spec], forbid_unknown_fields=True)
           for name, spec in BODY_FIELDS.items()}
_SIG = [("pubkey", _Hex64), ("signature", _Hex128)]


def _line(kind: str | None, fields: list[tuple[str, Any]]) -> Any:
    """A line shape: exactly these keys, told apart from the others by its ``type`` tag."""
    return msgspec.defstruct(kind or "tx", fields, forbid_unknown_fields=True,
                             tag_field="type" if kind else None, tag=kind)


_BLOCK_TX = _line(None, [("body", _BODIES["TransactionBody"]), *_SIG])
_SHAPES: dict[Any, str] = {
    _line("block", [("header", _BODIES["BlockHeader"]), *_SIG, ("transactions", GenericAlias(list, _BLOCK_TX))]): "block",
    _line("share", [("worker", _Worker), ("job_id", _Ident), ("height", int), ("difficulty", int),
                    ("accepted", bool), ("timestamp", int)]): "share",
    **{_line(kind, [("body", _BODIES[name]), *_SIG]): kind for kind, name in SIGNED_KINDS.items()},
    _line("rotation", [("body", _BODIES["KeyRotationBody"]), *_SIG, ("new_signature", _Hex128)]): "rotation",
}
_DECODER = msgspec.json.Decoder(Union[tuple(_SHAPES)])  # noqa: UP007


def _in_range(name: str, body: dict[str, Any]) -> str | None:
    for fname, kind in BODY_FIELDS[name]:
        if kind in ("long", "int"):
            lo, hi = I64 if kind == "long" else I32
            if not lo <= body[fname] <= hi:
                return fname
    return None


@dataclass(slots=True)
class Signed:
    """A signed body: the canonical bytes and id are computed once, on first use."""

    name: str
    body: dict[str, Any]
    pubkey: str
    signature: str
    where: str = "body"
    _canonical: bytes | None = field(default=None, repr=False)
    sig_ok: bool | None = field(default=None, repr=False)  # filled by a bulk pre-check, if any
    _id: str | None = field(default=None, repr=False)

    def canonical(self) -> bytes:
        if self._canonical is None:
            bad = _in_range(self.name, self.body)
            if bad:
                raise Rejection(Code.BAD_AMOUNT, f"{self.where}.{bad} is outside the signed 64-bit range")
            self._canonical = avro.encode(self.name, self.body)
        return self._canonical

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = H(self.canonical())
        return self._id

    def signed_record(self) -> dict[str, Any]:
        return {"body": self.body, "pubkey": self.pubkey, "signature": self.signature}


@dataclass(slots=True)
class BlockLine:
    """A block line; ``root`` is its transactions' tx_root when a worker computed it ahead."""

    header: Signed
    transactions: list[Signed]
    kind: str = "block"
    root: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class ShareLine:
    """A share line; ``value``, when a worker made it ahead, is its ShareSubmitted record's
    value (wire format) for a guessed ``stamp_height`` of ``stamp`` (its last field, which only
    admission knows), and ``leaf`` that record's Merkle leaf hash."""

    obj: dict[str, Any]
    address: str
    kind: str = "share"
    _id: str | None = field(default=None, repr=False)
    value: bytes | None = field(default=None, repr=False)
    stamp: int = field(default=0, repr=False)
    leaf: bytes | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = H(canonical_json_flat(self.obj))
        return self._id


@dataclass(slots=True)
class SignedLine:
    kind: str
    signed: Signed


@dataclass(slots=True)
class RotationLine:
    """A key rotation: ``signed`` is signed by the old key; ``new_signature`` by the new key over
    the same canonical bytes."""

    signed: Signed
    new_signature: str
    kind: str = "rotation"


Item = BlockLine | ShareLine | SignedLine | RotationLine

#: Bodies whose id is a field of the body (given), not H(body): PROTOCOL.md §2
_GIVEN_ID = {"provider": "provider_id", "settlement": "settlement_id", "payout": "payout_id"}


def item_id(item: Item) -> str:
    """The id an admitted line is known by: block hash, txid, reading, share or rotation id, or
    the provider, settlement or payout id its body gives."""
    if isinstance(item, BlockLine):
        return item.header.id
    if isinstance(item, ShareLine):
        return item.id
    if isinstance(item, SignedLine) and item.kind in _GIVEN_ID:
        return str(item.signed.body[_GIVEN_ID[item.kind]])
    return item.signed.id


def _signed(name: str, obj: Any, where: str, body: Any) -> Signed:
    return Signed(name, asdict(body), obj.pubkey, obj.signature, where)


def parse_line(line: bytes | str) -> Item:
    """Parse one ingest line, raising Rejection(MALFORMED) on any structural fault."""
    if len(line) > MAX_LINE_BYTES:
        raise Rejection(Code.MALFORMED, f"line is over the {MAX_LINE_BYTES} byte limit")
    try:
        obj = _DECODER.decode(line)
    except msgspec.ValidationError as exc:
        if not str(exc).startswith(_TOO_MANY_DIGITS):
            raise Rejection(Code.MALFORMED, _fault(line, exc)) from None
        obj = _decode_capped(line, exc)
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError is a DecodeError
        raise Rejection(Code.MALFORMED, _fault(line, exc)) from None
    kind = _SHAPES[type(obj)]
    if kind == "share":
        return ShareLine({"type": "share", **asdict(obj)}, obj.worker[:40])
    if kind == "block":
        if len(obj.transactions) > MAX_BLOCK_TXS:
            raise Rejection(Code.MALFORMED, f"a block carries at most {MAX_BLOCK_TXS} transactions, "
                                            f"this one {len(obj.transactions)}")
        return BlockLine(_signed("BlockHeader", obj, "header", obj.header),
                         [_signed("TransactionBody", tx, f"transactions[{i}].body", tx.body)
                          for i, tx in enumerate(obj.transactions)])
    if kind == "rotation":
        return RotationLine(_signed("KeyRotationBody", obj, "body", obj.body), obj.new_signature)
    return SignedLine(kind, _signed(SIGNED_KINDS[kind], obj, "body", obj.body))


#: msgspec's error for an integer literal of more digits than CPython converts (4300)
_TOO_MANY_DIGITS = "Integer value out of range"
#: what such a literal is read as: as far outside the signed 64-bit range (BAD_AMOUNT, in its turn)
_FAR_OUT = 2**64


def _capped(literal: str) -> int:
    """A JSON integer; one too long for CPython to convert (never converted: quadratic) as
    ``±_FAR_OUT``."""
    if len(literal) > 4300:
        return -_FAR_OUT if literal.startswith("-") else _FAR_OUT
    return int(literal)


def _decode_capped(line: bytes | str, exc: Exception) -> Any:
    """A line with an integer of more than 4300 digits, decoded with it read as ``±_FAR_OUT``: it
    is out of the 64-bit range like one of 20 digits (PROTOCOL §7: BAD_AMOUNT), not MALFORMED."""
    try:
        doc = json.loads(line, parse_int=_capped)
    except (ValueError, RecursionError):
        raise Rejection(Code.MALFORMED, _fault(line, exc)) from None
    try:
        return _DECODER.decode(json.dumps(doc))
    except (msgspec.DecodeError, RecursionError) as again:
        raise Rejection(Code.MALFORMED, _fault(line, again)) from None


#: Byte-order marks (UTF-8, UTF-16 LE/BE) a line may not start with: lines are UTF-8 without one.
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _fault(line: bytes | str, exc: Exception) -> str:
    """The rejection message: msgspec's, with patterns named and control characters escaped,
    or a hint for UTF-16 or a BOM (UTF-16 text has a NUL in every ASCII character)."""
    if isinstance(exc, RecursionError):
        return "not JSON: nested too deeply"
    nul, boms = (b"\x00", _BOMS) if isinstance(line, bytes) else ("\x00", ("\ufeff",))
    if nul in line:  # type: ignore[operator]
        return "NUL in the line: lines are UTF-8 JSON (not UTF-16)"
    if line.startswith(boms):  # type: ignore[arg-type]
        return "byte-order mark: lines are UTF-8 JSON without a BOM"
    msg = str(exc)
    for pattern, text in _PATTERNS.items():
        msg = msg.replace(f"`str` matching regex {pattern!r}", text)
    msg = msg[:400]  # msgspec quotes a wrong tag whole (the admitter lists 300 characters)
    if not msg.isprintable():  # control characters in a quoted value, escaped as repr() does
        msg = "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)
    return msg if isinstance(exc, msgspec.ValidationError) else f"not JSON: {msg}"
