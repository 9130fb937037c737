"""Proofs from the log's Merkle trees and its signed tree heads (PROTOCOL.md §9), as the node
answers them (GET /v1/proofs/*, /v1/tree-heads) and the CLI reads them offline: they need the log
only, never a projection. Arguments beyond the log answer 400 BAD_REQUEST."""
from __future__ import annotations

from typing import Any

from ledgerlog.engine.errors import BadRequest, NotFoundError, ProofError
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.logtree import Trees, has_tree
from ledgerlog.engine.treehead import HeadPublisher

__all__ = ["LogProofs"]


class LogProofs:
    """Inclusion and consistency proofs and the newest signed head of a partition."""

    def __init__(self, log: Log, heads: HeadPublisher | None) -> None:
        self.log = log
        self.heads = heads

    def _trees(self, topic: str | None, partition: int | None) -> tuple[Trees, str, int]:
        """The trees of the log, once ``topic`` and ``partition`` name a verifiable partition."""
        log = self.log
        trees = log.trees
        if trees is None:
            raise NotFoundError("this log keeps no Merkle trees (a Kafka log opened without its state store)")
        if not topic or partition is None:
            raise BadRequest("topic and partition are required")
        n = log.topics().get(topic)
        if n is None or not has_tree(topic):
            raise BadRequest(f"{topic!r} is not a verifiable topic of this log")
        if not 0 <= partition < n:
            raise BadRequest(f"{topic} has partitions 0..{n - 1}, not {partition}")
        return trees, topic, partition

    def inclusion_proof(self, topic: str | None = None, partition: int | None = None, index: int | None = None,
                        offset: int | None = None, tree_size: int | None = None) -> dict[str, Any]:
        """RFC 6962 §2.1.1: the audit path of leaf ``index`` (or of the record at ``offset``) in the
        tree of ``tree_size`` leaves (default: the whole partition)."""
        trees, topic, partition = self._trees(topic, partition)
        size = trees.state(topic, partition).size if tree_size is None else tree_size
        try:
            if (index is None) == (offset is None):
                raise BadRequest("give index or offset (one of them)")
            if index is None:
                index = trees.index_of(topic, partition, offset)  # type: ignore[arg-type]
            at, leaf, path = trees.inclusion(topic, partition, index, size)
        except ProofError as exc:
            raise BadRequest(str(exc)) from exc
        return {"topic": topic, "partition": partition, "index": index, "offset": at, "tree_size": size,
                "leaf_hash": leaf.hex(), "audit_path": [h.hex() for h in path]}

    def consistency_proof(self, topic: str | None = None, partition: int | None = None,
                          first: int | None = None, second: int | None = None) -> dict[str, Any]:
        """RFC 6962 §2.1.2: that the tree of ``first`` leaves is a prefix of that of ``second``
        (default: the whole partition)."""
        trees, topic, partition = self._trees(topic, partition)
        if first is None:
            raise BadRequest("first is required")
        second = trees.state(topic, partition).size if second is None else second
        try:
            proof = trees.consistency(topic, partition, first, second)
        except ProofError as exc:
            raise BadRequest(str(exc)) from exc
        return {"topic": topic, "partition": partition, "first": first, "second": second,
                "proof": [h.hex() for h in proof]}

    def tree_head(self, topic: str | None = None, partition: int | None = None) -> dict[str, Any]:
        """The newest signed tree head of a partition, as published on ``_checkpoints``."""
        self._trees(topic, partition)
        if self.heads is None:
            raise NotFoundError("no tree heads are read here")
        self.heads.refresh()
        found = self.heads.latest.get((topic, partition))  # type: ignore[arg-type]
        if found is None:
            raise NotFoundError(f"no tree head of {topic}[{partition}] is published yet")
        return found
