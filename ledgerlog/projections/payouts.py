"""Pool payouts: PPLNS credits per worker address, paid and pending (PROTOCOL.md §6).

Keys: ``w/<height:8s>`` -> {address: accepted difficulty} per mined height (a share's height is
any signed long, so it is offset by 2^63: byte order = numeric order);
``r/<height:8>`` -> [R, D, W, {address: credit}] per pool block, the credits that round gives;
``rp/<height:8>`` -> amount paid against that round;
``a/<address>`` -> [credited, paid, shares, rejected, difficulty, rigs, rounds, payouts];
``t`` -> [credited, paid, workers, shares, rounds, rewards, distributable, rejected, difficulty].
Commutative: a round's credits are a function of the set of shares and pool blocks. Whenever a
batch adds weight at mined height s, every round h in [s, s + window_blocks - 1] is recomputed
and the difference to what it had credited is applied to the workers, so a late share counts."""
from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from typing import Any

from ledgerlog.engine import topics as T
from ledgerlog.engine.genesis import Genesis

from .base import Event, Txn, View, h8, height_of_key, jdump, jload

NAME = "payouts"
VERSION = 1
TOPICS = (T.SHARES, T.PAYOUTS, T.BLOCKS)
#: the event fields the fold reads
FIELDS = {
    T.SHARES: ("address", "worker", "accepted", "difficulty", "height"),
    T.PAYOUTS: ("body.address", "body.amount", "body.round_height"),
    T.BLOCKS: ("header.height", "header.producer", "reward", "fees"),
}

__all__ = ["NAME", "VERSION", "TOPICS", "initial", "fold", "worker", "pool", "workers",
           "round_info", "below"]

# positions in a worker record
CREDITED, PAID, SHARES, REJECTED, DIFFICULTY, RIGS, ROUNDS, PAYOUTS = range(8)
# positions in the totals record
(T_CREDITED, T_PAID, T_WORKERS, T_SHARES, T_ROUNDS, T_REWARDS, T_DISTRIBUTABLE, T_REJECTED,
 T_DIFFICULTY) = range(9)

_OFF = 1 << 63
_MAX = (1 << 64) - 1


def _wkey(height: int) -> bytes:
    return b"w/" + h8(height + _OFF)


def _rkey(height: int) -> bytes:
    return b"r/" + h8(height)


def _rpkey(height: int) -> bytes:
    return b"rp/" + h8(height)


def _akey(addr: str) -> bytes:
    return b"a/" + addr.encode()


def _new_worker() -> list[Any]:
    return [0, 0, 0, 0, 0, [], 0, 0]


def initial(genesis: Genesis, txn: Txn) -> None:
    txn.put(b"t", jdump([0] * 9))


