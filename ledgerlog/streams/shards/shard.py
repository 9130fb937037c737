"""One partition of the repartition topic and its state: a balances store holding only the
accounts of that partition, with the partition's position and the source marks (repartition.py)
committed in the same WriteBatch as the state, so a worker killed at any point resumes exactly
where its state is, and a partition moved to another worker is rebuilt there from the topic.

The rows of the source partitions' derivers interleave here in whatever order they ran; a shard
holds the rows taken until no source can still send a lower height (their progress records' bounds,
``safe_height``), then folds them sorted by height, so the fold stays on its append-only path
(an out-of-order row rewrites the account's later history entries). Order only costs time: the
fold is order-independent, and gives the embedded fold's state either way."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from operator import itemgetter
from typing import Any

from ledgerlog.engine.genesis import Genesis
from ledgerlog.projections import balances

from ..store import ProjectionStore
from .repartition import SOURCES, partition_of, unpack_rows

__all__ = ["HOLD_CAP", "MARK", "Bounds", "Shard", "shard_path"]

#: A source partition: (index in SOURCES, partition).
Source = tuple[int, int]
#: Per source partition, what its newest progress record says of this shard's partition: (the
#: height bound of its later rows, the end of its rows here), or None when it has no record yet.
Bounds = dict[Source, tuple[int, int] | None]
#: A held row: (height, offset, source, mark, row).
_Held = tuple[int, int, Source, int, balances.Row]
#: Rows held at most; past it the lowest fold even if a source may still send lower ones (still
#: exact: the fold is order-independent, only slower for out-of-order rows).
HOLD_CAP = 200_000
_INF = float("inf")
_by_height = itemgetter(0)
_by_offset = itemgetter(1)

#: Source marks are kept among the store's positions under this topic prefix (one per source
#: partition): committed atomically with the state, and never part of the digest.
MARK = "mark/"


def shard_path(root: str, partitions: int, k: int) -> str:
    """Where a worker keeps shard ``k`` of ``partitions`` (a topic with another partition count
    places accounts elsewhere, so its shards never share a directory)."""
    return os.path.join(root, balances.NAME, f"v{balances.VERSION}", f"n{partitions}", f"p{k}")


class Shard:
    """Shard ``k`` of ``partitions``: opened (created with its accounts' genesis allocations if
    new) at ``path``; ``fold`` folds records read from the topic's partition ``k`` in offset order."""

    def __init__(self, path: str, genesis: Genesis, topic: str, k: int, partitions: int) -> None:
        self.topic, self.k, self.partitions = topic, k, partitions
        self.store = ProjectionStore(path)
        self.folded = 0  # rows folded since opened
        self.skipped = 0  # rows a resumed deriver wrote a second time
        try:
            if not self.store.initialised:
                own = {a: v for a, v in genesis.allocations.items() if partition_of(a, partitions) == k}
                txn = self.store.begin()
                balances.initial(replace(genesis, allocations=own), txn)
                self.store.commit(txn, {}, initialised=True)
            pos = self.store.positions()
        except BaseException:
            self.store.close()
            raise
        self.position = pos.get((topic, k), 0)
        self.resumed_from = self.position
        self.marks = {(SOURCES.index(t[len(MARK):]), p): v for (t, p), v in pos.items() if t.startswith(MARK)}
        self.read_to = self.position  # the offset after the last record taken
        self.seen = dict(self.marks)  # per source, the highest mark taken (folded or held)
        self.seen_height: dict[Source, int] = {}  # per source, the highest height taken since opened
        self.held: list[_Held] = []  # taken rows waiting for every source to pass their height

    def fold(self, records: Sequence[tuple[int, bytes, bytes]], bounds: Bounds | None = None) -> int:
        """Take (offset, key, value) records of this partition from ``read_to`` on, skipping rows
        at or below what was already taken from their source (duplicates), then fold what the
        ``bounds`` release (``release``). Returns the rows folded."""
        seen, seen_height, held = self.seen, self.seen_height, self.held
        last = -1
        for off, _key, value in records:
            if off < self.read_to:
                continue  # left over from before a reassignment
            last = off
            src, rows = unpack_rows(value)
            top, high = seen.get(src, 0), seen_height.get(src, -1)
            for mark, row in rows:
                if mark <= top:
                    self.skipped += 1
                    continue
                top = mark
                if row[1] > high:
                    high = row[1]
                held.append((row[1], off, src, mark, row))
            seen[src], seen_height[src] = top, high
        if last >= 0:
            self.read_to = last + 1
        return self.release(bounds)

    def safe_height(self, bounds: Bounds | None) -> float:
        """The height up to which rows may fold in height order: no source's later rows are below
        it. A source's later rows are no lower than its highest row taken here, nor, once this
        partition was read past the end its progress record gave, than that record's bound."""
        if bounds is None:
            return _INF
        read_to, seen_height = self.read_to, self.seen_height
        low: float = _INF
        for src, given in bounds.items():
            lb = seen_height.get(src, -1)
            if given is not None and read_to >= given[1] and given[0] > lb:
                lb = given[0]
            if lb < low:
                low = lb
        return low

    def release(self, bounds: Bounds | None = None) -> int:
        """Fold the held rows at or below ``safe_height`` (all of them without ``bounds``; the
        lowest ones anyway past ``HOLD_CAP``), in height order, and commit them with the position
        (the first row still held, so a restart reads it again) and the marks, in one WriteBatch."""
        held = self.held
        if held:
            limit = self.safe_height(bounds)
            if max(h[0] for h in held) <= limit:
                out, self.held = held, []
            else:
                out = [h for h in held if h[0] <= limit]
                self.held = [h for h in held if h[0] > limit]
                if len(self.held) > HOLD_CAP:  # a source far behind (its deriver is moving): fold out of order
                    self.held.sort(key=_by_height)
                    cut = len(self.held) - HOLD_CAP // 2
                    out += self.held[:cut]
                    self.held = sorted(self.held[cut:], key=_by_offset)
        else:
            out = []
        position = self.held[0][1] if self.held else self.read_to
        if not out and position == self.position:
            return 0
        out.sort(key=_by_height)  # stable: offset order within a height
        changed: dict[tuple[int, int], int] = {}
        for h in out:
            if h[3] > changed.get(h[2], 0):
                changed[h[2]] = h[3]
        txn = self.store.begin()
        balances.fold_rows([h[4] for h in out], txn)
        positions = {(self.topic, self.k): position}
        positions.update({(MARK + SOURCES[s], p): m for (s, p), m in changed.items()})
        self.store.commit(txn, positions, height=out[-1][0] if out else None)
        self.marks.update(changed)
        self.position = position
        self.folded += len(out)
        return len(out)

    def account(self, address: str, height: int | None = None) -> dict[str, Any]:
        return balances.account(self.store.view(), address, height)

    def digest_hex(self) -> str:
        return self.store.digest_hex()

    def close(self) -> None:
        self.store.close()
