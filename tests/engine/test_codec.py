"""Confluent wire format and the schema registry kept on the ``_schemas`` topic."""
from __future__ import annotations

import io
import json
import struct

import orjson
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from ledgerlog.engine import avro
from ledgerlog.engine import topics as T
from ledgerlog.engine.codec import Codec, Registry
from ledgerlog.engine.errors import SchemaError
from ledgerlog.engine.log import MemoryLog
from ledgerlog.engine.log.base import Record
from ledgerlog.engine.log.embedded import EmbeddedLog

SUBJECT = "test-value"
V1 = {"type": "record", "name": "Thing", "namespace": "ledgerlog.test", "doc": "A test record.",
      "fields": [{"name": "id", "type": "string", "doc": "Id."},
                 {"name": "n", "type": "long", "doc": "Count."}]}
V2 = {**V1, "fields": [*V1["fields"], {"name": "note", "type": "string", "doc": "New.", "default": "none"}]}

SHARE = {"share_id": "ab" * 32, "worker": "cd" * 20 + ".rig", "address": "cd" * 20, "job_id": "j1",
         "height": 3, "difficulty": 1024, "accepted": True, "timestamp": 1_700_000_000_000,
         "stamp_height": 2}


def text(schema: dict) -> str:
    return json.dumps(schema, separators=(",", ":"))


@pytest.fixture
def log() -> MemoryLog:
    lg = MemoryLog()
    lg.create_topics(T.DEFAULT_PARTITIONS)
    return lg


def schemas_records(log) -> list[dict]:
    return [orjson.loads(r.value) for r in log.scan(T.SCHEMAS, 0)]


