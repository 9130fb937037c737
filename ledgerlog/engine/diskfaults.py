"""Storage write faults: which stores the disk currently refuses (for readiness and metrics), the
probe that says when writes may resume, and the seam tests use to inject EIO or ENOSPC.

RocksDB stops a database after a failed write (a full disk, an fsync that failed) until it is
reopened; engine/rocks.py's ``WriteGuard`` does that once ``probe`` of the disk succeeds again."""
from __future__ import annotations

import errno
import os
import threading
from collections import Counter

__all__ = ["HEALTH", "PROBE_NAME", "Health", "check", "inject", "kind_of", "probe"]

PROBE_NAME = ".ledgerlog-write-probe"
_PROBE_BYTES = b"\0" * 4096

_injected: tuple[int, str] | None = None  # (errno, path prefix) writes and probes fail with (tests)


def inject(err: int | None, under: str = "") -> None:
    """Make every store write and disk probe of this process under ``under`` (default: all) fail
    with ``err`` (e.g. errno.EIO, errno.ENOSPC) until called with None. A seam for tests:
    RocksDB's own fsync cannot be reached from Python, so the failure is raised where RocksDB
    would report it."""
    global _injected
    _injected = None if err is None else (err, os.path.abspath(under) if under else "")


def _hit(path: str) -> int | None:
    fault = _injected
    if fault is None or not os.path.abspath(path).startswith(fault[1]):
        return None
    return fault[0]


def check(path: str) -> None:
    """Raise what RocksDB raises for a failed synced write, if a fault is injected."""
    err = _hit(path)
    if err is not None:
        raise Exception(f"IO error: {os.strerror(err)}: While fsync: a file under {path}")  # noqa: TRY002


def probe(directory: str) -> None:
    """Write, fsync and remove a small file in ``directory``: OSError while the disk refuses."""
    err = _hit(directory)
    if err is not None:
        raise OSError(err, os.strerror(err))
    path = os.path.join(directory, PROBE_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, _PROBE_BYTES)
        os.fsync(fd)
    finally:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass


def kind_of(text: str) -> str:
    """``enospc``, ``eio`` or ``other``: the label of ledgerlog_storage_errors_total."""
    low = text.lower()
    if "no space" in low or os.strerror(errno.ENOSPC).lower() in low:
        return "enospc"
    if "input/output" in low or os.strerror(errno.EIO).lower() in low:
        return "eio"
    return "other"


class Health:
    """Process-wide: the stores whose writes currently fail, and how many write faults were seen
    by kind. A node is the only writer of its stores, so one process holds one node's view."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: dict[str, str] = {}  # store path -> kind
        self.errors: Counter[str] = Counter()

    def failed(self, path: str, text: str) -> None:
        with self._lock:
            kind = kind_of(text)
            self._failed[path] = kind
            self.errors[kind] += 1

    def ok(self, path: str) -> None:
        with self._lock:
            self._failed.pop(path, None)

    @property
    def writable(self) -> bool:
        return not self._failed

    def reasons(self) -> list[str]:
        """The kinds of the faults that hold now (no paths: these may reach HTTP answers)."""
        with self._lock:
            return sorted(set(self._failed.values()))

    def error_counts(self) -> dict[str, int]:
        with self._lock:
            return {k: self.errors.get(k, 0) for k in ("eio", "enospc", "other")}


HEALTH = Health()
