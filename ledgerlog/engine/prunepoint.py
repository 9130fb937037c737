"""A log's prune point: the height below which the log holds no event any more, kept by the log
itself (embedded: in its store, written in the same batch that deletes the records; Kafka: in the
local state store), so every reader of the log knows what it no longer holds.

Which topics are pruned: the event topics whose events carry heights and that projections or
queries read (``PRUNED_TOPICS``). Kept whole: ``_genesis``, ``_schemas`` and ``_checkpoints``
(the chain's identity, its schemas and its signed tree heads) and the small extension topics
``ledger.keys`` (key rotations: verify and audit replay every one to know which key signed what),
``ledger.admin`` (the operators' audit trail) and ``ledger.governance`` (verify replays every
parameter change to check registrations against it)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import topics as T
from .errors import PrunedError

__all__ = ["PRUNED_TOPICS", "PrunePoint", "TopicPartition"]

TopicPartition = tuple[str, int]

#: topics pruned below a height (see the module docstring for those kept whole)
PRUNED_TOPICS: tuple[str, ...] = (T.BLOCKS, T.TRANSACTIONS, T.MEMPOOL, T.SHARES, T.PROVIDERS, T.READINGS,
                                  T.SETTLEMENTS, T.PAYOUTS)


def _tp_key(tp: TopicPartition) -> str:
    return f"{tp[0]}/{tp[1]}"


def _tp_of(key: str) -> TopicPartition:
    topic, p = key.rsplit("/", 1)
    return topic, int(p)


@dataclass(frozen=True)
class PrunePoint:
    """The log holds no event below ``height``: per pruned partition, ``starts`` is the first
    offset it keeps and ``leaves`` how many Merkle leaves lie below it (their hashes are kept, so
    proofs and tree heads stay valid). ``tip`` is (height, hash, timestamp) of the last block
    below ``height``; ``archive`` where the pruned records were written (relative to the data dir
    when inside it), None if they were not archived. ``anchor``: the digest of each projection the
    prune's anchor folded, so the anchor can be checked against what the log says it was."""

    height: int
    starts: Mapping[TopicPartition, int] = field(default_factory=dict)
    leaves: Mapping[TopicPartition, int] = field(default_factory=dict)
    tip: tuple[int, str, int] = (0, "", 0)
    archive: str | None = None
    time_ms: int = 0
    anchor: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"height": self.height, "starts": {_tp_key(k): v for k, v in sorted(self.starts.items())},
                           "leaves": {_tp_key(k): v for k, v in sorted(self.leaves.items())},
                           "tip": list(self.tip), "archive": self.archive, "time_ms": self.time_ms,
                           "anchor": dict(sorted(self.anchor.items()))},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PrunePoint:
        doc = json.loads(raw)
        return cls(int(doc["height"]), {_tp_of(k): int(v) for k, v in doc["starts"].items()},
                   {_tp_of(k): int(v) for k, v in doc["leaves"].items()},
                   (int(doc["tip"][0]), str(doc["tip"][1]), int(doc["tip"][2])), doc.get("archive"),
                   int(doc.get("time_ms", 0)), {str(k): str(v) for k, v in doc.get("anchor", {}).items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON for answers: height, archive, tip below it, start offsets per topic partition."""
        return {"height": self.height, "archive": self.archive,
                "tip": {"height": self.tip[0], "hash": self.tip[1], "timestamp": self.tip[2]},
                "starts": {_tp_key(k): v for k, v in sorted(self.starts.items()) if v}}

    def error(self, what: str) -> PrunedError:
        """The refusal to serve ``what``, which lies below this point."""
        where = f"; the pruned records are archived in {self.archive}" if self.archive else \
            "; the pruned records were not archived"
        return PrunedError(f"{what}: the log was pruned below height {self.height} and no longer holds it{where}")
