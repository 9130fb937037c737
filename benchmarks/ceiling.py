"""Ceilings: what one core does without any framework on the same bytes, and the signature rate.

- fold: read the embedded log's ledger.transactions and ledger.blocks records (EmbeddedLog,
  read-only, ``scan``), fastavro schemaless decode, fold balances in a dict, write the dirty
  balances and the log positions to a rocksdict WriteBatch every 10k events (unsynced, as
  ledgerlog's projection stores write). Also the iterate-only and iterate+decode rates.
- append: fastavro-encode the same decoded events and put them in synced WriteBatches of 1000
  records (the durable-append ceiling for unsigned ingest).
- Ed25519 verify (and sign) per core, PyNaCl."""
from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import time
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from nacl.signing import SigningKey
from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from ledgerlog.engine import avro
from ledgerlog.engine import topics as T
from ledgerlog.engine.log.embedded import EmbeddedLog

from .common import rate, steady
from .history import checksum

__all__ = ["append_ceiling", "ed25519", "fold_ceiling"]

_I64 = struct.Struct(">q")
_TOPICS = {T.TRANSACTIONS: "TransactionConfirmed", T.BLOCKS: "BlockAdmitted"}
WRITE_EVERY = 10_000
APPEND_BATCH = 1_000


def _records(log: EmbeddedLog) -> list[tuple[str, int]]:
    return [(t, p) for t in _TOPICS for p in range(log.partition_count(t))]


def _open(path: str) -> Rdict:
    return Rdict(path, Options(raw_mode=True))


def _pass(log: EmbeddedLog, decode: bool) -> tuple[int, float]:
    n = 0
    t = time.perf_counter()
    for topic, p in _records(log):
        schema = avro.parsed(_TOPICS[topic])
        for rec in log.scan(topic, p, batch=10_000):
            if decode:
                schemaless_reader(io.BytesIO(rec.value[5:]), schema, None)
            n += 1
    return n, time.perf_counter() - t


def fold_ceiling(log_path: str, work: str) -> dict[str, Any]:
    """The framework-free decode/fold/write pipeline over the log at ``log_path``."""
    log = EmbeddedLog(log_path, read_only=True)
    out_path = tempfile.mkdtemp(prefix="ceiling-", dir=work)
    db = _open(out_path)
    wo = WriteOptions()
    wo.sync = False
    try:
        n_iter, s_iter = _pass(log, decode=False)
        n_dec, s_dec = _pass(log, decode=True)
        bal: dict[str, int] = {}
        dirty: set[str] = set()
        positions: dict[bytes, int] = {}
        n = 0
        t = time.perf_counter()
        for topic, p in _records(log):
            schema = avro.parsed(_TOPICS[topic])
            pos_key = f"pos/{topic}/{p}".encode()
            for rec in log.scan(topic, p, batch=10_000):
                ev: Any = schemaless_reader(io.BytesIO(rec.value[5:]), schema, None)
                if topic == T.TRANSACTIONS:
                    b = ev["body"]
                    s, r, a = b["sender"], b["recipient"], b["amount"]
                    bal[s] = bal.get(s, 0) - a - b["fee"]
                    bal[r] = bal.get(r, 0) + a
                    dirty.add(s)
                    dirty.add(r)
                else:
                    pr = ev["header"]["producer"]
                    bal[pr] = bal.get(pr, 0) + ev["reward"] + ev["fees"]
                    dirty.add(pr)
                positions[pos_key] = rec.offset + 1
                n += 1
                if n % WRITE_EVERY == 0:
                    _flush(db, wo, bal, dirty, positions)
        _flush(db, wo, bal, dirty, positions)
        secs = time.perf_counter() - t
    finally:
        db.close()
        log.close()
        shutil.rmtree(out_path, ignore_errors=True)
    return {"events": n, "seconds": round(secs, 3), "events_per_s": rate(n, secs),
            "iterate_per_s": rate(n_iter, s_iter), "iterate_decode_per_s": rate(n_dec, s_dec),
            "write_every": WRITE_EVERY, "checksum": checksum(bal)}


def _flush(db: Rdict, wo: WriteOptions, bal: dict[str, int], dirty: set[str], positions: dict[bytes, int]) -> None:
    wb = WriteBatch(raw_mode=True)
    for a in dirty:
        wb.put(b"a/" + a.encode(), _I64.pack(bal[a]))
    for k, off in positions.items():
        wb.put(k, struct.pack(">Q", off))
    db.write(wb, wo)
    dirty.clear()


def append_ceiling(log_path: str, work: str, limit: int = 200_000) -> dict[str, Any]:
    """Decode up to ``limit`` transaction records once, then time encode + synced append."""
    log = EmbeddedLog(log_path, read_only=True)
    schema = avro.parsed(_TOPICS[T.TRANSACTIONS])
    try:
        evs = []
        for p in range(log.partition_count(T.TRANSACTIONS)):
            for rec in log.scan(T.TRANSACTIONS, p, batch=10_000):
                evs.append((rec.key, schemaless_reader(io.BytesIO(rec.value[5:]), schema, None)))
                if len(evs) >= limit:
                    break
    finally:
        log.close()
    out_path = tempfile.mkdtemp(prefix="append-", dir=work)
    db = _open(out_path)
    wo = WriteOptions()
    wo.sync = True
    header = b"\x00\x00\x00\x00\x01"
    try:
        t = time.perf_counter()
        wb = WriteBatch(raw_mode=True)
        for i, (key, ev) in enumerate(evs):
            buf = io.BytesIO()
            buf.write(header)
            schemaless_writer(buf, schema, ev)
            wb.put(b"r/" + struct.pack(">Q", i), key + buf.getvalue())
            if (i + 1) % APPEND_BATCH == 0:
                wb.put(b"end", struct.pack(">Q", i + 1))
                db.write(wb, wo)
                wb = WriteBatch(raw_mode=True)
        wb.put(b"end", struct.pack(">Q", len(evs)))
        db.write(wb, wo)
        secs = time.perf_counter() - t
    finally:
        db.close()
        shutil.rmtree(out_path, ignore_errors=True)
    return {"events": len(evs), "seconds": round(secs, 3), "events_per_s": rate(len(evs), secs),
            "synced_batch": APPEND_BATCH}


def ed25519(block: int = 500) -> dict[str, Any]:
    """Verify and sign rates of one core (90-byte messages, like a transfer body), PyNaCl as
    admission calls it, each a ``steady`` figure (passes of ``block`` operations)."""
    key = SigningKey(os.urandom(32))
    msg = b"x" * 90
    sig = key.sign(msg).signature
    vk = key.verify_key

    def verifies() -> tuple[float, float]:
        t = time.perf_counter()
        for _ in range(block):
            vk.verify(msg, sig)
        return block, time.perf_counter() - t

    def signs() -> tuple[float, float]:
        t = time.perf_counter()
        for _ in range(block):
            key.sign(msg)
        return block, time.perf_counter() - t

    verify, sign = steady(verifies, max_repeats=100_000), steady(signs, max_repeats=100_000)
    return {"verify_per_s_one_core": round(verify["per_s"]), "sign_per_s_one_core": round(sign["per_s"]),
            "verify_runs_per_s": verify["runs_per_s"], "verify_spread": verify["spread"]}
