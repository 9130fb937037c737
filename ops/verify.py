"""`ledgerlog verify` and the start-up store check.

``verify(config)`` re-checks a data dir from the bottom up and returns a JSON-able report:

- ``storage``: every store (the log and each live projection) opens read-only with paranoid
  checks, every file its MANIFEST lists exists with the recorded size, and every key is read with
  block checksums verified. A bad store names the file and what to do.
- ``log``: every record of every topic partition: offsets contiguous from 0 to the end offset,
  values decode, keys and partitions match the partitioner; blocks chain (heights 1..n,
  prev_hash links from the genesis hash, hash = H(header), tx_root/tx_count, producer key and
  signature); every signed body's id and signature (PROTOCOL.md §2), share ids, ids unique per
  kind, and the cross references (a block's txids are confirmed once, with its height, index and
  hash; settlements name a registered provider and its owner; payouts a pool block).
- ``supply``: the balances of a fresh replay satisfy the supply invariant (PROTOCOL.md §6) and
  equal the write-side accounts kept in the log, account by account.
- ``projections``: each projection replayed from offset 0 into a scratch directory; the live
  store's content digest (recomputed from what it holds) must equal both its recorded digest and
  the replay's digest at the same log positions.

The report is ``{"ok", ..., "storage", "log", "supply", "projections", "seconds"}``; each section
is ``{"ok", "checked", "problems" (the first 50), "problem_count", ...}`` and each problem
``{"code", "where", "message", ...}``.

With no node running, verify first brings the live projections up to the end of the log (as
queries do). With a node running, every store is opened read-only (no lock is taken) and each
live projection is compared with a replay stopped at the positions the live store has reached.

``check_stores(config, mode)`` is the start-up guard: it raises CorruptStoreError naming the bad
file and the remedy, so the node never serves a corrupt store.

What reading every key does not see: RocksDB reads never load a table file's bloom-filter block
in ledgerlog's configuration (gets and scans return the same answers with it zeroed), so a byte
flipped inside that block (a few percent of a small table file, less of a large one) goes
unnoticed, and is harmless to every read. Every other byte of a table file, the MANIFEST and
CURRENT is covered, and so is the write-ahead log up to its last record (which a crash may
legitimately leave torn, so a bad last record is tolerated).
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterator

import orjson
from rocksdict import AccessType, DBRecoveryMode, Options, ReadOptions, Rdict

import projections
from engine import avro
from engine import storekeys as K
from engine import topics as T
from engine.chain import Chain, open_chain
from engine.config import Config
from engine.crypto import H, address_of, canonical_json, tx_root, verify as verify_sig
from engine.errors import ConfigError, CorruptStoreError, LedgerError, StoreLockedError
from engine.genesis import Genesis
from engine.partitioner import partition_for
from streams import layout
from streams.runner import Runner
from streams.store import ProjectionStore, entry_hash

__all__ = ["verify", "check_stores", "MAX_PROBLEMS", "AUTO_FULL_BYTES"]

#: Problems listed per section (all are counted in ``problem_count``).
MAX_PROBLEMS = 50
#: ``check_stores(mode="auto")`` reads every key when the stores' live files total at most this.
AUTO_FULL_BYTES = 256 * 1024 * 1024
_MOD = 1 << 128
_HEAD = struct.Struct(">qI")  # embedded log record value: timestamp, key length; key; value
_SIG_BATCH = 4096
_PARALLEL_MIN = 2048

#: Partition key of each event topic (what the admitter keys records by).
_RECORD_KEY: dict[str, Callable[[dict[str, Any]], str] | None] = {
    T.BLOCKS: None,  # chain_id, checked against genesis
    T.TRANSACTIONS: lambda ev: ev["body"]["sender"],
    T.MEMPOOL: lambda ev: ev["body"]["sender"],
    T.SHARES: lambda ev: ev["address"],
    T.PROVIDERS: lambda ev: ev["body"]["provider_id"],
    T.READINGS: lambda ev: ev["body"]["provider_id"],
    T.SETTLEMENTS: lambda ev: ev["body"]["provider_id"],
    T.PAYOUTS: lambda ev: ev["body"]["address"],
}
#: Topics in the order they are checked (cross references are resolved at the end).
_TOPIC_ORDER = (T.SCHEMAS, T.BLOCKS, T.TRANSACTIONS, T.MEMPOOL, T.PROVIDERS, T.READINGS,
                T.SETTLEMENTS, T.PAYOUTS, T.SHARES, T.CHECKPOINTS)


# -- report sections ----------------------------------------------------------------------------
class Section:
    """One part of the report: ok, how many things were checked, the problems found."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.checked = 0
        self.problems: list[dict[str, Any]] = []
        self.count = 0
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self._seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.count == 0

    def problem(self, code: str, where: str, message: str, **extra: Any) -> None:
        self.count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"code": code, "where": where, "message": message, **extra})

    def done(self) -> "Section":
        """Stop the section's clock."""
        if self._seconds is None:
            self._seconds = time.monotonic() - self._t0
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "checked": self.checked, "problems": self.problems,
                               "problem_count": self.count}
        out.update(self.extra)
        if self.notes:
            out["notes"] = self.notes
        out["seconds"] = round(self.done()._seconds or 0.0, 3)
        return out


# -- raw RocksDB access with checksums ------------------------------------------------------------
def _ro_options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(False)
    opts.set_paranoid_checks(True)
    # a torn last record (crash mid-append) is tolerated; a bad record before the tail is not
    # (the default, point-in-time recovery, would silently drop everything after it)
    opts.set_wal_recovery_mode(DBRecoveryMode.tolerate_corrupted_tail_records())
    opts.set_keep_log_file_num(3)
    return opts


def _open_ro(path: str) -> Rdict:
    return Rdict(path, _ro_options(), access_type=AccessType.read_only())


def _verified_reads() -> ReadOptions:
    ro = ReadOptions()
    ro.set_verify_checksums(True)
    ro.fill_cache(False)
    return ro


