"""The Avro schemas: protocol field order, names and docs, and evolution against every released
version in schemas/registered/. A schema change that is not backward compatible fails here."""
from __future__ import annotations

import copy
import io
import json
import re
from importlib import resources
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from ledgerlog.engine import avro
from ledgerlog.engine.admission.lines import BODY_FIELDS
from ledgerlog.engine.topics import EVENT_SCHEMA

ROOT = resources.files("ledgerlog.schemas")
NAMES = sorted(p.name[:-len(".avsc")] for p in ROOT.iterdir() if p.name.endswith(".avsc"))

#: PROTOCOL.md §2, transcribed: the normative field order and Avro types of the signed bodies.
PROTOCOL_BODIES: dict[str, list[tuple[str, str]]] = {
    "TransactionBody": [("chain_id", "string"), ("sender", "string"), ("recipient", "string"),
                        ("amount", "long"), ("fee", "long"), ("nonce", "long"), ("timestamp", "long"),
                        ("memo", "string")],
    "BlockHeader": [("chain_id", "string"), ("height", "long"), ("prev_hash", "string"),
                    ("timestamp", "long"), ("producer", "string"), ("tx_root", "string"),
                    ("tx_count", "int")],
    "ReadingBody": [("chain_id", "string"), ("meter_id", "string"), ("provider_id", "string"),
                    ("milli_kwh", "long"), ("timestamp", "long")],
    "ProviderBody": [("chain_id", "string"), ("provider_id", "string"), ("owner", "string"),
                     ("meter_id", "string"), ("stake", "long"), ("price_per_kwh", "long"),
                     ("timestamp", "long")],
    "SettlementBody": [("chain_id", "string"), ("settlement_id", "string"), ("provider_id", "string"),
                       ("milli_kwh", "long"), ("amount", "long"), ("timestamp", "long")],
    "PayoutBody": [("chain_id", "string"), ("payout_id", "string"), ("address", "string"), ("amount", "long"),
                   ("round_height", "long"), ("timestamp", "long")],
    # docs/PROTOCOL.md §8, the key rotation extension
    "KeyRotationBody": [("chain_id", "string"), ("role", "string"), ("old_pubkey", "string"),
                        ("new_pubkey", "string"), ("timestamp", "long")],
    # docs/PROTOCOL.md §8.5, governance parameters
    "GovernanceBody": [("chain_id", "string"), ("parameter", "string"), ("value", "long"), ("timestamp", "long")],
}


def raw(name: str) -> dict[str, Any]:
    return json.loads((ROOT / f"{name}.avsc").read_text())


def current(name: str) -> dict[str, Any]:
    return json.loads(avro.schema_json(name))


def fields(schema: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(f["name"], f["type"]) for f in schema["fields"]]


def sample(schema: Any) -> Any:
    """A value of an (inlined) schema, for a real write-old/read-new round trip."""
    if isinstance(schema, list):
        return sample(schema[0])
    kind = schema["type"] if isinstance(schema, dict) else schema
    if kind == "record":
        return {f["name"]: sample(f["type"]) for f in schema["fields"]}
    if kind == "array":
        return [sample(schema["items"])]
    if kind == "map":
        return {"k": sample(schema["values"])}
    if kind == "enum":
        return schema["symbols"][0]
    return {"string": "s", "bytes": b"b", "long": 1 << 40, "int": 7, "boolean": True, "double": 0.5,
            "float": 0.5, "null": None}[kind]


# -- the set of schemas -------------------------------------------------------------------


def test_the_schema_files_are_the_bodies_and_events():
    assert set(NAMES) == set(avro.BODY_NAMES) | set(avro.EVENT_NAMES) | set(avro.HEAD_NAMES)
    assert set(EVENT_SCHEMA.values()) == set(avro.EVENT_NAMES)
    assert set(PROTOCOL_BODIES) == set(avro.BODY_NAMES)


