"""Bringing a pruned log's anchor up to the projection code: a built-in projection whose VERSION
changed since the prune cannot be seeded from the anchor (it holds the old version's store), and
its records below the prune point are gone from the log. They are in the prunes' archives: the
anchor store of each such projection is rebuilt by folding, exactly up to the anchor's positions,
the archived records of the pruned topics and the log's own records (the topics kept whole, like
``ledger.governance``, and what a prune stopped before deleting). The new anchor is written whole
in a directory of its own beside the current one, then ``CURRENT`` names it, so a crash leaves one
whole anchor in force. Its anchor.json entry names the version and digest it replaced
(``upgraded``), which ``verify`` accepts in place of the digest the prune recorded.

Only this chain's archives are read (chain id and genesis hash), anywhere under the archive dir,
each checked against its manifest (sha256 of every file; a damaged one is left out) and each record
against the leaf hash the log kept when it pruned it. Without archives covering every pruned
record (moved off the machine, say) the upgrade cannot be done: PrunedError names the partitions
not covered and the fix (put the archives back under the archive dir, or restore a snapshot taken
before the prune)."""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ledgerlog import projections
from ledgerlog.engine.errors import (
    LedgerError,
    LogError,
    ProofError,
    PrunedError,
    PruneRunningError,
    ReprojectRunningError,
)
from ledgerlog.engine.files import atomic_dir, write_atomic
from ledgerlog.engine.log.base import Log, LogRecord, Record, StateWrites, TopicPartition
from ledgerlog.engine.logtree import leaf_of
from ledgerlog.engine.prunepoint import PRUNED_TOPICS
from ledgerlog.ops.data.archive import MANIFEST, archive_records, read_manifest, verify_archive
from ledgerlog.ops.data.locks import prune_lock
from ledgerlog.streams.anchor import ANCHOR_FILE, CURRENT, Anchor, copy_store, remove_others
from ledgerlog.streams.anchorbuild import fold_exactly
from ledgerlog.streams.reproject import reproject_lock
from ledgerlog.streams.runner import Runner

if TYPE_CHECKING:
    from ledgerlog.engine.chain import Chain
    from ledgerlog.engine.config import Config

__all__ = ["PrunedHistoryLog", "try_upgrade_anchor", "upgrade_anchor"]

logger = logging.getLogger("ledgerlog.anchor")
_TMP = ".upgrade-"


class PrunedHistoryLog(Log):
    """A read-only log from offset 0 up to ``ends`` (the anchor's positions): the archived records
    of the pruned topics (``files``), the log's own records of the others (``log``)."""

    contiguous_offsets = False  # (a Kafka log's archived offsets keep its transaction markers' gaps)
    ends_are_local = True

    def __init__(self, log: Log, files: Mapping[TopicPartition, list[str]], ends: Mapping[str, list[int]]) -> None:
        self._log, self._files, self._ends = log, files, ends
        self._cursors: dict[TopicPartition, _Cursor] = {}

    def topics(self) -> dict[str, int]:
        return {t: len(v) for t, v in self._ends.items()}

    def end_offsets(self, topic: str) -> list[int]:
        return list(self._ends[topic])

    def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[LogRecord]:
        end, start = self._ends[topic][partition], self._log.start_offsets(topic)[partition]
        if topic not in PRUNED_TOPICS or offset >= start:
            # kept whole by every prune, or not deleted yet (a prune stopped after its anchor): the log has it
            return [r for r in self._log.read(topic, partition, offset, max_records) if r.offset < end]
        end = min(end, start)  # the log reads on from its start
        tp = (topic, partition)
        cur = self._cursors.get(tp)
        if cur is None or offset < cur.position:  # forward reads stream the files once; one behind starts over
            cur = self._cursors[tp] = _Cursor(self._records(tp))
        taken = cur.take(offset, max_records, end)
        self._check_leaves(topic, partition, taken)
        return [rec for _, rec in taken]

    def _check_leaves(self, topic: str, partition: int, taken: list[tuple[int, LogRecord]]) -> None:
        """PrunedError unless each record is the one the log pruned at its leaf index: the log
        kept the hash of every pruned leaf (an archive of another history, a restored chain's
        say, can carry this chain's id and genesis)."""
        trees = self._log.trees
        if not taken or trees is None:
            return
        stored = dict(trees.stored_leaves(topic, partition, taken[0][0], taken[-1][0] + 1))
        for _, rec in taken:
            if stored.get(rec.offset) != leaf_of(rec.key, rec.timestamp, rec.value):
                raise PrunedError(f"the archived record {topic}[{partition}] offset {rec.offset} is not the one the "
                                  "log pruned (its leaf hash differs): an archive of another history is under the "
                                  "archive dir; move it away")

    def _records(self, tp: TopicPartition) -> Iterator[LogRecord]:
        for path in self._files.get(tp, []):
            yield from archive_records(path)

    def create_topics(self, partitions: Mapping[str, int]) -> None:
        raise LogError("the pruned history is read only")

    def append(self, records: Sequence[Record], state: StateWrites | None = None) -> list[tuple[int, int]]:
        raise LogError("the pruned history is read only")

    def commit_positions(self, group: str, positions: Mapping[TopicPartition, int]) -> None:
        raise LogError("the pruned history is read only")

    def positions(self, group: str) -> dict[TopicPartition, int]:
        return {}


