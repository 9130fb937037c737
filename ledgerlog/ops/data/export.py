"""Reading a topic's events out of a chain, for data teams: an iterator and file exports.

    from ledgerlog.ops.data.export import iter_events, export

    for ev in iter_events("./data", "ledger.transactions", from_height=100, to_height=200):
        print(ev.partition, ev.offset, ev.height, ev.value["body"]["amount"])

    export("./data", "pool.shares", "avro", "shares.avro", from_time="2024-05-01T00:00:00Z")
    # -> {"topic", "format", "records", "path", "bytes", "range", "schema_id"}

Ranges (at most one kind per call; none means the whole topic), all **inclusive on both ends**,
either end may be left open:

- offsets (``from_offset``/``to_offset``): per partition, the same bounds apply to each one;
- heights (``from_height``/``to_height``): the height an event takes effect at,
  ``engine.movements.event_height`` (a block's height, a confirmed transaction's block height,
  otherwise the ``stamp_height`` the event was admitted at), so a height range holds exactly
  the events a query "at height H" starts or stops seeing (PROTOCOL.md §6);
- times (``from_time``/``to_time``): the record timestamp in ms since the Unix epoch, which is
  the event's own timestamp (never the wall clock at admission); an int, an ISO 8601 string
  (no zone means UTC) or a ``datetime``.

Order: by partition, then offset. There is no total order across partitions (Kafka's model);
sort by ``height`` (then ``timestamp``) if you need one. Everything streams: memory stays
constant whatever the range.

What is read is a snapshot: the end of each partition is taken when iteration starts, so
events appended later (by a running node) are not included. A data dir is opened read-only,
which works beside a running node.

Values are decoded into the topic's latest registered schema (``<topic>-value`` on
``_schemas``), the schema an Avro export carries in its header, so records written with older
schema versions come out in the current shape.

A pruned log (`ledgerlog prune`) holds no event below its prune height: a range reaching below
it (an offset below a partition's start, a height below the prune height) is refused with
``PrunedError`` (PRUNED); without a range, or by time, reading starts at the log's start and
``export``'s summary says ``pruned`` (height, archive).

Height ranges use an invariant of the write side: along one partition, event heights never
decrease (admission is sequential and stamps the tip, which only grows). The start of a range
is found by bisection, the scan stops past its end, and a decrease, should one ever be met,
raises ``LogError`` instead of answering wrongly. Time ranges read every record of the
selected partitions (timestamps are the events' own, so they are not ordered along a
partition); only records in range are decoded.

``LogFollower`` (``open_follower``) reads a chain's embedded log from another process and sees
what a running node or an ingest appends later: a RocksDB secondary instance that catches up
with the primary on ``refresh()``, or, where that cannot be opened, a read-only open renewed on
each refresh. ``ledgerlog tail --follow`` uses it.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from fastavro import schemaless_reader
from fastavro import writer as avro_writer

from ledgerlog.engine import avro
from ledgerlog.engine.chain import Chain, open_chain
from ledgerlog.engine.codec import Codec, Registry
from ledgerlog.engine.config import Config, load_config
from ledgerlog.engine.errors import ConfigError, ExportError, LogError, SchemaError, StorageError
from ledgerlog.engine.files import atomic_writer
from ledgerlog.engine.log.base import Log, first_at_height
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.engine.movements import event_height
from ledgerlog.engine.prunepoint import PRUNED_TOPICS
from ledgerlog.engine.topics import EVENT_TOPICS, subject_of
from ledgerlog.ops.data.ownpaths import refuse_own_path
from ledgerlog.ops.jobs import Progress

__all__ = [
    "FORMATS",
    "Event",
    "EventStream",
    "ExportError",
    "LogFollower",
    "export",
    "iter_events",
    "open_follower",
    "parse_time",
]

FORMATS = ("avro", "jsonl")
_KINDS = ("offset", "height", "time")
_PROGRESS_STEP = 1024  # records between progress reports


class Event(NamedTuple):
    """One event of a topic, as on the log."""

    topic: str
    partition: int
    offset: int
    key: str               # the record key (sender, chain id, worker address, provider id, ...)
    timestamp: int         # record timestamp, ms since the Unix epoch (the event's own)
    schema_id: int         # registry id of the schema the value was written with
    height: int            # engine.movements.event_height: the height the event takes effect at
    value: dict[str, Any]  # the decoded event, in the topic's latest registered schema


# -- arguments --------------------------------------------------------------------------------


def parse_time(value: int | str | datetime) -> int:
    """ms since the Unix epoch from an int (ms), a digit string, an ISO 8601 string or a
    datetime; a time without a zone is UTC."""
    if isinstance(value, bool):
        raise ExportError(f"not a time: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ExportError(f"not a time (ms since the epoch, or ISO 8601): {value!r}") from exc
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    raise ExportError(f"not a time: {value!r}")


@dataclass(frozen=True)
class _Range:
    kind: str | None = None   # "offset", "height", "time" or None (everything)
    lo: int | None = None
    hi: int | None = None

    def contains(self, x: int) -> bool:
        return (self.lo is None or x >= self.lo) and (self.hi is None or x <= self.hi)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "from": self.lo, "to": self.hi}


def _range(from_offset: Any, to_offset: Any, from_height: Any, to_height: Any,
           from_time: Any, to_time: Any) -> _Range:
    given = {k: (lo, hi) for k, lo, hi in (("offset", from_offset, to_offset),
                                           ("height", from_height, to_height),
                                           ("time", from_time, to_time))
             if lo is not None or hi is not None}
    if len(given) > 1:
        raise ExportError(f"one range kind at a time, not {' and '.join(given)}")
    if not given:
        return _Range()
    kind, (lo, hi) = next(iter(given.items()))
    if kind == "time":
        lo = None if lo is None else parse_time(lo)
        hi = None if hi is None else parse_time(hi)
    else:
        for name, v in (("from", lo), ("to", hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ExportError(f"{name}_{kind} must be an integer >= 0, not {v!r}")
    if lo is not None and hi is not None and lo > hi:
        raise ExportError(f"empty {kind} range: from {lo} > to {hi}")
    return _Range(kind, lo, hi)


# -- decoding ---------------------------------------------------------------------------------


class _Decoder:
    """Confluent wire format -> dict in the subject's latest registered schema."""

    def __init__(self, registry: Registry, topic: str) -> None:
        sv = registry.latest(subject_of(topic))
        if sv is None:
            raise SchemaError(f"no schema registered for {topic}")
        self.registry = registry
        self.topic = topic
        self.schema_id = sv.id
        self.schema_text = sv.schema
        self.reader = avro.parse_text(sv.schema)
        self._pairs: dict[int, tuple[Any, Any]] = {sv.id: (self.reader, None)}

    def __call__(self, value: bytes) -> tuple[int, dict[str, Any]]:
        if len(value) < 5 or value[0] != 0:
            raise SchemaError(f"{self.topic}: value is not in the Confluent wire format")
        sid = int.from_bytes(value[1:5], "big")
        pair = self._pairs.get(sid)
        if pair is None:
            pair = self._pairs[sid] = (self.registry.parsed(sid), self.reader)
        record: dict[str, Any] = schemaless_reader(io.BytesIO(value[5:]), pair[0], pair[1])  # type: ignore[assignment]
        return sid, record