def test_registered_holds_only_contiguous_versions_of_known_schemas():
    files = sorted(p.name for p in (ROOT / "registered").iterdir() if p.name.endswith(".avsc"))
    for f in files:
        m = re.fullmatch(r"(\w+)\.v([1-9]\d*)\.avsc", f)
        assert m and m.group(1) in NAMES, f"stray file schemas/registered/{f}"
    for name in NAMES:
        versions = avro.registered_versions(name)
        assert versions, f"{name} has no released version in schemas/registered/"
        assert len(versions) == sum(1 for f in files if f.startswith(name + ".v")), \
            f"{name}: versions in schemas/registered/ must be numbered 1, 2, 3, ... without gaps"


# -- evolution ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_current_schema_reads_every_registered_version(name):
    now = current(name)
    for v, old in enumerate(avro.registered_versions(name), 1):
        problems = avro.check_backward_compatible(now, old)
        assert problems == [], f"{name} is not backward compatible with v{v}: {problems}"
        # and fastavro agrees: data written with the released version decodes with the current one
        buf = io.BytesIO()
        schemaless_writer(buf, parse_schema(copy.deepcopy(old)), sample(old))
        schemaless_reader(io.BytesIO(buf.getvalue()), parse_schema(copy.deepcopy(old)),
                          parse_schema(copy.deepcopy(now)))


@pytest.mark.parametrize("name", NAMES)
def test_current_schema_is_released_or_a_newer_compatible_version(name):
    """Either the latest released version is the current schema, or the current one is a newer,
    unreleased change (compatible, per the test above) — never a step back to an older version."""
    now = current(name)
    versions = avro.registered_versions(name)
    if now == versions[-1]:
        return
    assert now not in versions[:-1], f"{name} went back to an older released version"


@pytest.mark.parametrize("name", sorted(PROTOCOL_BODIES))
def test_signed_bodies_never_change(name):
    """Signatures and ids are over the body bytes: every released version and the current schema
    have exactly the fields of PROTOCOL.md §2, in order, with no defaults."""
    want = PROTOCOL_BODIES[name]
    assert fields(raw(name)) == want
    for old in avro.registered_versions(name):
        assert fields(old) == want
    assert all("default" not in f for f in raw(name)["fields"])


@pytest.mark.parametrize("name", sorted(PROTOCOL_BODIES))
def test_admission_parses_bodies_in_protocol_order(name):
    assert [f for f, _ in BODY_FIELDS[name]] == [f for f, _ in PROTOCOL_BODIES[name]]
    for (_, kind), (_, avro_type) in zip(BODY_FIELDS[name], PROTOCOL_BODIES[name]):
        assert (kind in ("long", "int")) == (avro_type in ("long", "int"))
        assert kind != "int" or avro_type == "int"


# -- names and docs -----------------------------------------------------------------------


def _records(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [r for n in node for r in _records(n)]
    if isinstance(node, dict):
        found = [node] if node.get("type") == "record" else []
        for f in node.get("fields", []):
            found += _records(f["type"])
        return found + _records(node.get("items")) + _records(node.get("values"))
    return []


@pytest.mark.parametrize("name", NAMES)
def test_names_namespace_and_docs(name):
    for schema in [raw(name), *avro.registered_versions(name)]:
        assert schema["type"] == "record"
        assert schema["name"] == name
        for rec in _records(schema):
            assert rec.get("namespace", avro.NAMESPACE) == avro.NAMESPACE, rec["name"]
            assert isinstance(rec.get("doc"), str) and rec["doc"].strip(), f"{rec['name']} has no doc"
            for f in rec["fields"]:
                where = f"{rec['name']}.{f['name']}"
                assert isinstance(f.get("doc"), str) and f["doc"].strip(), f"{where} has no doc"
    assert raw(name)["namespace"] == avro.NAMESPACE
    for f in raw(name)["fields"]:
        if isinstance(f["type"], str) and "." in f["type"]:
            assert f["type"].startswith(avro.NAMESPACE + ".") and f["type"].split(".")[-1] in NAMES


# -- the guard itself ---------------------------------------------------------------------

BASE = {"type": "record", "name": "R", "namespace": "ledgerlog.v1", "fields": [
    {"name": "s", "type": "string"},
    {"name": "n", "type": "long"},
    {"name": "i", "type": "int"},
    {"name": "u", "type": ["null", "string"], "default": None},
    {"name": "a", "type": {"type": "array", "items": "string"}},
    {"name": "m", "type": {"type": "map", "values": "long"}},
    {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}},
    {"name": "h", "type": {"type": "record", "name": "H", "fields": [{"name": "height", "type": "long"}]}},
]}


