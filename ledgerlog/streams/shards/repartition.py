"""The balances repartition topic: the rows ``projections.balances.rows_of`` makes of each event,
keyed by account, so an account's whole history lands in one partition and a worker owning that
partition folds it alone.

Each row's value carries its *source coordinate*: the source topic (its index in
``balances.TOPICS``), partition, offset and the row's index within its event. A deriver that dies
and resumes from its last recorded progress writes some rows a second time; a worker skips every
row whose coordinate is not above the highest one it folded from that source partition (its
*mark*, stored with its state). That is exact because the first copy of a coordinate always
precedes every row with a higher one of the same source partition in a repartition partition (a
deriver writes in source order, and records progress only after its rows are acknowledged): see
docs/KAFKA.md, "Exactly once"."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ledgerlog.engine.digest import DIGEST_MOD, digest_hex
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.intjson import dumps, loads
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.partitioner import partition_for
from ledgerlog.projections import balances

__all__ = ["ROWS_PER_EVENT", "SOURCES", "LeaseLayout", "Names", "combine_digests", "decode_row", "encode_rows",
           "mark_of", "partition_of", "source_partitions"]

#: The topics the deriver reads: the balances projection's, in its order (a row's source index).
SOURCES: tuple[str, ...] = tuple(balances.TOPICS)
_SOURCE_INDEX = {t: i for i, t in enumerate(SOURCES)}
#: At most this many rows come of one event (engine.movements makes at most two).
ROWS_PER_EVENT = 4


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
    the ``sources`` derive leases, so the range of lease partitions a group member is given (Kafka's
    assignors hand out contiguous ranges of a topic) holds its share of both kinds."""

    def __init__(self, shards: int, sources: int) -> None:
        self.shards, self.sources = shards, sources
        self.total = shards + sources
        self._shard_at = [(2 * k + 1) * self.total // (2 * shards) for k in range(shards)]
        at = set(self._shard_at)
        derive = [i for i in range(self.total) if i not in at]
        self._role: dict[int, tuple[bool, int]] = {i: (True, k) for k, i in enumerate(self._shard_at)}
        self._role.update({i: (False, j) for j, i in enumerate(derive)})

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


def source_partitions(log: Log) -> list[tuple[str, int]]:
    """The derive leases: every partition of the balances topics, lease j being the j-th."""
    return [(t, p) for t in SOURCES for p in range(len(log.end_offsets(t)))]


def partition_of(address: str, partitions: int) -> int:
    """The repartition partition of an account: Kafka's murmur2 of its address, as producers place it."""
    return partition_for(address.encode(), partitions)


def mark_of(offset: int, index: int) -> int:
    """A row's coordinate within its source partition as one number, ordered as (offset, index);
    0 is below every row."""
    return offset * ROWS_PER_EVENT + index + 1


def encode_rows(genesis: Genesis, topic: str, partition: int, offset: int,
                ev: dict[str, Any]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each row one source event makes, in row order."""
    src = _SOURCE_INDEX[topic]
    for i, (addr, height, d_bal, d_staked, nonce) in enumerate(balances.rows_of(genesis, topic, ev)):
        yield addr.encode(), dumps([src, partition, offset, i, height, d_bal, d_staked, nonce])


def decode_row(key: bytes, value: bytes) -> tuple[tuple[int, int], int, balances.Row]:
    """((source index, source partition), the row's mark, the row)."""
    src, p, off, i, height, d_bal, d_staked, nonce = loads(value)
    return (src, p), mark_of(off, i), (key.decode(), height, d_bal, d_staked, nonce)


def combine_digests(digests: Iterable[str]) -> str:
    """The digest of the union of shards' states: digests are sums of per-entry hashes modulo
    2**128 (engine/digest.py) and every state key lives in exactly one shard, so the sum of the
    shards' digests is the digest of the whole state: the embedded fold's."""
    return digest_hex(sum(int(d, 16) for d in digests) % DIGEST_MOD)
