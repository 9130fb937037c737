"""RFC 6962 / 9162 Merkle trees over SHA-256 (PROTOCOL.md §9): hashes, roots, inclusion and
consistency proofs and their verification, and the compact frontier a log keeps per partition.

Proofs are built over ``subtree(start, end)``, the hash of the leaves [start, end): a caller
that stores the hashes of complete aligned subtrees answers it in O(log n) lookups, so no proof
rebuilds a tree. ``MemoryTree`` is the in-memory form (tests, audits of raw records)."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from ledgerlog.engine.errors import (
    ProofError,  # a proof does not verify, or was asked for beyond the tree
)

__all__ = ["EMPTY_ROOT", "leaf_hash", "node_hash", "split", "root_of", "inclusion_proof",
           "consistency_proof", "verify_inclusion", "verify_consistency", "Frontier",
           "MemoryTree", "ProofError"]

EMPTY_ROOT = hashlib.sha256(b"").digest()
#: ``subtree(start, end) -> bytes``: the Merkle tree hash of leaves [start, end)
Subtree = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """The largest power of two below ``n`` (n >= 2): where the tree over n leaves splits."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH of leaf hashes (RFC 6962 §2.1)."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(index, D[size]) (RFC 6962 §2.1.1), leaf to root."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not below tree size {size}")
    out: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:  # walk down, collecting siblings root to leaf
        k = split(hi - lo)
        if index < lo + k:
            out.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            out.append(subtree(lo, lo + k))
            lo += k
    out.reverse()
    return out


def consistency_proof(first: int, second: int, subtree: Subtree) -> list[bytes]:
    """PROOF(first, D[second]) (RFC 6962 §2.1.2); empty when first == second."""
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from tree size {first} to {second}")
    out: list[bytes] = []
    lo, hi, m, whole = 0, second, first, True
    while m != hi - lo:
        k = split(hi - lo)
        if m <= k:
            out.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            out.append(subtree(lo, lo + k))
            lo += k
            m -= k
            whole = False
    if not whole:
        out.append(subtree(lo, hi))
    out.reverse()
    return out


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless ``proof`` proves leaf hash ``leaf`` at ``index`` under ``root``
    (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not below tree size {size}")
    _sized(leaf, root, *proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof too short")
    if r != root:
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(first: int, second: int, proof: Sequence[bytes], root1: bytes,
                       root2: bytes) -> None:
    """Raise ProofError unless ``proof`` shows the tree of ``first`` leaves under ``root1`` is a
    prefix of the tree of ``second`` leaves under ``root2`` (RFC 9162 §2.1.4.2)."""
    if not 0 < first <= second:
        raise ProofError(f"no consistency from tree size {first} to {second}")
    if first == second:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        if root1 != root2:
            raise ProofError("equal sizes with different roots")
        return
    _sized(root1, root2, *proof)
    if not proof:
        raise ProofError("empty consistency proof")
    path = list(proof)
    if first & (first - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, root1)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof too short")
    if fr != root1 or sr != root2:
        raise ProofError("consistency proof does not lead to both roots")


def _sized(*hashes: bytes) -> None:
    if any(len(h) != 32 for h in hashes):
        raise ProofError("hashes are 32 bytes")


class Frontier:
    """The compact form of a growing tree: the roots of its complete subtrees, largest first
    (one per set bit of the size). Appending is O(log n); ``completed`` lists the (level, index,
    hash) of every complete aligned subtree an append finished, for a store of node hashes."""

    __slots__ = ("nodes", "size")

    def __init__(self, size: int = 0, nodes: Iterable[bytes] = ()) -> None:
        self.size = size
        self.nodes = list(nodes)
        if len(self.nodes) != bin(size).count("1"):
            raise ValueError(f"a frontier of size {size} holds {bin(size).count('1')} nodes")

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        completed = [(0, self.size, leaf)]
        h, level, index = leaf, 0, self.size
        while (self.size >> level) & 1:  # carry: merge with the equal-sized subtree on the left
            h = node_hash(self.nodes.pop(), h)
            level += 1
            index >>= 1
            completed.append((level, index, h))
        self.nodes.append(h)
        self.size += 1
        return completed

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        h = self.nodes[-1]
        for left in reversed(self.nodes[:-1]):
            h = node_hash(left, h)
        return h

    def copy(self) -> Frontier:
        return Frontier(self.size, self.nodes)


class MemoryTree:
    """Leaf hashes in memory, with complete subtrees cached: proofs in O(log n) after the first."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self.leaves: list[bytes] = []
        self._nodes: dict[tuple[int, int], bytes] = {}
        self.frontier = Frontier()
        for leaf in leaves:
            self.append(leaf)

    def append(self, leaf: bytes) -> None:
        self.leaves.append(leaf)
        for level, index, h in self.frontier.append(leaf):
            self._nodes[(level, index)] = h

    @property
    def size(self) -> int:
        return len(self.leaves)

    def root(self, size: int | None = None) -> bytes:
        return self.frontier.root() if size is None or size == self.size else self.subtree(0, size)

    def subtree(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end), from complete aligned subtrees."""
        if end - start == 0:
            return EMPTY_ROOT
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            return self._nodes[(n.bit_length() - 1, start // n)]
        k = split(n)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def inclusion(self, index: int, size: int) -> list[bytes]:
        if size > self.size:
            raise ProofError(f"tree size {size} is beyond the {self.size} leaves")
        return inclusion_proof(index, size, self.subtree)

    def consistency(self, first: int, second: int) -> list[bytes]:
        if second > self.size:
            raise ProofError(f"tree size {second} is beyond the {self.size} leaves")
        return consistency_proof(first, second, self.subtree)
