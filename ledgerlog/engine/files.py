"""Writing files so readers see the old content or the whole new one, never a part."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_writer", "write_atomic", "fsync_dir"]


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
