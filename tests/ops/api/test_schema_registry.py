"""Confluent's Schema Registry API over ``_schemas`` (ops/api/registry.py), against a live node on a
loopback socket: confluent-kafka's ``SchemaRegistryClient`` (subjects, versions, lookup,
compatibility, ids, config, mode, Confluent's error codes, writes refused) and its
``AvroDeserializer``; then each route over raw HTTP, with malformed, huge and mistyped bodies
(400/413/415/422, always with ``error_code``, never a 5xx) and /openapi.json."""
from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_writer
from servers import serve_app

from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import error_class_for
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api import registry
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.limits import HttpLimits
from ledgerlog.ops.api.routes import ROUTES
from ledgerlog.ops.node.lifecycle import Node

MEDIA = "application/vnd.schemaregistry.v1+json"
SUBJECT = "test.things-value"
MAX_BODY = 64 * 1024


def record(*fields: dict[str, Any]) -> str:
    return json.dumps({"type": "record", "name": "Thing", "namespace": "test", "fields": list(fields)})


V1 = record({"name": "id", "type": "string"})
V2 = record({"name": "id", "type": "string"}, {"name": "size", "type": "long", "default": 0})
#: reads what V1 and V2 wrote: a new field with a default, and size promoted to double
COMPATIBLE = record({"name": "id", "type": "string"}, {"name": "size", "type": "double", "default": 0},
                    {"name": "note", "type": ["null", "string"], "default": None})
#: reads what V1 wrote, not what V2 wrote (size narrowed to int)
V1_ONLY = record({"name": "id", "type": "string"}, {"name": "size", "type": "int", "default": 0})
#: reads nothing written before: a new field without a default
INCOMPATIBLE = record({"name": "id", "type": "string"}, {"name": "owner", "type": "string"})


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Node]:
    cfg = Config(data_dir=str(tmp_path_factory.mktemp("registry") / "data"), sync=False)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg)
    n.start()
    reg = n.chain.codec.registry
    assert reg.register(SUBJECT, V1).version == 1 and reg.register(SUBJECT, V2).version == 2
    yield n
    n.stop()


@pytest.fixture(scope="module")
def url(node) -> Iterator[str]:
    with serve_app(create_app(node, limits=HttpLimits(max_body=MAX_BODY))) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture
def client(url) -> SchemaRegistryClient:
    """A fresh client (nothing cached), retrying nothing."""
    return SchemaRegistryClient({"url": url, "max.retries": 0})


