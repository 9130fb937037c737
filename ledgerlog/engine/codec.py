"""Confluent wire format (magic 0, 4-byte schema id, Avro binary) and the schema registry whose
source of truth is the ``_schemas`` topic (records shaped like Confluent's own ``_schemas``)."""
from __future__ import annotations

import io
import json
import struct
import threading
from dataclasses import dataclass
from typing import Any, cast

import orjson
from fastavro import schemaless_reader

from . import avro
from .errors import SchemaError
from .log.base import Log, LogRecord, Record
from .topics import EVENT_SCHEMA, RECORD_SCHEMA, SCHEMAS, subject_of

__all__ = ["SchemaVersion", "Registry", "Codec"]

_HEADER = struct.Struct(">bI")


@dataclass(frozen=True)
class SchemaVersion:
    subject: str
    version: int
    id: int
    schema: str  # the standalone Avro schema JSON text


def _schema_version(rec: LogRecord) -> SchemaVersion | None:
    """The schema version a ``_schemas`` record registers; None for what else the topic may hold
    (Confluent's registry shares its name: NOOP, CONFIG and DELETE records, tombstones, deleted
    versions), which is skipped."""
    try:
        key, doc = orjson.loads(rec.key or b"null"), orjson.loads(rec.value) if rec.value else None
        if not isinstance(doc, dict) or doc.get("deleted") or (isinstance(key, dict) and key.get("keytype") != "SCHEMA"):
            return None
        sv = SchemaVersion(doc["subject"], doc["version"], doc["id"], doc["schema"])
    except (ValueError, KeyError, TypeError):
        return None
    ok = isinstance(sv.subject, str) and isinstance(sv.schema, str) and all(
        type(n) is int for n in (sv.version, sv.id))
    return sv if ok else None


