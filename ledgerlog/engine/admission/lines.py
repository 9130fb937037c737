"""Parsing ingest lines (PROTOCOL.md §4) into typed items; every structural fault is MALFORMED.

Integers outside the Avro range are not structural faults: they parse, and ``Signed.canonical``
raises BAD_AMOUNT when the canonical bytes are first needed (PROTOCOL.md §5: "a value outside the
signed 64-bit range").
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .. import avro
from ..crypto import H, canonical_json_flat
from ..errors import Code, Rejection

__all__ = ["MAX_LINE_BYTES", "MAX_BLOCK_TXS", "Signed", "BlockLine", "ShareLine", "RotationLine", "Item",
           "parse_line", "KINDS", "ROLES"]

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_BLOCK_TXS = 10_000
I64 = (-(1 << 63), (1 << 63) - 1)
I32 = (-(1 << 31), (1 << 31) - 1)

_ADDR = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_WORKER = re.compile(r"([0-9a-f]{40})\.([A-Za-z0-9_-]{1,32})")
_MAX_ID = 256
#: Roles whose signing key a ``rotation`` line can replace (docs/PROTOCOL.md §8).
ROLES = ("producer", "oracle", "pool", "treasury", "log")


def _malformed(msg: str) -> Rejection:
    return Rejection(Code.MALFORMED, msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _string(v: Any) -> bool:
    return isinstance(v, str)


def _ident(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= _MAX_ID


def _matcher(rx: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and rx.fullmatch(v) is not None


_addr, _hex64 = _matcher(_ADDR), _matcher(_HEX64)
_checks: dict[str, Callable[[Any], bool]] = {"string": _string, "id": _ident, "address": _addr, "hex64": _hex64, "long": _is_int, "int": _is_int,
           "role": lambda v: v in ROLES}

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
_SIGNED_KEYS = {"type", "body", "pubkey", "signature"}
_BLOCK_KEYS = {"type", "header", "pubkey", "signature", "transactions"}
_TX_KEYS = {"body", "pubkey", "signature"}
_ROTATION_KEYS = {"type", "body", "pubkey", "signature", "new_signature"}
_SHARE_FIELDS = (("worker", "string"), ("job_id", "id"), ("height", "long"), ("difficulty", "long"),
                 ("accepted", "bool"), ("timestamp", "long"))


def _exact_keys(obj: Any, want: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _malformed(f"{where} must be an object")
    keys = set(obj)
    if keys != want:
        missing, extra = sorted(want - keys), sorted(keys - want)
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown {', '.join(extra)}"] if extra else [])
        raise _malformed(f"{where}: {'; '.join(parts)}")
    return obj


def _check_body(name: str, body: Any, where: str) -> dict[str, Any]:
    spec = BODY_FIELDS[name]
    _exact_keys(body, {f for f, _ in spec}, where)
    for fname, kind in spec:
        if not _checks[kind](body[fname]):
            raise _malformed(f"{where}.{fname} must be {_KIND_TEXT[kind]}")
    checked: dict[str, Any] = body  # a dict with exactly the body's fields
    return checked


_KIND_TEXT = {"string": "a string", "id": f"a non-empty string of at most {_MAX_ID} characters",
              "address": "a 40-character lowercase hex address", "hex64": "64 lowercase hex characters",
              "long": "an integer", "int": "an integer", "role": "one of producer, oracle, pool, treasury"}


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

    def canonical(self) -> bytes:
        if self._canonical is None:
            bad = _in_range(self.name, self.body)
            if bad:
                raise Rejection(Code.BAD_AMOUNT, f"{self.where}.{bad} is outside the signed 64-bit range")
            self._canonical = avro.encode(self.name, self.body)
        return self._canonical

    @property
    def id(self) -> str:
        return H(self.canonical())

    def signed_record(self) -> dict[str, Any]:
        return {"body": self.body, "pubkey": self.pubkey, "signature": self.signature}


@dataclass(slots=True)
class BlockLine:
    header: Signed
    transactions: list[Signed]
    kind: str = "block"


@dataclass(slots=True)
class ShareLine:
    obj: dict[str, Any]
    address: str
    kind: str = "share"

    @property
    def id(self) -> str:
        return H(canonical_json_flat(self.obj))


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


def _signed(name: str, obj: dict[str, Any], body_key: str, where: str) -> Signed:
    body = _check_body(name, obj[body_key], f"{where}.{body_key}" if where else body_key)
    for key, rx in (("pubkey", _HEX64), ("signature", _HEX128)):
        if not (isinstance(obj[key], str) and rx.fullmatch(obj[key])):
            raise _malformed(f"{where + '.' if where else ''}{key} must be lowercase hex of the right length")
    return Signed(name, body, obj["pubkey"], obj["signature"], f"{where}.{body_key}" if where else body_key)


#: A number token of 19+ digits: orjson would read it as a float beyond the 64-bit range.
_LONG_NUMBER = re.compile(r"[:,\[]\s*-?\d{19}")
_LONG_NUMBER_B = re.compile(rb"[:,\[]\s*-?\d{19}")


def _loads(line: bytes | str) -> Any:
    long_number = _LONG_NUMBER.search(line) if isinstance(line, str) else _LONG_NUMBER_B.search(line)
    if long_number is None:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
    try:  # orjson turns integers beyond 64 bits into floats; the stdlib keeps them exact, so
        # range faults say BAD_AMOUNT, not MALFORMED
        obj = json.loads(line, parse_constant=_reject_constant)
        json.dumps(obj, ensure_ascii=False).encode()  # lone surrogates (orjson refuses them too)
        return obj
    except (ValueError, RecursionError) as exc:
        raise _malformed(f"not JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_SHARE_KEYS = frozenset({"type", *(f for f, _ in _SHARE_FIELDS)})


def _well_formed_share(line: bytes | str) -> ShareLine | None:
    """The common case of a share line, checked in one pass; None sends the line through the
    full parse (which names the fault). Every value here has its exact type, so orjson cannot
    have turned an over-long integer into a float and the long-number scan is not needed."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or obj.get("type") != "share" or obj.keys() != _SHARE_KEYS:
        return None
    worker, job = obj["worker"], obj["job_id"]
    if not (type(worker) is str and type(job) is str and 0 < len(job) <= _MAX_ID and type(obj["height"]) is int
            and type(obj["difficulty"]) is int and type(obj["accepted"]) is bool
            and type(obj["timestamp"]) is int):
        return None
    m = _WORKER.fullmatch(worker)
    return None if m is None else ShareLine(obj, m.group(1))


