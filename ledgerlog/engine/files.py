"""Writing files so readers see the old content or the whole new one, never a part."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["flock_held", "atomic_dir", "atomic_writer", "write_atomic", "fsync_dir", "fsync_tree", "plain_name", "still_at"]


def plain_name(name: object) -> bool:
    """Is ``name`` one directory entry's name: a non-empty string, not "." or "..", with no path
    separator? (Pointer files name their targets so; one restored from a foreign snapshot could
    name "/srv/other" or "../..", which a later removal of that target would follow.)"""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and (os.altsep is None or os.altsep not in name) and "\x00" not in name)


def still_at(fd: int, path: str) -> bool:
    """Is the file open as ``fd`` still the one at ``path`` (a lock taken on a file or directory
    another process removed, or replaced, meanwhile holds nothing)?"""
    held = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def flock_held(path: str, busy: Exception) -> Iterator[None]:
    """An exclusive flock on ``path`` (created), or ``busy`` raised at once when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise busy from None
        yield
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    """fsync a directory (its entries) or a file, by path."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A temp file beside ``path``; on success fsynced, renamed over ``path``, directory fsynced.
    On error the temp file is removed and ``path`` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    with atomic_writer(path, mode) as f:
        f.write(data)


def fsync_tree(root: str, *, files: bool = True) -> None:
    """fsync every file (unless ``files`` is False: already done), then every directory
    bottom-up, the root last: a directory tree made in a temp dir is durable before its rename."""
    for dirpath, _dirs, names in os.walk(root, topdown=False):
        for f in names if files else ():
            fsync_dir(os.path.join(dirpath, f))
        fsync_dir(dirpath)


@contextlib.contextmanager
def atomic_dir(dest: str, prefix: str, *, clean_stale: bool = False, replace: bool = False) -> Iterator[str]:
    """A temp directory beside ``dest`` (named ``prefix``...) to build a tree in; on success it is
    fsynced whole and renamed to ``dest`` (a ``dest`` already there removed first with ``replace``),
    then the parent is fsynced: readers see no tree or all of it. On error the temp dir goes.
    ``clean_stale``: first remove temp dirs with ``prefix`` that a crash left."""
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    if clean_stale:
        for stale in os.listdir(parent):
            if stale.startswith(prefix):
                shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix)
    try:
        yield tmp
        fsync_tree(tmp)
        if replace and os.path.exists(dest):
            shutil.rmtree(dest)
        os.rename(tmp, dest)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
