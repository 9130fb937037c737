"""Snapshots: a consistent copy of a chain (log + write-side state + projections) taken while the
node runs; creating, listing and verifying them.

A snapshot is a directory laid out like a data dir, so restoring is a copy::

    <chain_id>-h<height>-<yyyymmddThhmmssZ>/
        manifest.json                      format, chain, height, positions, every file's sha256
        genesis.json  config.toml  [keys/]
        [user-projections.json]            the registration of the user projections below
        log/                               RocksDB checkpoint of the embedded log
        anchor/                            a pruned log's anchor (streams/anchor.py), when there is one
        projections/<name>/live            pointer {"dir", "version"}
        projections/<name>/<dir>/          RocksDB checkpoint of the live projection store

Consistency: RocksDB checkpoints are consistent per database. The projection stores are
checkpointed first, then the log, so a projection is never ahead of the log it reflects; a
restored node folds from the projections' positions up to the log's end. A snapshot is written
under ``<out_dir>/.tmp-snapshot-*`` (flock-held by its writer, so one a dead process left is
removed by the next create or list), every file and directory fsynced, then renamed into place.

Independence: a checkpoint hard-links the live stores' SST files when on the same file system.
By default every such link is replaced by a copy, so no byte of a snapshot is shared with the
live stores; ``link=True`` keeps the links (a fast local checkpoint, *not* a backup: damage to a
live file is damage to the snapshot). The manifest says which (``linked``).

Restoring one is ops/data/restore.py's; deleting old ones ops/data/snapshot_prune.py's, which
deletes only a snapshot it can flock exclusively: readers (restore, verify) hold ``reading``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rocksdict import Checkpoint

from ledgerlog.engine import storekeys as K
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.errors import (
    BadRequest,
    ConfigError,
    CorruptStoreError,
    SnapshotDirRefusedError,
    StorageError,
    StoreLockedError,
    storage_error,
)
from ledgerlog.engine.files import fsync_dir, fsync_tree, still_at
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.engine.rocks import map_error
from ledgerlog.ops.data.locks import prune_lock
from ledgerlog.ops.data.ownpaths import refuse_own_path
from ledgerlog.ops.jobs import Progress
from ledgerlog.streams import catalog, layout
from ledgerlog.streams.anchor import Anchor
from ledgerlog.streams.store import ProjectionStore

if TYPE_CHECKING:
    from ledgerlog.engine.chain import Chain
    from ledgerlog.ops.node.context import NodeContext
    from ledgerlog.streams.runner import Runner

__all__ = ["FORMAT", "MANIFEST", "create_snapshot", "default_dir", "list_snapshots", "read_manifest",
           "summary", "verify_snapshot", "clean_stale", "inside", "reading", "STEPS"]

FORMAT = "ledgerlog-snapshot/1"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20
_TMP_SNAPSHOT = ".tmp-snapshot-"
#: restore steps, in order; ``restore_snapshot(on_step=...)`` is called after each (tests kill there)
STEPS = ("copied", "journaled", "moved_aside", "moved_in", "done")


def default_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "snapshots")


def inside(root: str, out: str | None) -> str | None:
    """``out`` (absolute, or relative to ``root``) resolved, if it is ``root`` or under it
    (symlinks resolved, so none leads out); None otherwise."""
    base = os.path.realpath(root)
    if not out:
        return base
    cand = os.path.realpath(os.path.join(base, out))
    return cand if cand == base or cand.startswith(base + os.sep) else None


# -- small file-system helpers ----------------------------------------------------------------------

def _sha256_file(path: str, progress: Progress | None = None) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
            size += len(block)
            if progress is not None:
                progress(len(block))
    return size, h.hexdigest()


def _copy_hashed(src: str, dst: str, progress: Progress | None = None) -> tuple[int, str]:
    """Copy ``src`` to a new file ``dst`` (mode kept), fsynced; the size and sha256 of the bytes
    actually written (``progress`` told of each block)."""
    h = hashlib.sha256()
    size = 0
    mode = os.stat(src).st_mode & 0o777
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        while block := fin.read(_CHUNK):
            h.update(block)
            size += len(block)
            fout.write(block)
            if progress is not None:
                progress(len(block))
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, mode)
    return size, h.hexdigest()


def _walk_files(root: str) -> dict[str, str]:
    """relpath (with ``/``) -> kind for everything under ``root`` that is not a directory:
    ``file`` for regular files, ``other`` for symlinks, sockets, ..."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            out[rel] = "file" if os.path.isfile(full) and not os.path.islink(full) else "other"
    return out


