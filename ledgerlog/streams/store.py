"""A projection's RocksDB store: state, consumed log positions and the state digest, committed
in one WriteBatch. The digest is an order-independent sum of H(key, value) over every state key,
kept incrementally, so two stores with equal state have equal digests however they were built.

Keeping the digest needs the previous value of every written key. A fold writes most keys blind
(new history entries, block and transaction indexes), and while rebuilding nearly all of them are
new, so reading them back would cost more than the fold. A store that commits many blind writes
therefore keeps a KeyFilter of every state key it holds: a key the filter lacks is certainly
absent, and neither the commit nor the fold's reads go to RocksDB for it.

A store built in bulk (a rebuild, a first fold) writes without RocksDB's write-ahead log (a third
of a commit's write cost): a crash then loses the commits not flushed to table files yet, state
and positions together (a flush writes whole write batches), so the build resumes from an older
but consistent point. ``end_bulk`` flushes and goes back to logged writes before the store folds
as a live one (a logged write after unflushed unlogged ones could otherwise outlive them)."""
from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rocksdict import DbClosedError

from ledgerlog.engine import storekeys as K
from ledgerlog.engine.digest import digest_hex, update_digest
from ledgerlog.engine.errors import CorruptStoreError, StorageUnavailableError
from ledgerlog.engine.rocks import (
    Rdict,
    WriteBatch,
    WriteGuard,
    iter_prefix,
    map_error,
    open_store,
    reopen_store,
    write_options,
)

__all__ = ["ProjectionStore", "OverlayTxn"]

_INIT_KEY = K.META_PREFIX + b"initialised"
_HEIGHT_KEY = K.META_PREFIX + b"height"
_STATE_FROM = b"\x01"  # state keys never start with 0x00 (FORMAT_KEY and META_PREFIX do)
_STATE_END = b"\xff" * 16  # ... and are printable: below this
_MERGE_BATCH = 20_000


class KeyFilter:
    """A Bloom filter of byte keys that grows without rescanning: one-hash layers, each with twice
    the room of the one before (32 bits a key: about 3% false positives per full layer, which only
    cost a read). Keys go to the newest layer; a key is in the filter if any layer has its bit.
    Python's hash of bytes is salted per process, so it is built and used by one process only."""

    def __init__(self, capacity: int) -> None:
        self.layers: list[tuple[int, bytearray]] = []  # (mask, bits), oldest first
        self.count = 0     # keys added
        self.capacity = 0  # keys the layers have room for
        self.bytes = 0
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        log2 = max(10, (capacity * 32 - 1).bit_length())
        self.layers.append(((1 << log2) - 1, bytearray(1 << (log2 - 3))))
        self.capacity += (1 << log2) >> 5
        self.bytes += 1 << (log2 - 3)

    def __contains__(self, key: bytes) -> bool:
        h = hash(key)
        for mask, bits in self.layers:
            g = h & mask
            if bits[g >> 3] & (1 << (g & 7)):
                return True
        return False

    def maybe(self, keys: list[bytes]) -> list[bytes]:
        """The keys that may be in the filter (the others certainly are not)."""
        if len(self.layers) == 1:
            mask, bits = self.layers[0]
            out = []
            for k in keys:
                g = hash(k) & mask
                if bits[g >> 3] & (1 << (g & 7)):
                    out.append(k)
            return out
        return [k for k in keys if k in self]

    def add(self, keys: Iterable[bytes]) -> None:
        mask, bits = self.layers[-1]
        count, capacity = self.count, self.capacity
        for key in keys:
            if count == capacity:  # full: a new layer, with twice the room of the last
                self._grow(2 * ((mask + 1) >> 5))
                mask, bits = self.layers[-1]
                capacity = self.capacity
            h = hash(key) & mask
            bits[h >> 3] |= 1 << (h & 7)
            count += 1
        self.count = count