def edit(path: str, value: Any | None = None, *, drop: bool = False, add: dict | None = None) -> dict:
    """BASE with field ``path`` (or the record's name when path is "") changed."""
    s = copy.deepcopy(BASE)
    if add is not None:
        s["fields"].append(add)
        return s
    if path == "":
        s["name"] = value
        return s
    for f in s["fields"]:
        if f["name"] == path:
            if drop:
                s["fields"].remove(f)
            else:
                f["type"] = value
    return s


INCOMPATIBLE = {
    "field added without default": edit("", add={"name": "x", "type": "long"}),
    "string to long": edit("s", "long"),
    "long to int": edit("n", "int"),
    "int to string": edit("i", "string"),
    "union branch removed": edit("u", "string"),
    "array items string to long": edit("a", {"type": "array", "items": "long"}),
    "map values long to int": edit("m", {"type": "map", "values": "int"}),
    "enum symbol removed": edit("e", {"type": "enum", "name": "E", "symbols": ["X"]}),
    "nested field long to int": edit("h", {"type": "record", "name": "H",
                                           "fields": [{"name": "height", "type": "int"}]}),
    "nested field added without default": edit("h", {"type": "record", "name": "H", "fields": [
        {"name": "height", "type": "long"}, {"name": "round", "type": "long"}]}),
    "record renamed": edit("", "Renamed"),
    "nested record renamed": edit("h", {"type": "record", "name": "Other",
                                        "fields": [{"name": "height", "type": "long"}]}),
    "array to map": edit("a", {"type": "map", "values": "string"}),
}

COMPATIBLE = {
    "unchanged": copy.deepcopy(BASE),
    "field added with default": edit("", add={"name": "x", "type": "long", "default": 0}),
    "field removed": edit("s", drop=True),
    "int to long": edit("i", "long"),
    "long to double": edit("n", "double"),
    "string to union": edit("s", ["null", "string"]),
    "enum symbol added": edit("e", {"type": "enum", "name": "E", "symbols": ["X", "Y", "Z"]}),
    "record renamed with alias": {**copy.deepcopy(BASE), "name": "R2", "aliases": ["R"]},
    "docs added": {**copy.deepcopy(BASE), "doc": "now documented"},
}


@pytest.mark.parametrize("change", sorted(INCOMPATIBLE))
def test_guard_refuses_incompatible_edits(change):
    assert avro.check_backward_compatible(INCOMPATIBLE[change], BASE) != []


@pytest.mark.parametrize("change", sorted(COMPATIBLE))
def test_guard_accepts_compatible_edits(change):
    new = COMPATIBLE[change]
    assert avro.check_backward_compatible(new, BASE) == []
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(copy.deepcopy(BASE)), sample(BASE))
    schemaless_reader(io.BytesIO(buf.getvalue()), parse_schema(copy.deepcopy(BASE)),
                      parse_schema(copy.deepcopy(new)))


@pytest.mark.parametrize("name", NAMES)
def test_guard_refuses_edits_of_the_real_schemas(name):
    now = current(name)
    first = now["fields"][0]
    retyped = {**now, "fields": [{**first, "type": "boolean"}, *now["fields"][1:]]}
    grown = {**now, "fields": [*now["fields"], {"name": "added_later", "type": "long", "doc": "x"}]}
    assert avro.check_backward_compatible(retyped, avro.registered_versions(name)[-1])
    assert avro.check_backward_compatible(grown, avro.registered_versions(name)[-1])
