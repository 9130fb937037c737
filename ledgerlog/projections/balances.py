"""Balances: balance, staked and nonce per account, with history by height.

Keys: ``a/<addr>`` -> [balance, staked, nonce, last_height];
``h/<addr>/<span:8>`` -> [[height, balance, staked, nonce], ...]: the account's state as of each
height it changed at in [span, span + HISTORY_SPAN), ascending (a chunk of history per key: a
rebuild writes a key per account and span, not per entry), so "balance at H" is one seek to the
chunk of H's span (or the last one before it) and a search in it. The layout depends on the
heights alone, never on how events were batched, so equal states have equal digests. Money
moves by engine.movements, the same rules admission applies.
Commutative across partitions: an event older than an account's latest entry adds its delta to
every later history entry (rare; the runner folds in height order). So a rebuild may fold the
log's partitions in parts, in parallel processes (``SPLITS_BY_PARTITION``): the first part from
the genesis state, the others from nothing, and ``merge`` adds them up (balances and stakes sum,
nonces and heights take the highest) into exactly the state of one fold of them all."""
from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import itemgetter
from typing import Any

from ledgerlog.engine import topics as T
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.movements import confirmed_nonce, event_height, movements

from .base import U64, Event, Txn, View, h8, height_of_key, jdump, jload

NAME = "balances"
VERSION = 2
#: History chunks: an account's entries of heights [k*SPAN, (k+1)*SPAN) share one key
HISTORY_SPAN = 64
SPLITS_BY_PARTITION = True
TOPICS = (T.BLOCKS, T.TRANSACTIONS, T.PROVIDERS, T.SETTLEMENTS, T.PAYOUTS)
#: the event fields the fold reads (engine.movements: movements, confirmed_nonce, event_height)
FIELDS = {
    T.BLOCKS: ("header.producer", "header.height", "reward", "fees"),
    T.TRANSACTIONS: ("body.sender", "body.recipient", "body.amount", "body.fee", "body.nonce", "height"),
    T.PROVIDERS: ("body.owner", "body.stake", "stamp_height"),
    T.SETTLEMENTS: ("body.amount", "owner", "stamp_height"),
    T.PAYOUTS: ("body.address", "body.amount", "stamp_height"),
}

__all__ = ["NAME", "VERSION", "TOPICS", "Row", "initial", "fold", "merge", "rows_of", "fold_rows", "account",
           "richest", "below"]

#: One account's change by one event: (address, height, balance delta, staked delta, nonce it
#: confirms or 0). ``fold`` folds events; a sharded worker folds these rows (streams/shards).
Row = tuple[str, int, int, int, int]


def _akey(addr: str) -> bytes:
    return b"a/" + addr.encode()


def _hprefix(addr: str) -> bytes:
    return b"h/" + addr.encode() + b"/"


def initial(genesis: Genesis, txn: Txn) -> None:
    for addr, amount in sorted(genesis.allocations.items()):
        txn.put(_akey(addr), jdump([amount, 0, 0, 0]))
        txn.put(_hprefix(addr) + h8(0), jdump([[0, amount, 0, 0]]))


def _span_of(height: int) -> int:
    """The first height of the history chunk ``height`` belongs to."""
    return height - height % HISTORY_SPAN


class _Batch:
    """Accounts and history entries touched by one batch, written once at the end: an account's
    entries go into its chunks, one read and one write per chunk touched, not a key per entry."""

    def __init__(self, txn: Txn) -> None:
        self.txn = txn
        self.accts: dict[str, list[int]] = {}
        self.hist: dict[str, list[list[int]]] = {}  # address -> new [height, balance, staked, nonce], ascending

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
            entries = self.hist.get(addr)
            if entries is None:
                self.hist[addr] = [[height, a[0], a[1], a[2]]]
            elif entries[-1][0] == height:
                entries[-1] = [height, a[0], a[1], a[2]]
            else:
                entries.append([height, a[0], a[1], a[2]])
        else:
            self._rewrite_history(addr, height, d_bal, d_staked, nonce)

    def _write_entries(self, addr: str, entries: list[list[int]]) -> None:
        """Add ``entries`` (ascending, none below the account's stored ones) to their chunks."""
        txn, prefix = self.txn, _hprefix(addr)
        i, n = 0, len(entries)
        while i < n:
            span = _span_of(entries[i][0])
            j = i + 1
            while j < n and entries[j][0] < span + HISTORY_SPAN:
                j += 1
            key = prefix + h8(span)
            raw = txn.get(key)
            if raw is None:
                txn.put(key, jdump(entries[i:j]))
            else:
                chunk = jload(raw)
                if chunk[-1][0] == entries[i][0]:  # the same height, folded on in this batch
                    chunk.pop()
                chunk.extend(entries[i:j])
                txn.put(key, jdump(chunk))
            i = j

    def _rewrite_history(self, addr: str, height: int, d_bal: int, d_staked: int, nonce: int) -> None:
        """An event below the account's latest height: shift every entry from ``height`` on."""
        pending = self.hist.pop(addr, None)
        if pending:
            self._write_entries(addr, pending)
        txn, prefix = self.txn, _hprefix(addr)
        at = prefix + h8(_span_of(height))
        chunk = jload(txn.get(at)) or []
        if not any(e[0] == height for e in chunk):
            before = [e for e in chunk if e[0] < height]
            if before:
                base = before[-1][1:]
            else:
                span = _span_of(height)  # the last entry of an earlier chunk, if any
                prev = txn.last_at_or_before(prefix, prefix + h8(span - 1)) if span else None
                base = jload(prev[1])[-1][1:] if prev else [0, 0, 0]
            chunk.insert(len(before), [height, *base])
        txn.put(at, jdump(_shifted(chunk, height, d_bal, d_staked, nonce)))
        for key, raw in list(txn.items(prefix, at + b"\x00")):
            txn.put(key, jdump(_shifted(jload(raw), height, d_bal, d_staked, nonce)))

    def flush(self) -> None:
        put = self.txn.put
        for addr, a in self.accts.items():
            put(_akey(addr), jdump(a))
        for addr, entries in self.hist.items():
            self._write_entries(addr, entries)


