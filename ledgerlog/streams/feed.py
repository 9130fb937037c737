"""Projections' input: topic partitions merged in event-height order, each record read and decoded
once however many projections fold it.

Each partition is read ahead in chunks and decoded once; records wait in per-partition buffers
until a merge by height takes them. Heights never fall along a partition (admission stamps the
tip), so taking every buffered record whose height is below the lowest height a partition with
unread records may still hold, sorted by (height, partition), yields events in height order
across batches, and folds stay on their append-only fast path.

A Feed may serve several projections at once (the runner folds all of its projections from one
feed): ``take_raw`` returns the merged records, ``select`` the part one projection reads.

Reading: the embedded log's records are read straight from its RocksDB in one iterator pass per
chunk (offsets are contiguous there; anything unexpected falls back to ``Log.read``). Decoding:
records written with the topic's current schema are decoded by a function generated from that
schema (plain Python over the bytes, which beats fastavro's per-field dispatch); other schema
versions go through ``Codec.decode`` (fastavro, with schema resolution). Both give equal dicts,
key order included (tests/streams/test_feed.py)."""
from __future__ import annotations

import ast
import functools
import json
import struct
from collections.abc import Callable, Sequence
from typing import Any

from rocksdict import ReadOptions

from ledgerlog.engine import storekeys as K
from ledgerlog.engine import topics as T
from ledgerlog.engine.avro_codegen import SchemaNames, Unsupported
from ledgerlog.engine.codec import Codec
from ledgerlog.engine.errors import LogError, StorageError, UndecodableRecordError
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.movements import event_height

__all__ = ["Feed", "EventDecoder", "compile_decoder", "Unsupported", "Spec", "spec_of", "merge_specs",
           "HEIGHT_FIELDS"]

TP = tuple[str, int]
#: a buffered record: (height, partition index in the feed, offset, event)
Entry = tuple[int, int, int, dict[str, Any]]

_HEAD = K.RECORD_HEAD  # the embedded log's record value: timestamp, key length; key, Avro value
_INF = float("inf")


# -- decoding -----------------------------------------------------------------------------------
#: Which fields of a record to decode: field name -> the fields of it to decode (a Spec, for a
#: record field), or None for all of it. A Spec of None decodes everything.
Spec = dict[str, Any]


def spec_of(paths: Any) -> Spec | None:
    """A Spec from dotted paths ("body.sender", "height"); None (everything) for None."""
    if paths is None:
        return None
    out: Spec = {}
    for path in paths:
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            if part in node and node[part] is None:
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = None
    return out


def merge_specs(a: Spec | None, b: Spec | None) -> Spec | None:
    """The fields either of two specs decodes."""
    if a is None or b is None:
        return None
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_specs(out[k], v) if k in out else v
    return out


def compile_decoder(schema_text: str, fields: Spec | None = None) -> Callable[[bytes, int], dict[str, Any]]:
    """A function ``decode(buf, p)`` reading the Avro binary datum of ``schema_text`` at ``buf[p:]``
    (records, arrays, string, long, int, boolean; otherwise Unsupported), giving what fastavro's
    ``schemaless_reader`` gives with that schema as writer and no reader schema; with ``fields``,
    only those fields (in schema order).

    What a Spec leaves out costs as little as it can: a skipped string or array block is jumped
    over by its length (no bytes are copied and no str made), a skipped number only has its bytes
    stepped over, and nothing after the last field wanted is read at all."""
    scope: dict[str, Any] = {}
    exec(_decoder_code(schema_text, repr(fields)), scope)
    return scope["decode"]  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=256)
def _decoder_code(schema_text: str, fields_repr: str) -> Any:
    lines, result, _ = _generate(schema_text, ast.literal_eval(fields_repr), "    ")
    src = "\n".join(["def decode(buf, p):", *lines,
                     "    if p > len(buf):",
                     "        raise EOFError('truncated Avro record')",
                     f"    return {result}", ""])
    return compile(src, "<generated avro decoder>", "exec")


#: a chunk decoder: (record values of consecutive offsets, first offset, partition index, buffer)
ChunkDecoder = Callable[[list[bytes], int, int, list[Any]], None]


