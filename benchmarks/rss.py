"""Memory of a process tree while a step runs: the rebuild goal is "RSS under 1 GiB and flat",
so the sampler keeps the peak and the trend (first vs last quarter of the samples) of the
summed RSS of this process and its children (reproject spreads projections over processes)."""
from __future__ import annotations

import os
import threading
import time
from typing import Any

__all__ = ["RssSampler", "tree_rss"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(pid: int | None = None) -> int:
    """Bytes resident in ``pid`` (default: this process) and all its descendants."""
    total, todo = 0, [pid or os.getpid()]
    while todo:
        p = todo.pop()
        total += _rss(p)
        todo.extend(_children(p))
    return total


class RssSampler:
    """``with RssSampler() as s: ...`` then ``s.summary()``; samples every ``interval`` s."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, tree_rss()))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        values = [v for _, v in self.samples] or [tree_rss()]
        q = max(1, len(values) // 4)
        mib = 1 << 20
        return {"peak_mib": round(max(values) / mib), "first_quarter_mean_mib": round(sum(values[:q]) / q / mib),
                "last_quarter_mean_mib": round(sum(values[-q:]) / q / mib), "samples": len(values)}