def _checked_items(db: Rdict, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) with ``prefix`` in key order, block checksums verified. Unlike a bare RocksDB
    iterator, which just stops at a bad block, this raises when the scan ended on an error."""
    it = db.iter(_verified_reads())
    if start is not None or prefix:
        it.seek(start if start is not None else prefix)
    else:
        it.seek_to_first()
    while it.valid():
        key = it.key()
        if prefix and not key.startswith(prefix):
            return
        yield key, it.value()
        it.next()
    it.status()  # raises if the iterator stopped on a corrupt block or an I/O error


_PATH_RE = re.compile(r"(/[^\s:,;'\"()]*?(?:\d+\.(?:sst|log|blob)|MANIFEST-\d+|CURRENT|OPTIONS-\d+))")
_HINT_RE = re.compile(r"The file (\S+?) may be corrupted")


def _classify(text: str, store_path: str) -> tuple[str, str]:
    """(problem code, file) for a RocksDB error text: the file it names (the store directory
    when it names none). RocksDB appends "The file MANIFEST-n may be corrupted" to any error met
    while replaying the MANIFEST; the table file it names first is the culprit then."""
    hinted = set(_HINT_RE.findall(text))
    found = [p.rstrip(".") for p in _PATH_RE.findall(text)]
    specific = [p for p in found if p not in hinted]
    low = text.lower()
    if not found and ("checksum" in low or "corrupt" in low):
        # RocksDB names no file when a write-ahead log record fails its checksum while the WAL is
        # replayed at open; the WALs are replayed oldest first and replay stops at the bad one
        found = _wal_files(store_path)[:1]
    file = (specific or found or [store_path])[0]
    if "size mismatch" in low:
        code = "TRUNCATED_FILE"
    elif "no such file" in low:
        code = "MISSING_FILE"
    elif "lock" in low and ("LOCK" in text or "hold" in low):
        code = "LOCKED"
    elif "corrupt" in low or "checksum" in low or "magic number" in low or "bad " in low:
        code = "CORRUPT_FILE"
    else:
        code = "STORAGE_ERROR"
    return code, file


def _tidy(message: str, file: str) -> str:
    """One line; without RocksDB's generic "MANIFEST may be corrupted" hint when the culprit is
    another file."""
    for hinted in _HINT_RE.findall(message):
        if hinted != file:
            message = message.replace(f"The file {hinted} may be corrupted.", "")
    return " ".join(message.split()).rstrip(" .")


def _wal_files(store_path: str) -> list[str]:
    """Non-empty write-ahead log files of a store, oldest first."""
    try:
        names = sorted(n for n in os.listdir(store_path) if re.fullmatch(r"\d+\.log", n))
    except OSError:
        return []
    return [os.path.join(store_path, n) for n in names if os.path.getsize(os.path.join(store_path, n)) > 0]


def _remedy(kind: str, name: str, path: str) -> str:
    if kind == "log":
        return ("the log is the source of truth and cannot be rebuilt from anything else: stop the "
                f"node, restore {path} from a snapshot (`ledgerlog snapshot list`, then `ledgerlog "
                "snapshot restore`) or from your backup, then run `ledgerlog verify`")
    return (f"projections are rebuilt from the log: with the node stopped, run `ledgerlog reproject "
            f"{name}` (it replaces the damaged store), then start the node")


# -- storage --------------------------------------------------------------------------------------
def _store_list(config: Config) -> list[tuple[str, str, str]]:
    """(name, kind, path) of the log (when embedded) and of each live projection store."""
    out = []
    if config.log_url == "embedded":
        out.append(("log", "log", config.log_path))
    for name, module in projections.ALL.items():
        path, _version = layout.live_path(config.projections_dir, module)
        out.append((name, "projection", path))
    return out


def _check_store(name: str, kind: str, path: str, full: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check one store; returns (facts, problems). Problems carry store, path, file, remedy."""
    info: dict[str, Any] = {"kind": kind, "path": path}
    problems: list[dict[str, Any]] = []

    def bad(code: str, file: str, message: str) -> None:
        problems.append({"code": code, "where": f"{name} store", "message": _tidy(message, file),
                         "store": name, "path": path, "file": file, "remedy": _remedy(kind, name, path)})

    current = os.path.join(path, "CURRENT")
    if not os.path.isdir(path) or (kind == "projection" and not os.listdir(path)):
        if kind == "log":
            bad("MISSING_STORE", path, f"the log store {path} does not exist")
        else:
            info["missing"] = True  # not built yet: it is folded from the log when opened
        return info, problems
    try:
        with open(current, "rb") as f:
            manifest = f.read().decode("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        bad("MISSING_FILE" if isinstance(exc, FileNotFoundError) else "CORRUPT_FILE", current,
            f"{current} cannot be read: {exc}")
        return info, problems
    if not re.fullmatch(r"MANIFEST-\d+", manifest):
        bad("CORRUPT_FILE", current, f"{current} does not name a MANIFEST file (holds {manifest[:40]!r})")
        return info, problems
    if not os.path.isfile(os.path.join(path, manifest)):
        bad("MISSING_FILE", os.path.join(path, manifest), f"{manifest}, named by CURRENT, is missing")
        return info, problems
    # A running node may flush, compact and delete files between our listing and our look: a
    # finding is only reported when a second, fresh open sees it too.
    for attempt in (1, 2):
        try:
            db = _open_ro(path)
        except Exception as exc:  # rocksdict raises plain Exception
            if attempt == 1:
                time.sleep(0.2)
                continue
            code, file = _classify(str(exc), path)
            bad(code, file, f"cannot open: {exc}".strip())
            return info, problems
        files = db.live_files()
        damaged = _damaged_files(path, files)
        if not damaged or attempt == 2:
            break
        db.close()
    try:
        info["files"] = len(files)
        info["bytes"] = sum(f["size"] for f in files)
        for code, fpath, message in damaged:
            bad(code, fpath, message)
        try:
            fmt = db.get(K.FORMAT_KEY)
        except Exception as exc:
            code, file = _classify(str(exc), path)
            bad(code, file, f"reading the format key failed: {exc}")
            return info, problems
        want = K.LOG_FORMAT if kind == "log" else K.PROJECTION_FORMAT
        if fmt != want:
            bad("FORMAT", path, f"format key is {fmt!r}, expected {want!r}")
        if full and not problems:
            keys = nbytes = 0
            digest = 0
            try:
                for k, v in _checked_items(db):
                    keys += 1
                    nbytes += len(k) + len(v)
                    if kind == "projection" and not k.startswith(b"\x00"):
                        digest += entry_hash(k, v)
            except Exception as exc:
                code, file = _classify(str(exc), path)
                bad(code, file, f"reading every key failed after {keys} keys: {exc}")
            info["keys"], info["key_bytes"] = keys, nbytes
            if kind == "projection" and not problems:
                info["content_digest"] = f"{digest % _MOD:032x}"
    finally:
        db.close()
    return info, problems