@contextlib.contextmanager
def _locked_tmp(out_dir: str) -> Iterator[str]:
    """A new temp dir in ``out_dir`` (mode 0700), flock-held until the block ends, so a concurrent
    ``clean_stale`` leaves it alone while this process lives."""
    tmp = tempfile.mkdtemp(prefix=_TMP_SNAPSHOT, dir=out_dir)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
    finally:
        os.close(fd)


@contextlib.contextmanager
def reading(path: str) -> Iterator[None]:
    """Hold a shared flock on the snapshot directory ``path`` while it is read (restore, verify), so
    ``snapshot prune`` (ops/data/snapshot_prune.py), which takes it exclusively, leaves it alone.
    StoreLockedError while a prune deletes it; ConfigError when it was pruned meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError(f"no snapshot at {path} ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLockedError(f"snapshot {path} is being deleted (snapshot prune)") from None
        if not still_at(fd, path):
            raise ConfigError(f"no snapshot at {path}: it was pruned")  # between our open and our lock
        yield
    finally:
        os.close(fd)


def clean_stale(directory: str) -> list[str]:
    """Remove the temp dirs of snapshots whose writer died (none holds its lock); their names."""
    removed: list[str] = []
    try:
        entries = [e for e in os.listdir(directory) if e.startswith(_TMP_SNAPSHOT)]
    except OSError:
        return removed
    for entry in entries:
        path = os.path.join(directory, entry)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # being written
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(entry)
    return removed


def _break_links(root: str, progress: Progress | None = None) -> None:
    """Replace every hard-linked file under ``root`` by its own copy (fsynced), so nothing is
    shared with the live stores."""
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.lstat(path).st_nlink > 1:
                tmp = path + ".copy"
                _copy_hashed(path, tmp, progress)
                os.replace(tmp, path)


def _bytes_under(root: str, *, linked_only: bool = False) -> int:
    """Bytes of the files under ``root`` (only the hard-linked ones: what ``_break_links`` copies)."""
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if not linked_only or st.st_nlink > 1:
                total += st.st_size
    return total


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "chain"


# -- the manifest -----------------------------------------------------------------------------------

def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _manifest_bytes(body: dict[str, Any]) -> bytes:
    """The manifest as written: ``body`` plus ``manifest_sha256`` (over the canonical body), in
    one exact rendering, so any changed byte is detected."""
    doc = {**body, "manifest_sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    return json.dumps(doc, sort_keys=True, indent=2).encode() + b"\n"


def read_manifest(path: str) -> dict[str, Any]:
    """The snapshot's manifest, checked against its own checksum; CorruptStoreError otherwise."""
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CorruptStoreError(f"{path} is not a usable snapshot: {MANIFEST} is missing") from None
    except OSError as exc:
        raise CorruptStoreError(f"{path}: cannot read {MANIFEST}: {exc}") from exc
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CorruptStoreError(f"{path}: {MANIFEST} is corrupt or truncated ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise CorruptStoreError(f"{path}: {MANIFEST} is not a {FORMAT} manifest (format {found!r})")
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    if doc.get("manifest_sha256") != hashlib.sha256(_canonical(body)).hexdigest() or _manifest_bytes(body) != raw:
        raise CorruptStoreError(f"{path}: {MANIFEST} is corrupt (its checksum does not match)")
    files = doc.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()):
        raise CorruptStoreError(f"{path}: {MANIFEST} has no valid file list")
    for rel in files:
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or "" in parts or rel == MANIFEST:
            raise CorruptStoreError(f"{path}: {MANIFEST} lists an invalid path {rel!r}")
    return doc


