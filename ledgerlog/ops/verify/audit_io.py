"""Where `ledgerlog audit` reads records from (a log: the data dir's or a Kafka cluster's; or the
JSON lines `tail --raw` prints), the auditor's state file of remembered heads, and the run that
ties them to the Auditor (audit.py)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

import orjson

from ledgerlog.engine import topics as T
from ledgerlog.engine.errors import AuditInputError, LedgerError
from ledgerlog.engine.files import write_atomic
from ledgerlog.engine.log.base import Log, LogRecord
from ledgerlog.engine.logtree import has_tree
from ledgerlog.ops.data.archive import archive_records, verify_archive
from ledgerlog.ops.verify.audit import Auditor, Problem, Remembered

__all__ = ["Archived", "LogSource", "RecordsSource", "Unaudited", "load_state", "save_state", "run_audit"]

#: the topics of the first pass: the heads, the log-key rotations, and _schemas (whose offsets
#: tell a gap-free log from Kafka's)
_FIRST = (T.SCHEMAS, T.CHECKPOINTS, T.KEYS)
_TICK = 512


class Unaudited(NamedTuple):
    """A leaf of a pruned prefix known only by the hash the log stored for it (no archive)."""

    topic: str
    partition: int
    offset: int
    leaf: bytes


class Archived(NamedTuple):
    """A record of a pruned prefix, read back from an archive."""

    record: LogRecord


Item = LogRecord | Unaudited | Archived


class LogSource:
    """A log opened read-only (embedded or Kafka): topics, partitions and end offsets are its own.
    A pruned log's prefix comes from ``archives`` (archive directories: ops/data/archive.py), else
    from the leaf hashes the log stored when it pruned (not audited)."""

    def __init__(self, log: Log, name: str, archives: list[str] | None = None) -> None:
        self.log, self.name = log, name
        self.topics = log.topics()
        self.contiguous: bool | None = log.contiguous_offsets
        self.problems: list[tuple[str, str, int, str]] = []  # (code, topic, partition, message)
        self._archived: dict[tuple[str, int], list[tuple[str, str]]] = {}  # tp -> (archive, file)
        for d in archives or []:
            try:
                manifest = verify_archive(d)
            except LedgerError as exc:
                self.problems.append(("ARCHIVE_CORRUPT", T.CHECKPOINTS, 0, f"archive {d}: {exc}"))
                continue
            for fname, meta in sorted(manifest["files"].items(), key=lambda kv: kv[1]["first_offset"]):
                self._archived.setdefault((meta["topic"], meta["partition"]), []).append((d, fname))

    def first_pass(self) -> Iterator[LogRecord]:
        for topic in _FIRST:
            for p in range(self.topics.get(topic, 0)):
                yield from self.log.scan(topic, p)

    def tree_topics(self, named: set[str]) -> list[str]:
        """Our topics and any other a head names (a shared cluster holds other chains' topics)."""
        return sorted(t for t in self.topics if has_tree(t) and (t in T.DEFAULT_PARTITIONS or t in named))

    def total(self, named: set[str]) -> int | None:
        if not self.log.contiguous_offsets:
            return None  # Kafka's ends count transaction markers
        return sum(sum(self.log.end_offsets(t)) for t in self.tree_topics(named))

    def records(self, named: set[str]) -> Iterator[Item]:
        for topic in self.tree_topics(named):
            starts = self.log.start_offsets(topic)
            for p in range(self.topics[topic]):
                if starts[p]:
                    yield from self._prefix(topic, p, starts[p])
                yield from self.log.scan(topic, p)

    def _prefix(self, topic: str, p: int, start: int) -> Iterator[Item]:
        """The pruned records below ``start``: from the archives as far as they reach, then the
        stored leaf hashes."""
        fed, nxt = 0, 0
        for d, fname in self._archived.get((topic, p), []):
            for rec in archive_records(os.path.join(d, fname)):
                if nxt <= rec.offset < start:
                    yield Archived(rec)
                    fed, nxt = fed + 1, rec.offset + 1
        point, trees = self.log.prune_point(), self.log.trees
        kept = point.leaves.get((topic, p), 0) if point is not None else 0
        if fed < kept and trees is not None:
            for lo in range(fed, kept, 10_000):
                for off, leaf in trees.stored_leaves(topic, p, lo, min(kept, lo + 10_000)):
                    yield Unaudited(topic, p, off, leaf)

    def ends(self, named: set[str]) -> Iterator[tuple[str, int, int]]:
        for topic in self.tree_topics(named):
            for p, end in enumerate(self.log.end_offsets(topic)):
                yield topic, p, end

    def close(self) -> None:
        self.log.close()


class RecordsSource:
    """JSON lines as `tail --raw` prints them, partitions in any interleaving (each partition in
    offset order). Read twice: standard input is spooled to a temporary file first."""

    def __init__(self, path: str) -> None:
        self.name = "stdin" if path == "-" else path
        self.contiguous: bool | None = None  # judged from the offsets of _schemas and _checkpoints
        self._file: IO[bytes]
        try:
            if path == "-":
                self._file = tempfile.TemporaryFile(prefix="ledgerlog-audit-")  # noqa: SIM115 - closed by close()
                shutil.copyfileobj(sys.stdin.buffer, self._file, 1 << 20)
            else:
                self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise AuditInputError(f"cannot read records from {self.name}: {exc}") from exc

    def _lines(self) -> Iterator[LogRecord]:
        self._file.seek(0)
        for n, line in enumerate(self._file, 1):
            if line.strip():
                yield _parse(line, self.name, n)

    def first_pass(self) -> Iterator[LogRecord]:
        return (r for r in self._lines() if r.topic in _FIRST)

    def total(self, named: set[str]) -> int | None:
        return None

    def records(self, named: set[str]) -> Iterator[Item]:
        return (r for r in self._lines() if has_tree(r.topic))

    def ends(self, named: set[str]) -> Iterator[tuple[str, int, int]]:
        return iter(())

    def close(self) -> None:
        self._file.close()


def _parse(line: bytes, name: str, n: int) -> LogRecord:
    try:
        doc = orjson.loads(line)
        rec = LogRecord(doc["topic"], doc["partition"], doc["offset"], bytes.fromhex(doc["key_hex"]),
                        bytes.fromhex(doc["value_hex"]), doc["timestamp"])
        if not (isinstance(rec.topic, str) and all(type(v) is int for v in (rec.partition, rec.offset, rec.timestamp))
                and rec.partition >= 0 and rec.offset >= 0 and -(1 << 63) <= rec.timestamp < (1 << 63)):
            # a timestamp outside 64 bits would alias one inside it in the leaf hash (PROTOCOL §9)
            raise ValueError("topic is a string; partition and offset are integers not below 0, the timestamp "
                             "a signed 64-bit integer")
    except (ValueError, KeyError, TypeError) as exc:  # orjson's error is a ValueError
        raise AuditInputError(f"{name} line {n} is not a record as `ledgerlog tail --raw` prints it "
                              f"(topic, partition, offset, timestamp, key_hex, value_hex): {exc}") from exc
    return rec


# -- the auditor's memory ---------------------------------------------------------------------
def load_state(path: str) -> tuple[str | None, Remembered]:
    """(chain_id, remembered heads) from ``path``; none yet when it does not exist."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None, {}
    except (OSError, ValueError) as exc:
        raise AuditInputError(f"cannot read the audit state {path}: {exc}") from exc
    try:
        heads: Remembered = {}
        for where, h in doc["heads"].items():
            topic, p = where.rsplit("/", 1)
            heads[(topic, int(p))] = (int(h["tree_size"]), bytes.fromhex(h["root_hash"]))
        chain = doc.get("chain_id")
        if chain is not None and not isinstance(chain, str):
            raise ValueError("chain_id is a string")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise AuditInputError(f"{path} is not an audit state ({{\"chain_id\", \"heads\": {{\"topic/partition\": "
                              f"{{\"tree_size\", \"root_hash\"}}}}}}): {exc}") from exc
    return chain, heads


def save_state(path: str, chain_id: str | None, heads: Remembered) -> None:
    """Remember the newest verified heads (atomically: the old state stays until the new is whole)."""
    doc = {"chain_id": chain_id,
           "heads": {f"{t}/{p}": {"tree_size": size, "root_hash": root.hex()}
                     for (t, p), (size, root) in sorted(heads.items())}}
    try:
        write_atomic(path, json.dumps(doc, indent=1).encode() + b"\n", mode=0o600)
    except OSError as exc:
        raise AuditInputError(f"cannot write the audit state {path}: {exc}") from exc


# -- the run ------------------------------------------------------------------------------------
Source = LogSource | RecordsSource


def run_audit(source: Source, log_pubkey: str, state: str | None = None,
              bar: Callable[[int | None], contextlib.AbstractContextManager[Callable[[int], None] | None]] | None = None
              ) -> dict[str, Any]:
    """Audit ``source`` against the pinned ``log_pubkey`` (and the heads remembered in ``state``,
    which is updated when everything holds); ``bar(total)`` gives a progress tick."""
    chain, remembered = load_state(state) if state else (None, {})
    auditor = Auditor(log_pubkey, remembered, chain)
    for code, topic, p, message in getattr(source, "problems", []):
        auditor.problems.append(Problem(code, topic, p, 0, message))
    auditor.heads_pass(source.first_pass(), source.contiguous)
    named = {t for t, _ in auditor.parts}
    with (bar(source.total(named)) if bar else contextlib.nullcontext()) as tick:
        n = 0
        for item in source.records(named):
            if isinstance(item, Unaudited):
                auditor.add_unaudited(*item)
            elif isinstance(item, Archived):
                auditor.add_archived(item.record)
            else:
                auditor.add(item)
            n += 1
            if tick is not None and n == _TICK:
                tick(n)
                n = 0
        if tick is not None and n:
            tick(n)
    for topic, p, end in source.ends(named):
        auditor.end(topic, p, end)
    report = auditor.report()
    report["source"] = source.name
    if state:
        report["state"] = {"file": os.path.abspath(state), "remembered": len(remembered), "written": False}
        if report["ok"]:
            save_state(state, auditor.chain_id, auditor.newest())
            report["state"]["written"] = True
    return report