# -- iteration --------------------------------------------------------------------------------


def _config_for(data_dir: str | os.PathLike[str]) -> Config:
    # the data dir's own config.toml decides (not this process's LEDGERLOG_* environment)
    return load_config(os.fspath(data_dir), {}, {})


class EventStream(Iterator[Event]):
    """What ``iter_events`` returns: an iterator of ``Event`` and a context manager. When
    ``iter_events`` opened the chain itself (it was given a data dir), the chain is closed when
    the stream is exhausted or ``close()``d."""

    def __init__(self, gen: Iterator[Event], owned: Chain | None, chain: Chain, topic: str,
                 rng: _Range, partitions: list[int], decoder: _Decoder) -> None:
        self._gen = gen
        self._owned = owned
        self.chain = chain
        self.topic = topic
        self.range = rng
        self.partitions = partitions
        self.schema_id = decoder.schema_id      # the latest registered schema's id
        self.schema_text = decoder.schema_text  # ... and its JSON text

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        try:
            return next(self._gen)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_events(chain_or_data_dir: Chain | str | os.PathLike[str], topic: str, *,
                from_offset: int | None = None, to_offset: int | None = None,
                from_height: int | None = None, to_height: int | None = None,
                from_time: int | str | datetime | None = None, to_time: int | str | datetime | None = None,
                partitions: Iterable[int] | None = None, progress: Progress | None = None) -> EventStream:
    """The events of ``topic`` in one range (see the module doc), by partition then offset.

    ``chain_or_data_dir``: an open ``Chain`` (left open) or a data dir (opened read-only and
    closed when the stream ends). ``partitions``: only these (default: all). Arguments are
    checked now (``ExportError``); records are read as the stream is consumed. ``progress`` is
    told the records the range spans (the partitions' offsets in it) and of each one passed."""
    rng = _range(from_offset, to_offset, from_height, to_height, from_time, to_time)
    if isinstance(chain_or_data_dir, Chain):
        chain, owned = chain_or_data_dir, None
    else:
        chain = owned = open_chain(_config_for(chain_or_data_dir), read_only=True)
    try:
        if topic not in EVENT_TOPICS:
            raise ExportError(f"not an event topic: {topic!r}; event topics: {list(EVENT_TOPICS)}")
        log = chain.log
        n = log.topics().get(topic)
        if n is None:
            raise ExportError(f"the log has no topic {topic!r}")
        if partitions is None:
            parts = list(range(n))
        else:
            parts = sorted(set(partitions))
            bad = [p for p in parts if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < n]
            if bad:
                raise ExportError(f"{topic} has partitions 0..{n - 1}, not {bad}")
        decoder = _Decoder(chain.codec.registry, topic)
        _check_pruned(log, topic, parts, rng)
        ends = log.end_offsets(topic)  # the snapshot
        gen = _events(log, topic, parts, ends, rng, decoder, progress)
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    return EventStream(gen, owned, chain, topic, rng, parts, decoder)


