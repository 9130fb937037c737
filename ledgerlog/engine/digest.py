"""The content digest of a projection store: an order-independent sum of H(key, value) over its
state keys, modulo 2**128, so equal states have equal digests however they were built. One home
for the entry hash and the modulus (the store keeps it incrementally, verify recomputes it)."""
from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Iterable

__all__ = ["DIGEST_MOD", "digest_hex", "entry_hash", "hash_sum", "update_digest"]

#: The digest is kept modulo 2**128 (the width of one entry hash).
DIGEST_MOD = 1 << 128
_LEN = struct.Struct(">I")
_LITTLE = sys.byteorder == "little"


def entry_hash(key: bytes, value: bytes) -> int:
    """H(key, value): BLAKE2b-128 of the key's length, the key and the value, as an int."""
    return int.from_bytes(hashlib.blake2b(_LEN.pack(len(key)) + key + value, digest_size=16).digest(), "big")


def hash_sum(entries: Iterable[tuple[bytes, bytes]]) -> int:
    """``sum(entry_hash(k, v) for k, v in entries)``, without an int per entry: the 16-byte
    digests are joined and summed as big-endian 64-bit halves."""
    b2, pack = hashlib.blake2b, _LEN.pack
    blob = b"".join([b2(pack(len(k)) + k + v, digest_size=16).digest() for k, v in entries])
    if not blob:
        return 0
    words = array("Q", blob)
    if _LITTLE:
        words.byteswap()
    return (sum(words[0::2]) << 64) + sum(words[1::2])


def update_digest(digest: int, added: Iterable[tuple[bytes, bytes]],
                  removed: Iterable[tuple[bytes, bytes]]) -> int:
    """The digest after ``added`` entries came in and ``removed`` ones went (incremental upkeep)."""
    return (digest + hash_sum(added) - hash_sum(removed)) % DIGEST_MOD


def digest_hex(digest: int) -> str:
    """The digest as stored and reported: 32 lowercase hex digits."""
    return f"{digest:032x}"