def compile_chunk_decoder(schema_text: str, fields: Spec | None, height: str, header: bytes,
                          slow: Callable[[bytes, int], dict[str, Any]],
                          height_of: Callable[[dict[str, Any]], int]) -> ChunkDecoder:
    """A function ``decode_chunk(values, off, i, out)`` that decodes embedded-log record values
    (RECORD_HEAD, key, Confluent-framed Avro) of consecutive offsets from ``off`` and appends
    ``(height, i, offset, event)`` to ``out``: ``compile_decoder``'s code in one loop, the framing
    checked inline and the height (the dotted path ``height``, which ``fields`` must decode) taken
    from its variable, with no call per record. A value not framed with ``header`` (another schema
    version) goes to ``slow(buf, p)`` and ``height_of``."""
    code = _chunk_code(schema_text, repr(fields), height)
    scope: dict[str, Any] = {"header": header, "slow": slow, "height_of": height_of}
    exec(code, scope)
    return scope["decode_chunk"]  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=256)
def _chunk_code(schema_text: str, fields_repr: str, height: str) -> Any:
    """The compiled module code of a chunk decoder (compiled once per process: every feed, and
    so every runner a rebuild makes, uses it again)."""
    fields = ast.literal_eval(fields_repr)
    lines, result, leaves = _generate(schema_text, fields, "        ")
    if height not in leaves:
        raise Unsupported(f"{height} is not decoded")
    src = "\n".join([
        "def decode_chunk(values, off, i, out, header=header, slow=slow, height_of=height_of, len=len):",
        "    for buf in values:",
        f"        p = {_HEAD.size} + ((buf[8] << 24) | (buf[9] << 16) | (buf[10] << 8) | buf[11])",
        "        if buf[p:p + 5] != header:",
        "            ev = slow(buf, p)",
        "            out.append((height_of(ev), i, off, ev))",
        "            off += 1",
        "            continue",
        "        p += 5",
        *lines,
        "        if p > len(buf):",
        "            raise EOFError('truncated Avro record')",
        f"        out.append(({leaves[height]}, i, off, {result}))",
        "        off += 1", ""])
    # the defaults are bound when the module code runs, from the scope it runs in
    return compile(src, "<generated avro chunk decoder>", "exec")