class _DbView:
    def __init__(self, db) -> None:
        self._db = db

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def items(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        yield from iter_prefix(self._db, prefix, start)  # a generator of the view: it holds the view while it walks

    def last_at_or_before(self, prefix: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        it = self._db.iter()
        it.seek_for_prev(key)
        if it.valid() and it.key().startswith(prefix):
            return it.key(), it.value()
        return None


class _Gate:
    """Reads share the store's database; a reopen after a disk fault waits for those under way and
    holds new ones off meanwhile (rocksdict's close() under a read in another thread raised, or
    hung both threads)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._closing = False

    def enter(self) -> None:
        with self._cond:
            while self._closing:
                self._cond.wait()
            self._readers += 1

    def leave(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextlib.contextmanager
    def reopening(self) -> Iterator[None]:
        with self._cond:
            while self._closing:
                self._cond.wait()
            self._closing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._closing = False
                self._cond.notify_all()


def _reading(store: ProjectionStore, read: Callable[[Any], Any]) -> Any:
    """``read(db)`` on the store's open database (never one a reopen is closing)."""
    gate = store._gate
    gate.enter()
    try:
        db = store.db
        if db is None:
            raise StorageUnavailableError(f"{store.path} is closed; retry")
        return read(db)
    except DbClosedError:
        raise StorageUnavailableError(f"{store.path} is closed; retry") from None
    finally:
        gate.leave()


class _LiveView(_DbView):
    """A query's view: reads whatever database the store has open (see ``_Gate``); a walk reads
    a page at a time, each from a fresh seek, so a reopen between pages does not end it."""

    PAGE = 256

    def __init__(self, store: ProjectionStore) -> None:  # (no fixed database: super().__init__ not called)
        self._store = store

    def get(self, key: bytes) -> bytes | None:
        return _reading(self._store, lambda db: db.get(key))  # type: ignore[no-any-return]

    def items(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        page = self.PAGE
        while True:
            rows: list[tuple[bytes, bytes]] = _reading(self._store, functools.partial(_page, prefix=prefix, start=start,
                                                                                      size=page))
            yield from rows
            if len(rows) < page:
                return
            start = rows[-1][0] + b"\x00"

    def last_at_or_before(self, prefix: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        return _reading(self._store, lambda db: _DbView(db).last_at_or_before(prefix, key))  # type: ignore[no-any-return]


def _page(db: Rdict, prefix: bytes, start: bytes | None, size: int) -> list[tuple[bytes, bytes]]:
    return list(itertools.islice(iter_prefix(db, prefix, start), size))


def _load_positions(db: Rdict) -> dict[tuple[str, int], int]:
    out = {}
    n = len(K.POS_PREFIX)
    for key, val in iter_prefix(db, K.POS_PREFIX):
        rest = key[n:]  # topic, b"\x00", 4-byte partition (which may itself hold \x00 bytes)
        out[(rest[:-5].decode(), int.from_bytes(rest[-4:], "big"))] = K.U64.unpack(val)[0]
    return out


def _read_error(exc: Exception) -> Exception:
    """What a fold sees of a point read RocksDB failed: the disk's fault (I/O) as a StorageError,
    which the caller retries; a damaged store as it is, which stops that projection with the reason."""
    err = map_error(exc, "a projection store")
    return exc if isinstance(err, CorruptStoreError) else err


class OverlayTxn(_DbView):
    """Uncommitted writes over the store; reads see them first."""

    def __init__(self, db, keys: KeyFilter | None = None) -> None:
        super().__init__(db)
        self.writes: dict[bytes, bytes | None] = {}
        self.stored: dict[bytes, bytes | None] = {}  # values read from the store, for the digest
        self._keys = keys  # every key the store holds is in it (when there is one)

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        if key in self.stored:
            return self.stored[key]
        keys = self._keys
        if keys is not None and key not in keys:
            self.stored[key] = None
            return None
        try:
            value = self.stored[key] = self._db.get(key)
        except Exception as exc:
            raise _read_error(exc) from exc
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def items(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """The stored keys merged with the writes, lazily: a walk left early (a fold stopping at a
        bound) reads no further than it went."""
        lo = start if start is not None else prefix
        mine = sorted((k, v) for k, v in self.writes.items() if k.startswith(prefix) and k >= lo)
        i, n = 0, len(mine)
        for key, value in iter_prefix(self._db, prefix, lo):
            while i < n and mine[i][0] <= key:
                k, v = mine[i]
                i += 1
                if v is not None:
                    yield k, v
                if k == key:  # written over (or deleted) in this batch
                    break
            else:
                yield key, value
        for k, v in mine[i:]:
            if v is not None:
                yield k, v

    def last_at_or_before(self, prefix: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        best = None  # a linear walk: only folds' rare out-of-order paths come here
        for k, v in self.items(prefix):
            if k > key:
                break
            best = (k, v)
        return best


class ProjectionStore:
    #: a commit with this many blind writes builds the KeyFilter (small live commits never do) ...
    FILTER_AFTER_BLIND = 1000
    #: ... unless the store already holds more keys than this (a scan of them builds it)
    FILTER_MAX_KEYS = 2_000_000
    #: keys a new filter has room for, at least (4 MiB)
    FILTER_MIN_CAPACITY = 1 << 20
    #: a filter that grows past this many bytes (past about 7M keys) is dropped, so memory
    #: stays bounded; blind writes then read their old values from RocksDB, whose own Bloom
    #: filters answer for absent keys
    FILTER_MAX_BYTES = 32 * 1024 * 1024

    def __init__(self, path: str, *, read_only: bool = False, bulk: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.db = open_store(path, K.PROJECTION_FORMAT, read_only=read_only)
        self._wo = write_options(False)  # rebuildable from the log; positions commit atomically
        self.bulk = False
        if bulk and not read_only:
            self.bulk = True
            self._wo.disable_wal = True  # type: ignore[method-assign, assignment]  # a property (stub: a method)
        self._guard = WriteGuard(path, self._reopen)
        self._gate = _Gate()
        self._views: weakref.WeakSet[_DbView] = weakref.WeakSet()
        self._load()

    def _load(self) -> None:
        raw = self.db.get(K.DIGEST_KEY)
        self.digest = int(raw.decode(), 16) if raw else 0
        self._positions: dict[tuple[str, int], int] | None = None
        self._keys: KeyFilter | None = None
        self._keys_tried = False

    def _reopen(self) -> None:
        """After a write the disk refused: open the store anew (RocksDB keeps it stopped until
        then) and reload digest and positions from it; read-only meanwhile if it cannot be."""
        def loaded(db: Rdict) -> None:
            self.db = db
            self._load()
        with self._gate.reopening():
            try:
                self.db.close()
            except Exception:  # noqa: BLE001 - a stopped database reports its error again on close
                pass
            reopen_store(self.path, K.PROJECTION_FORMAT, loaded)

    def _key_filter(self) -> KeyFilter | None:
        """A KeyFilter of every state key in the store, from a scan of them; None if too many."""
        try:
            estimate = self.db.property_int_value("rocksdb.estimate-num-keys") or 0
        except Exception:  # noqa: BLE001 - no estimate, no filter
            return None
        if estimate > self.FILTER_MAX_KEYS:
            return None
        keys = KeyFilter(max(4 * estimate, self.FILTER_MIN_CAPACITY))
        it = self.db.iter()
        it.seek(_STATE_FROM)
        found = []
        while it.valid():
            found.append(it.key())
            it.next()
            if len(found) >= 50_000:
                keys.add(found)
                found = []
        keys.add(found)
        try:
            it.status()  # a scan stops at a damaged block without raising: then no filter
        except Exception:  # noqa: BLE001 - the reads without a filter report the damage
            return None
        return keys

    @property
    def initialised(self) -> bool:
        return self.db.get(_INIT_KEY) is not None

    def reset(self) -> None:
        """Empty the store: no state, positions, digest or height, and not initialised (one
        batch). A store that is not initialised holds nothing valid (a merge killed halfway
        leaves one so): opening it for a fold resets it before its initial state is written."""
        wb = WriteBatch(raw_mode=True)
        for key in (_INIT_KEY, K.DIGEST_KEY, _HEIGHT_KEY):
            wb.delete(key)
        wb.delete_range(K.POS_PREFIX, K.POS_PREFIX + b"\xff")
        wb.delete_range(_STATE_FROM, _STATE_END)
        self._guard.write(self.db, wb, self._wo)
        self._load()

    def positions(self) -> dict[tuple[str, int], int]:
        """Consumed log positions; cached (this process is the only writer) unless read-only."""
        if self._positions is None or self.read_only:
            self._positions = _reading(self, _load_positions)
        return dict(self._positions)

    @property
    def writes_refused(self) -> bool:
        """The disk refused its last write (it folds again once a probe succeeds)."""
        return self._guard.error is not None

    def view(self) -> _DbView:
        """A reader of the store; a store swapped out closes only once no view of it is left."""
        view = _LiveView(self)
        self._views.add(view)
        return view

    def views(self) -> int:
        """Views of the store still held (by queries reading it, or their page walks)."""
        return len(self._views)

    def begin(self) -> OverlayTxn:
        return OverlayTxn(self.db, self._keys)

    @property
    def height(self) -> int:
        """Highest event height folded so far (0 before any)."""
        raw = _reading(self, lambda db: db.get(_HEIGHT_KEY))
        return K.U64.unpack(raw)[0] if raw else 0

    def commit(self, txn: OverlayTxn, positions: dict[tuple[str, int], int], *, initialised: bool = False,
               height: int | None = None) -> None:
        wb = WriteBatch(raw_mode=True)
        put, delete = wb.put, wb.delete
        writes, stored = txn.writes, txn.stored
        keys = self._keys
        unknown = [k for k in writes if k not in stored]  # written blind: their old values are read
        if keys is None and not self._keys_tried and len(unknown) >= self.FILTER_AFTER_BLIND:
            self._keys_tried = True
            keys = self._keys = self._key_filter()
        if keys is not None and unknown:  # ... unless certainly absent
            unknown = keys.maybe(unknown)
        olds: dict[bytes, bytes | None] = dict(zip(unknown, self.db[unknown])) if unknown else {}  # type: ignore[index, arg-type]  # rocksdict's multi-get
        gone: list[tuple[bytes, bytes]] = []
        new: list[tuple[bytes, bytes]] = []
        added: list[bytes] = []
        for key, value in writes.items():
            old = stored[key] if key in stored else olds.get(key)
            if old is not None:
                if old == value:
                    continue
                gone.append((key, old))
                if value is None:
                    delete(key)
                    continue
            elif value is None:
                continue
            else:
                added.append(key)
            new.append((key, value))
            put(key, value)
        digest = update_digest(self.digest, new, gone)
        put(K.DIGEST_KEY, digest_hex(digest).encode())
        for (topic, p), off in positions.items():
            put(K.pos_key(topic, p), K.U64.pack(off))
        if initialised:
            put(_INIT_KEY, b"1")
        if height is not None and height > self.height:
            put(_HEIGHT_KEY, K.U64.pack(height))
        self._guard.write(self.db, wb, self._wo)
        self.digest = digest
        if self._positions is not None:
            self._positions.update(positions)
        if keys is not None:
            keys.add(added)
            if keys.bytes > self.FILTER_MAX_BYTES:
                self._keys = None

    def absorb(self, parts: list[str], merge: Callable[[list[Any]], Iterator[tuple[bytes, bytes]]],
               positions: dict[tuple[str, int], int]) -> None:
        """Become the merge of the part stores at ``parts``, which folded disjoint partitions up to
        ``positions`` between them (ValueError if not: one stopped early): the state ``merge``
        yields from their views, those positions and the highest height, committed last. The store
        is reset first, so a merge killed halfway leaves it uninitialised: merged again, or emptied
        and folded whole, never used as it is."""
        stores = [ProjectionStore(p, read_only=True) for p in parts]
        try:
            reached: dict[tuple[str, int], int] = {}
            for part in stores:
                mine = {tp: off for tp, off in part.positions().items() if off}
                if reached.keys() & mine.keys():
                    raise ValueError(f"parts of {self.path} folded the same partitions")
                reached.update(mine)
            if reached != positions:
                raise ValueError(f"parts of {self.path} did not all fold up to the same log ends")
            self.reset()
            txn, n = self.begin(), 0
            for key, value in merge([part.view() for part in stores]):
                txn.put(key, value)
                n += 1
                if n == _MERGE_BATCH:
                    self.commit(txn, {})
                    txn, n = self.begin(), 0
            self.commit(txn, positions, initialised=True, height=max(part.height for part in stores))
        finally:
            for part in stores:
                part.close()

    @property
    def writable(self) -> bool:
        """False while the disk refuses this store's writes."""
        return self._guard.error is None

    def recover(self) -> None:
        """Probe the disk and reopen now (callers keep folds out); raises while the fault holds."""
        self._guard.recover(force=True)

    def digest_hex(self) -> str:
        return digest_hex(self.digest)

    def flush(self) -> None:
        self.db.flush()

    def end_bulk(self) -> None:
        """Flush what was written without the write-ahead log, then write with it again."""
        if self.bulk:
            self.db.flush()
            self._wo = write_options(False)
            self.bulk = False

    def close(self) -> None:
        """Close the database once the reads under way are done (later ones: StorageUnavailableError)."""
        if self.db is None:
            return
        with self._gate.reopening():
            db, self.db = self.db, None  # type: ignore[assignment]
            if db is None:
                return
            self._guard.close()
            try:
                if self.bulk:
                    db.flush()
                db.close()
            except Exception as exc:  # e.g. a full disk: the memtable cannot be flushed
                raise map_error(exc, self.path) from exc

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.exists(os.path.join(path, "CURRENT"))
