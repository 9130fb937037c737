"""Helper processes that must not outlive the process that started them.

A pool worker blocks reading its task queue; if its parent is killed (kill -9, OOM), nothing
ever closes that queue and the worker would linger forever, holding the parent's stdout and,
for builds, store locks. ``exit_with_parent`` (a pool ``initializer``, or the first call of a
child's target) starts a daemon thread that ends the process once its parent is gone."""
from __future__ import annotations

import os
import threading

__all__ = ["exit_with_parent"]

_POLL_SECONDS = 0.5


def exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while not _stop.wait(_POLL_SECONDS):
            if os.getppid() != parent:  # re-parented: the parent died
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_stop = threading.Event()
