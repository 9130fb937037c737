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
from functools import lru_cache
from typing import Any

from ledgerlog.engine.digest import DIGEST_MOD, digest_hex
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.intjson import dumps, loads
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.partitioner import partition_for
from ledgerlog.projections import balances

__all__ = ["BATCH_ROWS", "FETCH_WAIT_MS", "ROWS_PER_EVENT", "SOURCES", "LeaseLayout", "Names", "combine_digests", "mark_of",
           "pack_rows", "partition_of", "source_partitions", "unpack_rows"]

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
    """Which lease topic partition leases what: the ``shards`` shard leases sit evenly spread among
    the derive leases, so the range of lease partitions a group member is given (Kafka's assignors
    hand out contiguous ranges of a topic) holds its share of both kinds. The derive leases go
    along the lease topic stratified by partition (every topic's first partitions, then every
    topic's next ones), so a range holds a share of each source topic rather than whole topics:
    in SOURCES order, one member would derive every transaction, nearly all of the work."""

    def __init__(self, shards: int, sources: Sequence[tuple[str, int]]) -> None:
        self.shards, self.sources = shards, len(sources)
        self.total = shards + self.sources
        self._shard_at = [(2 * k + 1) * self.total // (2 * shards) for k in range(shards)]
        at = set(self._shard_at)
        derive = [i for i in range(self.total) if i not in at]
        self._role: dict[int, tuple[bool, int]] = {i: (True, k) for k, i in enumerate(self._shard_at)}
        self._role.update({i: (False, j) for i, j in zip(derive, _stratified(sources))})

    def of_shard(self, k: int) -> int:
        """The lease partition of shard ``k``."""
        return self._shard_at[k]

    def split(self, leases: Iterable[int]) -> tuple[set[int], set[int]]:
        """(shards, derive leases i.e. source partition numbers) that lease partitions stand for."""
        shards: set[int] = set()
        derive: set[int] = set()
        for i in leases:
            role = self._role.get(i)
            if role is not None:
                (shards if role[0] else derive).add(role[1])
        return shards, derive

    def ranges(self, members: int) -> list[tuple[set[int], set[int]]]:
        """What each of ``members`` group members holds when the lease topic is dealt as Kafka's
        range assignor deals a topic: contiguous ranges, the first ``total % members`` one longer."""
        out, start = [], 0
        for m in range(members):
            n = self.total // members + (1 if m < self.total % members else 0)
            out.append(self.split(range(start, start + n)))
            start += n
        return out


def _stratified(sources: Sequence[tuple[str, int]]) -> list[int]:
    """Source partition numbers (indexes into ``sources``) in the order of where each sits along
    its topic: partition p of a topic of n at (p + phase) / n, the topics' phases spread over
    (0, 1) in their order, so every topic's partitions spread evenly and apart from the others'."""
    topics = list(dict.fromkeys(t for t, _ in sources))
    count = {t: sum(1 for u, _ in sources if u == t) for t in topics}
    phase = {t: (i + 0.5) / len(topics) for i, t in enumerate(topics)}
    return sorted(range(len(sources)), key=lambda j: (sources[j][1] + phase[sources[j][0]]) / count[sources[j][0]])


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
