"""Opening RocksDB stores (rocksdict, raw bytes mode) with ledgerlog's options and error mapping."""
from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    DBRecoveryMode,
    Options,
    Rdict,
    RdictIter,
    WriteBatch,
    WriteOptions,
)

from . import diskfaults
from .errors import (
    CorruptStoreError,
    FormatVersionError,
    StorageError,
    StorageUnavailableError,
    StoreLockedError,
)
from .storekeys import FORMAT_KEY

__all__ = ["open_store", "stores_in_use", "reopen_store", "write_options", "iter_prefix", "WriteBatch", "Rdict", "map_error", "WriteGuard",
           "RocksTuning", "configure", "tuning", "COMPRESSIONS"]

#: compression names (``rocksdb.compression``) and their RocksDB types
COMPRESSIONS = {"none": DBCompressionType.none, "snappy": DBCompressionType.snappy, "lz4": DBCompressionType.lz4,
                "lz4hc": DBCompressionType.lz4hc, "zstd": DBCompressionType.zstd, "zlib": DBCompressionType.zlib}


@dataclass(frozen=True)
class RocksTuning:
    """The RocksDB sizes every store of a process opens with (``[rocksdb]`` in config.toml).

    Memory they imply: ``block_cache_mb`` once per process (index, filter and data blocks of every
    store share it), plus up to 2 x ``write_buffer_mb`` of memtables per open store (the log, four
    projections; twice the projections while a reproject builds beside them)."""

    block_cache_mb: int = 64
    write_buffer_mb: int = 16
    max_open_files: int = -1  # -1: keep every table file open (RocksDB's default; the node raises its limit)
    compression: str = "snappy"  # one name for every level, or one per level: "none,none,lz4,lz4,zstd"

    def levels(self) -> list[str]:
        names = [c.strip() for c in self.compression.split(",")]
        bad = [n for n in names if n not in COMPRESSIONS]
        if bad or not names:
            raise ValueError(f"rocksdb.compression: unknown {bad}; one of {sorted(COMPRESSIONS)}, "
                             "or a comma-separated list of them, one per level")
        return names

    def check(self) -> None:
        if self.block_cache_mb < 1 or self.write_buffer_mb < 1 or self.max_open_files == 0 or self.max_open_files < -1:
            raise ValueError("rocksdb.block_cache_mb and write_buffer_mb must be at least 1, max_open_files "
                             "-1 (unlimited) or at least 1")
        self.levels()


_TUNING = [RocksTuning()]


def configure(t: RocksTuning) -> None:
    """Open later stores with ``t`` (the process's block cache is sized by the first store open)."""
    t.check()
    _TUNING[0] = t


def tuning() -> RocksTuning:
    return _TUNING[0]

#: what RocksDB (and the OS) say when the disk refuses a write rather than the data being bad
_UNAVAILABLE = ("no space left", "input/output error", "read-only file system", "disk quota",
                "writer has previous error", "while fsync", "while appending", "while sync")


def _options(create: bool) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(create)
    opts.set_paranoid_checks(True)
    opts.set_keep_log_file_num(3)
    opts.set_max_background_jobs(2)
    # memory: a reproject holds the live and the building stores of every projection and the
    # log; RocksDB's default 64 MiB memtables (x2 each) put a 1M-event rebuild past 1 GiB
    t = tuning()
    opts.set_write_buffer_size(t.write_buffer_mb * 1024 * 1024)
    opts.set_max_write_buffer_number(2)
    opts.set_max_open_files(t.max_open_files)
    levels = [COMPRESSIONS[n]() for n in t.levels()]
    if len(levels) == 1:
        opts.set_compression_type(levels[0])
    else:
        opts.set_compression_per_level(levels)
    # a Bloom filter over each memtable too: admission mostly reads absent keys (new ids), and
    # without it every read searches the memtables' skiplists in full
    opts.set_memtable_prefix_bloom_ratio(0.05)
    opts.set_memtable_whole_key_filtering(True)
    # a damaged WAL record must stop the open, not silently drop every later (acknowledged) write
    opts.set_wal_recovery_mode(DBRecoveryMode.tolerate_corrupted_tail_records())
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)  # point lookups of absent keys (new ids, accounts) skip files
    # memory that does not grow with the data: index and filter blocks live in one block cache
    # shared by every store of the process (partitioned, so only the parts in use are loaded)
    # instead of being held whole, per open table file, outside any bound
    table.set_block_cache(_shared_cache())
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_pin_top_level_index_and_filter(True)
    opts.set_block_based_table_factory(table)
    return opts


