"""Avro schemas from the ``schemas`` package: loading, inlining, canonical body bytes, and the
backward-compatibility check run before a new schema version is registered."""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader

from . import avro_codegen
from .errors import SchemaError

__all__ = [
    "NAMESPACE", "BODY_NAMES", "EVENT_NAMES", "HEAD_NAMES", "schema_json", "parsed", "encode", "decode", "fields_encoder",
    "check_backward_compatible", "registered_versions",
]

NAMESPACE = "ledgerlog.v1"
BODY_NAMES = ("TransactionBody", "BlockHeader", "ReadingBody", "ProviderBody", "SettlementBody",
              "PayoutBody", "KeyRotationBody", "GovernanceBody")
EVENT_NAMES = ("BlockAdmitted", "TransactionConfirmed", "TransactionSubmitted", "ShareSubmitted",
               "ProviderRegistered", "ReadingRecorded", "SettlementRecorded", "PayoutRecorded",
               "KeyRotated", "AdminActionRecorded", "GovernanceChanged")
#: The verifiable log's records (PROTOCOL.md §9): TreeHead is signed, SignedTreeHead is on _checkpoints.
HEAD_NAMES = ("TreeHead", "SignedTreeHead")


def _raw(name: str, version: int | None = None) -> dict[str, Any]:
    root = resources.files("ledgerlog.schemas")
    path = root / (f"registered/{name}.v{version}.avsc" if version else f"{name}.avsc")
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SchemaError(f"no schema file for {name}") from exc
    return doc


def _inline(node: Any, seen: set[str]) -> Any:
    """Replace references to ledgerlog.v1 records by their definition (first use only)."""
    if isinstance(node, str) and node.startswith(NAMESPACE + "."):
        short = node[len(NAMESPACE) + 1:]
        if node in seen:
            return node
        seen.add(node)
        return _inline(_raw(short), seen)
    if isinstance(node, list):
        return [_inline(n, seen) for n in node]
    if isinstance(node, dict):
        out = dict(node)
        if node.get("type") == "record":
            seen.add(f"{node.get('namespace', NAMESPACE)}.{node['name']}")
            out["fields"] = [{**f, "type": _inline(f["type"], seen)} for f in node["fields"]]
        elif node.get("type") == "array":
            out["items"] = _inline(node["items"], seen)
        return out
    return node


@cache
def schema_json(name: str) -> str:
    """The standalone schema text (nested records inlined), as registered on ``_schemas``."""
    return json.dumps(_inline(_raw(name), set()), separators=(",", ":"))


@cache
def parsed(name: str) -> Any:
    return parse_schema(json.loads(schema_json(name)))


def parse_text(text: str) -> Any:
    return parse_schema(json.loads(text))


@cache
def encoder(name: str) -> Callable[[dict[str, Any]], bytes]:
    """The schema's generated encoder (engine/avro_codegen.py: fastavro's bytes, faster)."""
    return avro_codegen.encoder(schema_json(name))


@cache
def fields_encoder(name: str, start: int, stop: int | None = None) -> Callable[[dict[str, Any]], bytes]:
    """An encoder of the record schema's fields ``[start:stop]`` alone. A record's Avro bytes are
    its fields' bytes one after the other, so these bytes joined to those of the other fields
    (a signed body's canonical bytes, say) are the whole record's."""
    schema = json.loads(schema_json(name))
    return avro_codegen.encoder(json.dumps({**schema, "fields": schema["fields"][start:stop]}))


def encode(name: str, record: dict[str, Any]) -> bytes:
    """Schemaless Avro binary; for bodies this is the canonical signing/id payload."""
    return encoder(name)(record)


def decode(name: str, data: bytes) -> dict[str, Any]:
    """A record schema's datum decodes to a dict (fastavro types it as any Avro value)."""
    return cast("dict[str, Any]", schemaless_reader(io.BytesIO(data), parsed(name), None))


def registered_versions(name: str) -> list[dict[str, Any]]:
    """Every released version of a schema, oldest first (from schemas/registered)."""
    out, v = [], 1
    root = resources.files("ledgerlog.schemas") / "registered"
    while (root / f"{name}.v{v}.avsc").is_file():
        out.append(_inline(_raw(name, v), set()))
        v += 1
    return out


_PROMOTIONS = {"int": {"int"}, "long": {"int", "long"}, "float": {"int", "long", "float"},
               "double": {"int", "long", "float", "double"}, "string": {"string", "bytes"},
               "bytes": {"bytes", "string"}}


def _type_name(t: Any) -> str:
    if isinstance(t, dict):
        return str(t["type"] if t["type"] not in ("record", "enum", "fixed") else t.get("name", t["type"]))
    return t if isinstance(t, str) else "union"


def _same_name(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    """Avro resolves named types by unqualified name, or by one of the reader's aliases."""
    def short(n: str) -> str:
        return n.rsplit(".", 1)[-1]
    return short(writer["name"]) in {short(n) for n in (reader["name"], *reader.get("aliases", ()))}


def check_backward_compatible(reader: Any, writer: Any, path: str = "") -> list[str]:
    """Problems that stop ``reader`` (new) from reading data written with ``writer`` (old).

    Covers what our schemas use: records, arrays, maps, unions, enums and primitive promotion.
    """
    where = path or "<root>"
    if isinstance(reader, list) or isinstance(writer, list):
        r_opts = reader if isinstance(reader, list) else [reader]
        w_opts = writer if isinstance(writer, list) else [writer]
        problems = []
        for w in w_opts:
            if all(check_backward_compatible(r, w, path) for r in r_opts):
                problems.append(f"{where}: union branch {_type_name(w)} has no readable match")
        return problems
    r_kind = reader["type"] if isinstance(reader, dict) else reader
    w_kind = writer["type"] if isinstance(writer, dict) else writer
    if r_kind == w_kind and r_kind in ("record", "enum") and not _same_name(reader, writer):
        return [f"{where}: {w_kind} {writer['name']} cannot be read as {reader['name']}"]
    if r_kind == "record" and w_kind == "record":
        problems = []
        w_fields = {f["name"]: f for f in writer["fields"]}
        for f in reader["fields"]:
            sub = f"{path}.{f['name']}" if path else f["name"]
            # the writer's field of that name, or of one of its aliases (a renamed field)
            old = next((w_fields[n] for n in (f["name"], *f.get("aliases", ())) if n in w_fields), None)
            if old is not None:
                problems += check_backward_compatible(f["type"], old["type"], sub)
            elif "default" not in f:
                problems.append(f"{sub}: new field without a default")
        return problems
    if r_kind == "array" and w_kind == "array":
        return check_backward_compatible(reader["items"], writer["items"], path + "[]")
    if r_kind == "map" and w_kind == "map":
        return check_backward_compatible(reader["values"], writer["values"], path + "{}")
    if r_kind == "enum" and w_kind == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            return [f"{where}: enum symbols removed: {sorted(missing)}"]
        return []
    if isinstance(r_kind, str) and isinstance(w_kind, str) and r_kind in _PROMOTIONS:
        return [] if w_kind in _PROMOTIONS[r_kind] else [f"{where}: {w_kind} cannot be read as {r_kind}"]
    if r_kind == w_kind:
        return []
    return [f"{where}: {w_kind} cannot be read as {r_kind}"]