def _shifted(chunk: list[list[int]], height: int, d_bal: int, d_staked: int, nonce: int) -> list[list[int]]:
    """``chunk`` with an event's deltas added to every entry from ``height`` on."""
    return [[h, b + d_bal, s + d_staked, max(n, nonce)] if h >= height else [h, b, s, n] for h, b, s, n in chunk]


def fold(genesis: Genesis, events: Iterable[Event], txn: Txn) -> None:
    batch = _Batch(txn)
    apply = batch.apply
    for topic, ev in events:
        height = event_height(topic, ev)
        nonce = confirmed_nonce(topic, ev)
        for addr, d_bal, d_staked in movements(topic, ev, genesis):
            apply(addr, height, d_bal, d_staked, nonce[1] if nonce and nonce[0] == addr else 0)
    batch.flush()


def merge(parts: list[View]) -> Iterator[tuple[bytes, bytes]]:
    """The state of one fold of every event, from the states of folds of disjoint parts of them
    (the first from the genesis state, the others from nothing): (key, value) in key order,
    streamed (one account's history chunk at a time, whatever the size of the state)."""
    for key, same in groupby(heapq.merge(*(p.items(b"a/") for p in parts)), key=itemgetter(0)):
        accts = [jload(v) for _, v in same]
        yield key, jdump([sum(a[0] for a in accts), sum(a[1] for a in accts),
                          max(a[2] for a in accts), max(a[3] for a in accts)])
    chunks = heapq.merge(*(_tagged(p.items(b"h/"), i) for i, p in enumerate(parts)))
    for _, spans in groupby(chunks, key=lambda c: c[0][:-8]):  # one account: h/<addr>/
        last = [[0, 0, 0]] * len(parts)  # each part's [balance, staked, nonce] as of the last height
        bal = staked = nonce = 0  # their sums, and the highest nonce (each part's is a running max)
        for key, group in groupby(spans, key=itemgetter(0)):
            chunk = list(group)
            if len(chunk) == 1:  # one part's chunk: as it is, if the others add nothing to it
                _, i, raw = chunk[0]
                entries = jload(raw)
                mine = last[i]
                if bal == mine[0] and staked == mine[1] and all(
                        p[2] <= entries[0][3] for j, p in enumerate(last) if j != i):
                    last[i] = entries[-1][1:]
                    bal, staked, nonce = last[i][0], last[i][1], max(nonce, last[i][2])
                    yield key, raw
                    continue
            out: list[list[int]] = []
            for height, i, b, s, n in sorted((e[0], i, e[1], e[2], e[3]) for _, i, v in chunk for e in jload(v)):
                old = last[i]
                bal += b - old[0]
                staked += s - old[1]
                last[i] = [b, s, n]
                if n > nonce:
                    nonce = n
                if out and out[-1][0] == height:
                    out[-1] = [height, bal, staked, nonce]
                else:
                    out.append([height, bal, staked, nonce])
            yield key, jdump(out)


def _tagged(items: Iterator[tuple[bytes, bytes]], part: int) -> Iterator[tuple[bytes, int, bytes]]:
    return ((k, part, v) for k, v in items)


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


def below(key: bytes, value: bytes, height: int) -> bool:
    """Does this entry hold history from below ``height`` (a history chunk starting there)?
    After a prune below it the raw reads leave it out."""
    return key.startswith(b"h/") and height_of_key(key) < height


def account(view: View, addr: str, height: int | None = None) -> dict[str, Any]:
    """Balance, staked and nonce now, or as of ``height``."""
    if height is None:
        a = jload(view.get(_akey(addr))) or [0, 0, 0, 0]
        return {"address": addr, "balance": a[0], "staked": a[1], "nonce": a[2], "last_change_height": max(a[3], 0)}
    b, s, n = _as_of(view, _hprefix(addr), height)
    return {"address": addr, "balance": b, "staked": s, "nonce": n, "height": height}


def _as_of(view: View, prefix: bytes, height: int) -> tuple[int, int, int]:
    """(balance, staked, nonce) in the last history entry at or below ``height``: in the chunk of
    its span, or (when that chunk starts above it) the last entry of an earlier chunk."""
    found = view.last_at_or_before(prefix, prefix + h8(_span_of(height)))
    while found is not None:
        chunk = jload(found[1])
        i = bisect_right(chunk, height, key=itemgetter(0))
        if i:
            _, b, s, n = chunk[i - 1]
            return b, s, n
        span = U64.unpack(found[0][-8:])[0]
        found = view.last_at_or_before(prefix, prefix + h8(span - 1)) if span else None
    return 0, 0, 0


def richest(view: View, limit: int = 10) -> list[dict[str, Any]]:
    top = heapq.nlargest(limit, ((jload(v)[0], k[2:].decode()) for k, v in view.items(b"a/")))
    return [{"address": addr, "balance": bal} for bal, addr in top]
