"""The stage of admission that needs no write-side state, run in worker processes on slices of a
chunk: parsing, canonical body bytes, ids, signature checks, tx_roots, and a share's record
(value and Merkle leaf hash) for the stamp height it most likely gets (``Ahead.stamp``: the tip
when the chunk was sent, or the height of the last block before it in the slice; admission uses
it only if that guess is right). The admitter's process then only runs the rules (PROTOCOL.md §5, in
order) and appends.

Results travel back as plain tuples of str, int, bytes and dicts: pickling parsed objects costs
more than parsing, plain tuples a fifth of it. ``rebuild`` makes them the items ``parse_line``
gives, with ``canonical``, ``id`` and ``sig_ok`` already filled; everything else (a value out of
range, a bad signature) is reported by the rules at its place in §5's order, as inline."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from .. import topics as T
from ..avro_codegen import long_bytes
from ..crypto import h_bytes, tx_root, verify
from ..errors import Code, Rejection, error_code
from ..logtree import leaf_of
from .encoding import share_head
from .lines import I64, BlockLine, Item, RotationLine, ShareLine, Signed, SignedLine, parse_line

__all__ = ["Ahead", "Prepared", "prepare_lines", "rebuild", "signature_key"]


class Ahead(NamedTuple):
    """What workers need to make records ahead: each topic's value prefix (the wire format's
    magic byte and schema id) and the tip height when the chunk was sent."""

    headers: dict[str, bytes]
    stamp: int

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


def prepare_lines(lines: Sequence[bytes | str], known: Iterable[bytes] = (), ahead: Ahead | None = None) -> Prepared:
    """Each line parsed, hashed and verified, as plain tuples, with the records ``ahead`` lets a
    worker make; and the number of signatures the known keys (``known``: verified elsewhere) spared."""
    _KNOWN.update(dict.fromkeys(known))  # most are known already: one C call, then trimmed
    for _ in range(len(_KNOWN) - _KNOWN_MAX):
        del _KNOWN[next(iter(_KNOWN))]
    counts = [0]
    out: list[_Flat] = []
    stamp = ahead.stamp if ahead is not None else 0
    for line in lines:
        try:
            item = parse_line(line)
        except Rejection as rej:
            out.append((_REJECTED, error_code(rej), rej.message))
            continue
        if isinstance(item, ShareLine):
            out.append(_share(item, ahead, stamp))
        elif isinstance(item, BlockLine):
            flat = _block(item, counts)
            if flat[3] is not None:  # well formed: if admitted, the shares after it are stamped its height
                stamp = flat[1][1]["height"]
            out.append(flat)
        elif isinstance(item, SignedLine):
            out.append((_SIGNED, item.kind, _flat(item.signed, counts, remember=item.kind == "transaction")))
        else:
            out.append((_ROTATION, _flat(item.signed, counts), item.new_signature))
    return out, counts[0]


def _block(b: BlockLine, counts: list[int]) -> _Flat:
    """(tag, header, transactions, tx_root); tx_root only when every value is in range (else
    the rules report it in order)."""
    header = _flat(b.header, counts)
    txs = [_flat(tx, counts, cached=True) for tx in b.transactions]
    if header[5] is None or any(t[5] is None for t in txs):
        return (_BLOCK, header, txs, None)
    return (_BLOCK, header, txs, tx_root([t[6] for t in txs]))


def _share(s: ShareLine, ahead: Ahead | None, stamp: int) -> _Flat:
    """(tag, obj, address, id, value, stamp, leaf): the record for a stamp height of ``stamp``,
    when every value is in range (else the rules reject it: BAD_AMOUNT) and ``ahead`` is given."""
    o = s.obj
    if ahead is None or not all(I64[0] <= o[f] <= I64[1] for f in ("height", "difficulty", "timestamp")):
        return (_SHARE, o, s.address, s.id, None, 0, None)
    value = ahead.headers[T.SHARES] + share_head(
        {"share_id": s.id, "worker": o["worker"], "address": s.address, "job_id": o["job_id"], "height": o["height"],
         "difficulty": o["difficulty"], "accepted": o["accepted"], "timestamp": o["timestamp"]}) + long_bytes(stamp)
    return (_SHARE, o, s.address, s.id, value, stamp, leaf_of(s.address.encode(), o["timestamp"], value))


def _signed(f: _Flat) -> Signed:
    name, body, pubkey, signature, where, canonical, ident, ok = f
    return Signed(name, body, pubkey, signature, where, canonical, ok, ident)


def rebuild(f: _Flat) -> Item | Rejection:
    """The item (or rejection) a prepared line stands for."""
    tag = f[0]
    if tag == _SHARE:
        return ShareLine(f[1], f[2], "share", f[3], f[4], f[5], f[6])
    if tag == _BLOCK:
        return BlockLine(_signed(f[1]), [_signed(t) for t in f[2]], "block", f[3])
    if tag == _SIGNED:
        return SignedLine(f[1], _signed(f[2]))
    if tag == _ROTATION:
        return RotationLine(_signed(f[1]), f[2])
    return Rejection(Code(f[1]), f[2])