class _Cursor:
    """Where a forward read of one partition's archived records is; an offset two archives both
    hold (a prune killed after archiving, then one at another height) is read once."""

    def __init__(self, records: Iterator[LogRecord]) -> None:
        self.records = records
        self.held: LogRecord | None = None  # read from the files, not taken yet
        self.position = 0  # the offsets below it were taken
        self.count = 0  # records taken: the leaf index of the next

    def take(self, offset: int, n: int, end: int) -> list[tuple[int, LogRecord]]:
        """Up to ``n`` (leaf index, record) from ``offset`` on, below ``end``."""
        out: list[tuple[int, LogRecord]] = []
        while len(out) < n:
            rec, self.held = self.held or next(self.records, None), None
            if rec is None:
                break
            if rec.offset >= end:
                self.held = rec
                break
            if rec.offset < self.position:  # a second archive's copy
                continue
            index, self.count, self.position = self.count, self.count + 1, rec.offset + 1
            if rec.offset >= offset:
                out.append((index, rec))
        return out


def _archives(root: str, chain: Chain) -> list[tuple[str, dict[str, Any]]]:
    """(path, manifest) of this chain's archives anywhere under ``root`` (directory links
    followed once) whose files match their manifest; a damaged one is left out with a warning,
    another chain's unread."""
    out, seen = [], set()
    for where, dirs, files in os.walk(root, followlinks=True) if os.path.isdir(root) else ():
        real = os.path.realpath(where)
        if real in seen:  # (a link back up the tree)
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # (an archive a prune is still writing)
        if MANIFEST not in files:
            continue
        try:
            manifest = read_manifest(where)
            if (manifest.get("chain_id"), manifest.get("genesis_hash")) != (chain.genesis.chain_id, chain.genesis.hash):
                continue
            out.append((where, verify_archive(where)))
        except (LedgerError, OSError) as exc:
            logger.warning("leaving out the archive %s: %s", where, exc)
    return out


def _archived(cfg: Config, chain: Chain, anchor: Anchor, topics: set[str]) -> dict[TopicPartition, list[str]]:
    """The archive files holding every record of the pruned ``topics`` below the anchor's
    positions, per partition in offset order; PrunedError when they do not."""
    covered: dict[TopicPartition, list[tuple[int, int, str]]] = {}
    for where, manifest in _archives(cfg.archive_dir, chain):
        for name, meta in manifest["files"].items():
            if meta["topic"] in topics:
                covered.setdefault((meta["topic"], meta["partition"]), []).append(
                    (meta["first_offset"], meta["end_offset"], os.path.join(where, name)))
    out, missing = {}, []
    for topic in sorted(topics & set(PRUNED_TOPICS)):
        starts = chain.log.start_offsets(topic)
        for p, anchored in enumerate(anchor.positions.get(topic, [])):
            end = min(anchored, starts[p])  # above the log's start, the log has them
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
    """Fold the pruned history of ``stale`` into stores under ``tmp``; their anchor entries."""
    topics = {t for m in stale for t in m.TOPICS}
    ends = {t: list(anchor.positions[t]) for t in topics}
    log = PrunedHistoryLog(chain.log, _archived(cfg, chain, anchor, topics), ends)
    runner = Runner(log, chain.codec, chain.genesis, os.path.join(tmp, "projections"),
                    names=[m.NAME for m in stale], paths={m.NAME: os.path.join(tmp, m.NAME) for m in stale},
                    anchor_dir=os.path.join(tmp, "no-anchor"), batch=cfg.fold_batch)
    try:
        return fold_exactly(runner, ends)
    except ProofError:  # (a ValueError: the log's own tree store lacks what it should hold)
        raise
    except (OSError, EOFError, ValueError) as exc:  # an archive file unreadable past its checksum
        raise PrunedError(f"the prunes' archives under {cfg.archive_dir} could not be read ({exc}); restore them, "
                          "or a snapshot taken before the prune") from exc
    finally:
        runner.close()