_CACHE: tuple[int, Cache] | None = None


def _shared_cache() -> Cache:
    """The block cache every store of a process shares (made anew when the tuning changed it)."""
    global _CACHE
    size = tuning().block_cache_mb * 1024 * 1024
    if _CACHE is None or _CACHE[0] != size:
        _CACHE = (size, Cache(size))
    return _CACHE[1]


def _open(path: str, opts: Options, access: AccessType | None) -> Rdict:
    # rocksdict applies ``opts`` only to column families it creates: a store opened again would
    # run its existing "default" family on rocksdict's defaults (no Bloom filter, 64 MiB
    # memtables, 8 MiB cache) unless the family's options are given by name
    families = {"default": opts}
    if access is None:
        return Rdict(path, opts, column_families=families)
    return Rdict(path, opts, column_families=families, access_type=access)


def map_error(exc: Exception, path: str) -> StorageError:
    text = str(exc)
    if "lock" in text.lower() and ("LOCK" in text or "hold" in text):
        return StoreLockedError(f"{path} is in use by another process (a running node?): {text}")
    if "Corruption" in text or "corrupt" in text.lower() or "checksum" in text.lower():
        projection = "projection" in path or f"{os.sep}projections{os.sep}" in path
        return CorruptStoreError(
            f"{path} is corrupt: {text}. " + ("Rebuild it from the log (ledgerlog reproject), or restore a "
                                              "snapshot (ledgerlog snapshot restore)." if projection else
                                              "Restore the data dir from a snapshot (ledgerlog snapshot restore); "
                                              "it cannot be rebuilt from elsewhere.")
        )
    low = text.lower()
    if "read-only file system" in low:  # RocksDB (and rocksdict's own config file) write even on a read-only open
        return StorageUnavailableError(f"{path}: the disk refused a write: {text}; the data dir is on a read-only "
                                       "file system: remount it read-write, or copy it (or restore a snapshot) to a "
                                       "writable disk and use that")
    if any(marker in low for marker in _UNAVAILABLE):
        return StorageUnavailableError(f"{path}: the disk refused a write: {text}")
    return StorageError(f"cannot open {path}: {text}")


class WriteGuard:
    """Writes of one store. After the disk refuses one (RocksDB then stops the database), writes
    fail fast with StorageUnavailableError; at most every ``retry_seconds`` a write first probes
    the disk and, if the probe succeeds, ``reopen``s the store (which must reload whatever its
    owner caches from it) and goes on. No restart is needed when the fault clears."""

    retry_seconds = 1.0

    def __init__(self, path: str, reopen: Callable[[], None]) -> None:
        self.path = path
        self._reopen = reopen
        self.error: StorageUnavailableError | None = None
        self._at = 0.0
        self._lock = threading.Lock()

    def write(self, db: Rdict, wb: WriteBatch, wo: WriteOptions) -> None:
        if self.error is not None:
            self.recover()
        try:
            diskfaults.check(self.path)
            db.write(wb, wo)
        except Exception as exc:
            err = map_error(exc, self.path)
            if isinstance(err, StorageUnavailableError):
                self._failed(err)
            raise err from exc

    def _failed(self, err: StorageUnavailableError) -> None:
        self.error, self._at = err, time.monotonic()
        diskfaults.HEALTH.failed(self.path, str(err))

    def recover(self, *, force: bool = False) -> None:
        """Probe the disk and reopen the store; raises the fault while it holds."""
        with self._lock:
            if self.error is None:
                return
            if not force and time.monotonic() - self._at < self.retry_seconds:
                raise self.error
            self._at = time.monotonic()
            try:
                diskfaults.probe(os.path.dirname(os.path.abspath(self.path)))
                self._reopen()
            except (OSError, StorageError) as exc:
                self._failed(StorageUnavailableError(f"{self.path}: the disk still refuses writes: {exc}"))
                raise self.error from exc
            self.error = None
            diskfaults.HEALTH.ok(self.path)

    def close(self) -> None:
        diskfaults.HEALTH.ok(self.path)


