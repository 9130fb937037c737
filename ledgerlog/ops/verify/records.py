"""Reading a log's records for `ledgerlog verify`: offsets in order, gaps that the backend does
not explain, records a store holds under no topic partition, and read errors, as problems."""
from __future__ import annotations

import itertools
from collections.abc import Iterator

from ledgerlog.engine import storekeys as K
from ledgerlog.engine.log.base import Log
from ledgerlog.ops.verify.storage import (
    Section,
    _checked_items,
    _classify,
    _remedy,
    _verified_reads,
)

__all__ = ["RecordReader"]


class RecordReader:
    """The records of each partition, read straight from the store where the log has one."""

    def __init__(self, log: Log, sec: Section, log_path: str, topics: dict[str, int]) -> None:
        self.log, self.sec, self.log_path, self.topics = log, sec, log_path, topics
        self.read_errors = 0  # storage errors met while reading records

    def records(self, topic: str, p: int, start: int, end: int) -> Iterator[tuple[int, bytes, int, bytes]]:
        """(offset, key, timestamp, value) of a partition from ``start`` (its log start) to ``end``;
        gaps and strays become problems."""
        db = self.log.raw()
        where = f"{topic}[{p}]"
        if db is None:  # another backend: through the log interface
            expected = start
            for rec in self.log.scan(topic, p, start, end):
                if rec.offset != expected and not self.gap_explained(topic, p, expected, rec.offset):
                    self.sec.problem("OFFSET_GAP", where, f"offsets {expected}..{rec.offset - 1} are missing")
                expected = rec.offset + 1
                yield rec.offset, rec.key, rec.timestamp, rec.value
            if expected < end and not self.gap_explained(topic, p, expected, end):
                self.sec.problem("OFFSET_GAP", where, f"offsets {expected}..{end - 1} are missing (end offset {end})")
            return
        prefix = K.record_prefix(topic, p)
        n = len(prefix)
        expected = start
        try:
            for key, val in _checked_items(db, prefix):
                if len(key) != n + 8:
                    self.sec.problem("BAD_RECORD", where, f"record key {key!r} is not <prefix><offset:8>")
                    continue
                off = K.U64.unpack_from(key, n)[0]
                if off != expected:
                    self.sec.problem("OFFSET_GAP", where, f"offsets {expected}..{off - 1} are missing")
                expected = off + 1
                if off >= end:
                    self.sec.problem("BEYOND_END", f"{where}@{off}", f"record at or past the end offset {end}")
                stored = K.split_record_value(val)
                if stored is None:
                    self.sec.problem("BAD_RECORD", f"{where}@{off}", "record value is shorter than its header says")
                    continue
                ts, rkey, value = stored
                yield off, rkey, ts, value
        except Exception as exc:
            self.read_errors += 1
            code, file = _classify(str(exc), self.log_path)
            self.sec.problem(code, f"{where}@{expected}", f"reading the log failed: {exc}", file=file,
                             remedy=_remedy("log", "log", self.log_path))
            return
        if expected < end:
            self.sec.problem("OFFSET_GAP", where, f"offsets {expected}..{end - 1} are missing (end offset {end})")

    def gap_explained(self, topic: str, p: int, start: int, stop: int) -> bool:
        """Are offsets start..stop-1, which no reader saw, what the backend puts between records?
        Never on a contiguous log. On Kafka every append is a transaction that ends with a commit
        marker on each partition it wrote: one unseen offset after a record is that marker. A
        longer gap must be an aborted transaction's records (seen read_uncommitted) and their
        markers: never two unseen offsets in a row. A record lost inside a transaction looks
        like a marker to this check; the hash links, tx roots and cross references catch it."""
        if self.log.contiguous_offsets or stop <= start:
            return False
        if stop - start == 1:
            return True
        probe = self.log.uncommitted_offsets(topic, p, start, stop)
        if probe is None:
            return False
        seen = set(probe)
        holes = [o for o in range(start, stop) if o not in seen]
        return all(b - a > 1 for a, b in itertools.pairwise(holes))

    def stray_records(self) -> None:
        """Records under a topic partition the log does not have."""
        db = self.log.raw()
        if db is None:
            return
        it = db.iter(_verified_reads())
        it.seek(K.RECORD_PREFIX)
        while it.valid() and it.key().startswith(K.RECORD_PREFIX):
            key = it.key()
            parsed = K.parse_record_key(key)
            topic, p = (parsed[0], parsed[1]) if parsed else (key[len(K.RECORD_PREFIX):].decode(errors="replace"), -1)
            if parsed is None or p >= self.topics.get(topic, 0):
                self.sec.problem("STRAY_RECORD", f"{topic}[{p}]", f"record key {key[:80]!r} belongs to no topic partition")
                it.next()
                continue
            it.seek(K.record_prefix(topic, p) + b"\xff" * 9)  # past this partition
