"""Restoring a snapshot (ops/data/snapshot.py) as a data dir, crash-safe, and the deep check that
opens a scratch restore.

Restore verifies the manifest and every file (set, size, sha256) before it writes anything,
copies into ``<parent>/.tmp-restore-...`` (hashing again what it copies), checks the copy opens at
the manifest's height and positions and fsyncs it; then a journal beside the data dir
(engine/restorejournal.py) makes the two renames crash-safe: a restore killed at any step is
finished by the next open of the data dir, which is never missing."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from ledgerlog.engine import restorejournal
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.errors import (
    ConfigError,
    CorruptStoreError,
    PruneRunningError,
    ReprojectRunningError,
    StorageError,
    StoreLockedError,
)
from ledgerlog.engine.files import fsync_dir, fsync_tree
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.engine.procs import alive
from ledgerlog.engine.rocks import stores_in_use
from ledgerlog.ops.data.locks import prune_lock
from ledgerlog.ops.data.snapshot import (
    STEPS,
    _copy_hashed,
    _locked_tmp,
    _offsets,
    read_manifest,
    reading,
    verify_snapshot,
)
from ledgerlog.ops.jobs import Progress
from ledgerlog.streams import layout
from ledgerlog.streams.reproject import reproject_lock
from ledgerlog.streams.store import ProjectionStore

__all__ = ["STEPS", "deep_check", "restore_snapshot"]


# -- restore --------------------------------------------------------------------------------------

def _holds_chain(data_dir: str) -> bool:
    return any(os.path.exists(os.path.join(data_dir, p)) for p in ("genesis.json", "log"))


def _check_restored(tmp: str, manifest: dict[str, Any]) -> None:
    """The copy opens, at the manifest's chain, height, tip and positions."""
    try:
        g = Genesis.load(os.path.join(tmp, "genesis.json"))
    except Exception as exc:
        raise CorruptStoreError(f"snapshot genesis.json does not load: {exc}") from exc
    if g.hash != manifest.get("genesis_hash") or g.chain_id != manifest.get("chain_id"):
        raise CorruptStoreError("snapshot genesis.json is not the manifest's chain")
    try:
        log = EmbeddedLog(os.path.join(tmp, "log"), read_only=True)
    except StorageError as exc:
        raise CorruptStoreError(f"snapshot log does not open: {exc}") from exc
    try:
        tip = WriteState(log).tip()
        ends = _offsets(log)
    finally:
        log.close()
    if tip.height != manifest.get("height") or tip.hash != manifest.get("tip_hash") \
            or ends != manifest.get("log_end_offsets"):
        raise CorruptStoreError(f"snapshot log is at height {tip.height}, not the manifest's {manifest.get('height')}")
    pdir = os.path.join(tmp, "projections")
    for name, p in manifest.get("projections", {}).items():
        if (layout.read_pointer(pdir, name, "live") or {}).get("dir") != p["dir"]:
            raise CorruptStoreError(f"snapshot projection {name}: live pointer does not name {p['dir']}")
        try:
            store = ProjectionStore(os.path.join(pdir, name, p["dir"]), read_only=True)
        except StorageError as exc:
            raise CorruptStoreError(f"snapshot projection {name} does not open: {exc}") from exc
        try:
            pos = store.positions()
            got = {t: [pos.get((t, i), 0) for i in range(len(offs))] for t, offs in p["positions"].items()}
            if store.digest_hex() != p["digest"] or got != p["positions"]:
                raise CorruptStoreError(f"snapshot projection {name} does not match its manifest entry")
        finally:
            store.close()