def _check_pruned(log: Log, topic: str, parts: list[int], rng: _Range) -> None:
    """A range reaching below what a pruned log still holds is refused (PRUNED), never cut short
    silently: an offset below a partition's start, a height below the prune height. (Without a
    range, or by time, an export starts at the log's start; its summary names the prune.) A topic
    prune keeps whole (keys, governance, admin) is never refused."""
    point = log.prune_point()
    if point is None or topic not in PRUNED_TOPICS:
        return
    if rng.kind == "height" and rng.lo is not None and rng.lo < point.height:
        raise point.error(f"events of {topic} from height {rng.lo}")
    if rng.kind == "height" and rng.lo is None and rng.hi is not None and rng.hi < point.height:
        raise point.error(f"events of {topic} up to height {rng.hi}")  # all of them pruned: not an empty export
    if rng.kind == "offset" and (rng.lo is not None or rng.hi is not None):
        starts = log.start_offsets(topic)
        if rng.lo is not None:
            below, what = [p for p in parts if rng.lo < starts[p]], f"from offset {rng.lo}"
        else:  # an upper bound alone: refused where every offset it asks for is pruned
            assert rng.hi is not None
            below, what = [p for p in parts if rng.hi < starts[p]], f"up to offset {rng.hi}"
        if below:
            raise point.error(f"{topic} {what} (partition {below[0]} starts at offset {starts[below[0]]})")


def _bounds(log: Log, topic: str, p: int, start: int, end: int, rng: _Range, decode: _Decoder) -> tuple[int, int]:
    """The offsets [start, stop) of partition ``p`` a scan of ``rng`` reads (a height range may
    stop earlier); ``start``: the first offset the log holds (past a prune)."""
    if rng.kind == "offset":
        return max(start, rng.lo or 0), min(end, rng.hi + 1) if rng.hi is not None else end
    if rng.kind == "height" and rng.lo is not None:
        return first_at_height(log, topic, p, start, end, rng.lo, lambda v: event_height(topic, decode(v)[1])), end
    return start, end


