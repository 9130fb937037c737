"""`snapshot prune`: retention of the snapshots (ops/data/snapshot.py) in one directory.

Per chain (snapshots of several chains in one directory are counted apart), newest first by
creation time (the manifest's ``created_ms``): the newest ``keep`` are kept; an older one is
deleted, and only when it is also older than ``older_than`` if that is given. Never deleted: the
newest snapshot of a chain; one a restore or verify is reading (they hold ``snapshot.reading``'s
shared flock; prune needs the exclusive one, without waiting); anything that is not an intact
snapshot directly in the directory (symlinks, temp dirs, unreadable manifests are reported as
``ignored``). Files are not re-hashed (``snapshot list --verify`` does that).

A deleted snapshot is first renamed to a hidden temp name in the same directory (gone from
``snapshot list`` at once, fsynced), then removed; what a crash leaves half-removed the next
``snapshot create`` or ``list`` cleans up (``clean_stale``)."""
from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ledgerlog.engine.durations import parse_duration
from ledgerlog.engine.errors import BadRequest, SnapshotDirRefusedError, UsageError
from ledgerlog.engine.files import fsync_dir
from ledgerlog.ops.data.snapshot import _TMP_SNAPSHOT, inside, list_snapshots

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["Plan", "apply_prune", "plan_prune", "prune_snapshots", "snapshot_prune_action"]


@dataclass
class Plan:
    """What a prune will do: ``doomed`` are deleted by ``apply_prune`` unless in use by then."""

    root: str
    keep: int
    older_than: int | None
    kept: list[dict[str, Any]] = field(default_factory=list)
    doomed: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        """Bytes the doomed snapshots would free."""
        return sum(e["bytes_freed"] for e in self.doomed)


def _sizes(path: str) -> tuple[int, int]:
    """(bytes of the files under ``path``, bytes deleting them frees: files not hard-linked elsewhere)."""
    total = freed = 0
    for dirpath, _dirs, names in os.walk(path, followlinks=False):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
            freed += st.st_size if st.st_nlink == 1 else 0
    return total, freed


def plan_prune(directory: str, keep: int, older_than: int | None = None, *, genesis_hash: str | None = None,
               now: float | None = None) -> Plan:
    """Sort the snapshots in ``directory`` into kept, doomed and ignored (see the module docstring);
    with ``genesis_hash``, only that chain's are candidates. ``older_than`` in seconds."""
    if keep < 1:
        raise UsageError("keep must be at least 1: the newest snapshot is never pruned")
    if older_than is not None and older_than < 0:
        raise UsageError("older_than must not be negative")
    root = os.path.realpath(directory)
    now = time.time() if now is None else now
    plan = Plan(root, keep, older_than)
    chains: dict[tuple[Any, Any, bool], list[dict[str, Any]]] = {}
    for s in list_snapshots(root):
        if not s["ok"]:
            plan.ignored.append({"name": s["name"], "reason": f"not an intact snapshot: {s['error']}"})
        elif os.path.dirname(os.path.realpath(s["path"])) != root:
            plan.ignored.append({"name": s["name"], "reason": "outside the snapshot directory"})
        elif genesis_hash is not None and s["genesis_hash"] != genesis_hash:
            plan.ignored.append({"name": s["name"], "reason": f"another chain ({s['chain_id']})"})
        else:
            # backups and linked snapshots (local checkpoints sharing the live files) are counted apart:
            # a linked one never takes a backup's place among the kept
            chains.setdefault((s["chain_id"], s["genesis_hash"], s["independent"]), []).append(s)
    for group in chains.values():
        for i, s in enumerate(reversed(group)):  # list_snapshots sorts oldest first
            age = now - (s["created_ms"] or 0) / 1000
            total, freed = _sizes(s["path"])
            entry = {"name": s["name"], "chain_id": s["chain_id"], "height": s["height"], "created": s["created"],
                     "created_ms": s["created_ms"], "age_seconds": max(0, int(age)), "bytes": total, "bytes_freed": freed}
            if i == 0:
                plan.kept.append({**entry, "reason": "newest"})
            elif i < keep:
                plan.kept.append({**entry, "reason": f"one of the newest {keep}"})
            elif older_than is not None and age <= older_than:
                plan.kept.append({**entry, "reason": f"not older than {older_than} s"})
            else:
                plan.doomed.append(entry)
    return plan


