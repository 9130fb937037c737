"""`ledgerlog prune --before-height H`: delete the events below a height, after archiving them and
recording the anchor rebuilds start from.

Where: per partition of each pruned topic (engine/prunepoint.py ``PRUNED_TOPICS``) the first
offset whose event height is >= H (heights never decrease along a partition: found by
bisection). H must be at most the tip and above the last prune (``BAD_PRUNE_HEIGHT``); a prune
at the last prune's height finishes it if it was interrupted, else changes nothing.

Steps, each crash-safe (``on_step(name)`` after each, for tests):

1. the live projections are brought past those positions and flushed (they fold on from there);
2. ``archived``: the records below the positions are written to ``<archive>/h<H>/`` (archive.py);
3. ``anchored``: every projection folded exactly up to the positions is the new anchor
   (streams/anchor.py), from which reproject and verify start from now on;
4. ``pruned``: the log stores each deleted record's leaf hash, then in one synced write its new
   start offsets and prune point with a range deletion of the records, then compacts that range;
5. ``done``: older anchors and resumable rebuilds (which would need deleted records) are removed
   (a rebuild left behind the start is also started over by ``reproject`` itself).

Killed before 4 completes, the log still holds everything and serves as before (a new projection
starts from the anchor, which equals folding the records it still has); running the same prune
again finishes it."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from threading import Lock
from typing import TYPE_CHECKING, Any

from ledgerlog import projections
from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import Chain
from ledgerlog.engine.errors import (
    BadRequest,
    ConfigError,
    ProjectionFailedError,
    PruneHeightError,
    PruneUnsupportedError,
)
from ledgerlog.engine.log.base import Log, TopicPartition
from ledgerlog.engine.log.base import first_at_height as log_first_at_height
from ledgerlog.engine.movements import event_height
from ledgerlog.engine.prunepoint import PRUNED_TOPICS, PrunePoint
from ledgerlog.ops.data.anchorupgrade import upgrade_anchor
from ledgerlog.ops.data.archive import write_archive
from ledgerlog.ops.data.locks import prune_lock
from ledgerlog.ops.data.ownpaths import refuse_own_path
from ledgerlog.ops.data.snapshot import inside
from ledgerlog.ops.data.storage import dir_bytes
from ledgerlog.streams import layout
from ledgerlog.streams.anchor import Anchor, remove_others
from ledgerlog.streams.anchorbuild import build_anchor, records_to_fold
from ledgerlog.streams.reproject import reproject_lock
from ledgerlog.streams.runner import Runner

if TYPE_CHECKING:
    from ledgerlog.engine.codec import Codec
    from ledgerlog.ops.jobs import Progress
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["STEPS", "PrunePlan", "first_at_height", "prune", "prune_action"]

STEPS = ("caught_up", "archived", "anchored", "pruned", "done")
log = logging.getLogger("ledgerlog.prune")


def first_at_height(log_: Log, codec: Codec, topic: str, p: int, lo: int, end: int, height: int) -> int:
    """The first offset in [lo, end) of partition ``p`` whose event height is >= ``height``, or ``end``."""
    return log_first_at_height(log_, topic, p, lo, end, height, lambda v: event_height(topic, codec.decode(topic, v)))


class PrunePlan:
    """What a prune at ``height`` does: per partition of every topic a projection reads, the
    target offset (the anchor's positions); the pruned topics' [start, target) ranges."""

    def __init__(self, chain: Chain, height: int) -> None:
        log_, codec = chain.log, chain.codec
        self.height = height
        self.tip = chain.write_state().tip()
        self.point = log_.prune_point()
        self.anchor = Anchor.load(chain.config.anchor_dir)
        last = max(self.point.height if self.point else 0, self.anchor.height if self.anchor else 0)
        if height < 1 or height > self.tip.height:
            raise PruneHeightError(f"--before-height must be 1..{self.tip.height} (the tip), not {height}")
        if height < last:
            if self.point is None or self.point.height < last:  # its anchor is built, the log whole
                raise PruneHeightError(
                    f"a prune below height {last} was interrupted (the log still holds everything): finish it "
                    f"with `ledgerlog prune --before-height {last}`, or prune at a height above it "
                    f"(up to the tip, {self.tip.height})")
            raise PruneHeightError(f"the log was already pruned below height {last}; prune below a height "
                                   f"above it (up to the tip, {self.tip.height})")
        topics = {t for m in projections.ALL.values() for t in m.TOPICS} | set(PRUNED_TOPICS)
        self.targets: dict[str, list[int]] = {}
        self.ranges: dict[TopicPartition, tuple[int, int]] = {}
        have = log_.topics()
        for t in sorted(topics & set(have)):
            starts, ends = log_.start_offsets(t), log_.end_offsets(t)
            base = self.anchor.positions.get(t, []) if self.anchor else []
            row = []
            for p, (start, end) in enumerate(zip(starts, ends)):
                lo = max(start, base[p] if p < len(base) else 0)
                row.append(first_at_height(log_, codec, t, p, lo, end, height))
            self.targets[t] = row
            if t in PRUNED_TOPICS:
                for p, stop in enumerate(row):
                    self.ranges[(t, p)] = (starts[p], stop)
        self.done = (self.point is not None and self.point.height == height
                     and all(lo >= hi for lo, hi in self.ranges.values()))

    @property
    def records(self) -> int:
        return sum(max(0, hi - lo) for lo, hi in self.ranges.values())

    def tip_below(self, log_: Log, codec: Codec, genesis_hash: str, genesis_ts: int) -> tuple[int, str, int]:
        """(height, hash, timestamp) of the last block below the prune height."""
        at = self.targets.get(T.BLOCKS, [0])[0]
        if at == 0:
            return 0, genesis_hash, genesis_ts
        rec = log_.read(T.BLOCKS, 0, at - 1, 1)[0]
        ev = codec.decode(T.BLOCKS, rec.value)
        return ev["header"]["height"], ev["hash"], ev["header"]["timestamp"]


def _relative(path: str, data_dir: str) -> str:
    """``path`` as ``<data_dir>/...`` when inside the data dir (answers name no absolute path)."""
    real, base = os.path.realpath(path), os.path.realpath(data_dir)
    return "<data_dir>" + real[len(base):] if real == base or real.startswith(base + os.sep) else real


def prune(chain: Chain, runner: Runner, height: int, *, archive_parent: str | None = None,
          fold_lock: Lock | None = None, progress: Progress | None = None,
          on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Prune ``chain``'s log below ``height`` (see the module docstring); ``runner`` holds the live
    projections (a node's, folding meanwhile: ``fold_lock`` pauses it while they are brought past
    the prune positions). The archive goes to ``<archive_parent>/h<height>`` (default
    ``retention.archive_dir``). ``progress`` is told the records it goes through: archived, folded
    into the anchor, their leaf hashes stored (phases ``archive``, ``anchor``, ``delete``).
    Returns a summary."""
    cfg, log_ = chain.config, chain.log
    step = on_step or (lambda _name: None)
    refuse_own_path(archive_parent or cfg.archive_dir, cfg, ConfigError, allow=("archive",))
    why = log_.prune_refusal()
    if why is not None:
        raise PruneUnsupportedError(f"cannot prune this log: {why}")
    started = time.monotonic()
    with prune_lock(cfg.data_dir), reproject_lock(cfg.projections_dir):
        upgrade_anchor(cfg, chain, locked=True)  # the next anchor starts from this one's stores
        plan = PrunePlan(chain, height)
        summary: dict[str, Any] = {"height": height, "tip": plan.tip.height, "records": plan.records}
        if plan.done:
            remove_others(cfg.anchor_dir)  # (a prune killed right after its deletion left them)
            # the point is recorded before the deletion: once more (idempotent), so a deletion that
            # failed or was cut short (Kafka's DeleteRecords, a broker timeout) is finished now
            assert plan.point is not None
            log_.prune(plan.point)
            return {**summary, "noop": True, "log_start": _starts(plan), "seconds": 0.0}
        bytes_before = dir_bytes(cfg.log_path) if os.path.isdir(cfg.log_path) else None
        if progress is not None:
            progress.set_total(2 * plan.records + records_to_fold(cfg.anchor_dir, plan.targets))
        # 1. the live projections past the prune positions (their next records stay on the log)
        with fold_lock or nullcontext():
            runner.catch_up(until=plan.targets)
            for h in runner.handles.values():
                h.store.flush()
        stopped = sorted(runner.failures())
        if stopped:  # they stopped before the targets: pruning would delete records they still need
            raise ProjectionFailedError(
                f"projection(s) {', '.join(stopped)} stopped on a failing fold, before the records this prune "
                "would delete: fix the code and `ledgerlog reproject` them (or `ledgerlog projections remove` "
                "a user projection), then prune again")
        step("caught_up")
        # 2. the archive
        _phase(progress, "archive")
        t0 = time.monotonic()
        dest = os.path.join(os.path.abspath(archive_parent or cfg.archive_dir), f"h{height}")
        manifest = write_archive(log_, chain.codec, dest, plan.ranges, height=height,
                                 chain_id=chain.genesis.chain_id, genesis_hash=chain.genesis.hash, progress=progress)
        summary["archive"] = {"path": _relative(dest, cfg.data_dir), "files": len(manifest["files"]),
                              "records": sum(f["records"] for f in manifest["files"].values()),
                              "bytes": sum(f["bytes"] for f in manifest["files"].values()),
                              "manifest_sha256": manifest["manifest_sha256"], "seconds": round(time.monotonic() - t0, 3)}
        step("archived")
        # 3. the anchor
        _phase(progress, "anchor")
        t0 = time.monotonic()
        tip = plan.tip_below(log_, chain.codec, chain.genesis.hash, chain.genesis.timestamp)
        anchor = build_anchor(log_, chain.codec, chain.genesis, cfg.anchor_dir, height, plan.targets,
                              batch=cfg.fold_batch, progress=progress,
                              extra={"chain_id": chain.genesis.chain_id, "genesis_hash": chain.genesis.hash,
                                     "tip": list(tip), "archive": _relative(dest, cfg.data_dir)})
        summary["anchor"] = {**anchor.to_dict(), "seconds": round(time.monotonic() - t0, 3)}
        step("anchored")
        # 4. the log
        _phase(progress, "delete")
        t0 = time.monotonic()
        archive_name = _relative(dest, cfg.data_dir)
        point = PrunePoint(height, {tp: hi for tp, (_lo, hi) in plan.ranges.items()}, {}, tip, archive_name,
                           int(time.time() * 1000), {n: m["digest"] for n, m in anchor.projections.items()})
        log_.prune(point, progress)
        summary["delete_seconds"] = round(time.monotonic() - t0, 3)
        step("pruned")
        # 5. what the deleted records made obsolete
        remove_others(cfg.anchor_dir)
        for name in projections.ALL:
            layout.clear_pointer(cfg.projections_dir, name, "building", remove_dir=True)
        step("done")
    summary.update({"noop": False, "log_start": _starts(plan),
                    "pruned": _by_topic(plan), "seconds": round(time.monotonic() - started, 3)})
    if bytes_before is not None:
        after = dir_bytes(cfg.log_path)
        summary["log_bytes"] = {"before": bytes_before, "after": after, "reclaimed": bytes_before - after}
    log.info("pruned the log below height %s: %s records archived in %s", height, plan.records, archive_name)
    return summary


def _phase(progress: Progress | None, name: str) -> None:
    if progress is not None:
        progress.describe(name)


def _starts(plan: PrunePlan) -> dict[str, list[int]]:
    return {t: row for t, row in sorted(plan.targets.items()) if t in PRUNED_TOPICS}


def _by_topic(plan: PrunePlan) -> dict[str, int]:
    out: dict[str, int] = {}
    for (t, _p), (lo, hi) in plan.ranges.items():
        out[t] = out.get(t, 0) + max(0, hi - lo)
    return out


def archive_parent_for(node_config: Any, where: str | None) -> str:
    """A node archives only under its ``retention.archive_dir``: ``where`` (absolute, or relative
    to it) resolved, or BadRequest naming the rule."""
    found = inside(node_config.archive_dir, where)
    if found is None:
        raise BadRequest("prune: archive must be the node's archive dir (retention.archive_dir) or a directory "
                         "under it")
    return found


def prune_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """The admin action ``prune`` (body: ``before_height``, ``archive``): prune the running node's
    log while it keeps serving; archives only under ``retention.archive_dir``."""
    height = body.get("before_height")
    if height is None:
        raise BadRequest("prune: before_height is required")
    parent = archive_parent_for(node.config, body.get("archive"))
    with node.jobs.run("prune", body.get("job")) as job:  # its progress, in GET /v1/status jobs
        return prune(node.chain, node.runner, height, archive_parent=parent, fold_lock=node.fold_lock,
                     progress=job)
