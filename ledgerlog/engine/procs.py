"""Helper processes that must not outlive the process that started them.

A pool worker blocks reading its task queue; if its parent is killed (kill -9, OOM), nothing
ever closes that queue and the worker would linger forever, holding the parent's stdout and,
for builds, store locks. ``exit_with_parent`` (a pool ``initializer``, or the first call of a
child's target) starts a daemon thread that ends the process once its parent is gone."""
from __future__ import annotations

import os
import threading

__all__ = ["alive", "exit_with_parent"]

_POLL_SECONDS = 0.5


def exit_with_parent(owner: int | None = None) -> None:
    """End this process once its parent is gone, or, given ``owner``, once that process is (a
    child a fork server started has the server as its parent, which outlives a killed caller)."""
    parent = os.getppid()

    def watch() -> None:
        while not _stop.wait(_POLL_SECONDS):
            if (os.getppid() != parent) if owner is None else not alive(owner):
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_stop = threading.Event()


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs, ours or another user's (a zombie, killed and not yet
    reaped, does not)."""
    if pid <= 0:  # kill(0, 0) would signal our own process group
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: signal 0 (which a zombie still answers)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