def _claim(path: str) -> int | None:
    """An fd of the snapshot dir ``path`` holding its exclusive flock; None while a reader holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held, now = os.fstat(fd), os.lstat(path)
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            raise FileNotFoundError(path)  # replaced between the open and the lock
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def apply_prune(plan: Plan, *, dry_run: bool = False, on_deleted: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Delete the plan's doomed snapshots (with ``dry_run``: only check each could be); the report:
    kept, deleted (or would be), ignored and failed snapshots, and the bytes freed.
    ``on_deleted(bytes_freed)`` after each deletion (a progress bar)."""
    kept = list(plan.kept)
    deleted: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for entry in plan.doomed:
        path = os.path.join(plan.root, entry["name"])
        try:
            fd = _claim(path)
        except OSError as exc:
            failed.append({"name": entry["name"], "error": exc.strerror or str(exc)})
            continue
        if fd is None:
            kept.append({**entry, "reason": "in use (a restore or verify reads it)"})
            continue
        try:
            if not dry_run:
                gone = os.path.join(plan.root, f"{_TMP_SNAPSHOT}pruned-{secrets.token_hex(4)}-{entry['name']}")
                os.rename(path, gone)
                fsync_dir(plan.root)
                shutil.rmtree(gone)
        except OSError as exc:
            failed.append({"name": entry["name"], "error": exc.strerror or str(exc)})
            continue
        finally:
            os.close(fd)
        deleted.append(entry)
        if on_deleted is not None and not dry_run:
            on_deleted(entry["bytes_freed"])
    kept.sort(key=lambda e: (e["created_ms"], e["name"]), reverse=True)
    return {"dir": plan.root, "keep": plan.keep, "older_than_seconds": plan.older_than, "dry_run": dry_run,
            "kept": kept, "deleted": deleted, "ignored": plan.ignored, "failed": failed,
            "bytes_freed": sum(e["bytes_freed"] for e in deleted)}


def prune_snapshots(directory: str, keep: int, older_than: int | None = None, *, dry_run: bool = False,
                    genesis_hash: str | None = None, now: float | None = None) -> dict[str, Any]:
    """``plan_prune`` then ``apply_prune``: the report."""
    return apply_prune(plan_prune(directory, keep, older_than, genesis_hash=genesis_hash, now=now), dry_run=dry_run)


# -- node integration -------------------------------------------------------------------------------

def snapshot_prune_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """Prune the node's snapshots (body: ``keep`` (required), ``older_than`` like ``7d``,
    ``dry_run``, ``dir`` under ``snapshot.dir``; anything else: 400 SNAPSHOT_DIR_REFUSED). The
    answer's ``dir`` is relative to snapshot.dir; it carries names, never paths."""
    keep = body.get("keep")
    if keep is None:
        raise BadRequest("snapshot-prune: keep (how many newest snapshots to keep, 1 or more) is required")
    older_than = body.get("older_than")
    try:
        seconds = None if older_than is None else parse_duration(older_than)
    except ValueError as exc:
        raise BadRequest(f"older_than: {exc}") from None
    root = node.config.snapshots_dir
    where = inside(root, body.get("dir"))
    if where is None:
        raise SnapshotDirRefusedError("snapshot-prune: dir must be the node's snapshot dir (snapshot.dir) "
                                      "or a directory under it")
    try:
        report = prune_snapshots(where, keep, seconds, dry_run=bool(body.get("dry_run", False)))
    except UsageError as exc:
        raise BadRequest(str(exc)) from None
    rel = os.path.relpath(report["dir"], os.path.realpath(root))
    return {**report, "dir": "" if rel == "." else rel, "older_than": older_than}
