"""The faucet's rate limits, kept on disk so a restarted node still holds them: per kind of key
(client IP, address) a generic cell rate algorithm (GCRA, the token bucket stated as one time per
key), in ``<data_dir>/faucet/grants.sqlite``.

A limit is ``burst`` grants at once and one more every ``interval`` seconds: exactly the token
bucket ops/api/limits.py ``TokenBuckets`` keeps in memory. Here each key has one number, its
*theoretical arrival time* ``tat`` (wall-clock seconds): a grant is allowed when
``tat - (burst - 1) * interval <= now`` and moves ``tat`` to ``max(tat, now) + interval``. The
wait a refusal names (``Retry-After``) is how far ``now`` is short of that. Wall clock, so a
restart keeps the remaining wait; a clock set back never makes a wait longer than an empty
bucket's (``burst * interval``).

Bounded: a key whose ``tat`` has passed has a full bucket and is deleted (at open, then at most
once a minute), and at most ``MAX_KEYS`` keys per kind are kept (those nearest to full are dropped
first). Written through at every grant (SQLite, WAL, synchronous=NORMAL: a grant survives a crash
of the process; a power cut may lose the last ones). A grant whose record cannot be written is
still granted (it was admitted) and the error logged; a record that cannot be read refuses the
request with STORAGE_ERROR, as does a damaged file (remove it to start the limits afresh).

Why not a library: pyrate-limiter's SQLiteBucket counts one table per bucket (every row, not per
key), so per-IP limits would need a table per IP, and it takes a token as it tests, while the
faucet tests both limits first and takes only after admission accepted the grant; ``limits``
stores in memory or in a server (Redis, Memcached, MongoDB, etcd), nothing on a local disk."""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ledgerlog.engine.errors import StorageError

__all__ = ["MAX_KEYS", "GrantLimits", "grants_path"]

log = logging.getLogger("ledgerlog.faucet")

MAX_KEYS = 100_000      # per kind of key
PRUNE_EVERY = 60.0      # seconds between deletions of full buckets


def grants_path(data_dir: str) -> str:
    """Where a node's faucet keeps its grant records."""
    return os.path.join(data_dir, "faucet", "grants.sqlite")


class GrantLimits:
    """Per-key limits by kind (``{"ip": (burst, interval), "address": ...}``; interval 0 = no
    limit) kept in the SQLite file ``path``. Thread-safe; ``clock`` (wall seconds) is injectable."""

    def __init__(self, path: str, limits: Mapping[str, tuple[int, float]], *,
                 clock: Callable[[], float] = time.time, max_keys: int = MAX_KEYS) -> None:
        self.path = path
        self.limits = {kind: (max(1, int(burst)), float(interval)) for kind, (burst, interval) in limits.items()}
        self.clock = clock
        self.max_keys = max_keys
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pruned = float("-inf")

    # -- the file ---------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # addresses and IPs: the owner's only
                os.close(fd)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("CREATE TABLE IF NOT EXISTS grants (kind TEXT NOT NULL, key TEXT NOT NULL, "
                           "tat REAL NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID")
                db.execute("CREATE INDEX IF NOT EXISTS grants_tat ON grants (kind, tat)")
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"faucet grant records {self.path} cannot be opened ({exc}); "
                                   "remove the file to start the faucet's limits afresh") from exc
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- limits -----------------------------------------------------------------------------------
    def wait(self, kind: str, key: str) -> float:
        """Seconds until ``key`` of ``kind`` may have a grant (0: now); records nothing."""
        burst, interval = self.limits[kind]
        if interval <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tat = self._tat(kind, key, now)
        return max(0.0, tat - (burst - 1) * interval - now)

    def take(self, kind: str, key: str) -> None:
        """Record a grant to ``key`` of ``kind`` (after ``wait`` said 0 and admission accepted it)."""
        interval = self.limits[kind][1]
        if interval <= 0:
            return
        with self._lock:
            now = self.clock()
            try:
                tat = max(self._tat(kind, key, now), now) + interval
                db = self._open()
                db.execute("INSERT INTO grants (kind, key, tat) VALUES (?, ?, ?) "
                           "ON CONFLICT (kind, key) DO UPDATE SET tat = excluded.tat", (kind, key, tat))
                if now - self._pruned >= PRUNE_EVERY or now < self._pruned:
                    self._prune(db, now)
            except (StorageError, sqlite3.Error) as exc:  # the grant was admitted: it stands
                log.error("faucet grant to %s %s not recorded: %s", kind, key, exc)

    def count(self, kind: str | None = None) -> int:
        """Keys kept (of ``kind``, else of every kind): buckets not yet full again."""
        with self._lock:
            db = self._read_db()
            sql, args = ("SELECT COUNT(*) FROM grants", ()) if kind is None else \
                ("SELECT COUNT(*) FROM grants WHERE kind = ?", (kind,))
            return int(self._query(db, sql, args)[0][0])

    def _read_db(self) -> sqlite3.Connection:
        db = self._open()
        now = self.clock()
        if now - self._pruned >= PRUNE_EVERY or now < self._pruned:
            try:
                self._prune(db, now)
            except sqlite3.Error as exc:
                log.error("faucet grant records not pruned: %s", exc)
        return db

    def _tat(self, kind: str, key: str, now: float) -> float:
        """``key``'s theoretical arrival time, no later than an empty bucket's (a clock set back)."""
        rows = self._query(self._read_db(), "SELECT tat FROM grants WHERE kind = ? AND key = ?", (kind, key))
        burst, interval = self.limits[kind]
        return min(float(rows[0][0]), now + burst * interval) if rows else now

    def _query(self, db: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"faucet grant records {self.path} cannot be read ({exc}); "
                               "remove the file to start the faucet's limits afresh") from exc

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        """Delete full buckets, then the keys nearest to full beyond ``max_keys`` per kind."""
        self._pruned = now
        with db:
            db.execute("BEGIN")
            db.execute("DELETE FROM grants WHERE tat <= ?", (now,))
            for kind in self.limits:
                db.execute("DELETE FROM grants WHERE kind = ? AND key IN (SELECT key FROM grants WHERE kind = ? "
                           "ORDER BY tat DESC LIMIT -1 OFFSET ?)", (kind, kind, self.max_keys))