def _generate(schema_text: str, fields: Spec | None, base: str) -> tuple[list[str], str, dict[str, str]]:
    """Lines (indented by ``base``) reading the datum at ``buf[p:]`` and advancing ``p``; the
    variable holding the result; the variable of each decoded number or string, by dotted path."""
    lines: list[str] = []
    leaves: dict[str, str] = {}
    names = SchemaNames()
    var, resolve, record_ns = names.var, names.resolve, names.record_ns

    def long_(ind: str, target: str) -> None:
        # zig-zag varints, inline (one- and two-byte ones first: lengths of 64-char hex strings)
        lines.append(f"{ind}b = buf[p]")
        lines.append(f"{ind}if b < 128:")
        lines.append(f"{ind}    {target} = (b >> 1) ^ -(b & 1)")
        lines.append(f"{ind}    p += 1")
        lines.append(f"{ind}else:")
        lines.append(f"{ind}    c = buf[p + 1]")
        lines.append(f"{ind}    m = (b & 127) | ((c & 127) << 7)")
        lines.append(f"{ind}    p += 2")
        lines.append(f"{ind}    s = 14")
        lines.append(f"{ind}    while c > 127:")
        lines.append(f"{ind}        c = buf[p]")
        lines.append(f"{ind}        p += 1")
        lines.append(f"{ind}        m |= (c & 127) << s")
        lines.append(f"{ind}        s += 7")
        lines.append(f"{ind}    if s > 63 and m >> 64:")  # invalid Avro: no long is wider (fastavro wraps it)
        lines.append(f"{ind}        raise ValueError('a long wider than 64 bits')")
        lines.append(f"{ind}    {target} = (m >> 1) ^ -(m & 1)")

    def length(ind: str) -> None:
        long_(ind, "n")
        lines.append(f"{ind}if n < 0:")
        lines.append(f"{ind}    raise ValueError('negative length')")

    def skip_bytes(ind: str) -> None:
        # a length (one byte below 64) and that many bytes, stepped over
        lines.append(f"{ind}b = buf[p]")
        lines.append(f"{ind}if b < 128 and not b & 1:")
        lines.append(f"{ind}    p += 1 + (b >> 1)")
        lines.append(f"{ind}else:")
        length(ind + "    ")
        lines.append(f"{ind}    p += n")

    def wanted(spec: Spec | None, t: dict[str, Any]) -> list[bool]:
        return [spec is None or f["name"] in spec for f in t["fields"]]

    def gen(t: Any, ind: str, ns: str | None, spec: Spec | None, tail: bool = False, path: str = "") -> str:
        """Code reading a ``t`` into a fresh variable, returned; ``tail``: nothing after this
        value is read, so its own unwanted trailing fields need not be stepped over."""
        t, ns = resolve(t, ns)
        if t in ("long", "int"):
            v = leaves[path] = var()
            long_(ind, v)
            return v
        if t == "string":
            v = leaves[path] = var()
            length(ind)
            lines.append(f"{ind}{v} = buf[p:p + n].decode()")
            lines.append(f"{ind}p += n")
            return v
        if t == "boolean":
            v = var()
            lines.append(f"{ind}{v} = buf[p] != 0")
            lines.append(f"{ind}p += 1")
            return v
        if isinstance(t, dict) and t.get("type") == "record":
            inner = record_ns(t, ns)
            want = wanted(spec, t)
            last = max((i for i, w in enumerate(want) if w), default=-1)
            parts = []
            for i, f in enumerate(t["fields"]):
                if want[i]:
                    sub = None if spec is None else spec[f["name"]]
                    parts.append((f["name"], gen(f["type"], ind, inner, sub, tail and i == last,
                                                 f"{path}.{f['name']}" if path else f["name"])))
                elif tail and i > last:
                    resolve(f["type"], inner)  # names it defines may be used later: keep them known
                    _define(f["type"], inner)
                else:
                    skip(f["type"], ind, inner)
            v = var()
            lines.append(f"{ind}{v} = {{" + ", ".join(f"{k!r}: {x}" for k, x in parts) + "}")
            return v
        if isinstance(t, dict) and t.get("type") == "array":
            v, c = var(), var()
            lines.append(f"{ind}{v} = []")
            lines.append(f"{ind}while True:")
            long_(ind + "    ", c)
            lines.append(f"{ind}    if {c} == 0:")
            lines.append(f"{ind}        break")
            lines.append(f"{ind}    if {c} < 0:  # a block with its byte size")
            lines.append(f"{ind}        {c} = -{c}")
            long_(ind + "        ", "_")
            lines.append(f"{ind}    for _i in range({c}):")
            item = gen(t["items"], ind + "        ", ns, None, path=path + "[]")
            lines.append(f"{ind}        {v}.append({item})")
            return v
        raise Unsupported(repr(t)[:80])

    def _define(t: Any, ns: str | None) -> None:
        """Walk a type no code reads, so the named records it defines are known to later fields."""
        t, ns = resolve(t, ns)
        if isinstance(t, dict) and t.get("type") == "record":
            for f in t["fields"]:
                _define(f["type"], record_ns(t, ns))
        elif isinstance(t, dict) and t.get("type") == "array":
            _define(t["items"], ns)
        elif t not in ("long", "int", "string", "boolean"):
            raise Unsupported(repr(t)[:80])

    def skip(t: Any, ind: str, ns: str | None) -> None:
        t, ns = resolve(t, ns)
        if t in ("long", "int"):
            lines.append(f"{ind}while buf[p] > 127:")
            lines.append(f"{ind}    p += 1")
            lines.append(f"{ind}p += 1")
        elif t == "string":
            skip_bytes(ind)
        elif t == "boolean":
            lines.append(f"{ind}p += 1")
        elif isinstance(t, dict) and t.get("type") == "record":
            inner = record_ns(t, ns)
            for f in t["fields"]:
                skip(f["type"], ind, inner)
        elif isinstance(t, dict) and t.get("type") == "array":
            c = var()
            lines.append(f"{ind}while True:")
            long_(ind + "    ", c)
            lines.append(f"{ind}    if {c} == 0:")
            lines.append(f"{ind}        break")
            lines.append(f"{ind}    if {c} < 0:  # a block with its byte size: skip it whole")
            length(ind + "        ")
            lines.append(f"{ind}        p += n")
            lines.append(f"{ind}        continue")
            lines.append(f"{ind}    for _i in range({c}):")
            lines.append(f"{ind}        pass")
            skip(t["items"], ind + "        ", ns)
        else:
            raise Unsupported(repr(t)[:80])

    result = gen(json.loads(schema_text), base, None, fields, tail=fields is not None)
    return lines, result, leaves


