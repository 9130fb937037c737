"""Retention: a running node prunes its log below ``tip - retention.keep_heights`` every
``retention.interval`` seconds (archiving first, ops/data/prune.py), at most
``retention.max_heights`` heights a run so each run's work is bounded; a failed run is logged and
counted (``ledgerlog_prunes_total{outcome="error"}``), never stops the node, and is tried again."""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from ledgerlog.engine.errors import LedgerError
from ledgerlog.ops.data.prune import prune
from ledgerlog.streams.anchor import Anchor

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["retention_target", "retention_run", "retention_loop"]

log = logging.getLogger("ledgerlog.retention")


def retention_target(node: NodeContext) -> int | None:
    """The height the next run prunes below, or None when nothing is due."""
    cfg = node.config
    keep = cfg.retention_keep_heights
    if keep <= 0:
        return None
    tip = node.tip().height
    point = node.chain.log.prune_point()
    anchor = Anchor.load(cfg.anchor_dir)
    last = max(point.height if point else 0, anchor.height if anchor else 0)
    if point is not None and anchor is not None and anchor.height > point.height:
        return anchor.height  # an interrupted prune: finish it first
    target = min(tip - keep, last + cfg.retention_max_heights)
    return target if target > last else None


def retention_run(node: NodeContext) -> dict[str, Any] | None:
    """One retention run: prune below the due height; its summary, None when nothing was due."""
    height = retention_target(node)
    if height is None:
        return None
    with node.jobs.run("retention") as job:  # its progress, in GET /v1/status jobs
        result = prune(node.chain, node.runner, height, archive_parent=node.config.archive_dir,
                       fold_lock=node.fold_lock, progress=job)
    log.info("retention: pruned below height %s (%s records, archive %s)", height, result.get("records"),
             (result.get("archive") or {}).get("path"))
    return result


def retention_loop(node: NodeContext, stop: threading.Event) -> None:
    """Run retention every ``retention.interval`` seconds until ``stop``; never raises."""
    metrics: Any = node.metrics
    while not stop.wait(node.config.retention_interval):
        if not node.chain.log.writable:
            continue  # the disk refuses writes: the storage loop recovers it first
        try:
            if retention_run(node) is not None:
                metrics.prunes["ok"] += 1
        except LedgerError as exc:
            metrics.prunes["error"] += 1
            log.error("retention: prune failed (%s); the node goes on and tries again", exc)
        except Exception:
            metrics.prunes["error"] += 1
            log.exception("retention: prune failed; the node goes on and tries again")