def summary(manifest: dict[str, Any], path: str) -> dict[str, Any]:
    """What ``snapshot create`` and ``snapshot list`` print about a snapshot."""
    files = manifest.get("files", {})
    created = manifest.get("created_ms", 0)
    return {"name": os.path.basename(os.path.normpath(path)), "path": os.path.abspath(path),
            "chain_id": manifest.get("chain_id"), "genesis_hash": manifest.get("genesis_hash"),
            "height": manifest.get("height"), "tip_hash": manifest.get("tip_hash"),
            "created_ms": created,
            "created": datetime.fromtimestamp(created / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "size": sum(f["size"] for f in files.values()), "files": len(files),
            "with_keys": any(rel.startswith("keys/") for rel in files),
            "independent": not manifest.get("linked", False),
            "projections": {n: {"version": p.get("version"), "digest": p.get("digest")}
                            for n, p in manifest.get("projections", {}).items()}}


# -- create ---------------------------------------------------------------------------------------

def _offsets(log: Log) -> dict[str, list[int]]:
    return {t: log.end_offsets(t) for t in sorted(log.topics())}


def create_snapshot(chain: Chain, runner: Runner, out_dir: str | None = None, *, with_keys: bool = False,
                    lock: AbstractContextManager[Any] | None = None, link: bool = False,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Snapshot ``chain`` and the live projection stores of ``runner`` into a new directory under
    ``out_dir`` (default ``snapshot.dir``); returns the manifest (plus ``path``).

    ``lock``, if given, is held while the projection stores are checkpointed (a node passes its
    fold lock so a blue/green swap cannot close a store under the checkpoint). ``link`` keeps the
    checkpoints' hard links to the live SST files: fast, but not a backup. ``progress`` is told
    the bytes to copy and hash once the checkpoints are taken, then of each block."""
    log = chain.log
    if not log.supports_checkpoint:
        raise ConfigError("snapshots need the embedded log; a Kafka log is backed up with the broker's tools")
    out_dir = os.path.abspath(out_dir or chain.config.snapshots_dir)
    refuse_own_path(out_dir, chain.config, ConfigError, allow=("snapshot dir",))
    try:
        if not os.path.isdir(out_dir):
            os.makedirs(out_dir)
            fsync_dir(os.path.dirname(out_dir))
        clean_stale(out_dir)
        with prune_lock(chain.config.data_dir), _locked_tmp(out_dir) as tmp:  # mode 0700: config.toml holds a token
            try:
                return _create(chain, runner, tmp, out_dir, with_keys=with_keys, lock=lock, link=link,
                               progress=progress)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as exc:
        raise storage_error(exc, f"snapshot into {out_dir}") from exc


def _create(chain: Chain, runner: Runner, tmp: str, out_dir: str, *, with_keys: bool,
            lock: AbstractContextManager[Any] | None, link: bool, progress: Progress | None) -> dict[str, Any]:
    log, cfg = chain.log, chain.config
    started = time.time()
    # 1. projections first, then the log: a projection is never ahead of the log
    pdir = os.path.join(tmp, "projections")
    taken: dict[str, tuple[str, int, tuple[str, ...]]] = {}  # name -> (dir, version, topics)
    with lock or nullcontext():
        for name, h in sorted(runner.handles.items()):
            build = os.path.basename(os.path.normpath(h.store.path))
            os.makedirs(os.path.join(pdir, name), exist_ok=True)
            try:
                Checkpoint(h.store.db).create_checkpoint(os.path.join(pdir, name, build))
            except Exception as exc:
                raise map_error(exc, h.store.path) from exc
            taken[name] = (build, h.version, tuple(h.module.TOPICS))
    for name, (build, version, _topics) in taken.items():
        layout.write_pointer(pdir, name, "live", build, version)
    log.checkpoint(os.path.join(tmp, "log"))
    anchor = Anchor.load(cfg.anchor_dir)  # a pruned log's anchor (taken after the log: never behind it)
    if anchor is not None:
        shutil.copytree(anchor.path, os.path.join(tmp, "anchor", anchor.dir), copy_function=shutil.copy2)
        shutil.copy2(os.path.join(cfg.anchor_dir, "CURRENT"), os.path.join(tmp, "anchor", "CURRENT"))
    copied = 0 if link else _bytes_under(tmp, linked_only=True)
    if progress is not None:  # copies of the linked files, then a hash of every file
        progress.set_total(copied + _bytes_under(tmp))
        progress.describe("copy")
    if not link:
        _break_links(tmp, progress)  # a backup shares no byte with the live stores

    # 2. what the checkpoints hold
    cp_log = EmbeddedLog(os.path.join(tmp, "log"), read_only=True)
    try:
        tip = WriteState(cp_log).tip()
        ends = _offsets(cp_log)
    finally:
        cp_log.close()
    projs: dict[str, Any] = {}
    for name, (build, version, topics) in taken.items():
        store = ProjectionStore(os.path.join(pdir, name, build), read_only=True)
        try:
            pos = store.positions()
            positions = {t: [pos.get((t, p), 0) for p in range(len(ends.get(t, [])))] for t in topics}
            projs[name] = {"dir": build, "version": version, "digest": store.digest_hex(),
                           "height": store.height, "positions": positions}
        finally:
            store.close()
        for t, offs in positions.items():
            if any(o > e for o, e in zip(offs, ends.get(t, []))):
                raise StorageError(f"snapshot inconsistency: projection {name} is ahead of the log on {t}")

    # 3. genesis, config, keys, and the registration of the user projections taken
    shutil.copy2(cfg.genesis_path, os.path.join(tmp, "genesis.json"))
    users = {n: e for n, e in catalog.registered(cfg.projections_dir).items() if n in taken}
    if users:
        catalog.write_registered(pdir, users)
    if os.path.exists(cfg.config_path):
        shutil.copy2(cfg.config_path, os.path.join(tmp, "config.toml"))
    if with_keys and os.path.isdir(cfg.keys_dir):
        shutil.copytree(cfg.keys_dir, os.path.join(tmp, "keys"), copy_function=shutil.copy2)

    # 4. manifest, fsync, rename
    files: dict[str, dict[str, Any]] = {}
    if progress is not None:  # genesis, config and keys joined the files to hash
        progress.set_total(copied + _bytes_under(tmp))
        progress.describe("hash")
    for rel, kind in sorted(_walk_files(tmp).items()):
        if kind != "file":
            raise StorageError(f"snapshot: unexpected non-regular file {rel}")
        size, digest = _sha256_file(os.path.join(tmp, rel), progress)
        files[rel] = {"size": size, "sha256": digest}
    created_ms = int(started * 1000)
    body = {"format": FORMAT, "chain_id": chain.genesis.chain_id, "genesis_hash": chain.genesis.hash,
            "height": tip.height, "tip_hash": tip.hash, "created_ms": created_ms,
            "formats": {"log": K.LOG_FORMAT.decode(), "projection": K.PROJECTION_FORMAT.decode()},
            "log_end_offsets": ends, "projections": projs, "files": files, "linked": link}
    with open(os.path.join(tmp, MANIFEST), "wb") as f:
        f.write(_manifest_bytes(body))
    fsync_tree(tmp)
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"{_safe_name(chain.genesis.chain_id)}-h{tip.height}-{stamp}"
    name, n = base, 2
    while True:
        final = os.path.join(out_dir, name)
        try:
            os.rename(tmp, final)  # fails if a non-empty ``final`` exists
            break
        except OSError:
            if not os.path.exists(final):
                raise
            name, n = f"{base}-{n}", n + 1
    fsync_dir(out_dir)
    same_fs = os.stat(final).st_dev == os.stat(cfg.data_dir).st_dev
    return {**body, "manifest_sha256": hashlib.sha256(_canonical(body)).hexdigest(), "path": final,
            "same_filesystem_as_data": same_fs}


# -- list and verify --------------------------------------------------------------------------------

def verify_snapshot(path: str, progress: Progress | None = None) -> dict[str, Any]:
    """Check the manifest and that the snapshot holds exactly its files, each with the recorded
    size and sha256. Returns the manifest; CorruptStoreError naming the first bad file.
    ``progress`` is told of each block hashed (the manifest's sizes are the total)."""
    manifest = read_manifest(path)
    expected = manifest["files"]
    found = _walk_files(path)
    found.pop(MANIFEST, None)
    for rel in sorted(expected):
        if rel not in found:
            raise CorruptStoreError(f"snapshot {path} is incomplete: {rel} is missing")
    for rel, kind in sorted(found.items()):
        if rel not in expected:
            raise CorruptStoreError(f"snapshot {path} holds an unexpected file {rel} (not in its manifest)")
        if kind != "file":
            raise CorruptStoreError(f"snapshot {path}: {rel} is not a regular file")
    for rel, want in sorted(expected.items()):  # sizes first: cheap, and names truncation as such
        size = os.path.getsize(os.path.join(path, rel))
        if size != want["size"]:
            what = "truncated" if size < want["size"] else "longer than recorded"
            raise CorruptStoreError(f"snapshot {path}: {rel} is {what} ({size} bytes, manifest says {want['size']})")
    if progress is not None:
        progress.describe("verify")
    for rel, want in sorted(expected.items()):
        _size, digest = _sha256_file(os.path.join(path, rel), progress)
        if digest != want["sha256"]:
            raise CorruptStoreError(f"snapshot {path}: {rel} is corrupt (sha256 {digest[:16]}..., "
                                    f"manifest says {want['sha256'][:16]}...)")
    return manifest


def list_snapshots(directory: str, *, verify: bool = False) -> list[dict[str, Any]]:
    """Summaries of the snapshots in ``directory`` (oldest first). ``ok`` says whether the manifest
    is intact (with ``verify``: and every file too); ``error`` why not."""
    if not os.path.isdir(directory):
        return []
    clean_stale(directory)
    out = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.startswith(".") or not os.path.isdir(path) or os.path.islink(path):
            continue  # temp dirs of snapshots being written (or left by a crash)
        try:
            manifest = verify_snapshot(path) if verify else read_manifest(path)
        except CorruptStoreError as exc:
            out.append({"name": entry, "path": os.path.abspath(path), "ok": False, "error": str(exc),
                        "created_ms": int(os.stat(path).st_mtime * 1000)})
            continue
        out.append({**summary(manifest, path), "ok": True})
    return sorted(out, key=lambda s: (s.get("created_ms") or 0, s["name"]))


# -- node integration -------------------------------------------------------------------------------

def snapshot_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """Snapshot the running node's chain and live projections (body: ``out``, ``with_keys``,
    ``link``). ``out`` must be the node's ``snapshot.dir`` or a directory under it (absolute, or
    relative to it): anything else is refused (400 SNAPSHOT_DIR_REFUSED) and nothing is written.
    The answer names the snapshot (``name``, ``dir`` relative to snapshot.dir), never a path.
    Its progress (bytes copied and hashed) shows as job ``job`` (or a new id) in GET /v1/status."""
    out = body.get("out")
    if out is not None and not isinstance(out, str):
        raise BadRequest("snapshot: out must be a directory (under snapshot.dir)")
    root = node.config.snapshots_dir
    where = inside(root, out)
    if where is None:
        raise SnapshotDirRefusedError("snapshot: out must be the node's snapshot dir (snapshot.dir) "
                                      "or a directory under it")
    with node.jobs.run("snapshot", body.get("job"), unit="B") as job:
        manifest = create_snapshot(node.chain, node.runner, where, with_keys=bool(body.get("with_keys", False)),
                                   lock=getattr(node, "fold_lock", None), link=bool(body.get("link", False)),
                                   progress=job)
    if not manifest["linked"] and os.path.realpath(where) == os.path.realpath(root):
        node.snapshots.note_success(manifest["created_ms"])  # a backup: the schedule's clock restarts from it
    result = summary(manifest, manifest["path"])
    result.pop("path")
    rel = os.path.relpath(os.path.dirname(manifest["path"]), os.path.realpath(root))
    return {**result, "dir": "" if rel == "." else rel,
            "same_filesystem_as_data": manifest["same_filesystem_as_data"]}

