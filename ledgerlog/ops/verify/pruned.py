"""What `ledgerlog verify` trusts of a pruned log, and where it looks up what lies below the prune.

The records below the prune point are gone; verify checks the log from its start and takes the
rest from what the prune recorded: the chain's tip below the prune height (its hash links the
first block kept), the hash of every pruned Merkle leaf (so each partition's stored tree is still
recomputed whole), and the anchor's stores for references into the pruned past (a reading or
settlement of a provider registered before it, a payout of a round below it). The report says
so under ``log.pruned``; ``ledgerlog audit --archive`` checks the archived records themselves
against the signed tree heads."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ledgerlog.engine.errors import LedgerError
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.prunepoint import PrunePoint
from ledgerlog.projections import chainstate, energy
from ledgerlog.streams.anchor import Anchor
from ledgerlog.streams.store import ProjectionStore

__all__ = ["PrunedPrefix"]

_LEAF_BATCH = 10_000


class PrunedPrefix:
    """A pruned log's prefix as verify sees it (see the module docstring)."""

    def __init__(self, log: Log, point: PrunePoint, anchor_dir: str) -> None:
        self.log, self.point = log, point
        self.anchor = Anchor.load(anchor_dir)
        self._stores: dict[str, ProjectionStore | None] = {}
        self.damaged: dict[str, str] = {}  # anchor stores that do not open: name -> why
        self.references = 0  # references resolved in the anchor

    def start(self, topic: str, p: int) -> int:
        return self.point.starts.get((topic, p), 0)

    def leaves(self, topic: str, p: int) -> Iterator[bytes]:
        """The stored hashes of the partition's pruned leaves, in order."""
        trees = self.log.trees
        kept = self.point.leaves.get((topic, p), 0)
        if trees is None or not kept:
            return
        for lo in range(0, kept, _LEAF_BATCH):
            for _off, leaf in trees.stored_leaves(topic, p, lo, min(kept, lo + _LEAF_BATCH)):
                yield leaf

    def _store(self, name: str) -> ProjectionStore | None:
        """The anchor's store of ``name``; None when there is none, or it cannot be opened (then
        ``damaged`` says why, and the report names it instead of the check stopping)."""
        if name not in self._stores:
            store = None
            if self.anchor is not None and name in self.anchor.projections:
                try:
                    store = ProjectionStore(self.anchor.store_path(name), read_only=True)
                except LedgerError as exc:
                    self.damaged[name] = str(exc)
            self._stores[name] = store
        return self._stores[name]

    def provider_owner(self, provider_id: str) -> str | None:
        """The owner of a provider registered below the prune (from the anchor), if any."""
        store = self._store("energy")
        found = energy.provider(store.view(), provider_id) if store is not None else None
        if found is not None:
            self.references += 1
            return str(found["owner"])
        return None

    def block_producer(self, height: int) -> str | None:
        """The producer of a block below the prune (from the anchor), if any."""
        if height >= self.point.height:
            return None
        store = self._store("chainstate")
        found = chainstate.block(store.view(), height) if store is not None else None
        if found is not None:
            self.references += 1
            return str(found["header"]["producer"])
        return None

    def report(self) -> dict[str, Any]:
        p = self.point
        return {"height": p.height, "archive": p.archive, "tip_below": list(p.tip),
                "pruned_offsets": sum(p.starts.values()),
                "anchor": self.anchor.to_dict() if self.anchor else None,
                "references_resolved_in_anchor": self.references,
                "trusted": "events below the prune height are not re-checked (archived; `ledgerlog audit --archive` "
                           "checks them against the signed tree heads); the tip below it, the stored hashes of the "
                           "pruned Merkle leaves and the anchor's stores stand for them"}

    def close(self) -> None:
        for store in self._stores.values():
            if store is not None:
                store.close()
        self._stores.clear()
