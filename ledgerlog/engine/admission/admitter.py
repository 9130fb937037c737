"""The admitter: turns ingest lines into durable events, a chunk at a time.

Each chunk is checked line by line against the write-side state (in file order, so later lines
see earlier ones), then its events and state changes are appended in one atomic write, synced
per the durability policy. Only then are the lines of that chunk reported: acknowledged means
durable, and a crash can never split events from the state that admitted them.
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, cast

from opentelemetry import trace

from .. import topics as T
from ..codec import Codec
from ..errors import Code, LedgerError, Rejection, error_code
from ..genesis import Genesis
from ..log.base import Log, Record
from .lines import Item, item_id
from .prepare import Ahead
from .rules import Out, Rules
from .state import WriteState
from .state_fold import catch_up
from .verify import Pending, Verifier, parse_all

__all__ = ["MAX_REJECTIONS", "Summary", "Admitter"]

#: Rejections a summary lists (the first ones, by line); the counts stay exact past it
#: (PROTOCOL.md §7), so a summary's size is bounded whatever the input.
MAX_REJECTIONS = 1000
MAX_MESSAGE = 300  # characters of a rejection's message

#: (line numbers, parsed lines or their rejections, or their preparation under way in the pool)
_Prepared = tuple[list[int], list["Item | Rejection"], "Pending | None"]
#: Chunks prepared ahead of the one whose rules run (their work overlaps those rules)
_LOOKAHEAD = 2

_tracer = trace.get_tracer("ledgerlog.admission")  # API only: no-op spans unless ops sets up the SDK


@dataclass
class Summary:
    """The ingest reply of PROTOCOL.md §7: exact counts, the first ``MAX_REJECTIONS`` rejections,
    and ``rejections_truncated`` (in the dict only when true) when more were cut."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)
    rejections_truncated: bool = False
    #: when asked for: {"line", "kind", "id"} of every admitted line, in order
    ids: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
                               "rejections": self.rejections}
        if self.rejections_truncated:
            out["rejections_truncated"] = True
        if self.ids is not None:
            out["ids"] = self.ids
        return out

    def add_rejection(self, line: int, code: str, message: str) -> None:
        """Count one rejection; list it while there is room (a message that quotes the line is
        cut at ``MAX_MESSAGE`` characters)."""
        self.rejected += 1
        if len(self.rejections) < MAX_REJECTIONS:
            if len(message) > MAX_MESSAGE:
                message = message[:MAX_MESSAGE - 1] + "…"
            self.rejections.append({"line": line, "code": code, "message": message})
        else:
            self.rejections_truncated = True

    def merge(self, other: Summary) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        room = MAX_REJECTIONS - len(self.rejections)
        self.rejections.extend(other.rejections[:max(0, room)])
        self.rejections_truncated |= other.rejections_truncated or len(other.rejections) > room
        if self.ids is not None and other.ids is not None:
            self.ids.extend(other.ids)