#: Byte-order marks (UTF-8, UTF-16 LE/BE) a line may not start with: lines are UTF-8 without one.
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _check_encoding(line: bytes | str) -> None:
    """MALFORMED for a BOM or a NUL (UTF-16 text has NULs in every ASCII character): the stdlib
    JSON fallback would otherwise decode UTF-16 and skip a BOM. Two C-speed scans."""
    if isinstance(line, bytes):
        if b"\x00" in line:
            raise _malformed("NUL byte in the line: lines are UTF-8 JSON (not UTF-16)")
        if line.startswith(_BOMS):
            raise _malformed("byte-order mark: lines are UTF-8 JSON without a BOM")
    else:
        if "\x00" in line:
            raise _malformed("NUL character in the line")
        if line.startswith("\ufeff"):
            raise _malformed("byte-order mark: lines are UTF-8 JSON without a BOM")


def parse_line(line: bytes | str) -> Item:
    """Parse one ingest line, raising Rejection(MALFORMED) on any structural fault."""
    if len(line) > MAX_LINE_BYTES:
        raise _malformed(f"line is over the {MAX_LINE_BYTES} byte limit")
    _check_encoding(line)
    maybe_share = (b'"share"' if isinstance(line, bytes) else '"share"') in line  # type: ignore[operator]
    share = _well_formed_share(line) if maybe_share else None
    return share if share is not None else _parse_full(line)


def _parse_full(line: bytes | str) -> Item:
    """orjson first; a line it cannot take, or whose check fails, is parsed again exactly when it
    holds an integer of 19+ digits (orjson turns one beyond 64 bits into a float, which fails every
    check, so the exact parse then decides between MALFORMED and BAD_AMOUNT); any other line
    orjson refuses is MALFORMED at once."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        # without a 19+ digit number, the stdlib cannot read what orjson could not either (NaN,
        # lone surrogates and the like it refuses too): say so at once, junk costs microseconds
        if (_LONG_NUMBER if isinstance(line, str) else _LONG_NUMBER_B).search(line) is None:  # type: ignore[arg-type]
            raise _malformed(f"not JSON: {exc}") from None
        return _parse_obj(_loads(line))
    try:
        return _parse_obj(obj)
    except Rejection:
        if (_LONG_NUMBER if isinstance(line, str) else _LONG_NUMBER_B).search(line) is None:  # type: ignore[arg-type]
            raise
    return _parse_obj(_loads(line))


def _parse_obj(obj: Any) -> Item:
    if not isinstance(obj, dict):
        raise _malformed("a line must be a JSON object")
    kind = obj.get("type")
    if kind == "block":
        _exact_keys(obj, _BLOCK_KEYS, "block")
        header = _signed("BlockHeader", obj, "header", "")
        txs = obj["transactions"]
        if not isinstance(txs, list):
            raise _malformed("transactions must be an array")
        if len(txs) > MAX_BLOCK_TXS:
            raise _malformed(f"a block carries at most {MAX_BLOCK_TXS} transactions, this one {len(txs)}")
        parsed = []
        for i, tx in enumerate(txs):
            _exact_keys(tx, _TX_KEYS, f"transactions[{i}]")
            parsed.append(_signed("TransactionBody", tx, "body", f"transactions[{i}]"))
        return BlockLine(header, parsed)
    if kind == "share":
        _exact_keys(obj, {"type"} | {f for f, _ in _SHARE_FIELDS}, "share")
        for fname, fkind in _SHARE_FIELDS:
            v = obj[fname]
            ok = isinstance(v, bool) if fkind == "bool" else _checks[fkind](v)
            if not ok:
                raise _malformed(f"share.{fname} must be {'a boolean' if fkind == 'bool' else _KIND_TEXT[fkind]}")
        m = _WORKER.fullmatch(obj["worker"])
        if not m:
            raise _malformed("share.worker must be <40-hex address>.<rig>, rig matching [A-Za-z0-9_-]{1,32}")
        return ShareLine(obj, m.group(1))
    if isinstance(kind, str) and kind in SIGNED_KINDS:  # a list or object type is unhashable
        _exact_keys(obj, _SIGNED_KEYS, kind)
        return SignedLine(kind, _signed(SIGNED_KINDS[kind], obj, "body", ""))
    if kind == "rotation":
        _exact_keys(obj, _ROTATION_KEYS, kind)
        signed = _signed("KeyRotationBody", obj, "body", "")
        if not (isinstance(obj["new_signature"], str) and _HEX128.fullmatch(obj["new_signature"])):
            raise _malformed("new_signature must be lowercase hex of the right length")
        return RotationLine(signed, obj["new_signature"])
    if "type" not in obj:
        raise _malformed("missing type")
    raise _malformed(f"unknown type {kind!r}")
