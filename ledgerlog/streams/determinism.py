"""The check ``projections add`` runs before a user projection is registered: fold a sample of the
log twice, once as one batch and once in batches of 1, 2, 3 ... events, and compare the digests of
the two states. A fold that reads a clock or randomness, iterates a set, keeps state between calls
or depends on how the runner batches (it batches differently after a restart) disagrees here,
before it can build a store no replay reproduces."""
from __future__ import annotations

from types import ModuleType
from typing import Any

from ledgerlog.engine.codec import Codec
from ledgerlog.engine.digest import digest_hex
from ledgerlog.engine.errors import NondeterministicFoldError, ProjectionInvalidError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.base import Log
from ledgerlog.projections.memory import MemoryTxn

from . import catalog
from .feed import EventDecoder, Feed
from .runner import _fields

__all__ = ["SAMPLE", "check_determinism"]

#: events folded twice by the check (the log's first ones, in the order the runner folds them)
SAMPLE = 5_000


def check_determinism(log: Log, codec: Codec, genesis: Genesis, mod: ModuleType, *,
                      sample: int = SAMPLE) -> dict[str, Any]:
    """{"events": folded, "digest": hex} of the sample's state; NondeterministicFoldError when
    the two replays disagree, ProjectionInvalidError when the fold raises on the sample."""
    point = log.prune_point()
    start = dict(point.starts) if point is not None else {}
    feed = Feed(log, EventDecoder(codec), mod.TOPICS, start, fields=_fields([mod]))
    events, _, _ = feed.take(sample, {t: log.end_offsets(t) for t in mod.TOPICS})
    whole, pieces = MemoryTxn(), MemoryTxn()
    _replay(mod, genesis, events, whole, [len(events)])
    _replay(mod, genesis, events, pieces, _steps(len(events)))
    if whole.digest() != pieces.digest():
        differ = sum(1 for k in whole.entries.keys() | pieces.entries.keys()
                     if whole.entries.get(k) != pieces.entries.get(k))
        raise NondeterministicFoldError(
            f"projection {mod.NAME}: two replays of the log's first {len(events)} events disagree on {differ} "
            "keys; a fold may read only its events and state (no clock, randomness, set order or state kept "
            "between calls)")
    return {"events": len(events), "digest": digest_hex(whole.digest())}


def _steps(n: int) -> list[int]:
    """Batch sizes 1, 2, 3 ... covering n events."""
    out, size = [], 1
    while n > 0:
        out.append(min(size, n))
        n -= size
        size += 1
    return out


def _replay(mod: ModuleType, genesis: Genesis, events: list[tuple[str, dict[str, Any]]], txn: MemoryTxn,
            steps: list[int]) -> None:
    i = 0
    try:
        mod.initial(genesis, txn)
        for size in steps:
            mod.fold(genesis, events[i:i + size], txn)
            i += size
    except Exception as exc:
        where = f"event {i + 1} ({events[i][0]})" if i < len(events) else "initial"
        raise ProjectionInvalidError(f"projection {mod.NAME} raised on the sample at {where}: "
                                     f"{catalog.describe(exc)}") from exc
