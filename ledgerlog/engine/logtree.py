"""The Merkle tree of every partition of every event topic (PROTOCOL.md §9), kept with the log.

Per partition the store holds a frontier (``TreeState``: size, the roots of its complete
subtrees, where the next leaf and the current chunk start) and the hash of every complete
aligned subtree of at least ``CHUNK`` leaves. Appending is O(log n) and writes one frontier and,
on average, 1/8 of a node per record; nothing is recomputed at start. A proof is O(log n) node
lookups plus the hashes of at most one chunk of records per side, read back from the log: the
lowest levels are not stored, which keeps the store small (about 6 bytes a record).

Leaves are the data records in offset order. Where offsets are contiguous (the embedded log)
index = offset; elsewhere (Kafka: transaction markers take offsets) the store also keeps the
offset of each chunk's first leaf, so index and offset map in O(log n).

A pruned log (engine/prunepoint.py) no longer holds the records below its start; before they are
deleted the hash of each of their leaves is stored (``l/``, ``pruned_leaf``), and ``leaves``
reads those instead of records below the start, so roots, inclusion proofs (leaf hash and path)
and consistency proofs of any size stay what they were."""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import storekeys as K
from .merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    consistency_proof,
    inclusion_proof,
    node_hash,
    split,
)
from .topics import CHECKPOINTS, SCHEMAS

if TYPE_CHECKING:
    from .log.base import LogRecord

__all__ = ["CHUNK_LEVEL", "CHUNK", "has_tree", "leaf_input", "leaf_of", "pruned_leaf", "Pruned", "TreeState", "Trees",
           "TreeFold"]

#: Subtrees of 2**CHUNK_LEVEL leaves and more are stored; smaller ones are hashed from records.
CHUNK_LEVEL = 4
CHUNK = 1 << CHUNK_LEVEL
_LEAF_HEAD = struct.Struct(">I")
_TS = struct.Struct(">Q")
_STATE = struct.Struct(">QQQ")
_NODE = struct.Struct(">BQ")
_LEAF_PREFIX = struct.Struct(">BI")  # the leaf hash's 0x00, then u32be(len(key))
_CHUNK_MASK = CHUNK - 1
_U64_MASK = (1 << 64) - 1

#: ``read(topic, partition, offset, max_records)``: data records from ``offset`` (Log.read)
Reader = Callable[[str, int, int, int], "list[LogRecord]"]
#: ``pruned(topic, partition)``: (leaves below the log start, offset of the first leaf kept)
Pruned = Callable[[str, int], tuple[int, int]]


def _not_pruned(topic: str, partition: int) -> tuple[int, int]:
    return 0, 0


def pruned_leaf(topic: str, partition: int, index: int, offset: int, leaf: bytes,
                contiguous: bool) -> tuple[bytes, bytes]:
    """(key, value) storing the hash of pruned leaf ``index`` (and, where offsets are not
    contiguous, its offset)."""
    return K.leaf_key(topic, partition, index), leaf if contiguous else leaf + K.U64.pack(offset)


def has_tree(topic: str) -> bool:
    """Every topic but the schema registry and the tree heads themselves is a verifiable log."""
    return topic not in (SCHEMAS, CHECKPOINTS)


def leaf_input(key: bytes, timestamp: int, value: bytes) -> bytes:
    """u32be(len(key)) ‖ key ‖ u64be(timestamp_ms) ‖ value (timestamps below 0 wrap, as u64)."""
    return _LEAF_HEAD.pack(len(key)) + key + _TS.pack(timestamp & 0xFFFFFFFFFFFFFFFF) + value


def leaf_of(key: bytes, timestamp: int, value: bytes) -> bytes:
    """The leaf hash of a record: SHA-256(0x00 ‖ leaf_input)."""
    return hashlib.sha256(_LEAF_PREFIX.pack(0, len(key)) + key + _TS.pack(timestamp & _U64_MASK) + value).digest()