def _events(log: Log, topic: str, parts: list[int], ends: list[int], rng: _Range,
            decode: _Decoder, progress: Progress | None = None) -> Iterator[Event]:
    starts = log.start_offsets(topic)
    spans = [(p, *_bounds(log, topic, p, starts[p], ends[p], rng, decode)) for p in parts]
    if progress is not None:
        progress.set_total(sum(max(0, stop - start) for _p, start, stop in spans))
    for p, start, stop in spans:
        prev, seen = -1, 0
        for rec in log.scan(topic, p, start, stop):
            seen += 1
            if progress is not None and not seen % _PROGRESS_STEP:
                progress(_PROGRESS_STEP)
            if rng.kind == "time" and not rng.contains(rec.timestamp):
                continue
            sid, value = decode(rec.value)
            h = event_height(topic, value)
            if rng.kind == "height":
                if h < prev or (rng.lo is not None and h < rng.lo):
                    raise LogError(f"{topic}[{p}] event heights decrease at offset {rec.offset} "
                                   f"({prev} then {h}); cannot select by height")
                if rng.hi is not None and h > rng.hi:
                    break
                prev = h
            yield Event(topic, p, rec.offset, rec.key.decode("utf-8", "replace"), rec.timestamp,
                        sid, h, value)
        if progress is not None:  # the rest of the span: read, or past the end of a height range
            progress(max(0, stop - start) - seen + seen % _PROGRESS_STEP)


# -- export -----------------------------------------------------------------------------------


