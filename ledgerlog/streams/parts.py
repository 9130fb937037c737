"""Which of a rebuild's parts folds which partition, when a projection that SPLITS_BY_PARTITION
is built in parts by parallel processes (streams/parallel.py).

A partition belongs to one part, fixed by its topic, its index and the number of parts alone
(never by how many records it holds), so a killed build resumes every part on exactly the
partitions it folded before, however the log grew meanwhile. Consecutive partitions of a topic go
to consecutive parts, each topic starting at a part of its own (topics of one partition, such as
the blocks, do not all land on the first)."""
from __future__ import annotations

import zlib

from ledgerlog.engine.log.base import Log

__all__ = ["TP", "part_of", "owned"]

#: (topic, partition)
TP = tuple[str, int]


def part_of(topic: str, partition: int, parts: int) -> int:
    """The part (of ``parts``) that folds ``topic``'s ``partition``."""
    return (zlib.crc32(topic.encode()) + partition) % parts


def owned(log: Log, topics: tuple[str, ...], part: tuple[int, int]) -> frozenset[TP]:
    """The partitions of ``topics`` that ``part`` (index, count) folds."""
    i, k = part
    return frozenset((t, p) for t in topics for p in range(len(log.end_offsets(t))) if part_of(t, p, k) == i)
