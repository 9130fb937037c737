"""Primitives of PROTOCOL.md §1: hash H, addresses, Ed25519 keys, tx_root, canonical JSON."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "H", "h_bytes", "address_of", "address_of_hex", "canonical_json", "canonical_json_flat", "tx_root", "tx_branch", "tx_root_from", "verify", "sign", "new_key",
    "signing_key", "pubkey_hex", "EMPTY_ROOT",
]

EMPTY_ROOT = "0" * 64


def h_bytes(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def H(data: bytes) -> str:
    """blake2b-256 as lowercase hex: ids, block hashes, the genesis hash."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def address_of(pubkey: bytes) -> str:
    return hashlib.blake2b(pubkey, digest_size=20).hexdigest()


@lru_cache(maxsize=65536)  # signers repeat (wallets, producers, oracles): hash each key once
def address_of_hex(pubkey: str) -> str:
    """``address_of`` a public key given as hex (ValueError if it is not hex)."""
    return address_of(bytes.fromhex(pubkey))


def canonical_json(obj: Any) -> bytes:
    """The genesis / share-id canonicalisation: sorted keys, no spaces, UTF-8 unescaped."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_json_flat(obj: dict[str, Any]) -> bytes:
    """``canonical_json`` of a flat object whose values are strings, integers and booleans (a
    parsed share line), five times faster: for those orjson writes the same bytes (the tests
    check every code point); integers beyond 64 bits take the stdlib path."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        pass
    return canonical_json(obj)


def tx_root(txids: Iterable[str]) -> str:
    level = [bytes.fromhex(t) for t in txids]
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [h_bytes(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0].hex()


def tx_branch(txids: Sequence[str], index: int) -> list[str]:
    """The siblings from the leaf at ``index`` up to ``tx_root`` (PROTOCOL.md §2: an odd level's
    last node pairs with itself), as hex: with the txid they rebuild the root (``tx_root_from``)."""
    level = [bytes.fromhex(t) for t in txids]
    if not 0 <= index < len(level):
        raise ValueError(f"index {index} is outside a block of {len(level)} transactions")
    branch = []
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        branch.append(level[index ^ 1].hex())
        level = [h_bytes(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
        index //= 2
    return branch


def tx_root_from(txid: str, index: int, branch: Sequence[str]) -> str:
    """The tx_root that ``branch`` leads to from ``txid`` at ``index``; ValueError for an index
    the branch cannot address (below 0, or 2**len(branch) or more: its high bits would be
    ignored, so one proof would verify at many indexes)."""
    if not 0 <= index < 1 << len(branch):
        raise ValueError(f"index {index} is outside the {1 << len(branch)} places a branch of {len(branch)} reaches")
    node = bytes.fromhex(txid)
    for sibling in branch:
        pair = (node, bytes.fromhex(sibling)) if index % 2 == 0 else (bytes.fromhex(sibling), node)
        node = h_bytes(pair[0] + pair[1])
        index //= 2
    return node.hex()


def verify(pubkey: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(pubkey).verify(message, signature)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


def new_key() -> SigningKey:
    return SigningKey.generate()


def signing_key(seed_hex: str) -> SigningKey:
    return SigningKey(bytes.fromhex(seed_hex))


def pubkey_hex(key: SigningKey) -> str:
    return bytes(key.verify_key).hex()


def sign(key: SigningKey, message: bytes) -> str:
    return key.sign(message).signature.hex()
