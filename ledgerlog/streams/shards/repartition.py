"""The balances repartition topic: the rows ``projections.balances.rows_of`` makes of each event,
placed by account (partition = murmur2 of the address, Kafka's partitioner), so an account's
whole history lands in one partition and a worker owning that partition folds it alone. A record
packs the rows one derive step made of one source partition for one repartition partition (up to
``BATCH_ROWS``), keyed by the source partition: one produce, fetch and decode for many rows.

Each row carries its *source coordinate*: the source topic (its index in ``balances.TOPICS``),
partition, offset and the row's index within its event. A deriver that dies
and resumes from its last recorded progress writes some rows a second time; a worker skips every
row whose coordinate is not above the highest one it folded from that source partition (its
*mark*, stored with its state). That is exact because the first copy of a coordinate always
precedes every row with a higher one of the same source partition in a repartition partition (a
deriver writes in source order, and records progress only after its rows are acknowledged): see
docs/KAFKA.md, "Exactly once"."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ledgerlog.engine.digest import DIGEST_MOD, digest_hex
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.intjson import dumps, loads
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.partitioner import partition_for
from ledgerlog.projections import balances

__all__ = ["BATCH_ROWS", "FETCH_WAIT_MS", "ROWS_PER_EVENT", "SOURCES", "LeaseLayout", "Names", "combine_digests",
           "interleave", "mark_of", "pack_rows", "partition_of", "source_partitions", "unpack_rows"]

#: The topics the deriver reads: the balances projection's, in its order (a row's source index).
SOURCES: tuple[str, ...] = tuple(balances.TOPICS)
_SOURCE_INDEX = {t: i for i, t in enumerate(SOURCES)}
#: At most this many rows come of one event (engine.movements makes at most two).
ROWS_PER_EVENT = 4
#: How long the workers' consumers let the broker hold a fetch. Tansu holds every fetch this long
#: even with data at hand, so it bounds a consumer's fetches per second (each a little broker CPU,
#: empty ones included); records pack up to ``BATCH_ROWS`` rows, so few fetches carry many rows.
FETCH_WAIT_MS = 100
#: Rows in one record at most (about 70 bytes each: records stay far below the broker's 1 MB).
BATCH_ROWS = 2000


@dataclass(frozen=True)
class Names:
    """The broker names of one chain's sharded projection. They start with ``__``, so the chain's
    topic listing (and with it verify, audit and the Merkle trees) leaves them out."""

    prefix: str          # the chain's ``ledgerlog.topic_prefix``
    chain: str           # the genesis hash (its first 16 hex digits name the chain)
    projection: str = balances.NAME

    @property
    def base(self) -> str:
        return f"__ledgerlog-shards.{self.prefix}{self.chain[:16]}.{self.projection}"

    @property
    def group(self) -> str:
        """The workers' consumer group (faust app id)."""
        return self.base

    @property
    def movements(self) -> str:
        """The repartition topic: rows keyed by account."""
        return f"{self.base}.movements"

    @property
    def progress(self) -> str:
        """One partition per derive lease (source partition): its deriver's progress records, one
        per acknowledged batch."""
        return f"{self.base}.progress"

    @property
    def leases(self) -> str:
        """The record-less lease topic: one partition per shard and one per source partition
        (``source_partitions``) to derive, laid out by ``LeaseLayout``."""
        return f"{self.base}.leases"


class LeaseLayout:
    """Which lease topic partition leases what: one partition per shard and one per source
    partition to derive, interleaved (``interleave``) so that what a group member is dealt, a
    contiguous range of the lease topic (Kafka's range assignor; about what faust deals members
    joining a running group) or every m-th partition (faust's round robin for a new group), holds
    its share of the shards and of each source topic. Laid out topic after topic, one of two
    members could derive all of ``ledger.transactions`` (nine tenths of the balances events), or
    hold every shard."""

    def __init__(self, shards: int, sources: Sequence[tuple[str, int]]) -> None:
        self.total = shards + len(sources)
        of_kind: dict[str | None, list[int]] = {None: list(range(shards))}  # None: the shards
        for j, (t, _) in enumerate(sources):
            of_kind.setdefault(t, []).append(j)
        left = {kind: iter(numbers) for kind, numbers in of_kind.items()}
        #: (is a shard, shard or source partition number) of each lease partition
        self._role = [(kind is None, next(left[kind]))
                      for kind in interleave({kind: len(numbers) for kind, numbers in of_kind.items()})]
        self._shard_at = [0] * shards
        for i, (is_shard, k) in enumerate(self._role):
            if is_shard:
                self._shard_at[k] = i

    def of_shard(self, k: int) -> int:
        """The lease partition of shard ``k``."""
        return self._shard_at[k]

    def split(self, leases: Iterable[int]) -> tuple[set[int], set[int]]:
        """(shards, derive leases i.e. source partition numbers) that lease partitions stand for."""
        shards: set[int] = set()
        derive: set[int] = set()
        for i in leases:
            if 0 <= i < self.total:
                is_shard, n = self._role[i]
                (shards if is_shard else derive).add(n)
        return shards, derive

    def dealt(self, members: int, *, to_one_first: bool = False) -> list[tuple[set[int], set[int]]]:
        """What each of ``members`` workers holds as the group's assignor (faust's) deals the lease
        topic: to a new group, or (``to_one_first``) when the others join one that held it all."""
        from faust.assignor.client_assignment import CopartitionedAssignment
        from faust.assignor.copartitioned_assignor import CopartitionedAssignor

        held = [CopartitionedAssignment(actives=set(range(self.total)) if to_one_first and m == 0 else None)
                for m in range(members)]
        CopartitionedAssignor([], {str(m): a for m, a in enumerate(held)}, self.total, replicas=0).get_assignment()
        return [self.split(a.actives) for a in held]