def _tp(topic: str, partition: int) -> bytes:
    return topic.encode() + b"\x00" + K.U32.pack(partition)


@dataclass(frozen=True, slots=True)
class TreeState:
    """A partition's frontier as stored: ``size`` leaves; ``next_offset`` the offset after the
    last leaf; ``chunk_offset`` the offset of the first leaf of the unfinished chunk."""

    size: int = 0
    next_offset: int = 0
    chunk_offset: int = 0
    nodes: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        return _STATE.pack(self.size, self.next_offset, self.chunk_offset) + b"".join(self.nodes)

    @classmethod
    def decode(cls, raw: bytes) -> TreeState:
        size, nxt, chunk = _STATE.unpack_from(raw)
        body = raw[_STATE.size:]
        return cls(size, nxt, chunk, tuple(body[i:i + 32] for i in range(0, len(body), 32)))

    def root(self) -> bytes:
        return Frontier(self.size, self.nodes).root()


class TreeFold:
    """One partition's tree growing by appended records; ``writes()`` are the store changes
    (frontier and completed nodes) to commit with the records, ``state`` the result."""

    __slots__ = ("_chunk", "_contiguous", "_frontier", "_next", "_tp", "_writes")

    def __init__(self, topic: str, partition: int, start: TreeState, contiguous: bool) -> None:
        self._tp = _tp(topic, partition)
        self._frontier = Frontier(start.size, start.nodes)
        self._next, self._chunk = start.next_offset, start.chunk_offset
        self._writes: dict[bytes, bytes] = {}
        self._contiguous = contiguous

    def add(self, offset: int, key: bytes, timestamp: int, value: bytes) -> None:
        self.extend(((offset, key, timestamp, value),))

    def extend(self, records: Iterable[tuple[int, bytes, int, bytes]]) -> None:
        """Append (offset, key, timestamp, value) records as leaves."""
        sha, head, u64 = hashlib.sha256, _LEAF_PREFIX.pack, _TS.pack
        self.extend_leaves((offset, sha(head(0, len(key)) + key + u64(ts & _U64_MASK) + value).digest())
                           for offset, key, ts, value in records)

    def extend_leaves(self, leaves: Iterable[tuple[int, bytes]]) -> None:
        """Append leaves given as (offset, leaf hash) (``leaf_of`` of the record at that offset):
        the frontier's carries written out inline, this being on every append's path."""
        f, writes, tp = self._frontier, self._writes, self._tp
        nodes, size, sha = f.nodes, f.size, hashlib.sha256
        node_key, chunk_key = K.TREE_NODE_PREFIX + tp, K.TREE_CHUNK_PREFIX + tp
        offset = self._next - 1
        for offset, h in leaves:
            if not size & _CHUNK_MASK:
                self._chunk = offset
                if not self._contiguous:
                    writes[chunk_key + K.U64.pack(size >> CHUNK_LEVEL)] = K.U64.pack(offset)
            carry, level = size, 0
            while carry & 1:  # merge with the equal-sized complete subtree on the left
                h = sha(b"\x01" + nodes.pop() + h).digest()
                carry >>= 1
                level += 1
                if level >= CHUNK_LEVEL:
                    writes[node_key + _NODE.pack(level, size >> level)] = h
            nodes.append(h)
            size += 1
        f.size = size
        self._next = offset + 1

    @property
    def state(self) -> TreeState:
        f = self._frontier
        return TreeState(f.size, self._next, self._chunk, tuple(f.nodes))

    def writes(self) -> dict[bytes, bytes]:
        return {**self._writes, K.TREE_STATE_PREFIX + self._tp: self.state.encode()}


