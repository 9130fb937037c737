"""Chainstate: tip, blocks by height and hash, the tx index, cumulative tx count, and the mempool.

Keys: ``tip`` -> [height, hash, timestamp, total_txs]; ``b/<height:8>`` -> block event;
``bh/<hash>`` -> height; ``t/<txid>`` -> [height, index, block_hash, body, pubkey, signature];
``ms/<txid>`` -> [stamp_height, sender, nonce]; ``mp/<txid>`` pending marker; ``ev/<txid>`` evicted;
``mpn`` -> pending count. Commutative: a txid is pending iff submitted and neither confirmed nor
evicted, whichever of those events is folded first.

Version 2 writes a confirmed transaction as one row from its own event (which carries height,
index and block hash), not a location row from the block plus a body row: a third fewer rows."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ledgerlog.engine import topics as T
from ledgerlog.engine.genesis import Genesis

from .base import U64, Event, Txn, View, h8, height_of_key, jdump, jload

NAME = "chainstate"
VERSION = 2
TOPICS = (T.BLOCKS, T.TRANSACTIONS, T.MEMPOOL)
#: the event fields the fold reads (blocks are stored whole)
FIELDS = {
    T.TRANSACTIONS: ("txid", "body", "pubkey", "signature", "height", "index", "block_hash"),
    T.MEMPOOL: ("txid", "stamp_height", "body.sender", "body.nonce"),
}

__all__ = ["NAME", "VERSION", "TOPICS", "initial", "fold", "tip", "block", "tx", "recent_blocks",
           "mempool_size", "below"]


def initial(genesis: Genesis, txn: Txn) -> None:
    txn.put(b"tip", jdump([0, genesis.hash, genesis.timestamp, 0]))
    txn.put(b"mpn", jdump(0))


def _leave_mempool(txn: Txn, txid: str, pending: list[int]) -> None:
    key = b"mp/" + txid.encode()
    if txn.get(key) is not None:
        txn.delete(key)
        pending[0] -= 1


def fold(genesis: Genesis, events: Iterable[Event], txn: Txn) -> None:
    tip = jload(txn.get(b"tip"))
    pending = [jload(txn.get(b"mpn"))]
    put, get = txn.put, txn.get
    for topic, ev in events:
        if topic == T.TRANSACTIONS:
            put(b"t/" + ev["txid"].encode(), jdump([ev["height"], ev["index"], ev["block_hash"], ev["body"],
                                                    ev["pubkey"], ev["signature"]]))
            _leave_mempool(txn, ev["txid"], pending)
        elif topic == T.BLOCKS:
            hdr = ev["header"]
            height = hdr["height"]
            bhash = ev["hash"]
            put(b"b/" + h8(height), jdump(ev))
            put(b"bh/" + bhash.encode(), h8(height))
            for txid in ev["evicted"]:
                put(b"ev/" + txid.encode(), h8(height))
                _leave_mempool(txn, txid, pending)
            tip[3] += len(ev["txids"])
            if height > tip[0]:
                tip[0:3] = [height, bhash, hdr["timestamp"]]
        elif topic == T.MEMPOOL:
            txid = ev["txid"].encode()
            put(b"ms/" + txid, jdump([ev["stamp_height"], ev["body"]["sender"], ev["body"]["nonce"]]))
            if get(b"t/" + txid) is None and get(b"ev/" + txid) is None:
                put(b"mp/" + txid, b"1")
                pending[0] += 1
    put(b"tip", jdump(tip))
    put(b"mpn", jdump(pending[0]))


def below(key: bytes, value: bytes, height: int) -> bool:
    """Does this entry hold history from below ``height`` (a block, its hash, a transaction, a
    submission or an eviction there)? After a prune below it the raw reads leave it out."""
    if key.startswith(b"b/"):
        return height_of_key(key) < height
    if key.startswith((b"bh/", b"ev/")):
        return int(U64.unpack(value)[0]) < height
    if key.startswith((b"t/", b"ms/")):
        return int(jload(value)[0]) < height
    return False


def tip(view: View) -> dict[str, Any]:
    height, hsh, ts, total = jload(view.get(b"tip"))
    return {"height": height, "tip_hash": hsh, "tip_timestamp": ts, "total_txs": total}


def block(view: View, height_or_hash: str | int) -> dict[str, Any] | None:
    if isinstance(height_or_hash, str) and not (height_or_hash.isascii() and height_or_hash.isdigit()):
        raw = view.get(b"bh/" + height_or_hash.encode())
        if raw is None:
            return None
        height_or_hash = int.from_bytes(raw, "big")
    ev = jload(view.get(b"b/" + h8(int(height_or_hash))))
    if ev is None:
        return None
    return {"height": ev["header"]["height"], "hash": ev["hash"], **ev}


def tx(view: View, txid: str) -> dict[str, Any] | None:
    key = txid.encode()
    row = jload(view.get(b"t/" + key))
    if row is not None:
        height, index, block_hash, body, pubkey, signature = row
        return {"txid": txid, "status": "confirmed", "height": height, "index": index,
                "block_hash": block_hash, "body": body, "pubkey": pubkey, "signature": signature}
    sub = jload(view.get(b"ms/" + key))
    if sub is None:
        return None
    status = "pending" if view.get(b"mp/" + key) is not None else "evicted"
    return {"txid": txid, "status": status, "stamp_height": sub[0], "sender": sub[1], "nonce": sub[2]}


def recent_blocks(view: View, limit: int = 20) -> list[dict[str, Any]]:
    height = jload(view.get(b"tip"))[0]
    out = []
    for h in range(height, max(0, height - limit), -1):
        ev = jload(view.get(b"b/" + h8(h)))
        if ev:
            out.append({"height": h, "hash": ev["hash"], "timestamp": ev["header"]["timestamp"],
                        "tx_count": ev["header"]["tx_count"], "producer": ev["header"]["producer"],
                        "fees": ev["fees"]})
    return out


def mempool_size(view: View) -> int:
    return jload(view.get(b"mpn")) or 0