def upgrade_anchor(cfg: Config, chain: Chain, *, locked: bool = False) -> list[str]:
    """Rebuild from the pruned history the anchor stores of the built-in projections whose code
    version the anchor does not hold (see the module docstring), under the prune and reproject
    locks (``locked``: the caller holds them; else, while another holds one, nothing now); the
    names rebuilt."""
    anchor = Anchor.load(cfg.anchor_dir)
    if anchor is None or all(anchor.covers(m) for m in projections.ALL.values()):
        return []
    if not locked:
        try:  # (a reproject may be seeding from the anchor this replaces)
            with prune_lock(cfg.data_dir), reproject_lock(cfg.projections_dir):
                return upgrade_anchor(cfg, chain, locked=True)
        except (PruneRunningError, ReprojectRunningError):
            logger.info("the anchor's upgrade waits for the prune, snapshot or reproject running: the next "
                        "start, query command or reproject does it")
            return []
    stale = [m for m in projections.ALL.values() if not anchor.covers(m)]
    logger.info("the anchor holds older versions of %s: rebuilding them from the prunes' archives",
                [m.NAME for m in stale])
    remove_others(anchor.root)  # what an upgrade killed before its switch left
    tmp = tempfile.mkdtemp(prefix=_TMP, dir=anchor.root)
    try:
        metas = _build(cfg, chain, anchor, stale, tmp)
        for name, meta in metas.items():
            was = anchor.projections.get(name)
            if was is not None:  # what the prune folded (and recorded in the log's prune point)
                meta["upgraded"] = was.get("upgraded") or {"from_version": was.get("version"),
                                                           "from_digest": was.get("digest")}
        _install(anchor, metas, tmp)
        return sorted(metas)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def try_upgrade_anchor(cfg: Config, chain: Chain) -> None:
    """``upgrade_anchor`` where its failure must not stop the caller (a node's start, a query, a
    reproject of other projections): it is logged, and the projection it could not rebuild
    answers NOT_READY, saying why, until it can."""
    try:
        upgrade_anchor(cfg, chain)
    except (LedgerError, OSError) as exc:
        logger.error("the anchor could not be brought up to this version's projections: %s", exc)


def _install(anchor: Anchor, metas: dict[str, Any], built: str) -> None:
    """A new anchor directory beside the current one (the stores built in ``built``, copies of
    the others, anchor.json), then CURRENT names it, then the old one goes: a crash leaves one
    whole anchor in force, whichever it is."""
    base = anchor.dir.split(".u", 1)[0]
    name = next(f"{base}.u{i}" for i in itertools.count(1) if not os.path.exists(os.path.join(anchor.root, f"{base}.u{i}")))
    with atomic_dir(os.path.join(anchor.root, name), f"{_TMP}{name}-") as tmp:
        for proj in anchor.projections.keys() | metas.keys():
            if proj in metas:
                os.rename(os.path.join(built, proj), os.path.join(tmp, proj))
            else:
                copy_store(anchor.store_path(proj), os.path.join(tmp, proj))
        doc = {**anchor.doc, "projections": {**anchor.projections, **metas}}
        with open(os.path.join(tmp, ANCHOR_FILE), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
    write_atomic(os.path.join(anchor.root, CURRENT), json.dumps({"dir": name}).encode())
    remove_others(anchor.root)
