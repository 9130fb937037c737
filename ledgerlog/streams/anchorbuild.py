"""Building an anchor (anchor.py): every projection folded from the anchor before it (or from
offset 0) exactly up to the new prune positions, as a reproject would but stopping there."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ledgerlog import projections
from ledgerlog.engine.codec import Codec
from ledgerlog.engine.errors import LogError, ProjectionFailedError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.base import Log

from .anchor import Anchor, write_anchor
from .runner import Runner

__all__ = ["build_anchor", "fold_exactly", "records_to_fold"]


def records_to_fold(root: str, targets: Mapping[str, list[int]]) -> int:
    """How many records an anchor at ``targets`` folds beyond the current anchor (a progress total)."""
    base = Anchor.load(root)
    topics = {t for m in projections.ALL.values() for t in m.TOPICS}
    total = 0
    for t in topics:
        have = base.positions.get(t, []) if base else []
        total += sum(max(0, off - (have[p] if p < len(have) else 0)) for p, off in enumerate(targets.get(t, [])))
    return total


def fold_exactly(runner: Runner, targets: Mapping[str, list[int]], *,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Fold every projection of ``runner`` exactly up to ``targets`` (topic -> offset per
    partition); each one's anchor entry {version, digest, height, positions}."""
    runner.catch_up(until={t: list(v) for t, v in targets.items()}, progress=progress)
    failed = runner.failures()
    if failed:
        raise ProjectionFailedError("; ".join(f.message for f in failed.values()))
    metas: dict[str, Any] = {}
    for name, h in runner.handles.items():
        want = {(t, p): off for t in h.module.TOPICS for p, off in enumerate(targets[t])}
        pos = h.store.positions()
        off_target = {f"{t}[{p}]": (pos.get((t, p), 0), off) for (t, p), off in want.items()
                      if pos.get((t, p), 0) > off}
        if off_target:
            raise LogError(f"projection {name} is already past the prune positions {off_target} in the "
                           "anchor it starts from: prune at a height above the last prune")
        # catch_up folded every record below the targets; a partition's position stops after
        # its last record (Kafka: before a transaction marker), so record the targets as such
        h.store.commit(h.store.begin(), want)
        h.store.flush()
        metas[name] = {"version": h.module.VERSION, "digest": h.store.digest_hex(), "height": h.store.height,
                       "positions": {t: list(targets[t]) for t in h.module.TOPICS}}
    return metas


def build_anchor(log: Log, codec: Codec, genesis: Genesis, root: str, height: int,
                 targets: Mapping[str, list[int]], *, batch: int = 20_000,
                 progress: Callable[[int], None] | None = None, extra: Mapping[str, Any] | None = None) -> Anchor:
    """The anchor at ``height`` whose projections have folded exactly the records below
    ``targets`` (topic -> offset per partition, for every topic a projection reads)."""
    def build(tmp: str) -> dict[str, Any]:
        paths = {n: os.path.join(tmp, n) for n in projections.ALL}
        runner = Runner(log, codec, genesis, os.path.join(tmp, "projections"), paths=paths, batch=batch,
                        anchor_dir=root)
        try:
            return fold_exactly(runner, targets, progress=progress)
        finally:
            runner.close()
    return write_anchor(root, height, {t: list(v) for t, v in targets.items()}, build, dict(extra or {}))