def interleave(counts: dict[Any, int], members: int = 4) -> list[Any]:
    """A sequence holding each kind ``counts[kind]`` times, spread so that each contiguous part and
    each residue class modulo 2..``members`` holds about its share of every kind: at each place,
    the kind furthest behind an even spread, less how crowded it already is in this place's
    residue classes (exact fractions: ties go to the first kind)."""
    total = sum(counts.values())
    placed = dict.fromkeys(counts, 0)
    moduli = range(2, members + 1)
    crowd = {kind: {m: [0] * m for m in moduli} for kind in counts}
    out: list[Any] = []

    def urgency(kind: Any, i: int) -> Fraction:
        behind = Fraction((i + 1) * counts[kind], total) - placed[kind]
        crowded = sum((crowd[kind][m][i % m] - Fraction(placed[kind], m) for m in moduli), Fraction(0))
        return behind - crowded / len(moduli)

    for i in range(total):
        kind = max((k for k in counts if placed[k] < counts[k]), key=lambda k: urgency(k, i))
        out.append(kind)
        placed[kind] += 1
        for m in moduli:
            crowd[kind][m][i % m] += 1
    return out


def source_partitions(log: Log) -> list[tuple[str, int]]:
    """The derive leases: every partition of the balances topics, lease j being the j-th."""
    return [(t, p) for t in SOURCES for p in range(len(log.end_offsets(t)))]


@lru_cache(maxsize=1 << 16)
def partition_of(address: str, partitions: int) -> int:
    """The repartition partition of an account: Kafka's murmur2 of its address, as producers place it."""
    return partition_for(address.encode(), partitions)


def mark_of(offset: int, index: int) -> int:
    """A row's coordinate within its source partition as one number, ordered as (offset, index);
    0 is below every row."""
    return offset * ROWS_PER_EVENT + index + 1


def pack_rows(genesis: Genesis, topic: str, partition: int, events: Iterable[tuple[int, dict[str, Any]]],
              partitions: int) -> Iterator[tuple[int, bytes, bytes]]:
    """(repartition partition, key, value) of the records holding the rows ``events`` ((offset,
    event) of one source partition, in offset order) make: per repartition partition their rows
    in source order, ``BATCH_ROWS`` at most a record."""
    src = _SOURCE_INDEX[topic]
    by_part: dict[int, list[list[Any]]] = {}
    for off, ev in events:
        for i, (addr, height, d_bal, d_staked, nonce) in enumerate(balances.rows_of(genesis, topic, ev)):
            k = partition_of(addr, partitions)
            rows = by_part.get(k)
            if rows is None:
                rows = by_part[k] = []
            rows.append([off, i, addr, height, d_bal, d_staked, nonce])
    key = f"{topic}/{partition}".encode()
    for k, rows in by_part.items():
        for start in range(0, len(rows), BATCH_ROWS):
            yield k, key, dumps([src, partition, rows[start:start + BATCH_ROWS]])


def unpack_rows(value: bytes) -> tuple[tuple[int, int], list[tuple[int, balances.Row]]]:
    """((source index, source partition), [(the row's mark, the row), ...]) of one record."""
    src, p, rows = loads(value)
    return (src, p), [(off * ROWS_PER_EVENT + i + 1, (addr, height, d_bal, d_staked, nonce))
                      for off, i, addr, height, d_bal, d_staked, nonce in rows]


def combine_digests(digests: Iterable[str]) -> str:
    """The digest of the union of shards' states: digests are sums of per-entry hashes modulo
    2**128 (engine/digest.py) and every state key lives in exactly one shard, so the sum of the
    shards' digests is the digest of the whole state: the embedded fold's."""
    return digest_hex(sum(int(d, 16) for d in digests) % DIGEST_MOD)
