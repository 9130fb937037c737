"""Locks on a data dir held across processes and threads (an flock each, never waited for)."""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from ledgerlog.engine.errors import PruneRunningError, RotationRefusedError

__all__ = ["PRUNE_LOCK_FILE", "ROTATE_LOCK_FILE", "prune_lock", "rotation_lock"]

PRUNE_LOCK_FILE = ".prune.lock"
ROTATE_LOCK_FILE = ".rotate.lock"


@contextlib.contextmanager
def _held(path: str, busy: Exception) -> Iterator[None]:
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


def prune_lock(data_dir: str) -> contextlib.AbstractContextManager[None]:
    """One prune of a data dir at a time (a snapshot holds it too, so the anchor it copies is not
    replaced meanwhile): PruneRunningError at once when another holder has it."""
    return _held(os.path.join(data_dir, PRUNE_LOCK_FILE),
                 PruneRunningError("a prune (or a snapshot) of this data dir is running; wait for it to finish"))


def rotation_lock(keys_dir: str) -> contextlib.AbstractContextManager[None]:
    """One key rotation of a data dir at a time (two at once wrote the same pending key file and
    lost the key the chain rotated to): RotationRefusedError at once when another runs."""
    return _held(os.path.join(keys_dir, ROTATE_LOCK_FILE),
                 RotationRefusedError("another key rotation of this data dir is running; try again when it is done"))