class EventDecoder:
    """Per topic (and Spec), ``decode(buf, p)`` of a Confluent-framed value at ``buf[p:]`` (to
    its end). Values of another schema version than the topic's current one are decoded whole
    by ``Codec.decode``: a Spec only ever leaves fields out."""

    def __init__(self, codec: Codec | Callable[[str, bytes], dict[str, Any]]) -> None:
        self._codec = codec if isinstance(codec, Codec) else None
        self._plain = codec.decode if isinstance(codec, Codec) else codec
        self._fns: dict[tuple[str, str], Callable[[bytes, int], dict[str, Any]]] = {}
        self._chunks: dict[tuple[str, str], ChunkDecoder] = {}

    def for_topic(self, topic: str, fields: Spec | None = None) -> Callable[[bytes, int], dict[str, Any]]:
        key = (topic, repr(fields))
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = self._make(topic, fields)
        return fn

    def for_chunk(self, topic: str, fields: Spec | None = None) -> ChunkDecoder:
        """``decode_chunk(values, off, i, out)`` of embedded-log record values (see
        ``compile_chunk_decoder``); a loop over ``for_topic`` where no code can be generated."""
        key = (topic, repr(fields))
        fn = self._chunks.get(key)
        if fn is None:
            fn = self._chunks[key] = self._make_chunk(topic, fields)
        return fn

    def _make_chunk(self, topic: str, fields: Spec | None) -> ChunkDecoder:
        one, height_of = self.for_topic(topic, fields), _height_fn(topic)
        head = _HEAD.unpack_from
        size = _HEAD.size

        def loop(values: list[bytes], off: int, i: int, out: list[Any]) -> None:
            for v in values:
                ev = one(v, size + head(v)[1])
                out.append((height_of(ev), i, off, ev))
                off += 1

        if self._codec is None:
            return loop
        try:
            sid = self._codec.schema_id(topic)
            schema = self._codec.registry.by_id[sid].schema
            return compile_chunk_decoder(schema, fields, _HEIGHT_PATH.get(topic, "stamp_height"),
                                         struct.pack(">bI", 0, sid), self._slow(topic), height_of)
        except (KeyError, Unsupported):
            return loop

    def _slow(self, topic: str) -> Callable[[bytes, int], dict[str, Any]]:
        plain = self._plain

        def slow(buf: bytes, p: int) -> dict[str, Any]:
            return plain(topic, buf[p:] if p else buf)
        return slow

    def _make(self, topic: str, fields: Spec | None) -> Callable[[bytes, int], dict[str, Any]]:
        slow = self._slow(topic)
        if self._codec is None:
            return slow
        try:
            sid = self._codec.schema_id(topic)
            fast = compile_decoder(self._codec.registry.by_id[sid].schema, fields)
        except (KeyError, Unsupported):
            return slow
        header = struct.pack(">bI", 0, sid)

        def decode(buf: bytes, p: int) -> dict[str, Any]:
            if buf[p:p + 5] == header:
                return fast(buf, p + 5)
            return slow(buf, p)  # another schema version, or not the wire format (an error)
        return decode


# -- the feed -----------------------------------------------------------------------------------
#: the fields ``engine.movements.event_height`` reads, decoded whatever a Spec says
HEIGHT_FIELDS: dict[str, Spec] = {T.BLOCKS: {"header": {"height": None}}, T.TRANSACTIONS: {"height": None}}
_HEIGHT_PATH = {T.BLOCKS: "header.height", T.TRANSACTIONS: "height"}  # others: stamp_height
_STAMP: Spec = {"stamp_height": None}


#: what a decode may raise that is no fault of the record (the registry read from a log that failed)
_TRANSIENT = (LogError, StorageError)


def _undecodable(topic: str, partition: int, first: int, decodes: Sequence[Callable[[], Any]],
                 exc: Exception) -> UndecodableRecordError:
    """The typed error for a record of ``topic`` that cannot be decoded: the first of ``decodes``
    (one per record from offset ``first``) that raises, else the record at ``first``."""
    offset, error = first, exc
    for j, decode in enumerate(decodes):
        try:
            decode()
        except Exception as one:  # noqa: BLE001 - this record is the culprit
            offset, error = first + j, one
            break
    err = UndecodableRecordError(
        f"{topic}[{partition}] offset {offset} cannot be decoded ({type(error).__name__}: {error}): it was "
        "written by something other than ledgerlog, or damaged; restore the log from a snapshot (on Kafka, "
        "find the producer that wrote it)")
    err.topic, err.partition, err.offset = topic, partition, offset
    return err


