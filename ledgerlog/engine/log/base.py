"""The log interface every backend implements (embedded RocksDB, in-memory, Kafka)."""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ..errors import AheadOfLogError, LogError, PruneUnsupportedError
from ..partitioner import partition_for

if TYPE_CHECKING:
    from rocksdict import Rdict

    from ..logtree import Trees
    from ..prunepoint import PrunePoint

__all__ = ["ahead_error", "first_at_height", "Record", "LogRecord", "TopicPartition", "Log", "StateWrites"]

TopicPartition = tuple[str, int]
#: Write-side state changes committed with an append: key -> value, or None to delete.
StateWrites = Mapping[bytes, "bytes | None"]


class Record(NamedTuple):  # a tuple: admission makes one per event, and a frozen dataclass costs 4x
    """A record to append. ``partition`` None means: place it by murmur2 of the key. ``leaf``,
    when the writer made it already, is the record's Merkle leaf hash (``logtree.leaf_of`` of
    its key, timestamp and value); a log that keeps trees may use it instead of hashing again."""

    topic: str
    key: bytes
    value: bytes
    timestamp: int
    partition: int | None = None
    leaf: bytes | None = None


@dataclass(frozen=True, slots=True)
class LogRecord:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: int


class Log(abc.ABC):
    """A partitioned append-only log. Appends of one call are atomic across topics."""

    #: Can ``append(..., state=...)`` commit write-side state in the same atomic write?
    atomic_state: bool = False
    #: Are a partition's offsets 0, 1, 2, ... without gaps? Kafka's are not: transaction markers
    #: (and aborted records, on a broker that hides them) take offsets no reader sees. Readers
    #: therefore continue from the last record they read (``rec.offset + 1``), never count.
    contiguous_offsets: bool = True
    #: Are end offsets known in memory, so asking for them is cheap (no broker round trip)?
    ends_are_local: bool = False
    #: Can other processes open this log read-only by ``path`` while it is open (as a RocksDB
    #: secondary), so a rebuild can spread projections over child processes?
    supports_parallel_rebuild: bool = False
    #: Can ``checkpoint`` copy this log (snapshots)? A Kafka log is backed up with the broker's tools.
    supports_checkpoint: bool = False
    #: Where the log is stored on this machine (None: not in a local directory).
    path: str | None = None
    #: The partitions' Merkle trees (engine/logtree.py), kept up to date with the records; None
    #: on a backend that keeps none (a Kafka log opened without a local state store).
    trees: Trees | None = None

    @property
    def keeps_state(self) -> bool:
        """Does ``state_get``/``state_items`` work? Always with ``atomic_state``; the Kafka
        backend keeps the state in a local store beside the log, written after each append and
        caught up from the log on open (``engine.admission.state_fold.catch_up``)."""
        return self.atomic_state

    @abc.abstractmethod
    def create_topics(self, partitions: Mapping[str, int]) -> None:
        """Create missing topics; an existing topic with another partition count is an error."""

    @abc.abstractmethod
    def topics(self) -> dict[str, int]:
        """Topic name -> partition count."""

    @abc.abstractmethod
    def append(self, records: Sequence[Record], state: StateWrites | None = None) -> list[tuple[int, int]]:
        """Append atomically; return (partition, offset) of each record, in order."""

    @abc.abstractmethod
    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[LogRecord]:
        """Records of one partition from ``offset`` on, at most ``max_records``."""

    @abc.abstractmethod
    def end_offsets(self, topic: str) -> list[int]:
        """Per partition, the offset after its last readable record: a reader whose next offset
        reached it has read everything. With contiguous offsets this is the offset the next
        record gets; otherwise the next record gets at least this offset."""

    @abc.abstractmethod
    def commit_positions(self, group: str, positions: Mapping[TopicPartition, int]) -> None:
        """Store a consumer group's next offsets."""

    @abc.abstractmethod
    def positions(self, group: str) -> dict[TopicPartition, int]:
        """A consumer group's stored next offsets."""

    def state_get(self, key: bytes) -> bytes | None:
        raise LogError(f"{type(self).__name__} keeps no write-side state")

    def state_get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """``state_get`` of each key, in order (backends read them in one call where they can)."""
        return [self.state_get(k) for k in keys]

    def state_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        raise LogError(f"{type(self).__name__} keeps no write-side state")

    def state_positions(self) -> dict[TopicPartition, int]:
        """Next offsets the write-side state reflects (backends whose state is not atomic)."""
        raise LogError(f"{type(self).__name__} keeps no write-side state positions")

    def commit_state(self, state: StateWrites, positions: Mapping[TopicPartition, int]) -> None:
        """Write state changes and the positions they reflect together (catch-up; non-atomic
        backends only)."""
        raise LogError(f"{type(self).__name__} keeps no write-side state positions")

    def ahead(self, positions: Mapping[TopicPartition, int]) -> list[tuple[str, int, int, int]]:
        """(topic, partition, stored, end) for each position past this log's end offset."""
        out = []
        for (topic, p), off in sorted(positions.items()):
            ends = self.end_offsets(topic) if topic in self.topics() else []
            end = ends[p] if p < len(ends) else 0
            if off > end:
                out.append((topic, p, off, end))
        return out

    def close(self) -> None:
        """Release resources; the log stays readable by a new instance."""

    # -- capabilities some backends have (callers ask these, never the backend's type) -----------
    def raw(self) -> Rdict | None:
        """The RocksDB store holding the records (the embedded backend), for the fast read path,
        snapshots, stats, compaction and verify; None on backends without one."""
        return None

    # -- pruning (engine/prunepoint.py) ----------------------------------------------------------
    def start_offsets(self, topic: str) -> list[int]:
        """Per partition, the first offset the log still holds (0 until it is pruned)."""
        return [0] * self.partition_count(topic)

    def prune_point(self) -> PrunePoint | None:
        """Where the log was last pruned; None if it never was."""
        return None

    def prune_refusal(self) -> str | None:
        """Why this log cannot delete records below a point (None: it can)."""
        return f"the {type(self).__name__} backend cannot delete records"

    def prune(self, point: PrunePoint, progress: Callable[[int], None] | None = None) -> None:
        """Delete every record below ``point.starts`` (per partition), first storing the leaf hash
        of each (so proofs stay valid) and then the start offsets and ``point`` itself; idempotent,
        so a prune killed half-way is finished by running it again. ``progress(n)``: n more
        records handled."""
        raise PruneUnsupportedError(self.prune_refusal() or "this log cannot delete records")

    def checkpoint(self, dest: str) -> None:
        """Write a consistent copy of the log, openable as a log, to the new directory ``dest``
        (``supports_checkpoint`` backends only)."""
        raise LogError(f"{type(self).__name__} cannot be checkpointed")

    def catch_up(self) -> None:
        """See what another process appended since the open (a read-only follower); a no-op
        where every read sees the latest records."""

    def catch_up_trees(self) -> None:
        """Bring ``trees`` up to the records the log holds now (the head publisher calls it
        before publishing); a no-op where every append keeps them in its own write."""

    @property
    def writable(self) -> bool:
        """False while this log refuses writes: the disk refuses them (``recover`` probes it), or
        a Kafka transaction of unknown outcome (until reopened)."""
        return True

    def recover(self) -> None:
        """Probe the disk and reopen after a refused write; raises while the fault holds."""

    def uncommitted_offsets(self, topic: str, partition: int, start: int, stop: int) -> list[int] | None:
        """Offsets of the data records in [start, stop) that a reader of uncommitted data sees
        (aborted and open transactions' records too; never transaction markers), for ``verify``
        to explain gaps in non-contiguous offsets; None where the backend cannot tell."""
        return None

    # -- helpers shared by backends --------------------------------------------------------
    def partition_count(self, topic: str) -> int:
        try:
            return self.topics()[topic]
        except KeyError as exc:
            raise LogError(f"unknown topic {topic!r}") from exc

    def place(self, record: Record) -> int:
        n = self.partition_count(record.topic)
        if record.partition is None:
            return partition_for(record.key, n)
        if not 0 <= record.partition < n:
            raise LogError(f"{record.topic} has no partition {record.partition}")
        return record.partition

    def scan(self, topic: str, partition: int, start: int | None = None, end: int | None = None,
             batch: int = 2000) -> Iterator[LogRecord]:
        """Every record of a partition in [start, end), read in batches; ``start`` None: from the
        first record the log holds (its start offset, past any prune). Offsets may have gaps
        (``contiguous_offsets``): each batch continues after the last record read."""
        stop = self.end_offsets(topic)[partition] if end is None else end
        offset = self.start_offsets(topic)[partition] if start is None else start
        while offset < stop:
            chunk = self.read(topic, partition, offset, min(batch, stop - offset))
            if not chunk:
                return
            for rec in chunk:
                if rec.offset >= stop:
                    return
                yield rec
            offset = chunk[-1].offset + 1

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def first_at_height(log: Log, topic: str, p: int, lo: int, end: int, height: int,
                    height_of: Callable[[bytes], int]) -> int:
    """The first offset in [lo, end) of partition ``p`` whose record's event height
    (``height_of(value)``) is >= ``height``, or ``end``: a bisection, since heights never
    decrease along a partition (offsets may have gaps: each probe reads the next record)."""
    hi = end
    while lo < hi:
        mid = (lo + hi) // 2
        recs = log.read(topic, p, mid, 1)
        if not recs or recs[0].offset >= end:
            hi = mid
            continue
        if height_of(recs[0].value) < height:
            lo = recs[0].offset + 1
        else:
            hi = mid
    return lo


def ahead_error(what: str, ahead: list[tuple[str, int, int, int]], fix: str) -> AheadOfLogError:
    """The refusal to serve ``what``, whose positions ``Log.ahead`` found past the log's end."""
    where = "; ".join(f"{t}[{p}] at offset {off}, the log ends at {end}" for t, p, off, end in ahead[:3])
    more = f" (and {len(ahead) - 3} more partitions)" if len(ahead) > 3 else ""
    return AheadOfLogError(f"{what} reflects records the log does not hold: {where}{more} (the log "
                           f"lost its tail, or was restored without it); {fix}")