def old_wire(schema_id: int, schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    schemaless_writer(buf, parse_schema(schema), record)
    return buf.getvalue()


# -- wire format --------------------------------------------------------------------------


def test_wire_format_is_magic_zero_then_big_endian_schema_id(log):
    codec = Codec.register_all(log)
    value = codec.encode(T.SHARES, SHARE)
    sid = codec.schema_id(T.SHARES)
    assert value[0] == 0
    assert struct.unpack(">I", value[1:5])[0] == sid
    assert sid == codec.registry.latest(T.subject_of(T.SHARES)).id
    assert value[5:] == avro.encode("ShareSubmitted", SHARE)  # plain schemaless Avro after the header
    assert codec.decode(T.SHARES, value) == SHARE


def test_every_topic_has_its_own_registered_id(log):
    codec = Codec.register_all(log)
    ids = {t: codec.schema_id(t) for t in T.EVENT_TOPICS}
    assert len(set(ids.values())) == len(ids)
    for topic, sid in ids.items():
        sv = codec.registry.by_id[sid]
        assert sv.subject == f"{topic}-value"
        assert json.loads(sv.schema)["name"] == T.EVENT_SCHEMA[topic]


@pytest.mark.parametrize("value", [b"", b"\x00\x00\x00", b"\x01" + SHARE["job_id"].encode() * 3])
def test_values_not_in_wire_format_are_schema_errors(log, value):
    codec = Codec.register_all(log)
    with pytest.raises(SchemaError):
        codec.decode(T.SHARES, value)


def test_unknown_schema_id_is_a_schema_error(log):
    codec = Codec.register_all(log)
    value = codec.encode(T.SHARES, SHARE)
    with pytest.raises(SchemaError):
        codec.decode(T.SHARES, value[:1] + struct.pack(">I", 999) + value[5:])
    with pytest.raises(SchemaError):
        codec.registry.parsed(0)


def test_codec_needs_registered_schemas(log):
    with pytest.raises(SchemaError):
        Codec(Registry(log))


# -- registry -----------------------------------------------------------------------------


def test_registry_is_persisted_on_the_schemas_topic(log):
    reg = Registry(log)
    sv = reg.register(SUBJECT, text(V1))
    assert (sv.subject, sv.version, sv.id) == (SUBJECT, 1, 1)
    [rec] = schemas_records(log)
    assert rec == {"subject": SUBJECT, "version": 1, "id": 1, "schema": text(V1), "deleted": False}
    again = Registry(log)
    assert again.latest(SUBJECT) == sv
    assert again.by_id == {1: sv}
    assert again.parsed(1)["name"] == "ledgerlog.test.Thing"


def test_registry_survives_reopen_of_the_embedded_log(tmp_path):
    path = str(tmp_path / "log")
    with EmbeddedLog(path) as lg:
        lg.create_topics(T.DEFAULT_PARTITIONS)
        codec = Codec.register_all(lg)
        ids = {t: codec.schema_id(t) for t in T.EVENT_TOPICS}
        value = codec.encode(T.SHARES, SHARE)
    with EmbeddedLog(path, read_only=True) as lg:
        reread = Codec(Registry(lg))
        assert {t: reread.schema_id(t) for t in T.EVENT_TOPICS} == ids
        assert reread.decode(T.SHARES, value) == SHARE


def test_register_all_twice_writes_nothing_new(log):
    first = Codec.register_all(log)
    end = log.end_offsets(T.SCHEMAS)
    second = Codec.register_all(log)
    assert log.end_offsets(T.SCHEMAS) == end == [len(T.RECORD_SCHEMA)]
    assert {t: second.schema_id(t) for t in T.EVENT_TOPICS} == {t: first.schema_id(t) for t in T.EVENT_TOPICS}


def test_same_schema_twice_gets_the_same_id(log):
    reg = Registry(log)
    a = reg.register(SUBJECT, text(V1))
    b = reg.register(SUBJECT, json.dumps(V1, indent=2))  # same schema, other spelling
    assert a.id == b.id and a.version == b.version
    assert log.end_offsets(T.SCHEMAS) == [1]


def test_compatible_new_version_gets_a_new_id_and_old_data_reads_into_it(log):
    reg = Registry(log)
    v1 = reg.register("other-value", text({**V1, "name": "Other"}))
    s1 = reg.register(SUBJECT, text(V1))
    s2 = reg.register(SUBJECT, text(V2))
    assert (s2.version, s2.id) == (2, 3)
    assert s2.id not in (v1.id, s1.id)
    assert [v.version for v in Registry(log).by_subject[SUBJECT]] == [1, 2]
    # a reader on the new version decodes data written with the old one, default filled in
    data = old_wire(s1.id, V1, {"id": "x", "n": 7})
    got = schemaless_reader(io.BytesIO(data[5:]), reg.parsed(s1.id), reg.parsed(s2.id))
    assert got == {"id": "x", "n": 7, "note": "none"}


def test_codec_decodes_an_older_event_version_into_the_current_schema(log):
    """BlockAdmitted gained ``evicted`` (default []): events written before decode with it."""
    current = json.loads(avro.schema_json("BlockAdmitted"))
    old = {**current, "fields": [f for f in current["fields"] if f["name"] != "evicted"]}
    subject = T.subject_of(T.BLOCKS)
    old_sv = Registry(log).register(subject, text(old))
    codec = Codec.register_all(log)
    assert codec.schema_id(T.BLOCKS) != old_sv.id
    assert codec.registry.latest(subject).version == 2
    header = {"chain_id": "c", "height": 1, "prev_hash": "0" * 64, "timestamp": 5, "producer": "a" * 40,
              "tx_root": "0" * 64, "tx_count": 0}
    event = {"header": header, "hash": "1" * 64, "pubkey": "2" * 64, "signature": "3" * 128,
             "txids": [], "fees": 0, "reward": 50}
    assert codec.decode(T.BLOCKS, old_wire(old_sv.id, old, event)) == {**event, "evicted": []}
    new_value = codec.encode(T.BLOCKS, {**event, "evicted": ["4" * 64]})
    assert codec.decode(T.BLOCKS, new_value)["evicted"] == ["4" * 64]


INCOMPATIBLE = {
    "new field without default": {**V1, "fields": [*V1["fields"],
                                                   {"name": "x", "type": "long", "doc": "X."}]},
    "string to long": {**V1, "fields": [{"name": "id", "type": "long", "doc": "Id."}, V1["fields"][1]]},
    "long to int": {**V1, "fields": [V1["fields"][0], {"name": "n", "type": "int", "doc": "Count."}]},
    "renamed field": {**V1, "fields": [V1["fields"][0], {"name": "count", "type": "long", "doc": "C."}]},
}


@pytest.mark.parametrize("change", sorted(INCOMPATIBLE))
def test_incompatible_change_is_refused_and_writes_nothing(log, change):
    reg = Registry(log)
    sv = reg.register(SUBJECT, text(V1))
    before = schemas_records(log)
    with pytest.raises(SchemaError):
        reg.register(SUBJECT, text(INCOMPATIBLE[change]))
    assert schemas_records(log) == before
    fresh = Registry(log)
    assert fresh.latest(SUBJECT) == sv == reg.latest(SUBJECT)
    assert list(fresh.by_id) == [sv.id]


def test_a_new_version_must_be_compatible_with_every_earlier_one(log):
    """v3 keeps v2's field but drops its default: v2 data reads, v1 data would not."""
    reg = Registry(log)
    reg.register(SUBJECT, text(V1))
    reg.register(SUBJECT, text(V2))
    v3 = {**V1, "fields": [*V1["fields"], {"name": "note", "type": "string", "doc": "New."}]}
    assert avro.check_backward_compatible(v3, V2) == []
    with pytest.raises(SchemaError):
        reg.register(SUBJECT, text(v3))
    assert log.end_offsets(T.SCHEMAS) == [2]


# -- a reader newer than the log's registered schema (a worker or CLI upgraded before the node) ----

def _older_blocks_log() -> tuple[MemoryLog, int, dict]:
    """A log as an older release left it: BlockAdmitted registered without ``evicted``."""
    log = MemoryLog()
    log.create_topics(T.DEFAULT_PARTITIONS)
    reg = Registry(log)
    current = json.loads(avro.schema_json("BlockAdmitted"))
    old = {**current, "fields": [f for f in current["fields"] if f["name"] != "evicted"]}
    for topic, name in T.RECORD_SCHEMA.items():
        reg.register(T.subject_of(topic), json.dumps(old) if name == "BlockAdmitted" else avro.schema_json(name))
    return log, reg.latest(T.subject_of(T.BLOCKS)).id, old


def test_a_read_only_codec_newer_than_the_log_resolves_old_records_into_the_code_s_schema():
    """It took the log's newest id as the code's own: old-layout records came back without the
    fields the code added (no defaults; chainstate's fold reads ev['evicted']), through the
    generated decoders too, and encode framed the new layout with the old id."""
    from ledgerlog.streams.feed import EventDecoder

    log, old_id, old = _older_blocks_log()
    hdr = {"chain_id": "c", "height": 1, "prev_hash": "0" * 64, "timestamp": 5, "producer": "a" * 40,
           "tx_root": "0" * 64, "tx_count": 0}
    ev = {"header": hdr, "hash": "1" * 64, "pubkey": "2" * 64, "signature": "3" * 128, "txids": [], "fees": 0,
          "reward": 50}
    value = old_wire(old_id, old, ev)
    ro = Codec(Registry(log))  # a read-only open: nothing registered
    assert ro.decode(T.BLOCKS, value)["evicted"] == []
    assert EventDecoder(ro).for_topic(T.BLOCKS)(value, 0)["evicted"] == []
    with pytest.raises(SchemaError, match="not registered"):
        ro.encode(T.BLOCKS, {**ev, "evicted": []})
    assert ro.decode(T.SHARES, ro.encode(T.SHARES, SHARE)) == SHARE  # unchanged topics go on as before


def test_foreign_records_on_the_schemas_topic_are_skipped():
    """Confluent's registry shares the `_schemas` name: its NOOP, CONFIG and DELETE records, and
    tombstones or deleted versions, stopped the registry from loading (JSONDecodeError, TypeError)."""
    log = MemoryLog()
    log.create_topics(T.DEFAULT_PARTITIONS)
    Codec.register_all(log)
    log.append([Record(T.SCHEMAS, b'{"keytype":"NOOP","magic":0}', b"", 0, 0),
                Record(T.SCHEMAS, b'{"keytype":"CONFIG","subject":null,"magic":0}',
                       b'{"compatibilityLevel":"BACKWARD"}', 0, 0),
                Record(T.SCHEMAS, b'{"keytype":"DELETE_SUBJECT","subject":"x-value","magic":0}',
                       b'{"subject":"x-value","version":1}', 0, 0),
                Record(T.SCHEMAS, b'{"keytype":"SCHEMA","subject":"y-value","version":1,"magic":1}',
                       b'{"subject":"y-value","version":1,"id":999,"schema":"\\"string\\"","deleted":true}', 0, 0)])
    reg = Registry(log)
    assert "x-value" not in reg.by_subject and 999 not in reg.by_id
    assert reg.latest(T.subject_of(T.SHARES)) is not None


def test_a_value_framed_with_another_topic_s_id_is_refused_whatever_was_decoded_before():
    """The reader cache was keyed by schema id alone: after a share was decoded, a mempool record
    framed with the shares id decoded as a share."""
    log = MemoryLog()
    log.create_topics(T.DEFAULT_PARTITIONS)
    codec = Codec.register_all(log)
    share = codec.encode(T.SHARES, SHARE)
    fresh = Codec(Registry(log))
    with pytest.raises(Exception) as first:
        fresh.decode(T.MEMPOOL, share)
    fresh.decode(T.SHARES, share)
    with pytest.raises(type(first.value)):
        fresh.decode(T.MEMPOOL, share)


def test_a_field_renamed_with_an_alias_is_compatible_and_reads_old_data():
    """A reader that renames ``n`` to ``count`` with ``"aliases": ["n"]`` reads old data (Avro's
    rule, fastavro's too); the check said 'new field without a default' and refused it."""
    renamed = {**V1, "fields": [V1["fields"][0], {"name": "count", "type": "long", "aliases": ["n"], "doc": "Count."}]}
    assert avro.check_backward_compatible(renamed, V1) == []
    data = old_wire(1, V1, {"id": "x", "n": 7})
    assert schemaless_reader(io.BytesIO(data[5:]), parse_schema(V1), parse_schema(renamed)) == {"id": "x", "count": 7}
    assert avro.check_backward_compatible({**V1, "fields": [V1["fields"][0], {**renamed["fields"][1], "aliases": []}]},
                                          V1) == ["count: new field without a default"]
