"""A restore's journal, so a restore killed at any step is finished at the next open of the data
dir (CLI or node), never leaving it missing or half-written.

Beside the data dir ``D`` (in its parent ``P``)::

    P/.D.restore.lock     flock-held by the restoring process for the whole restore
    P/.tmp-restore-D-*    the copy being made (removed if the process dies before the journal)
    P/.D.restore.json     {"new": ".tmp-restore-D-...", "old": "D.replaced-..." | null}: written,
                          fsynced, once the copy is complete and checked: the commit point

After the journal: ``D`` -> ``old`` (moved aside), ``new`` -> ``D`` (moved in), fsync ``P``, then
the journal is removed. ``recover(D)`` redoes whatever of that a dead process left undone, and
removes its stale temp dirs. A data dir given as a symlink is the directory it points at (so the
renames stay on that directory's disk, and the link keeps pointing at the restored chain).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

from .errors import StorageError, StoreLockedError
from .files import fsync_dir, still_at, write_atomic

__all__ = ["clear_journal", "held", "recover", "settle", "tmp_prefix", "write_journal"]


def _paths(data_dir: str) -> tuple[str, str, str, str]:
    target = os.path.realpath(data_dir)
    parent, name = os.path.dirname(target), os.path.basename(target)
    return (parent, name, os.path.join(parent, f".{name}.restore.json"),
            os.path.join(parent, f".{name}.restore.lock"))


def tmp_prefix(data_dir: str) -> str:
    """The name prefix of a restore's temp dirs beside ``data_dir``."""
    return f".tmp-restore-{os.path.basename(os.path.realpath(data_dir))}-"


def _is_tmp_of(entry: str, data_dir: str) -> bool:
    """Is ``entry`` a temp dir (or a half-written journal) of a restore into ``data_dir``: the
    prefix and mkdtemp's (mkstemp's) suffix alone? (``.tmp-restore-node-b-xyz`` starts with ``node``'s prefix too, and is not ``node``'s.)"""
    prefix = tmp_prefix(data_dir)
    if entry.startswith(prefix) and re.fullmatch(r"[a-z0-9_]+", entry[len(prefix):]) is not None:
        return True
    journal = f".{os.path.basename(os.path.realpath(data_dir))}.restore.json."  # its journal, half written
    return entry.startswith(journal) and re.fullmatch(r"[a-z0-9_]+\.tmp", entry[len(journal):]) is not None


@contextlib.contextmanager
def held(data_dir: str) -> Iterator[None]:
    """Hold the restore lock of ``data_dir`` (StoreLockedError if another process does); the
    lock file is removed on the way out."""
    parent, _name, _journal, lock = _paths(data_dir)
    os.makedirs(parent, exist_ok=True)
    fd = _lock(lock, data_dir)
    try:
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(lock)
    finally:
        os.close(fd)


def _lock(lock: str, data_dir: str) -> int:
    """An flock on the lock file that is at ``lock`` now: one opened just before its last holder
    removed it is locked in vain (the next process creates and locks a new file), so that is
    retried on the file in its place."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(f"a restore into {data_dir} is under way in another process") from None
        if still_at(fd, lock):
            return fd
        os.close(fd)


def write_journal(data_dir: str, new: str, old: str | None) -> None:
    """The commit point: from here on, the restore is finished by whoever opens ``data_dir``."""
    _parent, _name, journal, _lock = _paths(data_dir)
    write_atomic(journal, json.dumps({"new": os.path.basename(new),
                                      "old": os.path.basename(old) if old else None}).encode())


def clear_journal(data_dir: str) -> None:
    parent, _name, journal, _lock = _paths(data_dir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    fsync_dir(parent)


def _read(journal: str) -> dict[str, Any] | None:
    try:
        with open(journal, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"restore journal {journal} is unreadable ({exc}); check the data dir by "
                           "hand and remove the journal") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("new"), str) or "/" in doc["new"] \
            or not isinstance(doc.get("old"), (str, type(None))) or "/" in (doc.get("old") or ""):
        raise StorageError(f"restore journal {journal} is not one ledgerlog wrote; remove it by hand")
    return doc


def settle(data_dir: str) -> str | None:
    """With the lock held: finish a journaled restore (move the old data dir aside if still in
    place, move the new one in, fsync, drop the journal) and remove stale temp dirs. Returns
    "finished", "rolled back" or None when there was nothing to do."""
    parent, name, journal, _lock = _paths(data_dir)
    target = os.path.join(parent, name)
    doc = _read(journal)
    outcome = None
    if doc is not None:
        new = os.path.join(parent, doc["new"])
        old = os.path.join(parent, doc["old"]) if doc["old"] else None
        if os.path.isdir(new):
            if os.path.lexists(target):
                if old is not None and not os.path.lexists(old):
                    os.rename(target, old)
                else:
                    os.rmdir(target)  # an empty data dir (fails, and stops, on one that is not)
                fsync_dir(parent)
            os.rename(new, target)
            fsync_dir(parent)
            outcome = "finished"
        elif not os.path.lexists(target) and old is not None and os.path.isdir(old):
            os.rename(old, target)  # the new copy is gone: put the old data dir back
            fsync_dir(parent)
            outcome = "rolled back"
        else:
            outcome = "finished"  # moved in before the crash: only the journal was left
        clear_journal(data_dir)
    for entry in os.listdir(parent):
        if _is_tmp_of(entry, data_dir):
            path = os.path.join(parent, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
            outcome = outcome or "cleaned"
    return outcome


def recover(data_dir: str) -> str | None:
    """Called first by every open of a data dir: finish a restore a dead process left, remove its
    temp dirs. Cheap when there is nothing to do. StoreLockedError while a restore runs."""
    parent, _name, journal, lock = _paths(data_dir)
    try:
        pending = os.path.exists(journal) or os.path.exists(lock) or any(_is_tmp_of(e, data_dir) for e in os.listdir(parent))
    except OSError:
        return None  # no parent dir (yet): nothing was restored there
    if not pending:
        return None
    with held(data_dir):
        return settle(data_dir)