def _copy_checked(src: str, manifest: dict[str, Any], dst: str, path: str,
                  progress: Progress | None = None) -> None:
    """Copy every file the manifest lists from ``src`` to ``dst`` (hashing again what is copied),
    then check the copy opens at the manifest's state and fsync its directories."""
    if progress is not None:
        progress.describe("copy")
    for rel, want in sorted(manifest["files"].items()):
        to = os.path.join(dst, *rel.split("/"))
        os.makedirs(os.path.dirname(to), exist_ok=True)
        size, digest = _copy_hashed(os.path.join(src, *rel.split("/")), to, progress)
        if size != want["size"] or digest != want["sha256"]:
            raise CorruptStoreError(f"snapshot {path}: {rel} changed while being copied")
    _check_restored(dst, manifest)
    fsync_tree(dst, files=False)  # each file was fsynced as it was copied


def snapshot_bytes(path: str) -> int:
    """Bytes of the files the snapshot's manifest lists (what a verify hashes, a restore copies)."""
    return sum(f["size"] for f in read_manifest(path)["files"].values())


def deep_check(path: str, progress: Progress | None = None) -> dict[str, Any]:
    """``verify_snapshot`` plus RocksDB's view: a scratch copy beside the snapshot is opened and
    must hold the manifest's height, tip, end offsets and projection digests. Returns the manifest.
    ``progress`` is told the bytes to hash and copy, then of each block."""
    src = os.path.abspath(path)
    with reading(src):  # snapshot prune leaves it alone meanwhile
        if progress is not None:
            progress.set_total(2 * snapshot_bytes(src))
        manifest = verify_snapshot(src, progress)
        with _locked_tmp(os.path.dirname(src)) as tmp:
            try:
                _copy_checked(src, manifest, tmp, path, progress)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def restore_snapshot(path: str, data_dir: str, *, force: bool = False,
                     on_step: Callable[[str], None] | None = None,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Restore the snapshot at ``path`` as ``data_dir``.

    Refuses (before writing anything) a corrupt, truncated or incomplete snapshot
    (CorruptStoreError), a data dir a node runs on or another restore works on, or a snapshot
    ``snapshot prune`` is deleting (StoreLockedError; the snapshot is read under ``reading``), and a data dir that already holds something unless ``force``
    (ConfigError); with ``force`` the old one is moved aside to ``<data_dir>.replaced-<timestamp>``.
    Crash-safe: see the module docstring. ``on_step(name)`` runs after each of STEPS;
    ``progress`` is told the bytes to verify and copy, then of each block."""
    started = time.monotonic()
    step = on_step or (lambda _name: None)
    src = os.path.realpath(path)
    target = os.path.realpath(data_dir)  # a symlink: the directory it points at, on its own disk
    if not os.path.isdir(src):
        raise ConfigError(f"no snapshot at {path}")
    if target == src or target.startswith(src + os.sep):
        raise ConfigError(f"cannot restore {path} into itself ({data_dir})")
    if os.path.ismount(target):  # its own file system: it cannot be renamed aside, nor the copy in
        raise ConfigError(f"{data_dir} is a mount point, and a restore replaces the data dir by renaming: restore "
                          f"into a directory inside it (e.g. {os.path.join(data_dir, 'data')}, then point the node's "
                          "--data-dir there)")
    with reading(src):  # snapshot prune leaves it alone meanwhile
        return _restore(src, path, target, data_dir, force, step, started, progress)


def _restore(src: str, path: str, target: str, data_dir: str, force: bool, step: Callable[[str], None],
             started: float, progress: Progress | None) -> dict[str, Any]:
    if progress is not None:
        progress.set_total(2 * snapshot_bytes(src))
    manifest = verify_snapshot(src, progress)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    with restorejournal.held(target):
        restorejournal.settle(target)  # an earlier restore killed half-way: finish it first
        exists, occupied = _check_target(target, data_dir, force)
        tmp = tempfile.mkdtemp(prefix=restorejournal.tmp_prefix(target), dir=parent)
        replaced = None
        try:
            _copy_checked(src, manifest, tmp, path, progress)
            step("copied")
            if occupied:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
                replaced, n = f"{target}.replaced-{stamp}", 2
                while os.path.exists(replaced):
                    replaced, n = f"{target}.replaced-{stamp}-{n}", n + 1
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        with _nobody_else_in(target, data_dir, occupied, tmp):
            # the commit point: from here a crash is finished by the next open of the data dir
            restorejournal.write_journal(target, tmp, replaced)
            step("journaled")
            if exists:
                if occupied:
                    os.rename(target, replaced)  # type: ignore[arg-type]
                else:
                    os.rmdir(target)
                fsync_dir(parent)
            step("moved_aside")
            os.rename(tmp, target)
            fsync_dir(parent)
            step("moved_in")
        restorejournal.clear_journal(target)
        step("done")
    return {"restored": src, "data_dir": target, "chain_id": manifest["chain_id"],
            "genesis_hash": manifest["genesis_hash"], "height": manifest["height"],
            "tip_hash": manifest["tip_hash"], "files": len(manifest["files"]),
            "size": sum(f["size"] for f in manifest["files"].values()), "replaced": replaced,
            "replaced_holds": _worth_keeping(replaced), "seconds": round(time.monotonic() - started, 3)}


#: what a data dir holds that no snapshot does: backups, archived records, keys
_KEPT_APART = ("snapshots", "archive", "keys")


def _worth_keeping(replaced: str | None) -> list[str]:
    """What of ``_KEPT_APART`` the data dir moved aside holds: the answer names it, so nobody
    removes the old data dir with the backups and archives inside it."""
    if replaced is None:
        return []
    return [n for n in _KEPT_APART if os.path.exists(os.path.join(replaced, n))]


@contextlib.contextmanager
def _nobody_else_in(target: str, data_dir: str, occupied: bool, tmp: str) -> Iterator[None]:
    """Hold the data dir's prune and reproject locks while it is moved aside, and refuse while any
    of its stores is open elsewhere (a reproject or a query command opens the log read-only and
    writes its projection stores: moved aside under it, it wrote its next files into the restored
    data dir by path). On a refusal the copy is removed."""
    with contextlib.ExitStack() as held:
        try:
            if occupied:
                held.enter_context(prune_lock(target))
                if os.path.isdir(os.path.join(target, "projections")):
                    held.enter_context(reproject_lock(os.path.join(target, "projections")))
                _refuse_open_stores(target, data_dir)
        except (StoreLockedError, PruneRunningError, ReprojectRunningError):
            shutil.rmtree(tmp, ignore_errors=True)  # (before the commit point only)
            raise
        yield


def _refuse_open_stores(target: str, data_dir: str) -> None:
    busy = stores_in_use(target)
    if busy:
        where = os.path.relpath(busy[0], target)
        raise StoreLockedError(f"{data_dir}/{where} is open in another process (a reproject, a query command, an "
                               "ingest...); wait for it to finish or stop it before restoring")


def _check_target(target: str, data_dir: str, force: bool) -> tuple[bool, bool]:
    """(exists, occupied) of the data dir to restore into; refusals as restore_snapshot says."""
    node_file = os.path.join(target, "node.json")
    try:
        with open(node_file, encoding="utf-8") as f:
            pid = int(json.load(f).get("pid", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        pid = 0
    if pid > 0 and alive(pid):
        raise StoreLockedError(f"a node (pid {pid}) runs on {data_dir}; stop it before restoring "
                               f"(or remove a stale {node_file})")
    exists = os.path.exists(target)
    if exists and not os.path.isdir(target):
        raise ConfigError(f"{data_dir} exists and is not a directory")
    occupied = exists and bool(os.listdir(target))
    if occupied and not force:
        what = "already holds a chain" if _holds_chain(target) else "is not empty"
        raise ConfigError(f"{data_dir} {what}; restore into a new --data-dir, or pass --force to move "
                          f"it aside (to {data_dir}.replaced-<time>)")
    if occupied:  # a process without node.json (an ingest, a reproject...) may hold its stores
        _refuse_open_stores(target, data_dir)
    return exists, occupied