def _damaged_files(path: str, files: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(code, file, message) for table files the MANIFEST lists that are missing or resized."""
    out = []
    for f in files:
        fpath = path + f["name"] if f["name"].startswith("/") else os.path.join(path, f["name"])
        try:
            size = os.path.getsize(fpath)
        except OSError:
            out.append(("MISSING_FILE", fpath, f"{os.path.basename(fpath)} is listed in the MANIFEST but missing"))
            continue
        if size != f["size"]:
            out.append(("TRUNCATED_FILE" if size < f["size"] else "CORRUPT_FILE", fpath,
                        f"{os.path.basename(fpath)} has {size} bytes; the MANIFEST records {f['size']}"))
    return out


def _storage_section(config: Config, full: bool = True) -> tuple[Section, dict[str, dict[str, Any]]]:
    sec = Section("storage")
    stores: dict[str, dict[str, Any]] = {}
    if config.log_url != "embedded":
        sec.notes.append(f"the log is {config.log_url}, not embedded: only projection stores are checked")
    for name, kind, path in _store_list(config):
        info, problems = _check_store(name, kind, path, full)
        info["ok"] = not problems
        stores[name] = info
        if not info.get("missing"):
            sec.checked += 1
        for p in problems:
            sec.problem(p.pop("code"), p.pop("where"), p.pop("message"), **p)
    sec.extra["stores"] = {n: {k: v for k, v in i.items() if k != "content_digest"} for n, i in stores.items()}
    return sec.done(), stores


def check_stores(config: Config, mode: str = "quick") -> dict[str, Any]:
    """The start-up guard: raise CorruptStoreError (naming the bad file and what to do) unless
    every store of the data dir is sound.

    ``quick``: each store's CURRENT names a MANIFEST that exists, the store opens (RocksDB replays
    the MANIFEST and WAL with paranoid checks and opens every table file: footers, index and
    meta blocks are checksummed), and every table file the MANIFEST lists exists with the
    recorded size. ``full``: also reads every key with block checksums verified, which finds a
    flipped byte anywhere but in a table file's (unused) bloom-filter block, see the module doc.
    ``auto``: full when the stores' live files total at most AUTO_FULL_BYTES, else quick.

    Returns ``{"mode", "stores": {name: facts}, "seconds"}``. The raised error carries the list
    of problems as ``.problems``. A data dir without a chain passes (opening it fails later with
    its own message)."""
    if mode not in ("quick", "full", "auto"):
        raise ValueError(f"mode must be quick, full or auto, not {mode!r}")
    t0 = time.monotonic()
    if not os.path.exists(config.genesis_path):
        return {"mode": mode, "stores": {}, "seconds": 0.0}
    problems: list[dict[str, Any]] = []
    stores: dict[str, dict[str, Any]] = {}
    for name, kind, path in _store_list(config):
        info, found = _check_store(name, kind, path, full=mode == "full")
        stores[name], problems = info, problems + found
    if mode == "auto" and not problems:
        total = sum(i.get("bytes", 0) for i in stores.values())
        if total <= AUTO_FULL_BYTES:
            for name, kind, path in _store_list(config):
                info, found = _check_store(name, kind, path, full=True)
                stores[name], problems = info, problems + found
    if problems:
        parts, remedies = [], {}
        for p in problems:
            parts.append(f"{p['store']} store: {p['file']}: {p['code']}: {p['message']}")
            remedies.setdefault(p["store"], p["remedy"])
        todo = "; ".join(f"{store}: {r}" if len(remedies) > 1 else r for store, r in remedies.items())
        exc = CorruptStoreError(f"refusing to start on a damaged store in {config.data_dir}: "
                                + "; ".join(parts) + f". What to do: {todo}")
        exc.problems = problems  # type: ignore[attr-defined]
        raise exc
    return {"mode": mode, "stores": stores, "seconds": round(time.monotonic() - t0, 3)}


# -- the log --------------------------------------------------------------------------------------
def _verify_batch(batch: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    return [verify_sig(pk, msg, sig) for pk, msg, sig in batch]


class _Signatures:
    """Signature checks queued in batches; with several workers the batches run in a process pool
    while this process goes on decoding records."""

    def __init__(self, sec: Section, workers: int, enabled: bool) -> None:
        self.sec = sec
        self.workers = workers
        self.enabled = enabled
        self.count = 0
        self._work: list[tuple[bytes, bytes, bytes]] = []
        self._where: list[tuple[str, str]] = []
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[Future[list[bool]], list[tuple[str, str]]]] = deque()

    def add(self, pubkey: str, message: bytes, signature: str, where: str, what: str) -> None:
        if not self.enabled:
            return
        try:
            item = (bytes.fromhex(pubkey), message, bytes.fromhex(signature))
        except (ValueError, TypeError):
            self.sec.problem("BAD_SIGNATURE", where, f"{what}: pubkey or signature is not hex")
            return
        self._work.append(item)
        self._where.append((where, what))
        if len(self._work) >= _SIG_BATCH:
            self._submit()

    def _submit(self) -> None:
        work, where = self._work, self._where
        self._work, self._where = [], []
        if not work:
            return
        if self.workers > 1:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers)
            self._pending.append((self._pool.submit(_verify_batch, work), where))
            while len(self._pending) > 2 * self.workers:
                self._collect(*self._pending.popleft())
        else:
            self._report(_verify_batch(work), where)

    def _collect(self, future: Future[list[bool]], where: list[tuple[str, str]]) -> None:
        self._report(future.result(), where)

    def _report(self, results: list[bool], where: list[tuple[str, str]]) -> None:
        self.count += len(results)
        for ok, (w, what) in zip(results, where):
            if not ok:
                self.sec.problem("BAD_SIGNATURE", w, f"{what}: signature does not verify")

    def flush(self) -> None:
        """Run what is queued and wait for every batch."""
        if self._pool is None and len(self._work) < _PARALLEL_MIN:
            work, where = self._work, self._where
            self._work, self._where = [], []
            self._report(_verify_batch(work), where)
        else:
            self._submit()
        while self._pending:
            self._collect(*self._pending.popleft())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class _LogChecker:
    """Reads every record once, checks it on its own, and keeps what the cross checks need."""

    def __init__(self, chain: Chain, sec: Section, signatures: bool, workers: int) -> None:
        self.chain = chain
        self.log = chain.log
        self.codec = chain.codec
        self.g: Genesis = chain.genesis
        self.sec = sec
        self.sigs = _Signatures(sec, workers, signatures)
        self.topics = self.log.topics()
        # blocks
        self.height = 0
        self.tip_hash = self.g.hash
        self.tip_ts = self.g.timestamp
        self.blocks: dict[int, tuple[str, str, int, str]] = {}  # height -> hash, producer, fees, where
        self.block_hashes: set[str] = set()
        self.block_txids: dict[str, tuple[int, int, str]] = {}  # txid -> height, index, block hash
        # other kinds
        self.confirmed: dict[str, tuple[int, int, str, int, str]] = {}  # txid -> h, i, hash, fee, where
        self.submitted: set[str] = set()
        self.reading_ids: set[str] = set()
        self.readings: list[tuple[str, str]] = []  # provider_id, where
        self.providers: dict[str, str] = {}  # provider_id -> owner
        self.settlements: dict[str, tuple[str, str, str]] = {}  # id -> provider_id, owner, where
        self.payouts: dict[str, tuple[int, str]] = {}  # id -> round_height, where
        self.share_ids: set[str] = set()
        self.counts: dict[str, int] = {}
        self._placement: dict[tuple[bytes, str], int] = {}  # keys repeat: murmur2 once per key
        self.read_errors = 0  # storage errors met while reading records

    def _partition_of(self, key: bytes, topic: str) -> int:
        p = self._placement.get((key, topic))
        if p is None:
            p = self._placement[(key, topic)] = partition_for(key, self.topics[topic])
        return p

    # -- reading ----------------------------------------------------------------------------
    def run(self) -> None:
        order = [t for t in _TOPIC_ORDER if t in self.topics] + sorted(set(self.topics) - set(_TOPIC_ORDER))
        for topic in order:
            ends = self.log.end_offsets(topic)
            for p, end in enumerate(ends):
                self._partition(topic, p, end)
        self._stray_records()
        self.sigs.flush()
        self.sigs.close()
        self._cross_checks()
        self.sec.extra.update({"records": self.counts, "height": self.height, "tip_hash": self.tip_hash,
                               "signatures_verified": self.sigs.count if self.sigs.enabled else None})

    def _records(self, topic: str, p: int, end: int) -> Iterator[tuple[int, bytes, int, bytes]]:
        """(offset, key, timestamp, value) of a partition; gaps and strays become problems."""
        raw = getattr(self.log, "raw", None)
        where = f"{topic}[{p}]"
        if raw is None:  # another backend: through the log interface
            expected = 0
            for rec in self.log.scan(topic, p, 0, end):
                if rec.offset != expected:
                    self.sec.problem("OFFSET_GAP", where, f"offsets {expected}..{rec.offset - 1} are missing")
                expected = rec.offset + 1
                yield rec.offset, rec.key, rec.timestamp, rec.value
            if expected < end:
                self.sec.problem("OFFSET_GAP", where, f"offsets {expected}..{end - 1} are missing (end offset {end})")
            return
        db = raw()
        prefix = K.record_prefix(topic, p)
        n = len(prefix)
        expected = 0
        try:
            for key, val in _checked_items(db, prefix):
                if len(key) != n + 8:
                    self.sec.problem("BAD_RECORD", where, f"record key {key!r} is not <prefix><offset:8>")
                    continue
                off = K.U64.unpack_from(key, n)[0]
                if off != expected:
                    self.sec.problem("OFFSET_GAP", where, f"offsets {expected}..{off - 1} are missing")
                expected = off + 1
                if off >= end:
                    self.sec.problem("BEYOND_END", f"{where}@{off}", f"record at or past the end offset {end}")
                if len(val) < _HEAD.size or len(val) < _HEAD.size + _HEAD.unpack_from(val)[1]:
                    self.sec.problem("BAD_RECORD", f"{where}@{off}", "record value is shorter than its header says")
                    continue
                ts, klen = _HEAD.unpack_from(val)
                start = _HEAD.size
                yield off, val[start:start + klen], ts, val[start + klen:]
        except Exception as exc:
            self.read_errors += 1
            code, file = _classify(str(exc), self.chain.config.log_path)
            self.sec.problem(code, f"{where}@{expected}", f"reading the log failed: {exc}", file=file,
                             remedy=_remedy("log", "log", self.chain.config.log_path))
            return
        if expected < end:
            self.sec.problem("OFFSET_GAP", where, f"offsets {expected}..{end - 1} are missing (end offset {end})")

    def _stray_records(self) -> None:
        """Records under a topic partition the log does not have."""
        raw = getattr(self.log, "raw", None)
        if raw is None:
            return
        it = raw().iter(_verified_reads())
        it.seek(b"r/")
        while it.valid() and it.key().startswith(b"r/"):
            key = it.key()
            topic_b, part = key[2:-13], key[-12:-8]
            topic = topic_b.decode(errors="replace")
            p = int.from_bytes(part, "big") if len(part) == 4 else -1
            if len(key) < 15 or key[-13:-12] != b"\x00" or p >= self.topics.get(topic, 0) or p < 0:
                self.sec.problem("STRAY_RECORD", f"{topic}[{p}]", f"record key {key[:80]!r} belongs to no topic partition")
                it.next()
                continue
            it.seek(K.record_prefix(topic, p) + b"\xff" * 9)  # past this partition

    def _partition(self, topic: str, p: int, end: int) -> None:
        n = 0
        for off, key, ts, value in self._records(topic, p, end):
            n += 1
            self._record(topic, p, off, key, ts, value)
        self.sec.checked += n
        self.counts[topic] = self.counts.get(topic, 0) + n

    def _record(self, topic: str, p: int, off: int, key: bytes, ts: int, value: bytes) -> None:
        where = f"{topic}[{p}]@{off}"
        if topic == T.SCHEMAS:
            try:
                doc = orjson.loads(value)
                avro.parse_text(doc["schema"])
                if not {"subject", "version", "id"} <= set(doc):
                    raise ValueError("missing subject, version or id")
            except Exception as exc:
                self.sec.problem("UNDECODABLE", where, f"schema record does not decode: {exc}")
            return
        if topic not in T.EVENT_SCHEMA:
            return  # opaque to verify (e.g. _checkpoints): contiguity only
        try:
            ev = self.codec.decode(topic, value)
        except Exception as exc:
            self.sec.problem("UNDECODABLE", where, f"value does not decode: {type(exc).__name__}: {exc}")
            return
        want_key = self.g.chain_id if topic == T.BLOCKS else _RECORD_KEY[topic](ev)  # type: ignore[misc]
        if key != want_key.encode():
            self.sec.problem("WRONG_KEY", where, f"record key {key[:80]!r}, the event's is {want_key!r}")
        elif self._partition_of(key, topic) != p:
            self.sec.problem("WRONG_PARTITION", where, f"key {want_key!r} belongs in another partition")
        try:
            getattr(self, "_" + topic.replace(".", "_"))(where, ev, ts)
        except (KeyError, TypeError, ValueError) as exc:
            self.sec.problem("BAD_EVENT", where, f"event is not well formed: {type(exc).__name__}: {exc}")

    # -- per kind ---------------------------------------------------------------------------
    def _canonical(self, name: str, body: dict[str, Any], where: str) -> bytes | None:
        try:
            return avro.encode(name, body)
        except Exception as exc:
            self.sec.problem("BAD_EVENT", where, f"{name} does not encode: {exc}")
            return None

    def _chain_id(self, body: dict[str, Any], where: str) -> None:
        if body["chain_id"] != self.g.chain_id:
            self.sec.problem("WRONG_CHAIN", where, f"chain_id {body['chain_id']!r} is not {self.g.chain_id!r}")

    def _signer(self, ev: dict[str, Any], address: str, where: str, what: str) -> None:
        try:
            have = address_of(bytes.fromhex(ev["pubkey"]))
        except ValueError:
            have = None
        if have != address:
            self.sec.problem("BAD_SIGNATURE", where, f"{what}: pubkey is not the key of {address}")

    def _timestamp(self, ts: int, want: int, where: str) -> None:
        if ts != want:
            self.sec.problem("BAD_TIMESTAMP", where, f"record timestamp {ts}, the event's is {want}")

    def _unique(self, seen: set[str], ident: str, where: str, what: str) -> None:
        if ident in seen:
            self.sec.problem("DUPLICATE_ID", where, f"{what} {ident} appears more than once")
        seen.add(ident)

    def _ledger_blocks(self, where: str, ev: dict[str, Any], ts: int) -> None:
        hdr = ev["header"]
        self._chain_id(hdr, where)
        canon = self._canonical("BlockHeader", hdr, where)
        block_hash = H(canon) if canon is not None else ev["hash"]
        h = hdr["height"]
        where = f"{where} (height {h})"
        if ev["hash"] != block_hash:
            self.sec.problem("BAD_HASH", where, f"recorded hash {ev['hash']} but H(header) is {block_hash}")
        self._unique(self.block_hashes, block_hash, where, "block hash")
        if h != self.height + 1:
            self.sec.problem("BAD_HEIGHT", where, f"height {h} follows height {self.height}")
        if hdr["prev_hash"] != self.tip_hash:
            self.sec.problem("BAD_PREV_HASH", where, f"prev_hash {hdr['prev_hash']} is not the previous "
                                                     f"block's hash {self.tip_hash}")
        if hdr["timestamp"] <= self.tip_ts:
            self.sec.problem("BAD_TIMESTAMP", where, f"timestamp {hdr['timestamp']} is not after {self.tip_ts}")
        self._timestamp(ts, hdr["timestamp"], where)
        if ev["pubkey"] not in self.g.producers:
            self.sec.problem("UNKNOWN_PRODUCER", where, f"producer key {ev['pubkey']} is not in genesis")
        self._signer(ev, hdr["producer"], where, "header")
        if canon is not None:
            self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "header")
        txids = ev["txids"]
        if hdr["tx_count"] != len(txids):
            self.sec.problem("BAD_TX_ROOT", where, f"tx_count {hdr['tx_count']} but {len(txids)} txids")
        try:
            root = tx_root(txids)
        except ValueError:
            root = "<txids are not hex>"
        if root != hdr["tx_root"]:
            self.sec.problem("BAD_TX_ROOT", where, f"tx_root {hdr['tx_root']} but the txids give {root}")
        if ev["reward"] != self.g.block_reward:
            self.sec.problem("BAD_REWARD", where, f"reward {ev['reward']}, genesis says {self.g.block_reward}")
        if h in self.blocks:
            self.sec.problem("DUPLICATE_ID", where, f"a second block at height {h}")
        self.blocks[h] = (block_hash, hdr["producer"], ev["fees"], where)
        for i, txid in enumerate(txids):
            if txid in self.block_txids:
                self.sec.problem("DUPLICATE_ID", where, f"txid {txid} is also in block {self.block_txids[txid][0]}")
                continue
            self.block_txids[txid] = (h, i, block_hash)
        self.height, self.tip_hash, self.tip_ts = h, block_hash, hdr["timestamp"]

    def _transaction(self, where: str, ev: dict[str, Any], ts: int, what: str) -> str | None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("TransactionBody", body, where)
        if canon is None:
            return None
        txid = H(canon)
        if ev["txid"] != txid:
            self.sec.problem("BAD_ID", where, f"txid {ev['txid']} but H(body) is {txid}")
        self._signer(ev, body["sender"], where, what)
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, what)
        if body["amount"] <= 0 or body["fee"] < self.g.min_fee:
            self.sec.problem("BAD_AMOUNT", where, f"amount {body['amount']} / fee {body['fee']} is not admissible")
        self._timestamp(ts, body["timestamp"], where)
        return txid

    def _ledger_transactions(self, where: str, ev: dict[str, Any], ts: int) -> None:
        txid = self._transaction(where, ev, ts, "transaction")
        if txid is None:
            return
        if txid in self.confirmed:
            self.sec.problem("DUPLICATE_ID", where, f"txid {txid} is confirmed more than once "
                                                    f"(also {self.confirmed[txid][4]})")
            return
        self.confirmed[txid] = (ev["height"], ev["index"], ev["block_hash"], ev["body"]["fee"], where)

    def _ledger_mempool(self, where: str, ev: dict[str, Any], ts: int) -> None:
        txid = self._transaction(where, ev, ts, "mempool transaction")
        if txid is not None:
            self._unique(self.submitted, txid, where, "submitted txid")

    def _pool_shares(self, where: str, ev: dict[str, Any], ts: int) -> None:
        line = {"type": "share", "worker": ev["worker"], "job_id": ev["job_id"], "height": ev["height"],
                "difficulty": ev["difficulty"], "accepted": ev["accepted"], "timestamp": ev["timestamp"]}
        share_id = H(canonical_json(line))
        if ev["share_id"] != share_id:
            self.sec.problem("BAD_ID", where, f"share_id {ev['share_id']} but the share line hashes to {share_id}")
        self._unique(self.share_ids, share_id, where, "share id")
        if ev["worker"].split(".", 1)[0] != ev["address"]:
            self.sec.problem("BAD_EVENT", where, f"address {ev['address']} is not worker {ev['worker']}'s")
        if ev["difficulty"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, f"difficulty {ev['difficulty']} is not positive")
        self._timestamp(ts, ev["timestamp"], where)

    def _energy_readings(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("ReadingBody", body, where)
        if canon is None:
            return
        reading_id = H(canon)
        if ev["reading_id"] != reading_id:
            self.sec.problem("BAD_ID", where, f"reading_id {ev['reading_id']} but H(body) is {reading_id}")
        self._unique(self.reading_ids, reading_id, where, "reading id")
        if ev["pubkey"] not in self.g.oracles:
            self.sec.problem("UNKNOWN_ORACLE", where, f"oracle key {ev['pubkey']} is not in genesis")
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "reading")
        if body["milli_kwh"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, f"milli_kwh {body['milli_kwh']} is not positive")
        self.readings.append((body["provider_id"], where))
        self._timestamp(ts, body["timestamp"], where)

    def _energy_providers(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("ProviderBody", body, where)
        if canon is None:
            return
        self._signer(ev, body["owner"], where, "provider")
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "provider")
        pid = body["provider_id"]
        if pid in self.providers:
            self.sec.problem("DUPLICATE_ID", where, f"provider_id {pid!r} is registered more than once")
        self.providers[pid] = body["owner"]
        if body["stake"] < self.g.energy.min_stake or body["price_per_kwh"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, f"stake {body['stake']} / price {body['price_per_kwh']} is not admissible")
        self._timestamp(ts, body["timestamp"], where)

    def _energy_settlements(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("SettlementBody", body, where)
        if canon is None:
            return
        self._signer(ev, self.g.energy.treasury, where, "settlement")
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "settlement")
        sid = body["settlement_id"]
        if sid in self.settlements:
            self.sec.problem("DUPLICATE_ID", where, f"settlement_id {sid!r} appears more than once")
        self.settlements[sid] = (body["provider_id"], ev["owner"], where)
        if body["amount"] <= 0 or body["milli_kwh"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, "amount and milli_kwh must be positive")
        self._timestamp(ts, body["timestamp"], where)

    def _pool_payouts(self, where: str, ev: dict[str, Any], ts: int) -> None:
        body = ev["body"]
        self._chain_id(body, where)
        canon = self._canonical("PayoutBody", body, where)
        if canon is None:
            return
        self._signer(ev, self.g.pool.address, where, "payout")
        self.sigs.add(ev["pubkey"], canon, ev["signature"], where, "payout")
        pid = body["payout_id"]
        if pid in self.payouts:
            self.sec.problem("DUPLICATE_ID", where, f"payout_id {pid!r} appears more than once")
        self.payouts[pid] = (body["round_height"], where)
        if body["amount"] <= 0:
            self.sec.problem("BAD_AMOUNT", where, f"amount {body['amount']} is not positive")
        self._timestamp(ts, body["timestamp"], where)

    # -- cross references -------------------------------------------------------------------
    def _cross_checks(self) -> None:
        fees: dict[int, int] = {}
        for txid, (h, i, block_hash) in self.block_txids.items():
            found = self.confirmed.pop(txid, None)
            if found is None:
                self.sec.problem("MISSING_TX", self.blocks[h][3], f"txid {txid} (index {i}) is not on {T.TRANSACTIONS}")
                continue
            if found[:3] != (h, i, block_hash):
                self.sec.problem("TX_MISMATCH", found[4], f"txid {txid} says height {found[0]} index {found[1]} "
                                                          f"block {found[2]}; the block has it at height {h} index {i}")
            fees[h] = fees.get(h, 0) + found[3]
        for txid, found in self.confirmed.items():
            self.sec.problem("ORPHAN_TX", found[4], f"txid {txid} is confirmed but no block lists it")
        for h, (_hash, _producer, block_fees, where) in self.blocks.items():
            if block_fees != fees.get(h, 0):
                self.sec.problem("BAD_FEES", where, f"fees {block_fees}, its transactions pay {fees.get(h, 0)}")
        for pid, where in self.readings:
            if pid not in self.providers:
                self.sec.problem("UNKNOWN_PROVIDER", where, f"reading for unregistered provider {pid!r}")
        for sid, (pid, owner, where) in self.settlements.items():
            if pid not in self.providers:
                self.sec.problem("UNKNOWN_PROVIDER", where, f"settlement {sid!r} for unregistered provider {pid!r}")
            elif self.providers[pid] != owner:
                self.sec.problem("BAD_EVENT", where, f"settlement {sid!r} pays {owner}, provider {pid!r} "
                                                     f"is owned by {self.providers[pid]}")
        for pid, (round_height, where) in self.payouts.items():
            block = self.blocks.get(round_height)
            if block is None or block[1] != self.g.pool.address:
                self.sec.problem("BAD_ROUND", where, f"payout {pid!r}: height {round_height} is not a pool block")
        if self.log.atomic_state:
            raw = self.log.state_get(b"tip")
            tip = orjson.loads(raw) if raw else None
            if tip is None or tip[0] != self.height or tip[1] != self.tip_hash:
                self.sec.problem("WRITE_STATE_MISMATCH", "write-side tip",
                                 f"write-side tip {tip and tip[:2]} is not the last block on the log "
                                 f"({self.height}, {self.tip_hash})")


# -- supply ---------------------------------------------------------------------------------------
def _supply_section(chain: Chain, balances_store: ProjectionStore | None, height: int) -> Section:
    sec = Section("supply")
    g = chain.genesis
    expected = sum(g.allocations.values()) + g.block_reward * height
    sec.extra.update({"height": height, "expected": expected})
    if balances_store is None:
        sec.problem("SKIPPED", "balances replay", "the balances replay did not complete")
        return sec
    proj: dict[str, tuple[int, int, int]] = {}
    for k, v in _checked_items(balances_store.db, b"a/"):
        b, s, n, _h = orjson.loads(v)
        proj[k[2:].decode()] = (b, s, n)
    total = sum(b + s for b, s, _n in proj.values())
    sec.extra["total"] = total
    if total != expected:
        sec.problem("SUPPLY", "balances replay", f"sum(balance) + sum(staked) = {total}, but allocations + "
                                                 f"block_reward x height = {expected} (height {height})")
    for addr, (b, s, _n) in proj.items():
        if b < 0 or s < 0:
            sec.problem("NEGATIVE_BALANCE", f"account {addr}", f"balance {b}, staked {s}")
    if not chain.log.atomic_state:
        sec.notes.append("the log keeps no write-side state: replay checked on its own")
        sec.checked = len(proj)
        return sec
    ws: dict[str, tuple[int, int, int]] = {}
    for k, v in chain.log.state_items(b"a/"):
        b, s, n = orjson.loads(v)
        ws[k[2:].decode()] = (b, s, n)
    ws_total = sum(b + s for b, s, _n in ws.values())
    sec.extra["write_side_total"] = ws_total
    if ws_total != expected:
        sec.problem("SUPPLY", "write-side state", f"write-side accounts hold {ws_total}, expected {expected}")
    for addr in sorted(set(proj) | set(ws)):
        a, b = ws.get(addr, (0, 0, 0)), proj.get(addr, (0, 0, 0))
        if a != b:
            sec.problem("ACCOUNT_MISMATCH", f"account {addr}",
                        f"write side (balance, staked, nonce) = {list(a)}, fresh replay = {list(b)}")
    sec.checked = len(set(proj) | set(ws))
    return sec


# -- projections ----------------------------------------------------------------------------------
class _CappedLog:
    """A view of a log that ends at given positions, so a replay stops where a live store is."""

    def __init__(self, log: Any, caps: dict[tuple[str, int], int]) -> None:
        self._log = log
        self._caps = caps

    def end_offsets(self, topic: str) -> list[int]:
        return [min(end, self._caps.get((topic, p), 0)) for p, end in enumerate(self._log.end_offsets(topic))]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _content_digest(db: Rdict) -> tuple[int, int]:
    """(digest of the state keys, number of state keys), read with checksums verified."""
    digest = n = 0
    for k, v in _checked_items(db):
        if not k.startswith(b"\x00"):
            digest += entry_hash(k, v)
            n += 1
    return digest % _MOD, n


def _show(b: bytes | None, limit: int = 120) -> str | None:
    if b is None:
        return None
    text = b.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= limit else text[:limit] + "..."


def _diff(live: Rdict, replay: Rdict, limit: int = 5) -> list[dict[str, Any]]:
    """The first state keys whose values differ between two stores."""
    out: list[dict[str, Any]] = []
    a, b = live.iter(_verified_reads()), replay.iter(_verified_reads())
    a.seek(b"\x01")
    b.seek(b"\x01")
    while (a.valid() or b.valid()) and len(out) < limit:
        ka = a.key() if a.valid() else None
        kb = b.key() if b.valid() else None
        if kb is None or (ka is not None and ka < kb):
            out.append({"key": _show(ka), "live": _show(a.value()), "replay": None})
            a.next()
        elif ka is None or kb < ka:
            out.append({"key": _show(kb), "live": None, "replay": _show(b.value())})
            b.next()
        else:
            if a.value() != b.value():
                out.append({"key": _show(ka), "live": _show(a.value()), "replay": _show(b.value())})
            a.next()
            b.next()
    return out


def _projections_section(chain: Chain, config: Config, replay: Runner, scratch: str,
                         storage: dict[str, dict[str, Any]], node_running: bool) -> Section:
    sec = Section("projections")
    result: dict[str, Any] = {}
    for name, module in projections.ALL.items():
        entry: dict[str, Any] = result.setdefault(name, {})
        handle = replay.handles[name]
        replay_digest = handle.store.digest
        entry["replay_digest"] = f"{replay_digest:032x}"
        recomputed, _n = _content_digest(handle.store.db)
        if recomputed != replay_digest:  # the store's incremental digest disagrees with its content
            sec.problem("REPLAY_DIGEST", f"{name} replay", f"the replay's recorded digest {replay_digest:032x} "
                                                           f"is not its content's {recomputed:032x}")
        path, version = layout.live_path(config.projections_dir, module)
        entry.update({"live_path": path, "live_version": version})
        if not ProjectionStore.exists(path):
            sec.notes.append(f"{name}: no live store yet at {path} (it is folded from the log when first opened)")
            entry["compared"] = False
            continue
        if not storage.get(name, {}).get("ok", True):
            sec.notes.append(f"{name}: live store not compared: it is corrupt (see storage)")
            entry["compared"] = False
            continue
        if version != module.VERSION:
            sec.notes.append(f"{name}: live store was built by version {version}, the code folds version "
                             f"{module.VERSION}: not compared (run `ledgerlog reproject {name}`)")
            entry["compared"] = False
            continue
        sec.checked += 1
        try:
            live = ProjectionStore(path, read_only=True)
        except LedgerError as exc:
            sec.problem("STORAGE_ERROR", f"{name} live store", f"cannot open {path}: {exc}")
            continue
        # With a node folding meanwhile, the live store may be ahead of the log snapshot opened
        # at the start: compare against a log opened after the store (never older than it).
        cur = chain
        if node_running:
            try:
                cur = open_chain(config, read_only=True)
            except LedgerError as exc:
                live.close()
                sec.problem("STORAGE_ERROR", "log", f"cannot reopen the log: {exc}")
                continue
        try:
            positions = live.positions()
            recorded = live.digest
            try:
                content, nkeys = _content_digest(live.db)
            except Exception as exc:
                code, file = _classify(str(exc), path)
                sec.problem(code, f"{name} live store", f"reading it failed: {exc}", file=file,
                            remedy=_remedy("projection", name, path))
                continue
            ends = {(t, p): end for t in module.TOPICS for p, end in enumerate(cur.log.end_offsets(t))}
            at_end = all(positions.get(tp, 0) == end for tp, end in ends.items())
            # the full replay stands for exactly the positions of the log snapshot it folded
            at_replay = all(positions.get((t, p), 0) == end for t in module.TOPICS
                            for p, end in enumerate(chain.log.end_offsets(t)))
            ahead = {f"{t}[{p}]": (positions[(t, p)], end) for (t, p), end in ends.items()
                     if positions.get((t, p), 0) > end}
            entry.update({"live_digest": f"{recorded:032x}", "live_content_digest": f"{content:032x}",
                          "live_keys": nkeys, "live_height": live.height, "at_log_end": at_end})
            if recorded != content:
                sec.problem("RECORDED_DIGEST_MISMATCH", f"{name} live store",
                            f"its state hashes to {content:032x} but its recorded digest is {recorded:032x}: "
                            "its content was changed outside the fold (tampering or corruption)",
                            remedy=_remedy("projection", name, path))
            if ahead:
                sec.problem("POSITIONS_AHEAD", f"{name} live store",
                            f"positions past the end of the log: {ahead}", remedy=_remedy("projection", name, path))
                continue
            against, against_db, capped = replay_digest, handle.store.db, None
            try:
                if not at_replay:  # a running node (or an interrupted fold) holds it elsewhere
                    capped = Runner(_CappedLog(cur.log, positions), cur.codec, cur.genesis,  # type: ignore[arg-type]
                                    scratch, names=[name], paths={name: os.path.join(scratch, f"{name}-at-live")})
                    capped.catch_up()
                    against, against_db = capped.handles[name].store.digest, capped.handles[name].store.db
                    entry["compared_at"] = "live positions"
                else:
                    entry["compared_at"] = "log end"
                entry["compared"] = True
                if content != against:
                    sec.problem("DIGEST_MISMATCH", f"{name} live store",
                                f"live state digest {content:032x} differs from a fresh replay's {against:032x}",
                                differences=_diff(live.db, against_db), remedy=_remedy("projection", name, path))
            finally:
                if capped is not None:
                    capped.close()
        finally:
            live.close()
            if cur is not chain:
                cur.close()
    sec.extra["projections"] = result
    if node_running:
        sec.notes.append("a node is running: live stores were read read-only and compared with a replay "
                         "stopped at their own positions")
    return sec


# -- the whole check ------------------------------------------------------------------------------
def _skipped(name: str, why: str) -> Section:
    sec = Section(name)
    sec.problem("SKIPPED", name, why)
    return sec


def _node_running(config: Config) -> str | None:
    from .nodeclient import NodeClient
    client = NodeClient.find(config)
    if client is None:
        return None
    client.close()
    return client.url


def _catch_up_live(chain: Chain, config: Config, storage: dict[str, dict[str, Any]]) -> list[str]:
    """Bring the sound, current-version live projections to the end of the log (no node runs)."""
    names = []
    for name, module in projections.ALL.items():
        _path, version = layout.live_path(config.projections_dir, module)
        if storage.get(name, {}).get("ok", True) and version == module.VERSION:
            names.append(name)
    if not names:
        return []
    try:
        runner = Runner(chain.log, chain.codec, chain.genesis, config.projections_dir, names=names)
    except StoreLockedError:
        return ["live projections are in use by another process: compared at their own positions"]
    except LedgerError as exc:
        return [f"live projections could not be opened to catch up ({exc}): compared at their own positions"]
    try:
        runner.catch_up()
        for h in runner.handles.values():
            h.store.flush()
    except LedgerError as exc:
        return [f"catching up the live projections failed ({exc}): compared at their own positions"]
    finally:
        runner.close()
    return []


def verify(config: Config, *, signatures: bool = True, scratch_dir: str | None = None,
           workers: int | None = None) -> dict[str, Any]:
    """Check the data dir (see the module doc); returns the report. Raises ConfigError when the
    data dir holds no chain."""
    t0 = time.monotonic()
    if not os.path.exists(config.genesis_path):
        raise ConfigError(f"{config.data_dir} holds no chain; run `ledgerlog init` first")
    workers = workers or max(config.verify_workers, os.cpu_count() or 1)
    node_url = _node_running(config)
    report: dict[str, Any] = {"ok": False, "data_dir": config.data_dir, "node": node_url,
                              "signatures": "verified" if signatures else "skipped"}
    notes: list[str] = []

    storage_sec, storage = _storage_section(config)
    log_ok = storage.get("log", {}).get("ok", config.log_url != "embedded")
    try:
        chain = open_chain(config, read_only=True)
    except LedgerError as exc:
        chain = None
        why = f"the log cannot be opened: {exc}"
    sections = [storage_sec]
    if chain is None:
        sections += [_skipped("log", why), _skipped("supply", why), _skipped("projections", why)]
    else:
        scratch = tempfile.mkdtemp(prefix="ledgerlog-verify-", dir=scratch_dir)
        replay: Runner | None = None
        try:
            report.update({"chain_id": chain.genesis.chain_id, "genesis_hash": chain.genesis.hash})
            if node_url is None and log_ok:
                notes += _catch_up_live(chain, config, storage)
            log_sec = Section("log")
            checker = _LogChecker(chain, log_sec, signatures, workers)
            checker.run()
            report["height"] = checker.height
            sections.append(log_sec.done())
            if not log_ok or checker.read_errors:
                # a RocksDB iterator stops quietly at a bad block: a replay would fold part of the
                # log and blame the projections
                why = ("the log store is damaged (see storage and log): a replay would fold only part "
                       "of it, so supply and projections are not checked")
                sections += [_skipped("supply", why), _skipped("projections", why)]
                return _finish(report, sections, notes, t0)
            try:
                replay = Runner(chain.log, chain.codec, chain.genesis, scratch,
                                paths={n: os.path.join(scratch, n) for n in projections.ALL})
                t_replay = time.monotonic()
                replay.catch_up()
                report["replay_seconds"] = round(time.monotonic() - t_replay, 3)
            except Exception as exc:
                why = f"replaying the log failed: {type(exc).__name__}: {exc}"
                sections += [_skipped("supply", why), _skipped("projections", why)]
            else:
                sections.append(_supply_section(chain, replay.handles["balances"].store, checker.height).done())
                sections.append(_projections_section(chain, config, replay, scratch, storage,
                                                     node_url is not None).done())
        finally:
            if replay is not None:
                replay.close()
            chain.close()
            shutil.rmtree(scratch, ignore_errors=True)
    return _finish(report, sections, notes, t0)


def _finish(report: dict[str, Any], sections: list[Section], notes: list[str], t0: float) -> dict[str, Any]:
    for sec in sections:
        report[sec.name] = sec.to_dict()
    report["ok"] = all(sec.ok for sec in sections)
    if notes:
        report["notes"] = notes
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report
