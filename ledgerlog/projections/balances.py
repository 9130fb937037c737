"""Balances: balance, staked and nonce per account, with history by height.

Keys: ``a/<addr>`` -> [balance, staked, nonce, last_height];
``h/<addr>/<height:8>`` -> [balance, staked, nonce] as of that height, so "balance at H" is one
seek to the last entry <= H. Money moves by engine.movements, the same rules admission applies.
Commutative across partitions: an event older than an account's latest entry adds its delta to
every later history entry (rare; the runner folds in height order). Every key belongs to one
account, so the state splits by account into shards (``SHARDABLE``): a shard folds every event
but keeps only its accounts' movements, and the shards' states are disjoint and add up to the
whole (a rebuild folds them in parallel processes)."""
from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from ledgerlog.engine import topics as T
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.movements import confirmed_nonce, event_height, movements

from .base import U64, Event, Shard, Txn, View, h8, jdump, jload, shard_of

NAME = "balances"
VERSION = 1
SHARDABLE = True
TOPICS = (T.BLOCKS, T.TRANSACTIONS, T.PROVIDERS, T.SETTLEMENTS, T.PAYOUTS)
#: the event fields the fold reads (engine.movements: movements, confirmed_nonce, event_height)
FIELDS = {
    T.BLOCKS: ("header.producer", "header.height", "reward", "fees"),
    T.TRANSACTIONS: ("body.sender", "body.recipient", "body.amount", "body.fee", "body.nonce", "height"),
    T.PROVIDERS: ("body.owner", "body.stake", "stamp_height"),
    T.SETTLEMENTS: ("body.amount", "owner", "stamp_height"),
    T.PAYOUTS: ("body.address", "body.amount", "stamp_height"),
}

__all__ = ["NAME", "VERSION", "TOPICS", "Row", "initial", "fold", "rows_of", "fold_rows", "account", "richest"]

#: One account's change by one event: (address, height, balance delta, staked delta, nonce it
#: confirms or 0). ``fold`` folds events; a sharded worker folds these rows (streams/shards).
Row = tuple[str, int, int, int, int]


def _akey(addr: str) -> bytes:
    return b"a/" + addr.encode()


def _hprefix(addr: str) -> bytes:
    return b"h/" + addr.encode() + b"/"


def initial(genesis: Genesis, txn: Txn, shard: Shard | None = None) -> None:
    for addr, amount in sorted(genesis.allocations.items()):
        if shard is not None and shard_of(addr, shard[1]) != shard[0]:
            continue
        txn.put(_akey(addr), jdump([amount, 0, 0, 0]))
        txn.put(_hprefix(addr) + h8(0), jdump([amount, 0, 0]))


class _Batch:
    """Accounts and history entries touched by one batch, written once at the end."""

    def __init__(self, txn: Txn) -> None:
        self.txn = txn
        self.accts: dict[str, list[int]] = {}
        self.hist: dict[tuple[str, int], list[int]] = {}

    def apply(self, addr: str, height: int, d_bal: int, d_staked: int, nonce: int) -> None:
        a = self.accts.get(addr)
        if a is None:
            a = self.accts[addr] = jload(self.txn.get(_akey(addr))) or [0, 0, 0, -1]
        a[0] += d_bal
        a[1] += d_staked
        if nonce > a[2]:
            a[2] = nonce
        if height >= a[3]:
            a[3] = height
            self.hist[(addr, height)] = a[:3]
        else:
            self._rewrite_history(addr, height, d_bal, d_staked, nonce)

    def _rewrite_history(self, addr: str, height: int, d_bal: int, d_staked: int, nonce: int) -> None:
        """An event below the account's latest height: shift every entry from ``height`` on."""
        prefix = _hprefix(addr)
        for (a, h), v in list(self.hist.items()):
            if a == addr:
                self.txn.put(prefix + h8(h), jdump(v))
                del self.hist[(a, h)]
        at = prefix + h8(height)
        if self.txn.get(at) is None:
            prev = self.txn.last_at_or_before(prefix, at)
            self.txn.put(at, prev[1] if prev else jdump([0, 0, 0]))
        for key, raw in list(self.txn.items(prefix, at)):
            b, s, n = jload(raw)
            self.txn.put(key, jdump([b + d_bal, s + d_staked, max(n, nonce)]))

    def flush(self) -> None:
        put, pack = self.txn.put, U64.pack
        for addr, a in self.accts.items():
            put(_akey(addr), jdump(a))
        prefixes: dict[str, bytes] = {}
        for (addr, height), v in self.hist.items():
            prefix = prefixes.get(addr)
            if prefix is None:
                prefix = prefixes[addr] = _hprefix(addr)
            put(prefix + pack(height), jdump(v))


def fold(genesis: Genesis, events: Iterable[Event], txn: Txn, shard: Shard | None = None) -> None:
    """Fold ``events``; with ``shard``, only the movements of the accounts that shard owns."""
    batch = _Batch(txn)
    apply = batch.apply
    owned: dict[str, bool] = {}
    for topic, ev in events:
        height = event_height(topic, ev)
        nonce = confirmed_nonce(topic, ev)
        for addr, d_bal, d_staked in movements(topic, ev, genesis):
            if shard is not None:
                mine = owned.get(addr)
                if mine is None:
                    mine = owned[addr] = shard_of(addr, shard[1]) == shard[0]
                if not mine:
                    continue
            apply(addr, height, d_bal, d_staked, nonce[1] if nonce and nonce[0] == addr else 0)
    batch.flush()


def rows_of(genesis: Genesis, topic: str, ev: dict[str, Any]) -> list[Row]:
    """The rows one event folds into, in the order ``fold`` applies them."""
    height = event_height(topic, ev)
    nonce = confirmed_nonce(topic, ev)
    return [(addr, height, d_bal, d_staked, nonce[1] if nonce and nonce[0] == addr else 0)
            for addr, d_bal, d_staked in movements(topic, ev, genesis)]


def fold_rows(rows: Iterable[Row], txn: Txn) -> None:
    """Fold rows (``rows_of``) as ``fold`` folds their events: the same state whatever the order."""
    batch = _Batch(txn)
    apply = batch.apply
    for row in rows:
        apply(*row)
    batch.flush()


def account(view: View, addr: str, height: int | None = None) -> dict[str, Any]:
    """Balance, staked and nonce now, or as of ``height``."""
    if height is None:
        a = jload(view.get(_akey(addr))) or [0, 0, 0, 0]
        return {"address": addr, "balance": a[0], "staked": a[1], "nonce": a[2], "last_change_height": max(a[3], 0)}
    prefix = _hprefix(addr)
    found = view.last_at_or_before(prefix, prefix + h8(height))
    b, s, n = jload(found[1]) if found else (0, 0, 0)
    return {"address": addr, "balance": b, "staked": s, "nonce": n, "height": height}


def richest(view: View, limit: int = 10) -> list[dict[str, Any]]:
    top = heapq.nlargest(limit, ((jload(v)[0], k[2:].decode()) for k, v in view.items(b"a/")))
    return [{"address": addr, "balance": bal} for bal, addr in top]