def export(chain_or_data_dir: Chain | str | os.PathLike[str], topic: str, fmt: str,
           out_path: str | os.PathLike[str], *, progress: Progress | None = None,
           **range_args: Any) -> dict[str, Any]:
    """Write the events of ``topic`` in a range (``iter_events`` keyword arguments) to
    ``out_path``; returns ``{"topic", "format", "records", "path", "bytes", "range",
    "schema_id"}``.

    ``avro``: an Avro Object Container File (deflate), readable by any Avro tool (fastavro,
    DuckDB, Spark, avro-tools) without ledgerlog, whose records (``ledgerlog.export.Record``)
    keep the coordinates that join them back to the log: ``topic``, ``partition``, ``offset``,
    ``key``, ``timestamp`` (ms), ``height``, ``schema_id`` (the schema the record was written
    with), and ``value``: the decoded event, in the topic's latest registered schema. File
    metadata: ``ledgerlog.topic``, ``ledgerlog.range`` (JSON: kind, from, to, partitions),
    ``ledgerlog.chain_id``, ``ledgerlog.schema_id`` (the value schema's id).

    ``jsonl``: one JSON object per line: ``{"topic","partition","offset","key","timestamp",
    "height","schema_id","value"}``.

    The file is written to a temporary file beside ``out_path``, fsynced and renamed over it:
    ``out_path`` is either untouched or complete. ``progress``: as ``iter_events``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of {list(FORMATS)}")
    out = os.path.abspath(os.fspath(out_path))
    directory = os.path.dirname(out)
    if not os.path.isdir(directory):
        raise ExportError(f"no such directory: {directory}")
    refuse_own_path(out, chain_or_data_dir.config if isinstance(chain_or_data_dir, Chain)
                    else _config_for(chain_or_data_dir), ExportError)
    with iter_events(chain_or_data_dir, topic, progress=progress, **range_args) as stream:
        rng = {**stream.range.to_dict(), "partitions": stream.partitions}
        count = 0
        with atomic_writer(out) as f:
            if fmt == "avro":
                def values() -> Iterator[dict[str, Any]]:
                    nonlocal count
                    for ev in stream:
                        count += 1
                        yield ev._asdict()
                meta = {"ledgerlog.topic": topic,
                        "ledgerlog.range": json.dumps(rng, separators=(",", ":")),
                        "ledgerlog.chain_id": stream.chain.genesis.chain_id,
                        "ledgerlog.schema_id": str(stream.schema_id)}
                avro_writer(f, export_schema(json.loads(stream.schema_text)), values(), codec="deflate",
                            metadata=meta)
            else:
                for ev in stream:
                    f.write(orjson.dumps(ev._asdict()))
                    f.write(b"\n")
                    count += 1
    point = stream.chain.log.prune_point()
    return {"topic": topic, "format": fmt, "records": count, "path": out,
            "bytes": os.path.getsize(out), "range": rng,
            "schema_id": stream.schema_id, "pruned": point.to_dict() if point is not None else None}


def export_schema(value_schema: dict[str, Any]) -> dict[str, Any]:
    """The Avro schema of an exported record: the log coordinates, then the event as ``value``."""
    return {"type": "record", "name": "Record", "namespace": "ledgerlog.export",
            "doc": "One event of a ledgerlog topic with the coordinates that join it back to the log.",
            "fields": [
                {"name": "topic", "type": "string"},
                {"name": "partition", "type": "int"},
                {"name": "offset", "type": "long"},
                {"name": "key", "type": "string", "doc": "The record key (sender, chain id, worker, ...)."},
                {"name": "timestamp", "type": "long", "doc": "Record timestamp, ms since the Unix epoch."},
                {"name": "schema_id", "type": "int", "doc": "Registry id of the schema the value was written with."},
                {"name": "height", "type": "long", "doc": "The height the event takes effect at."},
                {"name": "value", "type": value_schema}]}


# -- following a log that another process appends to -------------------------------------------


class LogFollower:
    """A chain's log and codec, read from another process, that ``refresh()`` advances to what
    has been appended since. ``mode`` is ``"secondary"`` (a RocksDB secondary instance: cheap
    catch-up) or ``"reopen"`` (a read-only open renewed on each refresh, which RocksDB needs
    because a read-only open never sees later writes)."""

    def __init__(self, config: Config, mode: str = "auto") -> None:
        if mode not in ("auto", "secondary", "reopen"):
            raise ValueError(f"mode: auto, secondary or reopen, not {mode!r}")
        if not os.path.exists(config.genesis_path):
            raise ConfigError(f"{config.data_dir} holds no chain; run `ledgerlog init` first")
        self.config = config
        self._log: Log | None = None
        self._chain: Chain | None = None
        self.codec: Codec
        if mode != "reopen" and config.resolved_log_url.startswith("embedded:"):
            try:
                self._open_secondary()
                self.mode = "secondary"
                return
            except StorageError:
                if mode == "secondary":
                    raise
        self._chain = open_chain(config, read_only=True)
        self.codec = self._chain.codec
        self.mode = "reopen"

    def _open_secondary(self) -> None:
        log = EmbeddedLog(self.config.log_path, secondary=True)
        try:
            self.codec = Codec(Registry(log))
        except BaseException:
            log.close()
            raise
        self._log = log

    @property
    def log(self) -> Log:
        if self._chain is not None:
            return self._chain.log
        assert self._log is not None
        return self._log

    def refresh(self) -> None:
        """See what has been appended since the last refresh (or the open)."""
        if self.mode == "secondary":
            assert self._log is not None
            try:
                self._log.catch_up()
            except StorageError:  # e.g. files the primary replaced: start a fresh instance
                stale_log, self._log = self._log, None
                stale_log.close()
                self._open_secondary()
            return
        fresh = open_chain(self.config, read_only=True)
        stale_chain, self._chain = self._chain, fresh
        self.codec = fresh.codec
        if stale_chain is not None:
            stale_chain.close()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._chain is not None:
            self._chain.close()
            self._chain = None

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_follower(config_or_data_dir: Config | str | os.PathLike[str], mode: str = "auto") -> LogFollower:
    """A ``LogFollower`` on a data dir (or its Config); ``mode`` auto tries a secondary
    instance first and falls back to reopening read-only."""
    cfg = config_or_data_dir if isinstance(config_or_data_dir, Config) else _config_for(config_or_data_dir)
    return LogFollower(cfg, mode)
