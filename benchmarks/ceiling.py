"""Ceilings: what the machine does without any framework on the same bytes, and the signature rate.

- fold: the fastest simple loop doing a balance rebuild's work, on the embedded log's records
  of ledger.transactions and ledger.blocks (the transfer events every peer folds): iterate the
  record values straight from the log's RocksDB, decode only the fields the fold reads (with
  ledgerlog's generated decoder for that Spec: the fastest Avro decoding here, several times
  fastavro's), fold balances in a dict, and every 10k events write the dirty balances and the
  log positions in one synced WriteBatch. Measured on one core (``one_core``) and on every core
  (``events_per_s``; each process folds a share of the partitions, the dicts add up: the fold is
  commutative), with ``common.steady``. ledgerlog's own rebuild does more (balance history by
  height, nonces, digests, the other projections) on the same cores, so it can never reach
  this: if it does, the ceiling is wrong. Also the iterate-only and iterate+decode rates, and
  fastavro's decode rate for comparison.
- append: fastavro-encode the same decoded events and put them in synced WriteBatches of 1000
  records (the durable-append ceiling for unsigned ingest).
- Ed25519 verify (and sign) per core, PyNaCl."""
from __future__ import annotations

import io
import multiprocessing as mp
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from nacl.signing import SigningKey
from rocksdict import Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from ledgerlog.engine import avro
from ledgerlog.engine import storekeys as K
from ledgerlog.engine import topics as T
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.streams.feed import compile_decoder, spec_of

from .common import rate, steady
from .history import checksum

__all__ = ["append_ceiling", "ed25519", "fold_ceiling"]

_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_TOPICS = {T.TRANSACTIONS: "TransactionConfirmed", T.BLOCKS: "BlockAdmitted"}
#: the fields the fold reads, per topic
_FIELDS = {T.TRANSACTIONS: ("body.sender", "body.recipient", "body.amount", "body.fee"),
           T.BLOCKS: ("header.producer", "reward", "fees")}
WRITE_EVERY = 10_000
APPEND_BATCH = 1_000
_READ_CHUNK = 10_000
_HEAD = K.RECORD_HEAD.size + 5  # a value: RECORD_HEAD, the key, then the Confluent framing, then Avro

TP = tuple[str, int]


def _open(path: str) -> Rdict:
    return Rdict(path, Options(raw_mode=True))


def _partitions(log: EmbeddedLog) -> list[TP]:
    return [(t, p) for t in _TOPICS for p in range(log.partition_count(t))]


def _values(db: Rdict, topic: str, p: int, end: int) -> Iterator[list[bytes]]:
    """The record values of a partition, in chunks, straight from the log's RocksDB."""
    for start in range(0, end, _READ_CHUNK):
        ro = ReadOptions()
        ro.set_iterate_upper_bound(K.record_key(topic, p, min(end, start + _READ_CHUNK)))
        yield list(db.values(from_key=K.record_key(topic, p, start), read_opt=ro))


def _decoders(log: EmbeddedLog) -> dict[str, Callable[[bytes, int], dict[str, Any]]]:
    return {t: compile_decoder(avro.schema_json(name), spec_of(_FIELDS[t])) for t, name in _TOPICS.items()}


def _fold_share(log: EmbeddedLog, tps: list[TP], out_path: str, sync: bool = True) -> tuple[int, dict[str, int]]:
    """The loop: iterate, decode the needed fields, fold in a dict, write dirty keys every 10k
    events (synced). Returns (events, balances)."""
    db = _open(out_path)
    wo = WriteOptions()
    wo.sync = sync
    decode = _decoders(log)
    raw = log.raw()
    head = K.RECORD_HEAD.unpack_from
    bal: dict[str, int] = {}
    dirty: set[str] = set()
    positions: dict[bytes, int] = {}
    n = 0
    try:
        for topic, p in tps:
            dec = decode[topic]
            pos_key = f"pos/{topic}/{p}".encode()
            off = 0
            for chunk in _values(raw, topic, p, log.end_offsets(topic)[p]):
                for v in chunk:
                    ev = dec(v, _HEAD + head(v)[1])
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
                    off += 1
                    n += 1
                    if n % WRITE_EVERY == 0:
                        positions[pos_key] = off
                        _flush(db, wo, bal, dirty, positions)
                positions[pos_key] = off
        _flush(db, wo, bal, dirty, positions)
    finally:
        db.close()
    return n, bal


def _flush(db: Rdict, wo: WriteOptions, bal: dict[str, int], dirty: set[str], positions: dict[bytes, int]) -> None:
    wb = WriteBatch(raw_mode=True)
    for a in dirty:
        wb.put(b"a/" + a.encode(), _I64.pack(bal[a]))
    for k, off in positions.items():
        wb.put(k, _U64.pack(off))
    db.write(wb, wo)
    dirty.clear()


