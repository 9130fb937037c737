"""One partition of the repartition topic and its state: a balances store holding only the
accounts of that partition, with the partition's position and the source marks (repartition.py)
committed in the same WriteBatch as the state, so a worker killed at any point resumes exactly
where its state is, and a partition moved to another worker is rebuilt there from the topic."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ledgerlog.engine.genesis import Genesis
from ledgerlog.projections import balances

from ..store import ProjectionStore
from .repartition import SOURCES, decode_row, partition_of

__all__ = ["MARK", "Shard", "shard_path"]

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

    def fold(self, records: Sequence[tuple[int, bytes, bytes]]) -> int:
        """Fold (offset, key, value) records of this partition at or past ``position``, skipping
        rows at or below their source's mark; commit state, position and marks in one WriteBatch.
        Returns the rows folded."""
        marks = self.marks
        changed: dict[tuple[int, int], int] = {}
        rows: list[balances.Row] = []
        last = -1
        height = -1
        for off, key, value in records:
            if off < self.position:
                continue  # left over from before a reassignment
            last = off
            src, mark, row = decode_row(key, value)
            if mark <= changed.get(src, marks.get(src, 0)):
                self.skipped += 1
                continue
            changed[src] = mark
            rows.append(row)
            if row[1] > height:
                height = row[1]
        if last < 0:
            return 0
        txn = self.store.begin()
        balances.fold_rows(rows, txn)
        positions = {(self.topic, self.k): last + 1}
        positions.update({(MARK + SOURCES[s], p): m for (s, p), m in changed.items()})
        self.store.commit(txn, positions, height=height if height >= 0 else None)
        marks.update(changed)
        self.position = last + 1
        self.folded += len(rows)
        return len(rows)

    def account(self, address: str, height: int | None = None) -> dict[str, Any]:
        return balances.account(self.store.view(), address, height)

    def digest_hex(self) -> str:
        return self.store.digest_hex()

    def close(self) -> None:
        self.store.close()
