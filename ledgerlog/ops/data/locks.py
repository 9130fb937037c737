"""Locks on a data dir held across processes and threads (an flock each, never waited for)."""
from __future__ import annotations

import contextlib
import os

from ledgerlog.engine.errors import PruneRunningError
from ledgerlog.engine.files import flock_held
from ledgerlog.engine.pendingkeys import ROTATE_LOCK_FILE, rotation_lock

__all__ = ["PRUNE_LOCK_FILE", "ROTATE_LOCK_FILE", "prune_lock", "rotation_lock"]  # rotation_lock: engine/pendingkeys.py

PRUNE_LOCK_FILE = ".prune.lock"


def prune_lock(data_dir: str) -> contextlib.AbstractContextManager[None]:
    """One prune of a data dir at a time (a snapshot holds it too, so the anchor it copies is not
    replaced meanwhile): PruneRunningError at once when another holder has it."""
    return flock_held(os.path.join(data_dir, PRUNE_LOCK_FILE),
                      PruneRunningError("a prune (or a snapshot) of this data dir is running; wait for it to finish"))
