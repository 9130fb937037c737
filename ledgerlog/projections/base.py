"""What a fold sees: a View to read state and a Txn to change it. Folds are pure functions of
(genesis, events, prior state): no clock, no randomness, no I/O of their own.

Folds over several partitions must be commutative (the runner may interleave partitions in any
order); the property tests check it."""
from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Protocol

from ledgerlog.engine.intjson import dumps as jdump
from ledgerlog.engine.intjson import loads as _loads

__all__ = ["View", "Txn", "Event", "U64", "h8", "height_of_key", "jload", "jdump"]

U64 = struct.Struct(">Q")
#: (topic, decoded event)
Event = tuple[str, dict[str, Any]]


def height_of_key(key: bytes) -> int:
    """The height in a key's last 8 bytes (``h8``)."""
    return int(U64.unpack(key[-8:])[0])


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
