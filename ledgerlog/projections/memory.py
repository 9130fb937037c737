"""A projection's Txn over a plain dict: folds run without a store, for the determinism check of
``projections add`` and for a data team's unit tests of their own fold."""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

from ledgerlog.engine.digest import DIGEST_MOD, hash_sum

__all__ = ["MemoryTxn"]


class MemoryTxn:
    """The View and Txn protocols of projections.base over a dict; ``digest`` is the store's
    content digest of the same entries (engine/digest.py), so two states compare by one number."""

    def __init__(self, entries: dict[bytes, bytes] | None = None) -> None:
        self.entries: dict[bytes, bytes] = dict(entries or {})

    def get(self, key: bytes) -> bytes | None:
        return self.entries.get(bytes(key))

    def put(self, key: bytes, value: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"keys and values are bytes, not {type(key).__name__} and {type(value).__name__}")
        self.entries[bytes(key)] = bytes(value)

    def delete(self, key: bytes) -> None:
        self.entries.pop(bytes(key), None)

    def items(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        keys = sorted(self.entries)
        i = bisect_left(keys, max(prefix, start) if start is not None else prefix)
        for k in keys[i:]:
            if not k.startswith(prefix):
                return
            yield k, self.entries[k]

    def last_at_or_before(self, prefix: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        keys = sorted(self.entries)
        i = bisect_right(keys, key)
        if i and keys[i - 1].startswith(prefix):
            return keys[i - 1], self.entries[keys[i - 1]]
        return None

    def digest(self) -> int:
        return hash_sum(self.entries.items()) % DIGEST_MOD
