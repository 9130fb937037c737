"""What a fold sees: a View to read state and a Txn to change it. Folds are pure functions of
(genesis, events, prior state): no clock, no randomness, no I/O of their own.

Folds over several partitions must be commutative (the runner may interleave partitions in any
order); the property tests check it."""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any, Protocol

from ledgerlog.engine.intjson import dumps as jdump
from ledgerlog.engine.intjson import loads as _loads

__all__ = ["View", "Txn", "Event", "U64", "h8", "jload", "jdump", "Shard", "shard_of"]

U64 = struct.Struct(">Q")
#: (topic, decoded event)
Event = tuple[str, dict[str, Any]]


#: (index, count): one of ``count`` disjoint parts of a projection's state, folded apart (a
#: rebuild spreads one projection over processes this way, then merges the parts' stores)
Shard = tuple[int, int]


def shard_of(key: str, count: int) -> int:
    """The shard (of ``count``) that owns ``key``: the same in every process and every run."""
    return zlib.crc32(key.encode()) % count


def h8(n: int) -> bytes:
    """Heights and offsets in keys: 8 bytes big-endian, so byte order is numeric order."""
    return U64.pack(n)


def jload(raw: bytes | None) -> Any:
    """Stored JSON state, integers of any size exactly (``jdump`` writes it)."""
    return None if raw is None else _loads(raw)


class View(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def items(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) with ``prefix`` in key order, from ``start`` (inclusive)."""
        ...

    def last_at_or_before(self, prefix: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        """The greatest entry with ``prefix`` whose key is <= ``key``."""
        ...


class Txn(View, Protocol):
    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...