@pytest.fixture
def http(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def ids(node: Node) -> dict[int, str]:
    """version -> schema id of SUBJECT"""
    return {sv.version: sv.id for sv in node.chain.codec.registry.by_subject[SUBJECT]}


def refused_with(call: Any, status: int, error_code: int) -> SchemaRegistryError:
    with pytest.raises(SchemaRegistryError) as info:
        call()
    assert (info.value.http_status_code, info.value.error_code) == (status, error_code), info.value
    return info.value


# -- confluent-kafka's SchemaRegistryClient -----------------------------------------------------------
def test_subjects_and_versions(client, node, http):
    subjects = client.get_subjects()
    assert SUBJECT in subjects and "ledger.blocks-value" in subjects and subjects == sorted(subjects)
    assert subjects == http.get("/subjects").json()
    assert client.get_subjects(subject_prefix="test.") == [SUBJECT]
    assert client.get_versions(SUBJECT) == [1, 2]
    latest = client.get_latest_version(SUBJECT)
    assert (latest.subject, latest.version, latest.schema_id) == (SUBJECT, 2, ids(node)[2])
    assert json.loads(latest.schema.schema_str) == json.loads(V2) and latest.schema.schema_type == "AVRO"
    first = client.get_version(SUBJECT, 1)
    assert (first.version, first.schema_id, json.loads(first.schema.schema_str)) == (1, ids(node)[1], json.loads(V1))
    assert client.get_schema(ids(node)[1]).schema_str == first.schema.schema_str


def test_lookup(client, node):
    found = client.lookup_schema(SUBJECT, Schema(V1, "AVRO"))
    assert (found.subject, found.version, found.schema_id) == (SUBJECT, 1, ids(node)[1])
    spaced = json.dumps(json.loads(V2), indent=2)  # the same schema, other whitespace
    assert client.lookup_schema(SUBJECT, Schema(spaced, "AVRO")).version == 2
    # a doc makes it another schema; with normalize (Parsing Canonical Form) it does not
    documented = json.dumps({**json.loads(V2), "doc": "a thing"})
    e = refused_with(lambda: client.lookup_schema(SUBJECT, Schema(documented, "AVRO")), 404, 40403)
    assert e.error_message == "Schema not found"
    assert client.lookup_schema(SUBJECT, Schema(documented, "AVRO"), normalize_schemas=True).version == 2
    refused_with(lambda: client.lookup_schema(SUBJECT, Schema(INCOMPATIBLE, "AVRO")), 404, 40403)
    refused_with(lambda: client.lookup_schema("no.such-value", Schema(V1, "AVRO")), 404, 40401)


def test_compatibility(client):
    assert client.test_compatibility(SUBJECT, Schema(COMPATIBLE, "AVRO")) is True
    assert client.test_compatibility(SUBJECT, Schema(INCOMPATIBLE, "AVRO")) is False
    assert client.test_compatibility(SUBJECT, Schema(V1_ONLY, "AVRO"), version=1) is True
    assert client.test_compatibility(SUBJECT, Schema(V1_ONLY, "AVRO"), version="latest") is False
    assert client.test_compatibility_all_versions(SUBJECT, Schema(COMPATIBLE, "AVRO")) is True
    assert client.test_compatibility_all_versions(SUBJECT, Schema(V1_ONLY, "AVRO")) is False
    refused_with(lambda: client.test_compatibility(SUBJECT, Schema(V1, "AVRO"), version=9), 404, 40402)
    refused_with(lambda: client.test_compatibility("no.such-value", Schema(V1, "AVRO")), 404, 40401)
    refused_with(lambda: client.test_compatibility(SUBJECT, Schema('{"type": "nope"}', "AVRO")), 422, 42201)


def test_compatibility_is_what_registration_enforces(node, http):
    """What the API calls compatible is what ledgerlog would register: BACKWARD_TRANSITIVE."""
    reg = node.chain.codec.registry
    for text in (COMPATIBLE, V1_ONLY, INCOMPATIBLE):
        answer = http.post(f"/compatibility/subjects/{SUBJECT}/versions?verbose=true", json={"schema": text}).json()
        assert answer["is_compatible"] == (reg.incompatibilities(SUBJECT, json.loads(text)) == [])
        assert bool(answer["messages"]) != answer["is_compatible"]
    assert http.get("/config").json() == {"compatibilityLevel": registry.COMPATIBILITY} == {
        "compatibilityLevel": "BACKWARD_TRANSITIVE"}


def test_ids_config_mode_and_types(client, node):
    sid = ids(node)[2]
    assert [(v.subject, v.version) for v in client.get_schema_versions(sid)] == [(SUBJECT, 2)]
    assert client.get_subjects_by_schema_id(sid) == [SUBJECT]
    assert client.get_compatibility() == "BACKWARD_TRANSITIVE"
    assert client.get_compatibility(SUBJECT) == "BACKWARD_TRANSITIVE"
    assert client.get_config().compatibility_level.value == "BACKWARD_TRANSITIVE"
    assert client.get_global_mode() == "READONLY" and client.get_mode(SUBJECT) == "READONLY"
    assert client.get_schema_types() == ["AVRO"]


def test_missing_subject_version_and_id(client):
    e = refused_with(lambda: client.get_latest_version("no.such-value"), 404, 40401)
    assert "no.such-value" in e.error_message
    refused_with(lambda: client.get_versions("no.such-value"), 404, 40401)
    refused_with(lambda: client.get_version(SUBJECT, 3), 404, 40402)
    refused_with(lambda: client.get_schema(987654), 404, 40403)
    refused_with(lambda: client.get_schema_versions(987654), 404, 40403)
    refused_with(lambda: client.get_compatibility("no.such-value"), 404, 40401)


def test_writes_are_refused_and_write_nothing(client, node):
    before = node.chain.codec.registry.view()
    for call in (lambda: client.register_schema(SUBJECT, Schema(COMPATIBLE, "AVRO")),
                 lambda: client.register_schema("new.subject-value", Schema(V1, "AVRO")),
                 lambda: client.delete_subject(SUBJECT), lambda: client.delete_version(SUBJECT, 1),
                 lambda: client.set_compatibility(level="NONE"), lambda: client.set_compatibility(SUBJECT, "NONE"),
                 lambda: client.delete_config(SUBJECT), lambda: client.update_global_mode("READWRITE"),
                 lambda: client.update_mode(SUBJECT, "READWRITE"), lambda: client.delete_mode(SUBJECT)):
        e = refused_with(call, 422, 42205)
        assert "ledgerlog registers the schemas of its own code" in e.error_message
    assert node.chain.codec.registry.view() == before


def test_avro_deserializer_decodes_with_the_node_as_registry(client, node):
    """Confluent's AvroDeserializer, given only the node's URL, decodes a value in the wire format."""
    value = {"id": "thing-1", "size": 7}
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(json.loads(V2)), value)
    wire = struct.pack(">bI", 0, ids(node)[2]) + buf.getvalue()
    decode = AvroDeserializer(client)
    assert decode(wire, SerializationContext("test.things", MessageField.VALUE)) == value