def _shares(log: EmbeddedLog, k: int) -> list[list[TP]]:
    """The partitions in ``k`` shares of similar record counts."""
    out: list[list[TP]] = [[] for _ in range(k)]
    size = [0] * k
    for tp in sorted(_partitions(log), key=lambda tp: -log.end_offsets(tp[0])[tp[1]]):
        i = size.index(min(size))
        out[i].append(tp)
        size[i] += log.end_offsets(tp[0])[tp[1]]
    return [s for s in out if s]


_WORKER: dict[str, Any] = {}


def _worker_init(log_path: str, work: str) -> None:
    _WORKER["log"] = EmbeddedLog(log_path, read_only=True)
    _WORKER["work"] = work


def _worker_pass(tps: list[TP]) -> tuple[int, dict[str, int]]:
    out = tempfile.mkdtemp(prefix="ceiling-", dir=_WORKER["work"])
    try:
        return _fold_share(_WORKER["log"], [tuple(tp) for tp in tps], out)  # type: ignore[misc]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _pass_rates(log: EmbeddedLog, decode: bool) -> dict[str, Any]:
    """Iterate (and decode) every record once per pass, one core, steady."""
    decs = _decoders(log)
    raw = log.raw()
    head = K.RECORD_HEAD.unpack_from

    def one() -> tuple[float, float]:
        n = 0
        t = time.perf_counter()
        for topic, p in _partitions(log):
            dec = decs[topic]
            for chunk in _values(raw, topic, p, log.end_offsets(topic)[p]):
                if decode:
                    for v in chunk:
                        dec(v, _HEAD + head(v)[1])
                n += len(chunk)
        return n, time.perf_counter() - t
    return steady(one)


def _fastavro_rate(log: EmbeddedLog) -> float:
    """fastavro's decode of the same records (whole), one core, one pass (for comparison)."""
    n, t = 0, time.perf_counter()
    for topic, p in _partitions(log):
        schema = avro.parsed(_TOPICS[topic])
        for rec in log.scan(topic, p, batch=10_000):
            schemaless_reader(io.BytesIO(rec.value[5:]), schema, None)
            n += 1
    return rate(n, time.perf_counter() - t)


def fold_ceiling(log_path: str, work: str, processes: int | None = None) -> dict[str, Any]:
    """The framework-free decode/fold/write loop over the log at ``log_path``: on one core and on
    ``processes`` (default: every core)."""
    procs = processes or os.cpu_count() or 1
    log = EmbeddedLog(log_path, read_only=True)
    try:
        iterate, decode = _pass_rates(log, False), _pass_rates(log, True)
        fastavro_per_s = _fastavro_rate(log)
        got: dict[str, int] = {}
        passes: list[int] = []  # events of each one-core pass

        def one_core() -> tuple[float, float]:
            out = tempfile.mkdtemp(prefix="ceiling-", dir=work)
            try:
                t = time.perf_counter()
                n, bal = _fold_share(log, _partitions(log), out)
                secs = time.perf_counter() - t
            finally:
                shutil.rmtree(out, ignore_errors=True)
            got.clear()
            got.update(bal)
            passes.append(n)
            return n, secs
        single = steady(one_core)
        shares = _shares(log, procs)
    finally:
        log.close()
    multi = single
    if len(shares) > 1:
        with mp.get_context("forkserver").Pool(len(shares), _worker_init, (log_path, work)) as pool:
            pool.map(_worker_pass, [[] for _ in shares])  # the workers are up and have the log open

            def all_cores() -> tuple[float, float]:
                t = time.perf_counter()
                parts = pool.map(_worker_pass, shares, chunksize=1)
                secs = time.perf_counter() - t
                total: dict[str, int] = {}
                for _, bal in parts:
                    for a, v in bal.items():
                        total[a] = total.get(a, 0) + v
                if checksum(total) != checksum(got):
                    raise RuntimeError("the ceiling's processes folded other balances than one process")
                return sum(n for n, _ in parts), secs
            multi = steady(all_cores)
    events = passes[0]
    return {"events": events, "seconds": round(events / multi["per_s"], 3) if multi["per_s"] else None,
            "events_per_s": multi["per_s"], "processes": len(shares),
            "steady": {k: multi[k] for k in ("runs_per_s", "spread")},
            "one_core": {"events_per_s": single["per_s"], "runs_per_s": single["runs_per_s"],
                         "spread": single["spread"]},
            "iterate_per_s": iterate["per_s"], "iterate_decode_per_s": decode["per_s"],
            "fastavro_decode_per_s": fastavro_per_s, "write_every": WRITE_EVERY, "synced": True,
            "checksum": checksum(got)}


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