class _Batch:
    """Workers, weights, rounds and totals touched by one batch; rounds are recomputed and every
    touched key written once at the end."""

    def __init__(self, genesis: Genesis, txn: Txn) -> None:
        self.txn = txn
        self.pool = genesis.pool.address
        self.fee_bps = genesis.pool.fee_bps
        self.win = genesis.pool.window_blocks
        self.total: list[int] = jload(txn.get(b"t")) or [0] * 9
        self.workers: dict[str, list[Any]] = {}
        self.weights: dict[int, dict[str, int]] = {}  # mined height -> weights, with this batch's
        self.rounds: dict[int, list[Any]] = {}  # round height -> entry, for rounds recomputed
        self.new_rounds: list[int] = []
        self.round_paid: dict[int, int] = {}

    def worker(self, addr: str) -> list[Any]:
        w = self.workers.get(addr)
        if w is None:
            w = self.workers[addr] = jload(self.txn.get(_akey(addr))) or _new_worker()
        return w

    def share(self, ev: dict[str, Any]) -> None:
        addr, t = ev["address"], self.total
        w = self.worker(addr)
        if w[SHARES] + w[REJECTED] == 0:
            t[T_WORKERS] += 1
        rig = ev["worker"].partition(".")[2]
        rigs = w[RIGS]
        i = bisect_left(rigs, rig)
        if i == len(rigs) or rigs[i] != rig:
            rigs.insert(i, rig)
        if not ev["accepted"]:
            w[REJECTED] += 1
            t[T_REJECTED] += 1
            return
        d, height = ev["difficulty"], ev["height"]
        w[SHARES] += 1
        w[DIFFICULTY] += d
        t[T_SHARES] += 1
        t[T_DIFFICULTY] += d
        m = self.weights.get(height)
        if m is None:
            m = self.weights[height] = jload(self.txn.get(_wkey(height))) or {}
        m[addr] = m.get(addr, 0) + d

    def block(self, ev: dict[str, Any]) -> None:
        hdr = ev["header"]
        h = hdr["height"]
        if hdr["producer"] != self.pool or h in self.rounds or self.txn.get(_rkey(h)) is not None:
            return
        r = ev["reward"] + ev["fees"]
        d = r - r * self.fee_bps // 10000
        self.rounds[h] = [r, d, 0, {}]
        self.new_rounds.append(h)
        self.total[T_ROUNDS] += 1
        self.total[T_REWARDS] += r
        self.total[T_DISTRIBUTABLE] += d

    def payout(self, ev: dict[str, Any]) -> None:
        b = ev["body"]
        amount, rh = b["amount"], b["round_height"]
        w = self.worker(b["address"])
        w[PAID] += amount
        w[PAYOUTS] += 1
        self.total[T_PAID] += amount
        if rh not in self.round_paid:
            self.round_paid[rh] = jload(self.txn.get(_rpkey(rh))) or 0
        self.round_paid[rh] += amount

    # -- recomputing rounds -------------------------------------------------------------------
    def _dirty_rounds(self) -> list[int]:
        """New rounds, and stored rounds whose window holds a mined height this batch changed."""
        spans: list[list[int]] = []
        for a, b in sorted((max(s, 1), s + self.win - 1) for s in self.weights):
            if b < a:
                continue
            if spans and a <= spans[-1][1] + 1:
                spans[-1][1] = max(spans[-1][1], b)
            else:
                spans.append([a, b])
        dirty = set(self.new_rounds)
        for a, b in spans:
            end = _rkey(min(b, _MAX))
            for key, raw in self.txn.items(b"r/", _rkey(a)):
                if key > end:
                    break
                h = int.from_bytes(key[2:], "big")
                if h not in self.rounds:
                    self.rounds[h] = jload(raw)
                dirty.add(h)
        return sorted(dirty)

    def _span(self, a: int, b: int, touched: list[int]) -> Iterator[dict[str, int]]:
        """Weights of the mined heights a..b: stored ones, with this batch's changes."""
        if a > b:
            return
        seen = set()
        end = _wkey(b)
        for key, raw in self.txn.items(b"w/", _wkey(a)):
            if key > end:
                break
            h = int.from_bytes(key[2:], "big") - _OFF
            seen.add(h)
            m = self.weights.get(h)
            yield jload(raw) if m is None else m
        for h in touched[bisect_left(touched, a):bisect_right(touched, b)]:
            if h not in seen:
                yield self.weights[h]

    def recompute(self) -> None:
        """Slide the window over the dirty rounds in height order and credit the differences."""
        touched = sorted(self.weights)
        sums: dict[str, int] = {}
        total_w, lo, hi = 0, 0, None  # the window sums cover mined heights lo..hi
        for h in self._dirty_rounds():
            start = max(h - self.win + 1, -_OFF)
            if hi is None or start > hi:  # no overlap with the previous window: start afresh
                sums, total_w, lo, hi = {}, 0, start, start - 1
            for m in self._span(lo, start - 1, touched):
                for addr, v in m.items():
                    left = sums[addr] - v
                    if left:
                        sums[addr] = left
                    else:
                        del sums[addr]
                    total_w -= v
            for m in self._span(hi + 1, h, touched):
                for addr, v in m.items():
                    sums[addr] = sums.get(addr, 0) + v
                    total_w += v
            lo, hi = start, h
            self._credit(h, sums, total_w)

    def _credit(self, h: int, sums: dict[str, int], total_w: int) -> None:
        r, d, _, old = self.rounds[h]
        new: dict[str, int] = {}
        if total_w:
            for addr in sorted(sums):
                c = d * sums[addr] // total_w
                if c:
                    new[addr] = c
        for addr in old.keys() | new.keys():
            delta = new.get(addr, 0) - old.get(addr, 0)
            was, now = addr in old, addr in new
            if delta or was != now:
                w = self.worker(addr)
                w[CREDITED] += delta
                w[ROUNDS] += now - was
                self.total[T_CREDITED] += delta
        self.rounds[h] = [r, d, total_w, new]

    def flush(self) -> None:
        self.recompute()
        put = self.txn.put
        for height, m in self.weights.items():
            put(_wkey(height), jdump({a: m[a] for a in sorted(m)}))
        for h, entry in self.rounds.items():
            put(_rkey(h), jdump(entry))
        for h, paid in self.round_paid.items():
            put(_rpkey(h), jdump(paid))
        for addr, w in self.workers.items():
            put(_akey(addr), jdump(w))
        put(b"t", jdump(self.total))