# -- raw HTTP ------------------------------------------------------------------------------------------
def confluent_error(r: httpx.Response, status: int, error_code: int) -> dict[str, Any]:
    """An error in Confluent's shape (``error_code``, ``message``) and ours (``code`` in the table)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(MEDIA), r.headers
    body = r.json()
    assert body["error_code"] == error_code and isinstance(body["message"], str) and body["message"], body
    assert error_class_for(body["code"]) is not None, body
    return body


def test_each_read_route_over_http(http, node):
    sid = ids(node)[1]
    expect = {
        "/schemas/types": ["AVRO"],
        f"/schemas/ids/{sid}": {"schema": V1},
        f"/schemas/ids/{sid}/subjects": [SUBJECT],
        f"/schemas/ids/{sid}/versions": [{"subject": SUBJECT, "version": 1}],
        f"/subjects/{SUBJECT}/versions": [1, 2],
        f"/subjects/{SUBJECT}/versions/1": {"subject": SUBJECT, "version": 1, "id": sid, "schema": V1},
        f"/subjects/{SUBJECT}/versions/-1": {"subject": SUBJECT, "version": 2, "id": ids(node)[2], "schema": V2},
        "/subjects?subjectPrefix=test&offset=0&limit=1": [SUBJECT],
        "/subjects?limit=0": [],
        "/config": {"compatibilityLevel": "BACKWARD_TRANSITIVE"},
        f"/config/{SUBJECT}": {"compatibilityLevel": "BACKWARD_TRANSITIVE"},
        "/config/no.such-value?defaultToGlobal=true": {"compatibilityLevel": "BACKWARD_TRANSITIVE"},
        "/mode": {"mode": "READONLY"},
        f"/mode/{SUBJECT}": {"mode": "READONLY"},
    }
    for path, body in expect.items():
        r = http.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(MEDIA), (path, r.text)
        assert r.json() == body, path
    for path in (f"/schemas/ids/{sid}/schema", f"/subjects/{SUBJECT}/versions/1/schema"):
        r = http.get(path)  # the schema itself, as Confluent's /schema answers
        assert r.status_code == 200 and r.text == V1, path
    assert http.get(f"/subjects/{SUBJECT}/versions/latest/schema").text == V2


@pytest.mark.parametrize("version", ["0", "abc", "2147483648", "1.0", "+1", "\u00b2", "9" * 40, " 1"])
def test_invalid_versions_are_42202(http, version):
    confluent_error(http.get(f"/subjects/{SUBJECT}/versions/{version}"), 422, 42202)
    confluent_error(http.get(f"/subjects/{SUBJECT}/versions/{version}/schema"), 422, 42202)
    confluent_error(http.post(f"/compatibility/subjects/{SUBJECT}/versions/{version}", json={"schema": V1}),
                    422, 42202)


def test_not_found_over_http(http):
    confluent_error(http.get("/subjects/no.such-value/versions"), 404, 40401)
    confluent_error(http.get("/subjects/no.such-value/versions/latest"), 404, 40401)
    confluent_error(http.get(f"/subjects/{SUBJECT}/versions/3"), 404, 40402)
    for path in ("/schemas/ids/987654", "/schemas/ids/987654/schema", "/schemas/ids/987654/subjects",
                 "/schemas/ids/987654/versions"):
        confluent_error(http.get(path), 404, 40403)
    confluent_error(http.get("/config/no.such-value"), 404, 40401)
    confluent_error(http.get("/mode/no.such-value"), 404, 40401)
    # routes the registry does not have, and methods it does not take: the HTTP status as error_code
    confluent_error(http.get("/subjects/x/versions/1/referencedby"), 404, 404)
    confluent_error(http.patch(f"/subjects/{SUBJECT}/versions"), 405, 405)
    confluent_error(http.get("/schemas/ids/notanint"), 400, 400)
    confluent_error(http.get("/subjects?limit=-2"), 400, 400)
    # an empty compatibility question about a subject with no versions: nothing to be incompatible with
    assert http.post("/compatibility/subjects/no.such-value/versions", json={"schema": V1}).json() == {
        "is_compatible": True}


def test_a_deep_but_valid_schema_is_answered(http):
    deep = json.dumps({"schema": '{"type": "array", "items": ' * 40 + '"int"' + "}" * 40})
    confluent_error(http.post(f"/subjects/{SUBJECT}", content=deep), 404, 40403)
    r = http.post(f"/compatibility/subjects/{SUBJECT}/versions?verbose=true", content=deep)
    assert r.status_code == 200 and r.json()["is_compatible"] is False and r.json()["messages"], r.text


QUESTIONS = [f"/subjects/{SUBJECT}", f"/compatibility/subjects/{SUBJECT}/versions/latest",
             f"/compatibility/subjects/{SUBJECT}/versions"]

#: (body, status, error_code)
BAD_BODIES = [
    (b"", 400, 400), (b"{", 400, 400), (b"\xff\xfe", 400, 400), (b"[" * 5000, 400, 400), (b"{} x", 400, 400),
    (b"[]", 422, 42201), (b"null", 422, 42201), (b'"schema"', 422, 42201), (b"{}", 422, 42201),
    (b'{"schema": 3}', 422, 42201), (b'{"schema": null}', 422, 42201), (b'{"schema": ["string"]}', 422, 42201),
    (b'{"schema": "not json"}', 422, 42201), (b'{"schema": ""}', 422, 42201),
    (b'{"schema": "{\\"type\\": \\"nope\\"}"}', 422, 42201),
    (b'{"schema": "{\\"type\\": \\"record\\"}"}', 422, 42201),
    (b'{"schema": "{\\"type\\": \\"array\\"}"}', 422, 42201),
    (b'{"schema": "{\\"type\\": \\"fixed\\", \\"name\\": \\"f\\"}"}', 422, 42201),
    (json.dumps({"schema": "[" * 3000 + "]" * 3000}).encode(), 422, 42201),
    (json.dumps({"schema": '{"type": "array", "items": ' * 120 + '"int"' + "}" * 120}).encode(), 422, 42201),
    (json.dumps({"schema": "[" * 500 + '"int"' + "]" * 500}).encode(), 422, 42201),
    (json.dumps({"schema": '["null", ["int", "long"]]'}).encode(), 422, 42201),
    (json.dumps({"schema": V1, "schemaType": "PROTOBUF"}).encode(), 422, 42201),
    (json.dumps({"schema": V1, "schemaType": 7}).encode(), 422, 42201),
    (json.dumps({"schema": V1, "references": [{"name": "x", "subject": "y", "version": 1}]}).encode(), 422, 42201),
]


@pytest.mark.parametrize("path", QUESTIONS)
def test_malformed_bodies(http, path):
    for body, status, error_code in BAD_BODIES:
        r = http.post(path, content=body, headers={"Content-Type": MEDIA})
        assert (r.status_code, r.json().get("error_code")) == (status, error_code), (body[:80], r.text[:300])
        assert len(confluent_error(r, status, error_code)["message"]) < 1000


@pytest.mark.parametrize("path", QUESTIONS)
def test_body_types(http, path):
    good = json.dumps({"schema": V1, "schemaType": "AVRO", "references": [], "metadata": None}).encode()
    for media in (MEDIA, "application/vnd.schemaregistry+json", "application/json; charset=utf-8",
                  "application/octet-stream", None):
        headers = {"Content-Type": media} if media else {}
        r = http.post(path, content=good, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith(MEDIA), (media, r.text)
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  "application/x-ndjson", "application/xml"):
        body = confluent_error(http.post(path, content=good, headers={"Content-Type": media}), 415, 415)
        assert body["code"] == "UNSUPPORTED_MEDIA_TYPE" and MEDIA in body["message"]


@pytest.mark.parametrize("path", QUESTIONS)
def test_huge_bodies(http, path):
    huge = json.dumps({"schema": record(*({"name": f"f{i}", "type": "string"} for i in range(MAX_BODY // 20)))})
    assert len(huge) > MAX_BODY
    body = confluent_error(http.post(path, content=huge, headers={"Content-Type": MEDIA}), 413, 413)
    assert body["code"] == "TOO_LARGE"

    def chunks() -> Iterator[bytes]:  # streamed without a Content-Length
        for i in range(0, len(huge), 4096):
            yield huge[i:i + 4096].encode()
    confluent_error(http.post(path, content=chunks(), headers={"Content-Type": MEDIA}), 413, 413)


def test_writes_over_http(http):
    for method, path, _ in registry.WRITES:
        concrete = path.replace("{subject}", SUBJECT).replace("{version}", "1")
        body = confluent_error(http.request(method, concrete, json={"schema": V1, "compatibility": "NONE"}),
                               422, 42205)
        assert body["code"] == "REGISTRY_READ_ONLY" and "ledgerlog registers" in body["message"], (method, path)


def test_browser_and_host_guards_let_the_registry_through(http):
    """The Origin and Content-Type checks are POST /v1/ingest's; the Host guard takes the loopback names."""
    r = http.post(f"/subjects/{SUBJECT}", json={"schema": V1}, headers={"Origin": "http://elsewhere.example"})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert http.get("/subjects", headers={"Host": "localhost"}).status_code == 200
    confluent_error(http.get("/subjects", headers={"Host": "rebound.example"}), 421, 421)


def test_each_registry_route_is_in_openapi(http):
    spec = http.get("/openapi.json").json()
    routes = [r for r in ROUTES if "schema registry" in r.tags]
    assert len(routes) == 16 + len(registry.WRITES)
    for r in routes:
        op = spec["paths"][r.path][r.method.lower()]
        assert op["summary"] and "schema registry" in op["tags"], (r.method, r.path)
        if r.method == "POST" and r.path in (p.replace(SUBJECT, "{subject}").replace("latest", "{version}")
                                             for p in QUESTIONS):
            assert set(op["requestBody"]["content"]) == {MEDIA, "application/json"}
