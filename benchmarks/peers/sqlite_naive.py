"""Peer: a naive SQLite ledger, the way a first version is usually written: an ``events`` table
and a ``balances`` table upserted per event, one transaction (durable: WAL, synchronous=FULL)
per 1000 events like ledgerlog's ingest chunk. Rebuild replays the events table, in order,
into a fresh balances table (one transaction), steady (``common.steady``: repeated to the
plan's floor, median of three runs)."""
from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from ..common import steady
from ..history import checksum
from .base import figure, load, main, moves, reference

CHUNK = 1000
UPSERT = ("INSERT INTO {t} (address, balance) VALUES (?, ?) "
          "ON CONFLICT(address) DO UPDATE SET balance = balance + excluded.balance")


def _balances(db: sqlite3.Connection, table: str) -> dict[str, int]:
    return dict(db.execute(f"SELECT address, balance FROM {table}").fetchall())


def run(args: dict[str, Any]) -> dict[str, Any]:
    events = load(args)
    path = os.path.join(args["work"], "ledger.sqlite")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, a TEXT NOT NULL, "
                   "b TEXT, amount INTEGER NOT NULL, fee INTEGER NOT NULL)")
        for t in ("balances", "rebuilt"):
            db.execute(f"CREATE TABLE {t} (address TEXT PRIMARY KEY, balance INTEGER NOT NULL) WITHOUT ROWID")
        ins = "INSERT INTO events (kind, a, b, amount, fee) VALUES (?, ?, ?, ?, ?)"
        up = UPSERT.format(t="balances")
        t0 = time.perf_counter()
        db.execute("BEGIN")
        for i, e in enumerate(events, 1):
            if e[0] == "t":
                db.execute(ins, ("t", e[1], e[2], e[3], e[4]))
            else:
                db.execute(ins, ("b", e[1], None, e[2], 0))
            for addr, delta in moves(e):
                db.execute(up, (addr, delta))
            if i % CHUNK == 0:
                db.execute("COMMIT")
                db.execute("BEGIN")
        db.execute("COMMIT")
        ingest_s = time.perf_counter() - t0

        up = UPSERT.format(t="rebuilt")

        def rebuild() -> tuple[float, float]:
            db.execute("DROP TABLE rebuilt")  # a fresh table for each pass (not timed)
            db.execute("CREATE TABLE rebuilt (address TEXT PRIMARY KEY, balance INTEGER NOT NULL) WITHOUT ROWID")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            t0 = time.perf_counter()
            db.execute("BEGIN")
            n = 0
            for kind, a, b, amount, fee in db.execute("SELECT kind, a, b, amount, fee FROM events ORDER BY id"):
                if kind == "t":
                    db.execute(up, (a, -(amount + fee)))
                    db.execute(up, (b, amount))
                else:
                    db.execute(up, (a, amount))
                n += 1
            db.execute("COMMIT")
            return n, time.perf_counter() - t0

        fig = steady(rebuild)
        n = len(events)
        got = checksum(_balances(db, "rebuilt"))
        ok = got == reference(events) == checksum(_balances(db, "balances"))
    finally:
        db.close()
    rebuild_fig = {"events": n, "seconds": round(n / fig["per_s"], 3), "events_per_s": fig["per_s"],
                   "steady": {k: fig[k] for k in ("runs_per_s", "spread")}}
    return {"ingest": figure(len(events), ingest_s), "rebuild": rebuild_fig,
            "checksum": got, "checksum_ok": ok,
            "config": f"sqlite {sqlite3.sqlite_version}, WAL, synchronous=FULL, commit per {CHUNK} events; "
                      "upsert per movement; rebuild = replay events table into a fresh table (steady)"}


if __name__ == "__main__":
    main(run)
