"""The projections' feed (streams/feed.py): generated Avro decoders equal fastavro's, whole and
partial; the merge gives exactly the order of a heap merge by (height, partition, offset) however
it is batched, on the embedded log's direct path and through Log.read; a runner whose
projections share one feed folds the same state whatever their positions."""
from __future__ import annotations

import heapq
import io
import json
import random
from typing import Any

import orjson
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlog import projections
from ledgerlog.engine import avro
from ledgerlog.engine import storekeys as K
from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.log.base import Record
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.engine.log.memory import MemoryLog
from ledgerlog.engine.movements import event_height
from ledgerlog.engine.storekeys import RECORD_HEAD
from ledgerlog.ops.devtools.histgen import generate, make_genesis
from ledgerlog.streams.feed import (
    HEIGHT_FIELDS,
    EventDecoder,
    Feed,
    Unsupported,
    compile_chunk_decoder,
    compile_decoder,
    merge_specs,
    spec_of,
)
from ledgerlog.streams.runner import Runner, _fields

I64 = st.integers(-(2**63), 2**63 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
TEXT = st.one_of(st.text(max_size=80), st.sampled_from(["", "a" * 63, "b" * 64, "c" * 8192]))


def _values(t: Any, named: dict[str, Any], ns: str = avro.NAMESPACE) -> st.SearchStrategy:
    """Values of an Avro type (the kinds our schemas use)."""
    if isinstance(t, dict) and t.get("type") in ("long", "int", "string", "boolean") and len(t) <= 2:
        t = t["type"]
    if t == "long":
        return I64
    if t == "int":
        return I32
    if t == "string":
        return TEXT
    if t == "boolean":
        return st.booleans()
    if isinstance(t, str):
        full = t if "." in t else f"{ns}.{t}"
        return st.deferred(lambda: _values(named[full], named, ns))
    if t["type"] == "record":
        full = t["name"] if "." in t["name"] else f"{t.get('namespace', ns)}.{t['name']}"
        named[full] = t
        return st.fixed_dictionaries({f["name"]: _values(f["type"], named, ns) for f in t["fields"]})
    if t["type"] == "array":
        return st.lists(_values(t["items"], named, ns), max_size=6)
    raise Unsupported(t["type"])


SCHEMAS = {name: avro.schema_json(name) for name in sorted(set(T.EVENT_SCHEMA.values()))}


def _encode(schema_text: str, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(json.loads(schema_text)), record)
    return buf.getvalue()


def _fastavro(schema_text: str, data: bytes) -> dict[str, Any]:
    return schemaless_reader(io.BytesIO(data), parse_schema(json.loads(schema_text)), None)


def _project(value: Any, spec: dict[str, Any] | None) -> Any:
    if spec is None:
        return value
    return {k: _project(v, spec[k]) for k, v in value.items() if k in spec}


def _paths(t: Any, named: dict[str, Any], prefix: str = "") -> list[str]:
    """Every dotted path into records of a schema."""
    if isinstance(t, str) and t.startswith(avro.NAMESPACE):
        t = named[t]
    out = []
    if isinstance(t, dict) and t.get("type") == "record":
        named[f"{t.get('namespace', avro.NAMESPACE)}.{t['name']}"] = t
        for f in t["fields"]:
            out.append(prefix + f["name"])
            out += _paths(f["type"], named, prefix + f["name"] + ".")
    return out


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_decoder_equals_fastavro(name: str, data: Any) -> None:
    text = SCHEMAS[name]
    try:
        decode = compile_decoder(text)
        strategy = _values(json.loads(text), {})
    except Unsupported:
        pytest.skip(f"{name} uses a type the generated decoders leave to fastavro")
    record = data.draw(strategy)
    raw = b"\x07" + _encode(text, record) + b"trailing"
    want = _fastavro(text, raw[1:])
    got = decode(raw, 1)
    assert got == want
    assert orjson.dumps(got) == orjson.dumps(want)  # key order too: chainstate stores events as JSON
    # partial: any set of paths decodes just those fields, in schema order
    paths = _paths(json.loads(text), {})
    chosen = data.draw(st.lists(st.sampled_from(paths), max_size=len(paths), unique=True))
    spec = spec_of(chosen)
    part = compile_decoder(text, spec)(raw, 1)
    assert orjson.dumps(part) == orjson.dumps(_project(want, spec))
    # a truncated record never decodes
    cut = data.draw(st.integers(1, len(raw) - len(b"trailing") - 1))
    with pytest.raises(Exception):
        decode(raw[:cut], 1)


#: every released version of every event schema (schemas/registered), and the current ones
VERSIONS = {**{f"{name}.v{i}": json.dumps(v) for name in sorted(set(T.EVENT_SCHEMA.values()))
               for i, v in enumerate(avro.registered_versions(name), 1)}, **SCHEMAS}


def _framed(record: bytes, header: bytes, key: bytes) -> bytes:
    """An embedded-log record value: RECORD_HEAD, the key, the Confluent-framed Avro."""
    return RECORD_HEAD.pack(1700000000000, len(key)) + key + header + record


@pytest.mark.parametrize("name", sorted(VERSIONS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_chunk_decoder_equals_the_full_decode_on_the_fields_it_keeps(name: str, data: Any) -> None:
    """A chunk decoder with any Spec gives, per record, exactly the full decode's value of the
    fields it keeps (and the height); a record of another schema id goes through the slow path."""
    text = VERSIONS[name]
    paths = _paths(json.loads(text), {})
    height = next((h for h in ("header.height", "height", "stamp_height") if h in paths), None)
    try:
        compile_decoder(text)
        strategy = _values(json.loads(text), {})
    except Unsupported:
        pytest.skip(f"{name} uses a type the generated decoders leave to fastavro")
    if height is None:
        pytest.skip(f"{name} has no height field (no topic folds it)")
    records = data.draw(st.lists(strategy, min_size=1, max_size=5))
    chosen = data.draw(st.lists(st.sampled_from(paths), max_size=len(paths), unique=True))
    spec = merge_specs(spec_of(chosen), spec_of([height])) if data.draw(st.booleans()) else None
    header, other = b"\x00\x00\x00\x00\x07", b"\x00\x00\x00\x00\x08"
    odd = data.draw(st.sets(st.integers(0, len(records) - 1)))  # written with another schema id
    values = [_framed(_encode(text, r), other if j in odd else header, data.draw(st.binary(max_size=300)))
              for j, r in enumerate(records)]

    def slow(buf: bytes, p: int) -> dict[str, Any]:
        assert buf[p:p + 5] == other
        return {"slow": _fastavro(text, buf[p + 5:])}

    def height_of(ev: dict[str, Any]) -> int:
        return -1 if "slow" in ev else 0

    decode = compile_chunk_decoder(text, spec, height, header, slow, height_of)
    out: list[Any] = []
    decode(values, 40, 3, out)
    assert [(i, off) for _, i, off, _ in out] == [(3, 40 + j) for j in range(len(records))]
    for j, ((h, _, _, ev), rec) in enumerate(zip(out, records)):
        if j in odd:
            assert h == -1 and ev == {"slow": rec}
            continue
        want = _fastavro(text, _encode(text, rec))
        assert orjson.dumps(ev) == orjson.dumps(_project(want, spec))
        node = want
        for part in height.split("."):
            node = node[part]
        assert h == node


def test_chunk_decoders_equal_the_codec_for_every_projection_on_the_log(history) -> None:
    """On a real log, every topic decoded in chunks with each projection's fields (and with all of
    them) equals the codec's decode on those fields."""
    _, chain = history
    dec = EventDecoder(chain.codec)
    raw = chain.log.raw()
    checked = 0
    for mods in [[m] for m in projections.ALL.values()] + [list(projections.ALL.values())]:
        fields = _fields(mods)
        for topic in {t for m in mods for t in m.TOPICS}:
            spec = fields.get(topic)
            spec = None if spec is None else merge_specs(spec, HEIGHT_FIELDS.get(topic, {"stamp_height": None}))
            chunk = dec.for_chunk(topic, spec)
            for p in range(len(chain.log.end_offsets(topic))):
                recs = list(chain.log.scan(topic, p))
                values = [raw[K.record_key(topic, p, r.offset)] for r in recs]
                out: list[Any] = []
                chunk(values, 0, p, out)
                for (h, i, off, ev), rec in zip(out, recs, strict=True):
                    want = chain.codec.decode(topic, rec.value)
                    assert (i, off) == (p, rec.offset) and h == event_height(topic, want)
                    assert orjson.dumps(ev) == orjson.dumps(_project(want, spec))
                    checked += 1
    assert checked > 2000


def test_arrays_written_in_sized_blocks_decode_and_skip() -> None:
    """Avro lets a writer give a block's byte size (negative count): read and skip both work."""
    text = SCHEMAS["BlockAdmitted"]
    hdr = {"chain_id": "c", "height": 7, "prev_hash": "p", "timestamp": 1, "producer": "x", "tx_root": "r",
           "tx_count": 3}
    rec = {"header": hdr, "hash": "h", "pubkey": "k", "signature": "s", "txids": ["t1", "t2", "t3"],
           "fees": 5, "reward": 9, "evicted": ["e"]}
    plain = _encode(text, rec)
    items = b"".join(_encode('"string"', t) for t in rec["txids"])
    sized = _encode('"long"', -3) + _encode('"long"', len(items)) + items + b"\x00"
    plain_txids = _encode('"long"', 3) + items + b"\x00"
    assert plain_txids in plain
    raw = plain.replace(plain_txids, sized)
    assert _fastavro(text, raw) == rec
    assert compile_decoder(text)(raw, 0) == rec
    spec = spec_of(["header.height", "fees", "evicted"])
    assert compile_decoder(text, spec)(raw, 0) == {"header": {"height": 7}, "fees": 5, "evicted": ["e"]}


def test_specs_merge_to_the_union_of_fields() -> None:
    a = spec_of(["body.sender", "height"])
    b = spec_of(["body", "txid"])
    assert merge_specs(a, b) == {"body": None, "height": None, "txid": None}
    assert merge_specs(a, spec_of(["body.nonce"])) == {"body": {"sender": None, "nonce": None}, "height": None}
    assert merge_specs(a, None) is None
    assert spec_of(["body", "body.sender"]) == {"body": None}


# -- the merge ------------------------------------------------------------------------------------
TOPICS = {T.SHARES: 3, T.READINGS: 2, T.PAYOUTS: 1}


def _fill(log: Any, rng: random.Random) -> dict[tuple[str, int], list[int]]:
    """Records whose heights never fall along a partition; returns the heights per partition."""
    log.create_topics(TOPICS)
    heights: dict[tuple[str, int], list[int]] = {}
    for topic, n in TOPICS.items():
        for p in range(n):
            h, hs = 0, []
            for _ in range(rng.randint(0, 300)):
                h += rng.choice([0, 0, 0, 1, 2, 40])  # long runs of one height, jumps
                hs.append(h)
            log.append([Record(topic, b"k", orjson.dumps({"stamp_height": x, "i": i}), 0, p)
                        for i, x in enumerate(hs)])
            heights[(topic, p)] = hs
    return heights


def _reference(feed: Feed, heights: dict[tuple[str, int], list[int]], start: dict, ends: dict) -> list[tuple]:
    """A heap merge by (height, partition, offset) of everything from start to the ends."""
    merged = [(h, feed.index[tp], off) for tp, hs in heights.items()
              for off, h in enumerate(hs) if start.get(tp, 0) <= off < ends[tp[0]][tp[1]]]
    heapq.heapify(merged)
    return [heapq.heappop(merged) for _ in range(len(merged))]


@pytest.mark.parametrize("backend", ["embedded", "memory"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_merge_is_a_heap_merge_however_batched(backend: str, tmp_path_factory: Any, seed: int) -> None:
    rng = random.Random(seed)
    log = EmbeddedLog(str(tmp_path_factory.mktemp("log")), sync=False) if backend == "embedded" else MemoryLog()
    try:
        heights = _fill(log, rng)
        start = {tp: rng.randint(0, len(hs)) if rng.random() < 0.3 else 0 for tp, hs in heights.items()}
        feed = Feed(log, lambda topic, raw: orjson.loads(raw), list(TOPICS), start, chunk=rng.choice([1, 3, 50, 2000]))
        full = {t: log.end_offsets(t) for t in TOPICS}
        # first up to some earlier ends (as with ``until``), then to the log's end
        early = {t: [rng.randint(start.get((t, p), 0), e) for p, e in enumerate(ends)] for t, ends in full.items()}
        for ends in (early, full):
            got: list[tuple] = []
            while True:
                entries = feed.take_raw(rng.choice([1, 7, 100, 10_000]), ends)
                if not entries:
                    break
                for h, i, off, ev in entries:
                    assert ev == {"stamp_height": h, "i": off}
                    got.append((h, i, off))
            assert got == _reference(feed, heights, start, ends)
            assert feed.aligned({tp: max(start.get(tp, 0), ends[tp[0]][tp[1]]) for tp in heights})
            start = {tp: max(start.get(tp, 0), ends[tp[0]][tp[1]]) for tp in heights}
    finally:
        if backend == "embedded":
            log.close()


def test_take_and_select_give_positions_and_heights() -> None:
    log = MemoryLog()
    heights = _fill(log, random.Random(3))
    feed = Feed(log, lambda topic, raw: orjson.loads(raw), list(TOPICS), {})
    ends = {t: log.end_offsets(t) for t in TOPICS}
    entries = feed.take_raw(50, ends)
    events, positions, height = feed.select(entries, (T.SHARES,))
    want = [e for e in entries if e[1] < TOPICS[T.SHARES]]
    assert [ev for _, ev in events] == [e[3] for e in want]
    assert all(topic == T.SHARES for topic, _ in events)
    assert height == (want[-1][0] if want else -1)
    for (t, p), off in positions.items():
        assert t == T.SHARES and off == max(e[2] for e in want if e[1] == p) + 1
    # a projection that has folded part of what was taken gets only the rest
    if want:
        ahead = {(T.SHARES, want[0][1]): want[0][2] + 1}
        events2, _, _ = feed.select(entries, (T.SHARES,), ahead)
        assert len(events2) == len(want) - 1
    assert heights


# -- decoding through the codec -------------------------------------------------------------------
@pytest.fixture(scope="module")
def history(tmp_path_factory):
    genesis, keys = make_genesis(9, wallets=12)
    lines = list(generate(genesis, keys, events=2000, seed=9))
    d = tmp_path_factory.mktemp("hist")
    cfg = Config(data_dir=str(d), sync=False)
    init_chain(cfg, genesis)
    chain = open_chain(cfg)
    assert chain.admitter.admit(lines).rejected == 0
    yield cfg, chain
    chain.close()


def test_event_decoder_equals_the_codec_on_the_log(history) -> None:
    _, chain = history
    dec = EventDecoder(chain.codec)
    n = 0
    for topic in T.EVENT_TOPICS:
        if topic not in chain.log.topics():
            continue
        fn = dec.for_topic(topic)
        for p in range(len(chain.log.end_offsets(topic))):
            for rec in chain.log.scan(topic, p):
                want = chain.codec.decode(topic, rec.value)
                got = fn(b"xy" + rec.value, 2)
                assert orjson.dumps(got) == orjson.dumps(want)
                n += 1
    assert n > 1000


def test_other_schema_versions_go_through_the_codec(history) -> None:
    _, chain = history
    seen = []

    class Spy:
        def __init__(self, codec):
            self.codec = codec

        def __call__(self, topic, raw):
            seen.append(raw[:5])
            return self.codec.decode(topic, raw)

    dec = EventDecoder(Spy(chain.codec))  # a plain callable: every value goes through it
    rec = next(chain.log.scan(T.BLOCKS, 0))
    assert dec.for_topic(T.BLOCKS)(rec.value, 0) == chain.codec.decode(T.BLOCKS, rec.value)
    assert seen == [rec.value[:5]]
    fast = EventDecoder(chain.codec).for_topic(T.BLOCKS)
    other = b"\x00\x00\x00\x7f\x7f" + rec.value[5:]  # an unknown schema id: the codec's error
    with pytest.raises(Exception, match="schema"):
        fast(other, 0)


# -- a runner's projections sharing one feed ------------------------------------------------------
def _digests(chain, d: str, **kw) -> dict[str, str]:
    r = Runner(chain.log, chain.codec, chain.genesis, d, **kw)
    try:
        r.catch_up()
        return r.digests()
    finally:
        r.close()


def test_projections_at_different_positions_share_a_feed(history, tmp_path) -> None:
    _, chain = history
    ref = _digests(chain, str(tmp_path / "ref"))
    assert set(ref) == set(projections.ALL)
    d = str(tmp_path / "mixed")
    # balances ahead of the others, payouts partway, chainstate and energy not started
    r = Runner(chain.log, chain.codec, chain.genesis, d, names=["balances"], batch=900)
    r.step()
    r.step()
    r.close()
    r = Runner(chain.log, chain.codec, chain.genesis, d, names=["payouts", "balances"], batch=500)
    r.step()
    r.close()
    assert _digests(chain, d, batch=700) == ref
    # one handle folded on its own (fold_batch) between shared steps
    d2 = str(tmp_path / "interleaved")
    r = Runner(chain.log, chain.codec, chain.genesis, d2, batch=400)
    try:
        r.step()
        r.fold_batch(r.handles["chainstate"])
        r.fold_batch(r.handles["chainstate"])
        r.step()
        r.catch_up()
        assert r.digests() == ref
    finally:
        r.close()


def test_every_projection_declares_fields_its_fold_reads(history, tmp_path) -> None:
    """Folding each projection alone, from events decoded with only its FIELDS, gives the state of
    a fold of whole events (a field left out would raise KeyError)."""
    _, chain = history
    for name, module in projections.ALL.items():
        for t in getattr(module, "FIELDS", {}):
            assert t in module.TOPICS, (name, t)
        alone = _digests(chain, str(tmp_path / name), names=[name], batch=333)
        whole = Runner(chain.log, chain.codec.decode, chain.genesis, str(tmp_path / f"{name}-whole"), names=[name])
        try:
            whole.catch_up()
            assert whole.digests() == alone, name
        finally:
            whole.close()


@pytest.mark.parametrize("varint", [b"\xff" * 9 + b"\x02", b"\xff" * 10 + b"\x01"])
def test_a_long_wider_than_64_bits_is_refused_not_decoded_out_of_range(varint):
    """A 10-byte varint whose last byte is above 1, or an 11-byte one, is no Avro long: the
    generated decoder gave 2^64 - 1 and -2^70 (fastavro wraps them); it refuses them now, and
    the feed names such a record (UndecodableRecordError)."""
    from ledgerlog.streams.feed import compile_decoder

    schema = json.dumps({"type": "record", "name": "R", "fields": [{"name": "n", "type": "long"}]})
    with pytest.raises(ValueError, match="64 bits"):
        compile_decoder(schema)(varint, 0)
    assert compile_decoder(schema)(b"\xfe" + b"\xff" * 8 + b"\x01", 0) == {"n": 2**63 - 1}
