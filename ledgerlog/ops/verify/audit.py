"""`ledgerlog audit` (PROTOCOL.md §9): recompute every partition's Merkle tree from the records and
check every signed tree head on ``_checkpoints`` (and the heads an auditor remembered) against it.

Two passes over a source (audit_sources.py): first the heads and the log-key rotations (small
topics), then every record of every tree topic, streamed: one ``merkle.Frontier`` per partition,
whose root is compared whenever its size reaches a head's ``tree_size``. The auditor trusts only
the pinned log key, our own schemas and the records' bytes: heads are decoded with our
SignedTreeHead schema (never the log's ``_schemas``), and a rotation on ``ledger.keys`` extends
the accepted keys only when the key it retires is accepted and both signatures hold. A retired key
signs no head after the first head of a key that replaced it (RETIRED_KEY)."""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ledgerlog.engine import avro
from ledgerlog.engine import topics as T
from ledgerlog.engine.crypto import verify as verify_sig
from ledgerlog.engine.errors import ProofError
from ledgerlog.engine.log.base import LogRecord
from ledgerlog.engine.logtree import has_tree, leaf_of
from ledgerlog.engine.merkle import EMPTY_ROOT, Frontier
from ledgerlog.engine.treehead import check_head_signature, head_key

__all__ = ["Problem", "Auditor", "Remembered", "MAX_PROBLEMS"]

_WIRE = struct.Struct(">bI")
#: problems listed in a report (the first one is the failure; the rest may follow from it)
MAX_PROBLEMS = 100
#: (topic, partition) -> (tree_size, root hash): heads the auditor verified on an earlier run
Remembered = dict[tuple[str, int], tuple[int, bytes]]


@dataclass(frozen=True)
class Problem:
    """Where records and heads disagree: leaf ``index`` of ``topic``/``partition`` (for a head
    record: its index on ``_checkpoints``)."""

    code: str
    topic: str
    partition: int
    index: int
    message: str
    tree_size: int | None = None
    offset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"code": self.code, "topic": self.topic, "partition": self.partition, "index": self.index,
               "message": self.message}
        if self.tree_size is not None:
            out["tree_size"] = self.tree_size
        if self.offset is not None:
            out["offset"] = self.offset
        return out


@dataclass
class _Check:
    """A root the tree must have at ``size`` leaves: a signed head's, or a remembered one."""

    size: int
    root: bytes
    what: str          # how a failure names it
    pubkey: str | None  # the key that signed it (None: remembered)


@dataclass
class _Partition:
    """One partition's tree as the records rebuild it, and the roots it must match."""

    topic: str
    partition: int
    checks: list[_Check] = field(default_factory=list)
    frontier: Frontier = field(default_factory=Frontier)
    next_check: int = 0
    good: int = 0              # the largest size whose root matched
    good_root: bytes = EMPTY_ROOT
    matched: int = -1          # the size of the last check that matched (-1: none yet)
    heads_ok: int = 0
    keys: set[str] = field(default_factory=set)
    last_offset: int = -1
    problem: Problem | None = None
    archived: int = 0       # leaves of a pruned prefix read from an archive (their records checked)
    not_audited: int = 0    # leaves of a pruned prefix known only by their stored hash

    def fail(self, code: str, index: int, message: str, **extra: Any) -> None:
        if self.problem is None:
            self.problem = Problem(code, self.topic, self.partition, index, message, **extra)

    def settle(self) -> None:
        """Compare every check due at the current size."""
        size = self.frontier.size
        while self.next_check < len(self.checks) and self.checks[self.next_check].size == size:
            chk = self.checks[self.next_check]
            self.next_check += 1
            if self.problem is not None:
                continue
            root = self.frontier.root()
            if root != chk.root and self.matched == size:
                self.fail("ROOT_MISMATCH", size, f"the records match another head at tree size {size}, not "
                                                 f"{chk.what}: two roots for one tree size", tree_size=size)
                continue
            if root != chk.root:
                self.fail("ROOT_MISMATCH", self.good,
                          f"the records do not give the root of {chk.what}: a leaf in [{self.good}, {size}) "
                          f"was rewritten, dropped, reordered or inserted (the head before it, at tree size "
                          f"{self.good}, holds; with only roots the change is known to lie in that range)",
                          tree_size=size)
                continue
            self.good, self.good_root, self.matched = size, root, size
            if chk.pubkey is not None:
                self.heads_ok += 1
                self.keys.add(chk.pubkey)


