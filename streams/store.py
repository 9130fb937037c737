"""A projection's RocksDB store: state, consumed log positions and the state digest, committed
in one WriteBatch. The digest is an order-independent sum of H(key, value) over every state key,
kept incrementally, so two stores with equal state have equal digests however they were built."""
from __future__ import annotations

import hashlib
import os
import struct
from typing import Iterator

from engine import storekeys as K
from engine.rocks import WriteBatch, iter_prefix, map_error, open_store, write_options

__all__ = ["ProjectionStore", "OverlayTxn", "entry_hash"]

_MOD = 1 << 128
_LEN = struct.Struct(">I")
_INIT_KEY = K.META_PREFIX + b"initialised"
_HEIGHT_KEY = K.META_PREFIX + b"height"


def entry_hash(key: bytes, value: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(_LEN.pack(len(key)) + key + value, digest_size=16).digest(), "big")


class _DbView:
    def __init__(self, db) -> None:  # noqa: ANN001 - rocksdict.Rdict
        self._db = db

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def items(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        return iter_prefix(self._db, prefix, start)

    def last_at_or_before(self, prefix: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        it = self._db.iter()
        it.seek_for_prev(key)
        if it.valid() and it.key().startswith(prefix):
            return it.key(), it.value()
        return None


class OverlayTxn(_DbView):
    """Uncommitted writes over the store; reads see them first."""

    def __init__(self, db) -> None:  # noqa: ANN001
        super().__init__(db)
        self.writes: dict[bytes, bytes | None] = {}
        self.stored: dict[bytes, bytes | None] = {}  # values read from the store, for the digest

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        if key in self.stored:
            return self.stored[key]
        value = self.stored[key] = self._db.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def items(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        lo = start if start is not None else prefix
        merged = {k: v for k, v in iter_prefix(self._db, prefix, lo)}
        merged.update((k, v) for k, v in self.writes.items() if k.startswith(prefix) and k >= lo)
        for k in sorted(merged):
            if merged[k] is not None:
                yield k, merged[k]  # type: ignore[misc]

    def last_at_or_before(self, prefix: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        best = None  # a linear walk: only folds' rare out-of-order paths come here
        for k, v in self.items(prefix):
            if k > key:
                break
            best = (k, v)
        return best


class ProjectionStore:
    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.db = open_store(path, K.PROJECTION_FORMAT, read_only=read_only)
        self._wo = write_options(False)  # rebuildable from the log; positions commit atomically
        raw = self.db.get(K.DIGEST_KEY)
        self.digest = int(raw.decode(), 16) if raw else 0
        self._positions: dict[tuple[str, int], int] | None = None

    @property
    def initialised(self) -> bool:
        return self.db.get(_INIT_KEY) is not None

    def positions(self) -> dict[tuple[str, int], int]:
        """Consumed log positions; cached (this process is the only writer) unless read-only."""
        if self._positions is None or self.read_only:
            self._positions = self._load_positions()
        return dict(self._positions)

    def _load_positions(self) -> dict[tuple[str, int], int]:
        out = {}
        n = len(K.POS_PREFIX)
        for key, val in iter_prefix(self.db, K.POS_PREFIX):
            rest = key[n:]  # topic, b"\x00", 4-byte partition (which may itself hold \x00 bytes)
            out[(rest[:-5].decode(), int.from_bytes(rest[-4:], "big"))] = K.U64.unpack(val)[0]
        return out

    def view(self) -> _DbView:
        return _DbView(self.db)

    def begin(self) -> OverlayTxn:
        return OverlayTxn(self.db)

    @property
    def height(self) -> int:
        """Highest event height folded so far (0 before any)."""
        raw = self.db.get(_HEIGHT_KEY)
        return K.U64.unpack(raw)[0] if raw else 0

    def commit(self, txn: OverlayTxn, positions: dict[tuple[str, int], int], *, initialised: bool = False,
               height: int | None = None) -> None:
        wb = WriteBatch(raw_mode=True)
        digest = self.digest
        unknown = [k for k in txn.writes if k not in txn.stored]
        olds = dict(zip(unknown, self.db[unknown])) if unknown else {}
        olds.update((k, txn.stored[k]) for k in txn.writes if k in txn.stored)
        for key, value in txn.writes.items():
            old = olds[key]
            if old is not None:
                digest -= entry_hash(key, old)
                if value is None:
                    wb.delete(key)
            if value is not None:
                digest += entry_hash(key, value)
                wb.put(key, value)
        digest %= _MOD
        for (topic, p), off in positions.items():
            wb.put(K.pos_key(topic, p), K.U64.pack(off))
        wb.put(K.DIGEST_KEY, f"{digest:032x}".encode())
        if initialised:
            wb.put(_INIT_KEY, b"1")
        if height is not None and height > self.height:
            wb.put(_HEIGHT_KEY, K.U64.pack(height))
        try:
            self.db.write(wb, self._wo)
        except Exception as exc:
            raise map_error(exc, self.path) from exc
        self.digest = digest
        if self._positions is not None:
            self._positions.update(positions)

    def digest_hex(self) -> str:
        return f"{self.digest:032x}"

    def flush(self) -> None:
        self.db.flush()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None  # type: ignore[assignment]

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.exists(os.path.join(path, "CURRENT"))