class Admitter:
    """Validates lines and appends what they become. Thread-safe; one per write-side state."""

    def __init__(self, log: Log, codec: Codec, genesis: Genesis, *, chunk: int = 1000,
                 verifier: Verifier | None = None) -> None:
        self.log = log
        self.codec = codec
        self.genesis = genesis
        self.chunk = chunk
        self.state = WriteState(log)
        self.verifier = verifier or Verifier()
        self.rules = Rules(genesis, self.state, self.verifier.cache)
        self.counts: Counter[tuple[str, str]] = Counter()  # ("admitted"|"duplicate", kind), ("rejected", code)
        self.listeners: list[Callable[[list[Out]], None]] = []
        self._lock = threading.Lock()

    def admit(self, lines: Iterable[bytes | str], *, first_line: int = 1,
              progress: Callable[[int], None] | None = None) -> Summary:
        """Admit lines in order; returns once everything admitted is durable."""
        return self.admit_numbered(enumerate(lines, first_line), progress=progress)

    def admit_numbered(self, lines: Iterable[tuple[int, bytes | str]], *,
                       progress: Callable[[int], None] | None = None, ids: bool = False) -> Summary:
        """Like ``admit`` for (line number, line) pairs, so callers may skip blank lines; with
        ``ids`` the summary lists the id of every admitted line.

        Pipelined: the next chunks go to the verifier's workers (parsing, hashing, signatures)
        before the rules of this one run, so that work overlaps the sequential checks."""
        total = Summary(ids=[] if ids else None)
        it: Iterator[tuple[int, bytes | str]] = iter(lines)
        ahead: deque[_Prepared] = deque()
        more = True
        while True:
            while more and len(ahead) < _LOOKAHEAD:
                prepared = self._prepare(it)
                if prepared is None:
                    more = False
                    break
                ahead.append(prepared)
                more = len(prepared[0]) == self.chunk
                if prepared[2] is None:
                    break  # prepared inline: nothing runs meanwhile, so no point in reading ahead
            if not ahead:
                return total
            numbers, parsed, pending = ahead.popleft()
            try:
                total.merge(self._admit_chunk(numbers, parsed if pending is None else pending.items(), ids=ids))
            except LedgerError as exc:  # (a disk or broker fault): where it stopped, and what went in before
                exc.admitted_before = (numbers[0], total.to_dict())  # type: ignore[attr-defined]
                raise
            if progress:
                progress(len(numbers))

    def _prepare(self, it: Iterator[tuple[int, bytes | str]]) -> _Prepared | None:
        """The next chunk's line numbers and either its parsed lines or their preparation under way."""
        chunk = list(islice(it, self.chunk))
        if not chunk:
            return None
        numbers, raw = [n for n, _ in chunk], [line for _, line in chunk]
        if self.verifier.parallel(raw):
            return numbers, [], self.verifier.prepare(raw, self._ahead())
        return numbers, parse_all(raw), None

    def _ahead(self) -> Ahead:
        """What workers need to make records ahead: value prefixes, and the tip height now (the
        likely stamp of the shares sent; a guess, read without the lock)."""
        wire = self.codec.wire  # the committed tip, not through self.state: this runs without the lock
        return Ahead({T.SHARES: wire(T.SHARES, b"")}, WriteState(self.log).tip_height())

    @_tracer.start_as_current_span("ledgerlog.admit_chunk")
    def _admit_chunk(self, numbers: list[int], parsed: list[Item | Rejection], *, ids: bool = False) -> Summary:
        summary = Summary(ids=[] if ids else None)
        with self._lock:
            if not self.log.writable and not self.log.atomic_state:
                self._recover()
            try:
                outs, counts = self._check_all(parsed, numbers, summary)
            except BaseException:
                self.state.drop_batch()  # an unexpected error: nothing of the chunk stays
                raise
            self._commit(outs)
            self.counts.update(counts)
        for listener in self.listeners:
            listener(outs)
        trace.get_current_span().set_attributes({"ledgerlog.lines": len(numbers),
                                                 "ledgerlog.accepted": summary.accepted,
                                                 "ledgerlog.rejected": summary.rejected})
        return summary

    def _check_all(self, parsed: list[Item | Rejection], numbers: list[int],
                   summary: Summary) -> tuple[list[Out], Counter[tuple[str, str]]]:
        outs: list[Out] = []
        counts: Counter[tuple[str, str]] = Counter()
        self.rules.prefetch(parsed)
        for i, item in enumerate(parsed):
            if isinstance(item, Rejection):
                self._reject(summary, counts, numbers[i], item)
                continue
            try:
                produced = self.rules.admit(item)
            except Rejection as rej:
                self.state.drop_line()
                if rej.code is Code.DUPLICATE:
                    summary.duplicates += 1
                    counts[("duplicate", item.kind)] += 1
                else:
                    self._reject(summary, counts, numbers[i], rej)
                continue
            self.state.keep_line()
            outs.extend(produced)
            summary.accepted += 1
            if summary.ids is not None:
                summary.ids.append({"line": numbers[i], "kind": item.kind, "id": item_id(item)})
            counts[("admitted", item.kind)] += 1
        return outs, counts

    def _recover(self) -> None:
        """A log refusing appends after one of unknown outcome (Kafka: its answers lost): recover
        it, fold into the write-side state whatever of that append the log shows, and read the
        state afresh, so admission goes on without a restart. LogError while it cannot."""
        self.log.recover()
        catch_up(self.log, self.codec, self.genesis)
        self.state.forget()

    @staticmethod
    def _reject(summary: Summary, counts: Counter[tuple[str, str]], line: int, rej: Rejection) -> None:
        code = error_code(rej)  # its protocol code
        counts[("rejected", code)] += 1
        summary.add_rejection(line, code, rej.message)

    def record(self, topic: str, key: str, event: dict[str, Any], timestamp: int) -> None:
        """Append one event that no ingest line carries (e.g. the admin audit trail), durably and
        in order with admission. ``event`` may use ``stamp_height``: it is set here."""
        with self._lock:
            self._commit([Out(topic, key, {**event, "stamp_height": self.state.tip().height}, timestamp)])

    @_tracer.start_as_current_span("ledgerlog.log_append")
    def _commit(self, outs: list[Out]) -> None:
        encode, wire = self.codec.encode, self.codec.wire
        # an Out carries its record's value, or its event's Avro bytes, or else its event
        records = [Record(o.topic, o.key.encode(), o.value, o.timestamp, None, o.leaf) if o.value is not None
                   else Record(o.topic, o.key.encode(), wire(o.topic, o.encoded) if o.encoded is not None
                               else encode(o.topic, cast("dict[str, Any]", o.event)), o.timestamp)
                   for o in outs]
        trace.get_current_span().set_attribute("ledgerlog.records", len(records))
        try:
            self.log.append(records, self.state.take_batch())
        except BaseException:
            self.state.drop_batch()  # nothing of this chunk was acknowledged; state stays as stored
            raise