def open_store(path: str, fmt: bytes, *, create: bool = True, read_only: bool = False,
               secondary_dir: str | None = None) -> Rdict:
    """Open (or create) a store and check its format version. With ``secondary_dir``, open it as
    a RocksDB secondary instance (read-only, no lock, ``try_catch_up_with_primary`` sees what the
    writing process appended since)."""
    read_only = read_only or secondary_dir is not None
    if read_only or not create:
        if not os.path.exists(os.path.join(path, "CURRENT")):
            raise StorageError(f"no store at {path}")
    else:
        os.makedirs(path, exist_ok=True)
    try:
        if secondary_dir is not None:
            opts = _options(False)
            opts.set_max_open_files(-1)  # keep files open: the primary's compactions may delete them
            db = _open(path, opts, AccessType.secondary(secondary_dir))
        elif read_only:
            db = _open(path, _options(False), AccessType.read_only())
        else:
            db = _open(path, _options(create), None)
    except Exception as exc:  # rocksdict raises plain Exception
        raise map_error(exc, path) from exc
    try:
        found = db.get(FORMAT_KEY)
    except Exception as exc:
        db.close()
        raise map_error(exc, path) from exc
    if found is None and not read_only:
        db.put(FORMAT_KEY, fmt)
    elif found is not None and found != fmt:
        db.close()
        raise FormatVersionError(f"{path} has format {found!r}; this ledgerlog reads {fmt!r}")
    return db


def reopen_store(path: str, fmt: bytes, loaded: Callable[[Rdict], None]) -> None:
    """Open a store anew after the disk refused a write (RocksDB keeps it stopped until then):
    ``loaded(db)`` takes the new handle; if it cannot be opened for writing yet, it takes a
    read-only one, so reads go on, and the StorageError is raised."""
    try:
        loaded(open_store(path, fmt, create=False))
    except StorageError:
        try:
            loaded(open_store(path, fmt, read_only=True))
        except StorageError:
            pass
        raise


def write_options(sync: bool) -> WriteOptions:
    wo = WriteOptions()
    wo.sync = sync
    return wo


def iter_prefix(db: Rdict, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs whose key starts with ``prefix``, from ``start`` (inclusive) on; a
    ``start`` below the prefix starts at the prefix (not at a key outside it, which ends the walk)."""
    it = db.iter()
    it.seek(max(prefix, start) if start is not None else prefix)
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            return
        yield key, it.value()
        it.next()
    _check_status(it, db)


def _check_status(it: RdictIter, db: Rdict) -> None:
    """A scan stops at a damaged block without raising; its status tells. Never serve a partial read."""
    try:
        it.status()
    except Exception as exc:
        raise map_error(exc, getattr(db, "path", lambda: "store")()) from exc


def stores_in_use(root: str) -> list[str]:
    """The RocksDB stores under ``root`` that a process (this one too) has open: RocksDB holds a
    POSIX lock on a store's LOCK file while it is open. Read from /proc/locks, so nothing is
    opened: closing a probe of the file would drop the locks this process holds on it."""
    locks = _held_locks()
    busy = []
    for where, _dirs, files in os.walk(root):
        if "LOCK" not in files:
            continue
        path = os.path.join(where, "LOCK")
        try:
            st = os.stat(path)
        except OSError:
            continue
        if locks is not None:
            if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in locks:
                busy.append(where)
        elif _probe_busy(path):
            busy.append(where)
    return sorted(busy)


def _held_locks() -> set[tuple[int, int, int]] | None:
    """(major, minor, inode) of every file some process holds a lock on; None without /proc/locks."""
    try:
        with open("/proc/locks", encoding="ascii") as f:
            rows = f.read().splitlines()
    except OSError:
        return None
    out = set()
    for row in rows:  # "1: POSIX  ADVISORY  WRITE 4242 08:01:1234567 0 EOF" (device numbers in hex)
        for field in row.split()[1:]:
            parts = field.split(":")
            if len(parts) == 3 and all(parts):
                try:
                    out.add((int(parts[0], 16), int(parts[1], 16), int(parts[2])))
                except ValueError:
                    continue
                break
    return out


def _probe_busy(path: str) -> bool:
    """Without /proc/locks: try a write lock on the whole file (closing the probe drops any lock
    this process holds on it)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
