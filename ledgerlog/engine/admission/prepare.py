"""The stage of admission that needs no write-side state, run in worker processes on slices of a
chunk: parsing, canonical body bytes, ids, signature checks, a share's id and the Avro bytes of
its event up to the stamp height. The admitter's process then only runs the rules (PROTOCOL.md
§5, in order) and appends.

Results travel back as plain tuples of str, int, bytes and dicts: pickling parsed objects costs
more than parsing, plain tuples a fifth of it. ``rebuild`` makes them the items ``parse_line``
gives, with ``canonical``, ``id`` and ``sig_ok`` already filled; everything else (a value out of
range, a bad signature) is reported by the rules at its place in §5's order, as inline."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..crypto import h_bytes, verify
from ..errors import Code, Rejection, error_code
from .encoding import share_head
from .lines import I64, BlockLine, Item, RotationLine, ShareLine, Signed, SignedLine, parse_line

__all__ = ["Prepared", "prepare_lines", "rebuild", "signature_key"]

_REJECTED, _SHARE, _BLOCK, _SIGNED, _ROTATION = range(5)
#: Signature keys a worker has verified: mempool submissions it checked itself and those the
#: admitter remembered (sent with each slice), so a block confirming them costs no verification
_KNOWN: dict[bytes, None] = {}
_KNOWN_MAX = 100_000

_Flat = tuple[Any, ...]
#: A slice's prepared lines and how many signatures known keys spared
Prepared = tuple[list[_Flat], int]


def signature_key(pubkey: str, signature: str, canonical: bytes) -> bytes:
    """The key of a verified (pubkey, message, signature) triple (``SignatureCache``'s too)."""
    return h_bytes(b"%s\0%s\0%s" % (pubkey.encode(), signature.encode(), canonical))


def _remember(key: bytes) -> None:
    if len(_KNOWN) >= _KNOWN_MAX:
        del _KNOWN[next(iter(_KNOWN))]
    _KNOWN[key] = None


def _flat(s: Signed, counts: list[int], *, cached: bool = False, remember: bool = False) -> _Flat:
    """(name, body, pubkey, signature, where, canonical, id, sig_ok); canonical, id and sig_ok
    are None where a value is out of range (the rules then report BAD_AMOUNT in order)."""
    try:
        canonical = s.canonical()
    except Rejection:
        return (s.name, s.body, s.pubkey, s.signature, s.where, None, None, None)
    key = signature_key(s.pubkey, s.signature, canonical) if cached or remember else b""
    if cached and key in _KNOWN:
        counts[0] += 1
        ok = True
    else:
        ok = verify(bytes.fromhex(s.pubkey), canonical, bytes.fromhex(s.signature))
        if ok and remember:
            _remember(key)
    return (s.name, s.body, s.pubkey, s.signature, s.where, canonical, s.id, ok)


def prepare_lines(lines: Sequence[bytes | str], known: Iterable[bytes] = ()) -> Prepared:
    """Each line parsed, hashed and verified, as plain tuples; with the number of signatures the
    known keys (``known``: verified elsewhere) spared."""
    for key in known:
        _remember(key)
    counts = [0]
    out: list[_Flat] = []
    for line in lines:
        try:
            item = parse_line(line)
        except Rejection as rej:
            out.append((_REJECTED, error_code(rej), rej.message))
            continue
        if isinstance(item, ShareLine):
            out.append((_SHARE, item.obj, item.address, item.id, _share_head(item)))
        elif isinstance(item, BlockLine):
            out.append((_BLOCK, _flat(item.header, counts),
                        [_flat(tx, counts, cached=True) for tx in item.transactions]))
        elif isinstance(item, SignedLine):
            out.append((_SIGNED, item.kind, _flat(item.signed, counts, remember=item.kind == "transaction")))
        else:
            out.append((_ROTATION, _flat(item.signed, counts), item.new_signature))
    return out, counts[0]


def _share_head(s: ShareLine) -> bytes | None:
    o = s.obj
    if not all(I64[0] <= o[f] <= I64[1] for f in ("height", "difficulty", "timestamp")):
        return None  # the rules reject it (BAD_AMOUNT)
    return share_head({"share_id": s.id, "worker": o["worker"], "address": s.address, "job_id": o["job_id"],
                       "height": o["height"], "difficulty": o["difficulty"], "accepted": o["accepted"],
                       "timestamp": o["timestamp"]})


def _signed(f: _Flat) -> Signed:
    name, body, pubkey, signature, where, canonical, ident, ok = f
    return Signed(name, body, pubkey, signature, where, canonical, ok, ident)


def rebuild(f: _Flat) -> Item | Rejection:
    """The item (or rejection) a prepared line stands for."""
    tag = f[0]
    if tag == _SHARE:
        return ShareLine(f[1], f[2], "share", f[3], f[4])
    if tag == _BLOCK:
        return BlockLine(_signed(f[1]), [_signed(t) for t in f[2]])
    if tag == _SIGNED:
        return SignedLine(f[1], _signed(f[2]))
    if tag == _ROTATION:
        return RotationLine(_signed(f[1]), f[2])
    return Rejection(Code(f[1]), f[2])