class Registry:
    """Schema ids and versions, loaded from and appended to ``_schemas``."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self._lock = threading.RLock()
        self.by_id: dict[int, SchemaVersion] = {}
        self.by_subject: dict[str, list[SchemaVersion]] = {}
        self._parsed: dict[int, Any] = {}
        self._read_offset = 0
        self.refresh()

    def refresh(self) -> None:
        """Fold records of ``_schemas`` appended since the last look."""
        with self._lock:
            if SCHEMAS not in self._log.topics():
                return
            for rec in self._log.scan(SCHEMAS, 0, self._read_offset):
                sv = _schema_version(rec)
                if sv is not None:
                    self._add(sv)
                self._read_offset = rec.offset + 1

    def _add(self, sv: SchemaVersion) -> None:
        self.by_id[sv.id] = sv
        versions = self.by_subject.setdefault(sv.subject, [])
        if not any(v.version == sv.version for v in versions):
            versions.append(sv)
            versions.sort(key=lambda v: v.version)

    def latest(self, subject: str) -> SchemaVersion | None:
        versions = self.by_subject.get(subject)
        return versions[-1] if versions else None

    def view(self) -> tuple[dict[int, SchemaVersion], dict[str, list[SchemaVersion]]]:
        """(versions by id, versions by subject), refreshed: copies a reader may keep while
        versions are added."""
        with self._lock:
            self.refresh()
            return dict(self.by_id), {s: list(vs) for s, vs in self.by_subject.items()}

    def incompatibilities(self, subject: str, schema: Any, versions: list[SchemaVersion] | None = None) -> list[str]:
        """Why a reader of ``schema`` (parsed JSON) cannot read data written with ``versions`` of
        ``subject`` (default: every version, which ``register`` requires); [] when it can."""
        problems = []
        for old in self.by_subject.get(subject, []) if versions is None else versions:
            problems += [f"version {old.version}: {p}"
                         for p in avro.check_backward_compatible(schema, json.loads(old.schema))]
        return problems

    def register(self, subject: str, schema_text: str) -> SchemaVersion:
        """Register ``schema_text`` under ``subject`` unless it is already the latest version.

        A new version must be backward compatible with every earlier one (readers using it can
        decode everything already on the log); otherwise SchemaError and nothing is written.
        """
        with self._lock:
            self.refresh()
            latest = self.latest(subject)
            if latest and json.loads(latest.schema) == json.loads(schema_text):
                return latest
            problems = self.incompatibilities(subject, json.loads(schema_text))
            if problems:
                raise SchemaError(f"{subject}: new schema is not backward compatible with "
                                  + "; ".join(problems))
            sv = SchemaVersion(subject, latest.version + 1 if latest else 1,
                               max(self.by_id, default=0) + 1, schema_text)
            key = orjson.dumps({"keytype": "SCHEMA", "subject": subject, "version": sv.version, "magic": 1})
            value = orjson.dumps({"subject": subject, "version": sv.version, "id": sv.id,
                                  "schema": schema_text, "deleted": False})
            self._log.append([Record(SCHEMAS, key, value, 0, 0)])
            self.refresh()
            return sv

    def parsed(self, schema_id: int) -> Any:
        found = self._parsed.get(schema_id)
        if found is None:
            if schema_id not in self.by_id:
                self.refresh()
            if schema_id not in self.by_id:
                raise SchemaError(f"unknown schema id {schema_id}")
            found = self._parsed[schema_id] = avro.parse_text(self.by_id[schema_id].schema)
        return found


class Codec:
    """Encode events (and signed tree heads) for their topic with the current schema; decode any
    registered version into the current (reader) schema."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        #: topic -> the wire header of the registered version that is the code's schema (a log an
        #: older release left, opened read-only, may not have it yet: then nothing is encoded)
        self._writer: dict[str, bytes] = {}
        self._reader = {topic: avro.parsed(name) for topic, name in RECORD_SCHEMA.items()}
        self._reader_for_id: dict[tuple[str, int], tuple[Any, Any]] = {}
        for topic, name in RECORD_SCHEMA.items():
            sv = registry.latest(subject_of(topic))
            if sv is None:
                if topic not in EVENT_SCHEMA:
                    continue  # tree heads: a chain an older version made gets it at its next writable open
                raise SchemaError(f"no schema registered for {topic}; run `ledgerlog init`")
            if json.loads(sv.schema) == json.loads(avro.schema_json(name)):
                self._writer[topic] = _HEADER.pack(0, sv.id)
        self._encode = {topic: avro.encoder(name) for topic, name in RECORD_SCHEMA.items()}

    def _header(self, topic: str) -> bytes:
        header = self._writer.get(topic)
        if header is None:
            raise SchemaError(f"{topic}: this code's schema is not registered on the log yet (an older release "
                              "wrote it); open the chain writable once (a node's start or `ledgerlog init`)")
        return header

    @classmethod
    def register_all(cls, log: Log) -> Codec:
        """Register the code's current record schemas (evolution-checked) and build a codec."""
        reg = Registry(log)
        for topic, name in RECORD_SCHEMA.items():
            reg.register(subject_of(topic), avro.schema_json(name))
        return cls(reg)

    def schema_id(self, topic: str) -> int:
        """The id of the code's schema for ``topic``; KeyError when it is not registered."""
        sid: int = _HEADER.unpack(self._writer[topic])[1]
        return sid

    def encode(self, topic: str, event: dict[str, Any]) -> bytes:
        return self._header(topic) + self._encode[topic](event)

    def wire(self, topic: str, avro_bytes: bytes) -> bytes:
        """The record value of an event of ``topic`` already encoded (current schema) as ``avro_bytes``."""
        return self._header(topic) + avro_bytes

    def decode(self, topic: str, value: bytes) -> dict[str, Any]:
        if len(value) < 5 or value[0] != 0:
            raise SchemaError(f"{topic}: value is not in the Confluent wire format")
        schema_id = _HEADER.unpack_from(value)[1]
        pair = self._reader_for_id.get((topic, schema_id))
        if pair is None:
            writer = self.registry.parsed(schema_id)
            same = self._writer.get(topic) == value[:5]  # written with the code's schema: no resolution
            reader = self._reader.get(topic)
            pair = self._reader_for_id[(topic, schema_id)] = (writer, None if same or reader is None else reader)
        # an event schema is a record: its datum is a dict (fastavro types it as any Avro value)
        return cast("dict[str, Any]", schemaless_reader(io.BytesIO(value[5:]), pair[0], pair[1]))

    def decode_record(self, rec: LogRecord) -> dict[str, Any]:
        return self.decode(rec.topic, rec.value)