class Auditor:
    """Feed it ``heads_pass`` records (``_checkpoints``, ``ledger.keys``, ``_schemas``), then every
    tree record with ``add``; ``report()`` says what held. ``contiguous``: offsets are 0, 1, 2, ...
    (the embedded log), so a gap is a dropped record."""

    def __init__(self, log_pubkey: str, remembered: Remembered | None = None,
                 remembered_chain: str | None = None) -> None:
        self.pinned = log_pubkey
        self.accepted: list[str] = [log_pubkey]
        self.rejected_rotations: list[dict[str, Any]] = []
        #: accepted key -> the keys that replaced it, directly or by later rotations
        self.successors: dict[str, set[str]] = {}
        self.remembered = remembered or {}
        self.chain_id = remembered_chain
        self.contiguous = False
        self.problems: list[Problem] = []  # heads and their topic
        self.parts: dict[tuple[str, int], _Partition] = {}
        self.published = 0
        self._rotations: list[dict[str, Any]] = []
        self._heads: list[tuple[int, int, int, bytes, bytes]] = []  # cp partition, index, offset, key, value
        self._offsets: dict[tuple[str, int], list[int]] = {}  # offsets of _checkpoints and _schemas

    # -- pass 1: heads and log keys ------------------------------------------------------------
    def heads_pass(self, records: Iterable[LogRecord], contiguous: bool | None = None) -> None:
        """Read ``_checkpoints``, ``ledger.keys`` and ``_schemas`` (in offset order per partition),
        then check every head: decoding, signature, chain, sizes never decreasing. ``contiguous``
        None: judge by the offsets of ``_schemas`` and ``_checkpoints`` (gap-free on the embedded
        log; Kafka's transaction markers leave gaps)."""
        for rec in records:
            if rec.topic in (T.CHECKPOINTS, T.SCHEMAS):
                offs = self._offsets.setdefault((rec.topic, rec.partition), [])
                if rec.topic == T.CHECKPOINTS:
                    self._heads.append((rec.partition, len(offs), rec.offset, rec.key, rec.value))
                offs.append(rec.offset)
            elif rec.topic == T.KEYS:
                self._rotation(rec)
        if contiguous is None:
            counts = [len(o) for o in self._offsets.values()]
            contiguous = sum(counts) >= 2 and all(o == list(range(len(o))) for o in self._offsets.values())
        self.contiguous = contiguous
        if contiguous:
            for (topic, p), offs in sorted(self._offsets.items()):
                gap = next((i for i, o in enumerate(offs) if o != i), None)
                if gap is not None and topic == T.CHECKPOINTS:
                    self.problems.append(Problem("OFFSET_GAP", topic, p, gap, f"offset {gap} of {topic}[{p}] is "
                                                 "missing: a tree head record was dropped", offset=gap))
        self._accept_keys()
        self._check_heads(self._heads)
        for (topic, p), (size, root) in self.remembered.items():
            self._part(topic, p).checks.append(_Check(size, root, f"the head remembered at tree size {size} "
                                                      "(--state)", None))
        for part in self.parts.values():
            part.checks.sort(key=lambda c: c.size)
            part.settle()  # heads of size 0

    def _rotation(self, rec: LogRecord) -> None:
        try:
            ev = _decode("KeyRotated", rec.value)
        except ValueError:
            return  # not a rotation of ours: the tree check judges the record itself
        if ev["body"]["role"] == "log" and rec.partition == 0:  # ledger.keys has one partition
            self._rotations.append({**ev, "_where": (rec.partition, rec.offset)})

    def _accept_keys(self) -> None:
        """The pinned key and every key a valid log rotation introduced, in ``ledger.keys`` order:
        one chain of them (PROTOCOL §8.1: the old key must hold the role now), so a rotation by a
        retired key (perhaps leaked: that is why one rotates) fails the audit (RETIRED_KEY) and
        the key it names is not accepted. A key stays accepted: its old heads remain verifiable."""
        current = self.pinned
        for ev in self._rotations:
            body = ev["body"]
            old, new = body["old_pubkey"], body["new_pubkey"]
            canon = avro.encode("KeyRotationBody", body)
            p, off = ev["_where"]
            if old not in self.accepted:
                continue
            if not (_verifies(old, canon, ev["signature"]) and _verifies(new, canon, ev["new_signature"])):
                self.rejected_rotations.append({"partition": p, "offset": off, "new_pubkey": new,
                                                "reason": "a signature does not verify"})
                continue
            if old != current:
                self.rejected_rotations.append({"partition": p, "offset": off, "new_pubkey": new,
                                                "reason": "signed by a retired log key"})
                self.problems.append(Problem("RETIRED_KEY", T.KEYS, p, off, f"the log key rotation at {T.KEYS} "
                                             f"offset {off} is signed by the retired key {old[:16]}..., not the "
                                             f"key holding the role then ({current[:16]}...)", offset=off))
                continue
            current = new
            if new not in self.accepted:
                self.accepted.append(new)
            for key, after in [(old, set()), *self.successors.items()]:  # old, and every key before it
                if key == old or old in after:
                    self.successors.setdefault(key, set()).update({new, *self.successors.get(new, ())})

    def _check_heads(self, heads: list[tuple[int, int, int, bytes, bytes]]) -> None:
        last: dict[tuple[str, int], int] = {}
        first_by: dict[str, int] = {}  # key -> offset of the first good head it signed
        for cp, index, offset, key, value in heads:
            self.published += 1

            def bad(code: str, message: str, cp: int = cp, index: int = index, offset: int = offset) -> None:
                self.problems.append(Problem(code, T.CHECKPOINTS, cp, index, message, offset=offset))
            if cp != 0:  # one partition: heads in one order, whatever the partition a copy claims
                bad("BAD_HEAD", f"a tree head record on {T.CHECKPOINTS} partition {cp}: the topic has one")
                continue
            try:
                signed = _decode("SignedTreeHead", value)
            except ValueError as exc:
                bad("BAD_HEAD", f"the tree head record does not decode with the SignedTreeHead schema: {exc}")
                continue
            head = signed["head"]
            topic, p, size = head["topic"], head["partition"], head["tree_size"]
            where = f"{topic}/{p}"
            if key != head_key(topic, p) or not has_tree(topic) or p < 0 or size < 0:
                bad("BAD_HEAD", f"the record keyed {key[:80]!r} holds a head of {where} at size {size}")
                continue
            try:
                check_head_signature(signed, self.accepted)
            except ProofError as exc:
                known = signed["pubkey"] in self.accepted
                bad("BAD_SIGNATURE" if known else "UNKNOWN_KEY",
                    f"head of {where} at tree size {size}: {exc}"
                    + ("" if known else " (accepted: the pinned --log-pubkey and its log rotations)"))
                continue
            later = [first_by[k] for k in self.successors.get(signed["pubkey"], ()) if k in first_by]
            if later:  # a rotated-out key (perhaps leaked) signing after the key that replaced it
                bad("RETIRED_KEY", f"head of {where} at tree size {size} is signed by the retired log key "
                                   f"{signed['pubkey'][:16]}..., after the head at _checkpoints offset {min(later)} "
                                   "signed by a key that replaced it")
                continue
            first_by.setdefault(signed["pubkey"], offset)
            if self.chain_id is None:
                self.chain_id = head["chain_id"]
            elif head["chain_id"] != self.chain_id:
                bad("CHAIN_MISMATCH", f"head of {where} is for chain {head['chain_id']!r}, not {self.chain_id!r}")
                continue
            if size < last.get((topic, p), 0):
                bad("HEAD_DECREASED", f"head of {where} at tree size {size} after one at {last[(topic, p)]}: "
                                      "published tree sizes never decrease")
                continue
            last[(topic, p)] = size
            try:
                root = bytes.fromhex(head["root_hash"])
            except ValueError:
                root = b""
            self._part(topic, p).checks.append(
                _Check(size, root, f"the head at tree size {size} (_checkpoints[{cp}] offset {offset})", signed["pubkey"]))

    def _part(self, topic: str, p: int) -> _Partition:
        part = self.parts.get((topic, p))
        if part is None:
            part = self.parts[(topic, p)] = _Partition(topic, p)
        return part

    # -- pass 2: the trees ---------------------------------------------------------------------
    def add(self, rec: LogRecord) -> None:
        """The next record of its partition (partitions may interleave; each in offset order)."""
        part = self._part(rec.topic, rec.partition)
        n = part.frontier.size
        if rec.offset <= part.last_offset:
            part.fail("OUT_OF_ORDER", n, f"offset {rec.offset} follows offset {part.last_offset}: records "
                                         "were reordered or inserted", offset=rec.offset)
        elif self.contiguous and rec.offset != n:
            missing = f"offset {n}" if rec.offset == n + 1 else f"offsets {n}..{rec.offset - 1}"
            part.fail("OFFSET_GAP", n, f"offset {rec.offset} where {n} was expected: the record at {missing} "
                                       "was dropped or moved", offset=n)
        part.last_offset = max(part.last_offset, rec.offset)
        part.frontier.append(leaf_of(rec.key, rec.timestamp, rec.value))
        if part.next_check < len(part.checks) and part.checks[part.next_check].size == n + 1:
            part.settle()

    def add_archived(self, rec: LogRecord) -> None:
        """A record of a pruned prefix, read from an archive: checked like any other."""
        self.add(rec)
        self._part(rec.topic, rec.partition).archived += 1

    def add_unaudited(self, topic: str, partition: int, offset: int, leaf: bytes) -> None:
        """A leaf of a pruned prefix known only by the hash the log stored when it pruned it: it
        counts towards the roots (a head that matches proves the hash is the head's leaf), but its
        record is not audited (no archive was given)."""
        part = self._part(topic, partition)
        n = part.frontier.size
        part.last_offset = max(part.last_offset, offset)
        part.frontier.append(leaf)
        part.not_audited += 1
        if part.next_check < len(part.checks) and part.checks[part.next_check].size == n + 1:
            part.settle()

    def end(self, topic: str, partition: int, end_offset: int) -> None:
        """A contiguous log says the partition ends at ``end_offset``: records past the last one
        read are missing."""
        part = self._part(topic, partition)
        if self.contiguous and part.problem is None and part.frontier.size < end_offset \
                and part.next_check >= len(part.checks):
            n = part.frontier.size
            part.fail("OFFSET_GAP", n, f"offsets {n}..{end_offset - 1} are missing (the partition ends at "
                                       f"{end_offset}): records were dropped", offset=n)

    # -- the report ----------------------------------------------------------------------------
    def finish(self) -> list[Problem]:
        """Every problem, the first being the failure: heads first, then partitions in order."""
        for part in self.parts.values():
            if part.next_check < len(part.checks) and part.problem is None:
                chk = part.checks[part.next_check]
                n = part.frontier.size
                part.fail("TRUNCATED", n, f"{chk.what} covers {chk.size} records; the partition holds {n}: "
                                          f"records from index {n} on are missing (or, the offsets renumbered, "
                                          f"a record in [{part.good}, {n}) was dropped: the head at tree size "
                                          f"{part.good} holds)", tree_size=chk.size)
        out = list(self.problems)
        out += [part.problem for _, part in sorted(self.parts.items()) if part.problem is not None]
        if not out and not any(part.checks for part in self.parts.values()):
            with_records = [part for _, part in sorted(self.parts.items()) if part.frontier.size]
            if with_records:
                first = with_records[0]
                out.append(Problem("NO_HEADS", first.topic, first.partition, 0,
                                   "no tree head covers any record: nothing on the log is signed by the log key"))
        return out

    def report(self) -> dict[str, Any]:
        problems = self.finish()
        partitions = {}
        for (topic, p), part in sorted(self.parts.items()):
            partitions[f"{topic}/{p}"] = {
                "leaves": part.frontier.size, "heads_checked": part.heads_ok, "verified_size": part.good,
                "root_hash": part.good_root.hex(), "unanchored": max(0, part.frontier.size - part.good)}
            if part.archived or part.not_audited:
                partitions[f"{topic}/{p}"].update({"pruned_archived": part.archived, "pruned_not_audited": part.not_audited})
        used = set().union(*(p.keys for p in self.parts.values())) if self.parts else set()
        out: dict[str, Any] = {
            "ok": not problems,
            "chain_id": self.chain_id,
            "records": sum(p.frontier.size for p in self.parts.values()),
            "heads": {"published": self.published, "checked": sum(p.heads_ok for p in self.parts.values())},
            "unanchored": sum(v["unanchored"] for v in partitions.values()),
            "pruned": {"archived": sum(p.archived for p in self.parts.values()),
                       "not_audited": sum(p.not_audited for p in self.parts.values())},
            "keys": {"pinned": self.pinned, "accepted": self.accepted,
                     "used": [k for k in self.accepted if k in used]},
            "contiguous_offsets": self.contiguous,
            "partitions": partitions,
        }
        if self.rejected_rotations:
            out["keys"]["rejected_rotations"] = self.rejected_rotations
        if problems:
            out["failure"] = problems[0].to_dict()
            out["problems"] = [p.to_dict() for p in problems[:MAX_PROBLEMS]]
        return out

    def newest(self) -> Remembered:
        """The newest verified head of every partition (to remember for the next audit)."""
        return {(t, p): (part.good, part.good_root) for (t, p), part in self.parts.items() if part.good}


def _decode(name: str, value: bytes) -> dict[str, Any]:
    """A Confluent-framed value decoded with our own schema ``name``; ValueError unless the bytes
    are exactly that record's encoding (no trailing bytes, nothing the schema does not say)."""
    if len(value) < _WIRE.size or value[0] != 0:
        raise ValueError("not in the Confluent wire format (magic 0, schema id, Avro)")
    try:
        rec = avro.decode(name, value[_WIRE.size:])
        again = avro.encode(name, rec)
    except Exception as exc:  # fastavro raises many kinds on junk
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    if again != value[_WIRE.size:]:
        raise ValueError("the bytes are not the canonical encoding of what they decode to")
    return rec


def _verifies(pubkey: str, message: bytes, signature: str) -> bool:
    try:
        return verify_sig(bytes.fromhex(pubkey), message, bytes.fromhex(signature))
    except ValueError:
        return False