class Feed:
    def __init__(self, log: Log, decode: Codec | EventDecoder | Callable[[str, bytes], dict[str, Any]],
                 topics: tuple[str, ...] | list[str], positions: dict[TP, int], chunk: int = 2000,
                 fields: dict[str, Spec | None] | None = None, partitions: frozenset[TP] | None = None) -> None:
        """``fields``: per topic, the Spec of what to decode (topics not in it: everything).
        ``partitions``: read only these of the topics' partitions (a part of a split rebuild)."""
        self.log, self.chunk = log, chunk
        self.topics = tuple(dict.fromkeys(topics))
        self._fields = {t: merge_specs(spec, HEIGHT_FIELDS.get(t, _STAMP))
                        for t, spec in (fields or {}).items() if spec is not None}
        self._decoder = decode if isinstance(decode, EventDecoder) else EventDecoder(decode)
        self.tps: list[TP] = [(t, p) for t in self.topics for p in range(len(log.end_offsets(t)))
                              if partitions is None or (t, p) in partitions]
        self.index = {tp: i for i, tp in enumerate(self.tps)}
        self._next = [positions.get(tp, 0) for tp in self.tps]  # next offset to read
        self.low = list(self._next)  # next offset to take (everything before it was taken)
        self._buf: list[list[Entry]] = [[] for _ in self.tps]
        self._start = [0] * len(self.tps)  # taken entries at the front of each buffer
        self._chunks: list[ChunkDecoder | None] = [None] * len(self.tps)
        self._db = log.raw()  # the embedded store: read record values straight from it
        self.picked: list[Entry] = []  # what the last ``select`` picked: the events' coordinates

    # -- reading --------------------------------------------------------------------------------
    def _refill(self, i: int, end: int) -> None:
        start = self._next[i]
        if start >= end:
            return
        topic, p = self.tps[i]
        n = min(self.chunk, end - start)
        buf = self._buf[i]
        if self._start[i]:
            del buf[:self._start[i]]
            self._start[i] = 0
        got = self._read_embedded(topic, p, start, n) if self._db is not None else None
        had = len(buf)
        dec = self._decoder.for_topic(topic, self._fields.get(topic))
        if got is not None:
            chunk = self._chunks[i]
            if chunk is None:
                chunk = self._chunks[i] = self._decoder.for_chunk(topic, self._fields.get(topic))
            try:
                chunk(got, start, i, buf)
            except _TRANSIENT:
                del buf[had:]
                raise
            except Exception as exc:  # a malformed record: found, named, raised typed
                del buf[had:]
                size = _HEAD.size
                decodes = [functools.partial(dec, v, size + _HEAD.unpack_from(v)[1]) for v in got]
                raise _undecodable(topic, p, start, decodes, exc) from exc
            self._next[i] = start + len(got)
            return
        height_of = _height_fn(topic)
        recs = self.log.read(topic, p, start, n)
        for r in recs:
            try:
                ev = dec(r.value, 0)
            except _TRANSIENT:
                del buf[had:]
                raise
            except Exception as exc:  # as above
                del buf[had:]
                raise _undecodable(topic, p, r.offset, [], exc) from exc
            buf.append((height_of(ev), i, r.offset, ev))
        if recs:
            self._next[i] = recs[-1].offset + 1

    def _read_embedded(self, topic: str, p: int, start: int, n: int) -> list[bytes] | None:
        """Values of offsets [start, start + n) in one iterator pass; None unless all are there
        (then ``Log.read`` reads them, and reports a damaged store)."""
        ro = ReadOptions()
        ro.set_iterate_upper_bound(K.record_key(topic, p, start + n))
        assert self._db is not None
        try:
            values = list(self._db.values(from_key=K.record_key(topic, p, start), read_opt=ro))
        except Exception:  # noqa: BLE001 - Log.read maps the error
            self._db = self.log.raw()  # the log may have reopened its store after a disk fault
            return None
        return values if len(values) == n else None

    # -- taking ---------------------------------------------------------------------------------
    def take_raw(self, limit: int, ends: dict[str, list[int]]) -> list[Entry]:
        """Up to ``limit`` buffered records in (height, partition, offset) order, not past ``ends``:
        the order a heap merge of the partitions by (height, partition) gives."""
        tps, bufs, starts, nxt = self.tps, self._buf, self._start, self._next
        n = len(tps)
        stops = [ends[t][p] for t, p in tps]
        low_water = max(1, self.chunk // 2)
        dead = [False] * n  # a read that found nothing before the end (records not visible yet)
        self.taken_from = list(self.low)
        out: list[Entry] = []
        while len(out) < limit:
            # keep every partition with records left before its end read ahead
            for i in range(n):
                if not dead[i] and nxt[i] < stops[i] and len(bufs[i]) - starts[i] < low_water:
                    before = nxt[i]
                    self._refill(i, stops[i])
                    dead[i] = nxt[i] == before
            # unread records of a partition are at least as high as its last buffered one: take
            # records below the lowest such height, and at it from partitions up to the first
            # one that may hold more at that height
            bound: float = _INF
            first = n
            for i in range(n):
                if nxt[i] < stops[i] and not dead[i]:
                    h = bufs[i][-1][0]
                    if h < bound:
                        bound, first = h, i
            cands: list[Entry] = []
            for i in range(n):
                b, s = bufs[i], starts[i]
                if s == len(b):
                    continue
                stop = stops[i]
                if bound == _INF and b[-1][2] < stop:
                    j = len(b)
                else:
                    j = s
                    lim = bound + 1 if i <= first else bound  # heights are ints
                    while j < len(b) and b[j][0] < lim and b[j][2] < stop:
                        j += 1
                if j > s:
                    cands.extend(b[s:j])
            if not cands:
                break
            cands.sort()  # (height, partition, offset) is unique: events are never compared
            room = limit - len(out)
            if len(cands) > room:
                del cands[room:]
            for e in cands:
                starts[e[1]] += 1
            out.extend(cands)
        for e in out:
            self.low[e[1]] = e[2] + 1
        return out

    def select(self, entries: list[Entry], topics: tuple[str, ...] | frozenset[str],
               positions: dict[TP, int] | None = None, partitions: frozenset[TP] | None = None,
               ) -> tuple[list[tuple[str, dict[str, Any]]], dict[TP, int], int]:
        """The part of ``entries`` (the last ``take_raw``) a projection reading ``topics`` (only
        ``partitions`` of them, when given) folds, less what it folded already (``positions``):
        (events, its new positions, highest height)."""
        tps = self.tps
        want = [tp[0] in topics and (partitions is None or tp in partitions) for tp in tps]
        skip = None
        if positions:
            skip = [positions.get(tp, 0) for tp in tps]
            if all(not w or s <= lo for w, s, lo in zip(want, skip, self.taken_from)):
                skip = None
        if skip is None:
            if all(want):
                picked = entries
            else:
                picked = [e for e in entries if want[e[1]]]
        else:
            picked = [e for e in entries if want[e[1]] and e[2] >= skip[e[1]]]
        self.picked = picked
        names = [tp[0] for tp in tps]
        events = [(names[e[1]], e[3]) for e in picked]
        last = {e[1]: e[2] for e in picked}  # offsets rise along a partition: the last one stays
        height = picked[-1][0] if picked else -1
        return events, {tps[i]: off + 1 for i, off in last.items()}, height

    def take(self, limit: int, ends: dict[str, list[int]]) -> tuple[list[tuple[str, dict[str, Any]]], dict[TP, int], int]:
        """Up to ``limit`` events in height order, not past ``ends``; (events, new positions,
        highest height)."""
        return self.select(self.take_raw(limit, ends), self.topics)

    def covers(self, topics: tuple[str, ...], positions: dict[TP, int], partitions: frozenset[TP] | None = None) -> bool:
        """Can a projection reading ``topics`` (only ``partitions`` of them, when given) that folded
        up to ``positions`` take from this feed (it reads them all, and has taken nothing that
        projection still has to fold)?"""
        index = self.index
        for t in topics:
            if t not in self.topics:
                return False
        if partitions is not None and not partitions <= index.keys():
            return False
        for tp, i in index.items():
            if tp[0] in topics and (partitions is None or tp in partitions) and positions.get(tp, 0) < self.low[i]:
                return False
        return partitions is not None or all((t, p) in index for t in topics
                                              for p in range(len(self.log.end_offsets(t))))

    def aligned(self, positions: dict[TP, int]) -> bool:
        """Has this feed taken exactly what a store at ``positions`` has folded?"""
        return all(self.low[i] == positions.get(tp, 0) for i, tp in enumerate(self.tps))


def _height_fn(topic: str) -> Callable[[dict[str, Any]], int]:
    if topic == T.BLOCKS:
        return lambda ev: ev["header"]["height"]
    if topic == T.TRANSACTIONS:
        return lambda ev: ev["height"]
    return lambda ev: event_height(topic, ev)
