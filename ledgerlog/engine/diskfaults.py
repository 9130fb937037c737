"""Storage write faults: which stores the disk currently refuses (for readiness and metrics), the
probe that says when writes may resume, and the seam tests use to inject EIO or ENOSPC.

RocksDB stops a database after a failed write (a full disk, an fsync that failed) until it is
reopened; engine/rocks.py's ``WriteGuard`` does that once ``probe`` of the disk succeeds again.

A process started with ``LEDGERLOG_FAULTS_FILE=PATH`` also takes its fault from that file, so a
test can switch a node's faults from outside (``make torture``): ``EIO`` or ``ENOSPC``, optionally
followed by a path prefix; an empty or absent file means no fault. Test-only: never set it in
production."""
from __future__ import annotations

import errno
import os
import threading
from collections import Counter

__all__ = ["FAULTS_FILE_ENV", "HEALTH", "PROBE_NAME", "Health", "check", "inject", "kind_of", "probe"]

PROBE_NAME = ".ledgerlog-write-probe"
_PROBE_BYTES = b"\0" * 4096

_injected: tuple[int, str] | None = None  # (errno, path prefix) writes and probes fail with (tests)
FAULTS_FILE_ENV = "LEDGERLOG_FAULTS_FILE"
_ERRNOS = {"EIO": errno.EIO, "ENOSPC": errno.ENOSPC}
_read: tuple[tuple[str, int, int, int], tuple[int, str] | None] | None = None  # (file identity, its fault)


def inject(err: int | None, under: str = "") -> None:
    """Make every store write and disk probe of this process under ``under`` (default: all) fail
    with ``err`` (e.g. errno.EIO, errno.ENOSPC) until called with None. A seam for tests:
    RocksDB's own fsync cannot be reached from Python, so the failure is raised where RocksDB
    would report it."""
    global _injected
    _injected = None if err is None else (err, os.path.abspath(under) if under else "")


def _from_file() -> tuple[int, str] | None:
    """The fault ``LEDGERLOG_FAULTS_FILE`` names now (re-read only when the file changes)."""
    global _read
    name = os.environ.get(FAULTS_FILE_ENV)
    if not name:
        return None
    try:
        st = os.stat(name)
    except OSError:
        return None
    ident = (name, st.st_ino, st.st_mtime_ns, st.st_size)
    if _read is not None and _read[0] == ident:
        return _read[1]
    try:
        with open(name, encoding="utf-8") as f:
            words = f.read().split(maxsplit=1)
    except (OSError, ValueError):
        words = []
    fault = None
    if words and words[0].upper() in _ERRNOS:
        fault = (_ERRNOS[words[0].upper()], os.path.abspath(words[1].strip()) if len(words) > 1 else "")
    _read = (ident, fault)
    return fault


def _hit(path: str) -> int | None:
    fault = _injected or _from_file()
    if fault is None or not os.path.abspath(path).startswith(fault[1]):
        return None
    return fault[0]


def check(path: str) -> None:
    """Raise what RocksDB raises for a failed synced write, if a fault is injected."""
    err = _hit(path)
    if err is not None:
        raise Exception(f"IO error: {os.strerror(err)}: While fsync: a file under {path}")


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
