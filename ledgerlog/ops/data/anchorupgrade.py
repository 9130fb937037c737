"""Bringing a pruned log's anchor up to the projection code: a built-in projection whose VERSION
changed since the prune cannot be seeded from the anchor (it holds the old version's store), and
its records below the prune point are gone from the log. They are in the prunes' archives: the
anchor store of each such projection is rebuilt by folding the archived records exactly up to the
anchor's positions, then put in the anchor beside the others (its anchor.json entry last, so a
crash leaves the old entry, and the next open builds it again).

Without every archive since the first prune (moved off the machine, say), it cannot be done:
PrunedError names the partitions the archives do not cover and the fix (put them back under the
archive dir, or restore a snapshot taken before the prune)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ledgerlog import projections
from ledgerlog.engine.errors import LogError, PrunedError, UsageError
from ledgerlog.engine.files import fsync_tree, write_atomic
from ledgerlog.engine.log.base import Log, LogRecord, Record, StateWrites, TopicPartition
from ledgerlog.ops.data.archive import archive_dirs, archive_records, read_manifest
from ledgerlog.ops.data.locks import prune_lock
from ledgerlog.streams.anchor import ANCHOR_FILE, Anchor
from ledgerlog.streams.anchorbuild import fold_exactly
from ledgerlog.streams.runner import Runner

if TYPE_CHECKING:
    from ledgerlog.engine.chain import Chain
    from ledgerlog.engine.config import Config

__all__ = ["ArchiveLog", "upgrade_anchor"]

logger = logging.getLogger("ledgerlog.anchor")


class ArchiveLog(Log):
    """The records the prunes archived, as a read-only log from offset 0 up to ``ends`` (the
    anchor's positions): what a fold of the pruned history reads."""

    contiguous_offsets = False  # (a Kafka log's archived offsets keep its transaction markers' gaps)
    ends_are_local = True

    def __init__(self, files: Mapping[TopicPartition, list[str]], partitions: Mapping[str, int],
                 ends: Mapping[str, list[int]]) -> None:
        self._files, self._partitions, self._ends = files, dict(partitions), ends
        self._cursors: dict[TopicPartition, _Cursor] = {}

    def topics(self) -> dict[str, int]:
        return dict(self._partitions)

    def end_offsets(self, topic: str) -> list[int]:
        return list(self._ends[topic])

    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[LogRecord]:
        """Forward reads stream the partition's archive files once; a read behind that starts over."""
        tp = (topic, partition)
        cur = self._cursors.get(tp)
        if cur is None or offset < cur.position:
            cur = self._cursors[tp] = _Cursor(self._records(tp))
        return cur.take(offset, max_records, self._ends[topic][partition])

    def _records(self, tp: TopicPartition) -> Iterator[LogRecord]:
        for path in self._files.get(tp, []):
            yield from archive_records(path)

    def create_topics(self, partitions: Mapping[str, int]) -> None:
        raise LogError("archives are read only")

    def append(self, records: Sequence[Record], state: StateWrites | None = None) -> list[tuple[int, int]]:
        raise LogError("archives are read only")

    def commit_positions(self, group: str, positions: Mapping[TopicPartition, int]) -> None:
        raise LogError("archives are read only")

    def positions(self, group: str) -> dict[TopicPartition, int]:
        return {}


class _Cursor:
    """Where a forward read of one partition's archived records is."""

    def __init__(self, records: Iterator[LogRecord]) -> None:
        self.records = records
        self.held: LogRecord | None = None  # read from the files, not returned yet
        self.position = 0  # the offsets below it were read

    def take(self, offset: int, n: int, end: int) -> list[LogRecord]:
        out: list[LogRecord] = []
        held: LogRecord | None = self.held
        while len(out) < n:
            rec = held or next(self.records, None)
            held = None
            if rec is None:
                break
            if rec.offset >= end:
                held = rec
                break
            if rec.offset >= offset:
                out.append(rec)
        self.held = held
        self.position = out[-1].offset + 1 if out else max(self.position, offset)
        return out


def _archived(cfg: Config, anchor: Anchor, topics: set[str]) -> dict[TopicPartition, list[str]]:
    """The archive files of ``topics`` that together hold every record below the anchor's
    positions, per partition in offset order; PrunedError when they do not."""
    covered: dict[TopicPartition, list[tuple[int, int, str]]] = {}
    try:
        dirs = archive_dirs(cfg.archive_dir)
    except UsageError:
        dirs = []
    for d in dirs:
        for name, meta in read_manifest(d)["files"].items():
            if meta["topic"] in topics:
                covered.setdefault((meta["topic"], meta["partition"]), []).append(
                    (meta["first_offset"], meta["end_offset"], os.path.join(d, name)))
    out, missing = {}, []
    for topic in sorted(topics):
        for p, end in enumerate(anchor.positions.get(topic, [])):
            reached, files = 0, []
            for first, stop, path in sorted(covered.get((topic, p), [])):
                if first <= reached < stop:
                    files.append(path)
                    reached = stop
            if reached < end:
                missing.append(f"{topic}[{p}] from offset {reached}")
            out[(topic, p)] = files
    if missing:
        raise PrunedError(f"the archives under {cfg.archive_dir} do not hold every pruned record ({', '.join(missing[:4])}"
                          f"{' ...' if len(missing) > 4 else ''}); put every prune's archive back there, or restore "
                          "a snapshot taken before the prune")
    return out


def _build(cfg: Config, chain: Chain, anchor: Anchor, stale: list[ModuleType], tmp: str) -> dict[str, Any]:
    """Fold the archived records of ``stale`` into stores under ``tmp``; their anchor entries."""
    topics = {t for m in stale for t in m.TOPICS}
    ends = {t: list(anchor.positions[t]) for t in topics}
    log = ArchiveLog(_archived(cfg, anchor, topics), {t: chain.log.partition_count(t) for t in topics}, ends)
    runner = Runner(log, chain.codec, chain.genesis, os.path.join(tmp, "projections"),
                    names=[m.NAME for m in stale], paths={m.NAME: os.path.join(tmp, m.NAME) for m in stale},
                    anchor_dir=os.path.join(tmp, "no-anchor"), batch=cfg.fold_batch)
    try:
        return fold_exactly(runner, ends)
    finally:
        runner.close()


def upgrade_anchor(cfg: Config, chain: Chain, *, locked: bool = False) -> list[str]:
    """Rebuild from the archives the anchor stores of the built-in projections whose code version
    the anchor does not hold (see the module docstring), under the prune lock (``locked``: the
    caller holds it); the names rebuilt."""
    anchor = Anchor.load(cfg.anchor_dir)
    if anchor is None or all(anchor.covers(m) for m in projections.ALL.values()):
        return []
    if not locked:
        with prune_lock(cfg.data_dir):
            return upgrade_anchor(cfg, chain, locked=True)
    stale = [m for m in projections.ALL.values() if not anchor.covers(m)]
    logger.info("the anchor holds older versions of %s: rebuilding them from the prunes' archives",
                [m.NAME for m in stale])
    tmp = tempfile.mkdtemp(prefix=".upgrade-", dir=anchor.root)
    try:
        metas = _build(cfg, chain, anchor, stale, tmp)
        for name in metas:
            new, old = os.path.join(tmp, name), anchor.store_path(name)
            fsync_tree(new)
            shutil.rmtree(old, ignore_errors=True)
            os.rename(new, old)
        doc = {**anchor.doc, "projections": {**anchor.projections, **metas}}
        write_atomic(os.path.join(anchor.path, ANCHOR_FILE), json.dumps(doc, indent=1, sort_keys=True).encode())
        return sorted(metas)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