class Trees:
    """The trees of one log: their states in memory, proofs read from the store and the log.

    ``get`` reads the store the trees are kept in; ``read`` reads records (``Log.read``)."""

    def __init__(self, get: Callable[[bytes], bytes | None], read: Reader, *, contiguous: bool,
                 pruned: Pruned = _not_pruned) -> None:
        self._get = get
        self._read = read
        self._pruned = pruned
        self.contiguous = contiguous
        self._states: dict[tuple[str, int], TreeState] = {}

    def load(self, partitions: Iterable[tuple[str, int]]) -> None:
        """(Re)read the stored frontier of each partition."""
        states = {}
        for topic, p in partitions:
            if has_tree(topic):
                raw = self._get(K.TREE_STATE_PREFIX + _tp(topic, p))
                states[(topic, p)] = TreeState.decode(raw) if raw else TreeState()
        self._states = states

    def state(self, topic: str, partition: int) -> TreeState:
        return self._states.get((topic, partition), TreeState())

    def states(self) -> dict[tuple[str, int], TreeState]:
        return dict(self._states)

    def fold(self, topic: str, partition: int) -> TreeFold:
        return TreeFold(topic, partition, self.state(topic, partition), self.contiguous)

    def commit(self, states: Mapping[tuple[str, int], TreeState]) -> None:
        """Make folded states current, once their writes are durable."""
        merged = dict(self._states)
        merged.update(states)
        self._states = merged  # replaced, never mutated: readers on other threads see one or the other

    # -- reading ------------------------------------------------------------------------------
    def node(self, topic: str, partition: int, level: int, index: int) -> bytes | None:
        """The stored hash of the complete subtree (level >= CHUNK_LEVEL, index), if any."""
        return self._get(K.TREE_NODE_PREFIX + _tp(topic, partition) + _NODE.pack(level, index))

    def _sized(self, topic: str, partition: int, size: int, what: str) -> TreeState:
        st = self.state(topic, partition)
        if (topic, partition) not in self._states:
            raise ProofError(f"{topic}[{partition}] is not a verifiable partition of this log")
        if not 0 <= size <= st.size:
            raise ProofError(f"{what} {size} is beyond the {st.size} leaves of {topic}[{partition}]")
        return st

    def chunk_offset(self, topic: str, partition: int, chunk: int) -> int:
        """The offset of leaf ``chunk * CHUNK``."""
        if self.contiguous:
            return chunk * CHUNK
        st = self.state(topic, partition)
        if chunk == st.size >> CHUNK_LEVEL:
            return st.chunk_offset
        raw = self._get(K.TREE_CHUNK_PREFIX + _tp(topic, partition) + K.U64.pack(chunk))
        if raw is None:
            raise ProofError(f"{topic}[{partition}]: the tree store lacks chunk {chunk}")
        return int(K.U64.unpack(raw)[0])

    def stored_leaves(self, topic: str, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """(offset, leaf hash) of pruned leaves [start, end), from the hashes stored at the prune."""
        out = []
        for index in range(start, end):
            raw = self._get(K.leaf_key(topic, partition, index))
            if raw is None or len(raw) not in (32, 40):
                raise ProofError(f"{topic}[{partition}]: the tree store lacks the hash of pruned leaf {index}")
            out.append((index if len(raw) == 32 else int(K.U64.unpack_from(raw, 32)[0]), raw[:32]))
        return out

    def leaves(self, topic: str, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """(offset, leaf hash) of leaves [start, end), all within one chunk: below the log start
        (a pruned log) the stored hashes, above it hashed from the records."""
        kept, kept_offset = self._pruned(topic, partition)
        below: list[tuple[int, bytes]] = []
        if start < kept:
            below = self.stored_leaves(topic, partition, start, min(end, kept))
            if end <= kept:
                return below
            start = kept
        chunk = start >> CHUNK_LEVEL
        base = chunk * CHUNK
        first = self.chunk_offset(topic, partition, chunk)
        if base < kept:  # the chunk begins below the log start: read from the first leaf kept
            base, first = kept, kept_offset
        top = min((chunk + 1) * CHUNK, self.state(topic, partition).size)
        recs = self._read(topic, partition, first, top - base)[:top - base]
        pos = start - base
        picked = recs[pos:pos + (end - start)]
        if len(picked) != end - start:
            raise ProofError(f"{topic}[{partition}]: the log holds fewer records than its tree")
        return below + [(r.offset, leaf_of(r.key, r.timestamp, r.value)) for r in picked]

    def _subtree_fn(self, topic: str, partition: int) -> Callable[[int, int], bytes]:
        tp = _tp(topic, partition)
        cache: dict[int, list[bytes]] = {}  # chunk -> its leaf hashes, read once per proof

        def subtree(start: int, end: int) -> bytes:
            n = end - start
            if n == 0:
                return EMPTY_ROOT
            if n & (n - 1) == 0 and start % n == 0 and n >= CHUNK:
                level = n.bit_length() - 1
                raw = self._get(K.TREE_NODE_PREFIX + tp + _NODE.pack(level, start >> level))
                if raw is None:
                    raise ProofError(f"{topic}[{partition}]: the tree store lacks node {level}/{start >> level}")
                return raw
            if end - 1 >> CHUNK_LEVEL == start >> CHUNK_LEVEL:  # inside one chunk: hash its leaves
                c = start >> CHUNK_LEVEL
                if c not in cache:
                    top = min((c + 1) * CHUNK, self.state(topic, partition).size)
                    cache[c] = [h for _, h in self.leaves(topic, partition, c * CHUNK, top)]
                base = c * CHUNK
                return _root(cache[c][start - base:end - base])
            k = split(n)
            return node_hash(subtree(start, start + k), subtree(start + k, end))
        return subtree

    def root(self, topic: str, partition: int, size: int | None = None) -> bytes:
        st = self.state(topic, partition)
        if size is None or size == st.size:
            return st.root()
        self._sized(topic, partition, size, "tree size")
        return self._subtree_fn(topic, partition)(0, size)

    def inclusion(self, topic: str, partition: int, index: int, size: int) -> tuple[int, bytes, list[bytes]]:
        """(offset, leaf hash, audit path) of leaf ``index`` in the tree of ``size`` leaves."""
        self._sized(topic, partition, size, "tree_size")
        if not 0 <= index < size:
            raise ProofError(f"index {index} is not below tree_size {size}")
        [(offset, leaf)] = self.leaves(topic, partition, index, index + 1)
        return offset, leaf, inclusion_proof(index, size, self._subtree_fn(topic, partition))

    def consistency(self, topic: str, partition: int, first: int, second: int) -> list[bytes]:
        self._sized(topic, partition, second, "second")
        if not 0 < first <= second:
            raise ProofError(f"first must be 1..second ({second}), not {first}")
        return consistency_proof(first, second, self._subtree_fn(topic, partition))

    def index_of(self, topic: str, partition: int, offset: int) -> int:
        """The leaf index of the record at ``offset``."""
        st = self.state(topic, partition)
        if not 0 <= offset < st.next_offset:
            raise ProofError(f"offset {offset} is not a leaf of {topic}[{partition}] (the tree ends "
                             f"before offset {st.next_offset})")
        if self.contiguous:
            return offset
        lo, hi = 0, st.size >> CHUNK_LEVEL  # the last chunk starting at or before offset
        if st.size % CHUNK == 0:
            hi -= 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.chunk_offset(topic, partition, mid) <= offset:
                lo = mid
            else:
                hi = mid - 1
        top = min((lo + 1) * CHUNK, st.size)
        for i, (off, _) in enumerate(self.leaves(topic, partition, lo * CHUNK, top)):
            if off == offset:
                return lo * CHUNK + i
        raise ProofError(f"offset {offset} of {topic}[{partition}] holds no data record")


def _root(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 1:
        return leaves[0]
    k = split(n)
    return node_hash(_root(leaves[:k]), _root(leaves[k:]))