def fold(genesis: Genesis, events: Iterable[Event], txn: Txn) -> None:
    batch = _Batch(genesis, txn)
    for topic, ev in events:
        if topic == T.SHARES:
            batch.share(ev)
        elif topic == T.PAYOUTS:
            batch.payout(ev)
        elif topic == T.BLOCKS:
            batch.block(ev)
    batch.flush()


def _as_dict(addr: str, w: list[Any]) -> dict[str, Any]:
    return {"address": addr, "credited": w[CREDITED], "paid": w[PAID],
            "pending": w[CREDITED] - w[PAID], "shares": w[SHARES],
            "rejected_shares": w[REJECTED], "difficulty": w[DIFFICULTY], "rigs": w[RIGS],
            "rounds": w[ROUNDS], "payouts": w[PAYOUTS]}


def below(key: bytes, value: bytes, height: int) -> bool:
    """Does this entry hold history from below ``height`` (the shares mined, a round's credits or
    its payment there)? After a prune below it the raw reads leave it out."""
    if key.startswith(b"w/"):
        return height_of_key(key) - _OFF < height
    return key.startswith((b"r/", b"rp/")) and height_of_key(key) < height


def worker(view: View, address: str) -> dict[str, Any]:
    """A worker address's credits and payments; zeros for an address never seen."""
    return _as_dict(address, jload(view.get(_akey(address))) or _new_worker())


def pool(view: View) -> dict[str, Any]:
    t = jload(view.get(b"t")) or [0] * 9
    return {"credited": t[T_CREDITED], "paid": t[T_PAID], "pending": t[T_CREDITED] - t[T_PAID],
            "workers": t[T_WORKERS], "shares": t[T_SHARES], "rejected_shares": t[T_REJECTED],
            "difficulty": t[T_DIFFICULTY], "rounds": t[T_ROUNDS], "rewards": t[T_REWARDS],
            "distributable": t[T_DISTRIBUTABLE]}


def workers(view: View, limit: int = 20) -> list[dict[str, Any]]:
    """The addresses with the most pending (ties by address), for dashboards."""
    def rows() -> Iterator[tuple[int, str, list[Any]]]:
        for k, v in view.items(b"a/"):
            w = jload(v)
            yield w[PAID] - w[CREDITED], k[2:].decode(), w
    return [_as_dict(addr, w) for _, addr, w in heapq.nsmallest(limit, rows())]


def round_info(view: View, height: int) -> dict[str, Any] | None:
    """A pool round: R, D, W, the credits it gives and what was paid against it."""
    entry = jload(view.get(_rkey(height)))
    if entry is None:
        return None
    r, d, total_w, credits = entry
    return {"height": height, "reward": r, "distributable": d, "weight": total_w,
            "credits": credits, "credited": sum(credits.values()),
            "paid": jload(view.get(_rpkey(height))) or 0}
