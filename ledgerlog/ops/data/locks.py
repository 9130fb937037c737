"""Locks on a data dir held across processes and threads (an flock each, never waited for)."""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from ledgerlog.engine.errors import PruneRunningError

__all__ = ["PRUNE_LOCK_FILE", "prune_lock"]

PRUNE_LOCK_FILE = ".prune.lock"


@contextlib.contextmanager
def prune_lock(data_dir: str) -> Iterator[None]:
    """One prune of a data dir at a time (a snapshot holds it too, so the anchor it copies is not
    replaced meanwhile): PruneRunningError at once when another holder has it."""
    fd = os.open(os.path.join(data_dir, PRUNE_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PruneRunningError("a prune (or a snapshot) of this data dir is running; wait for it to "
                                    "finish") from None
        yield
    finally:
        os.close(fd)
