"""Scheduled snapshots (``[snapshot] every``, ``keep``, ``keep_for``): a node thread snapshots the
chain into snapshot.dir every ``every`` and then prunes the chain's snapshots there to the newest
``keep``, deleting an older one only once it is older than ``keep_for`` (ops/data/snapshot_prune.py).

The clock runs from the last successful snapshot: the newest of the chain in snapshot.dir when the
node starts (whoever took it), else the node's start; an admin snapshot resets it too. An error is
logged and counted (``failures``), never stops the node; a failed snapshot is retried after a
backoff (one minute, doubling, at most ``every``)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ledgerlog.engine.errors import ConfigError
from ledgerlog.ops.data.snapshot import create_snapshot, list_snapshots
from ledgerlog.ops.data.snapshot_prune import prune_snapshots

if TYPE_CHECKING:
    from ledgerlog.engine.chain import Chain
    from ledgerlog.engine.config import Config
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["SnapshotSchedule"]

log = logging.getLogger("ledgerlog.snapshots")

_FIRST_RETRY = 60.0  # seconds after a first failure; doubles, capped at ``every``
_MAX_WAIT = 60.0     # the loop looks at the clock at least this often (wall-clock jumps)


class SnapshotSchedule:
    """When the next scheduled snapshot is due, and what the metrics report about snapshots.
    Thread-safe: the schedule thread and admin snapshots both update it."""

    def __init__(self, config: Config, chain: Chain, clock: Callable[[], float] = time.time) -> None:
        self.every = config.snapshot_every_seconds  # 0: off
        self.keep, self.keep_for = config.snapshot_keep, config.snapshot_keep_for_seconds
        self.dir = config.snapshots_dir
        self.genesis_hash = chain.genesis.hash
        if self.every and not chain.log.supports_checkpoint:
            raise ConfigError("snapshot.every: scheduled snapshots need the embedded log; back a Kafka log "
                              "up with the broker's tools and set snapshot.every to 0")
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self.failures = {"create": 0, "prune": 0}
        self.taken = 0
        self._retries = 0
        self.last_success: float | None = self._newest()
        self.next_due = (self.last_success or self.started) + self.every

    def _newest(self) -> float | None:
        """Creation time of the chain's newest intact backup in snapshot.dir, if any (a linked
        snapshot shares the live files: no backup)."""
        try:
            snaps = list_snapshots(self.dir)
        except OSError as exc:
            log.warning("cannot list snapshot.dir: %s", exc)
            return None
        return max((s["created_ms"] / 1000 for s in snaps
                    if s["ok"] and s["genesis_hash"] == self.genesis_hash and s["independent"]), default=None)

    def last_success_or_start(self) -> float:
        """``ledgerlog_snapshot_last_success_timestamp_seconds``: the last success, else the node's start."""
        with self._lock:
            return self.last_success or self.started

    def note_success(self, created_ms: int) -> None:
        """A snapshot of the chain was taken (by the schedule or an admin action): the clock restarts."""
        with self._lock:
            self.last_success = max(self.last_success or 0.0, created_ms / 1000)
            self._retries = 0
            self.next_due = self.last_success + self.every

    def _failed(self, stage: str) -> float:
        with self._lock:
            self.failures[stage] += 1
            if stage != "create":
                return 0.0
            self._retries += 1
            delay = min(float(self.every), _FIRST_RETRY * 2 ** min(self._retries - 1, 20))
            self.next_due = self._clock() + delay
            return delay

    def run_once(self, node: NodeContext) -> dict[str, Any] | None:
        """Take a snapshot, then prune; the new snapshot's manifest, None if it failed."""
        try:
            manifest = create_snapshot(node.chain, node.runner, self.dir, lock=node.fold_lock)
        except Exception as exc:  # a full disk, a missing dir...: count, retry, keep serving
            delay = self._failed("create")
            log.error("scheduled snapshot failed: %s; retrying in %.0f s", exc, delay, exc_info=True)
            return None
        self.note_success(manifest["created_ms"])
        with self._lock:
            self.taken += 1
        log.info("scheduled snapshot %s (height %s)", manifest["path"], manifest["height"])
        self.prune()
        return manifest

    def prune(self) -> dict[str, Any] | None:
        """Prune the chain's snapshots per keep / keep_for; the report, None if it failed."""
        try:
            report = prune_snapshots(self.dir, self.keep, self.keep_for, genesis_hash=self.genesis_hash)
        except Exception:
            self._failed("prune")
            log.exception("pruning snapshots failed")
            return None
        if report["failed"]:
            self._failed("prune")
            log.error("could not prune snapshots: %s", report["failed"])
        if report["deleted"]:
            log.info("pruned snapshots %s (%d bytes freed)", [e["name"] for e in report["deleted"]],
                     report["bytes_freed"])
        return report

    def run(self, node: NodeContext, stop: threading.Event) -> None:
        """The schedule thread: until ``stop``, snapshot whenever one is due."""
        while not stop.wait(max(0.0, min(self.next_due - self._clock(), _MAX_WAIT))):
            if self._clock() >= self.next_due:
                self.run_once(node)
