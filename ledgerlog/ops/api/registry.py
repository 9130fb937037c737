"""Confluent's Schema Registry API over the ``_schemas`` topic (engine/codec.py ``Registry``), as
confluent-kafka's ``SchemaRegistryClient`` and Confluent's tools call it, so stock Avro
deserializers, lookups and compatibility checks work against a node.

- Reads: ``/subjects`` (``subjectPrefix``, ``offset``, ``limit``), ``/subjects/{s}/versions``,
  ``/subjects/{s}/versions/{v}`` (``v``: 1.. or ``latest``, also ``-1``) and its raw ``/schema``,
  ``/schemas/ids/{id}`` (and ``/schema``, ``/subjects``, ``/versions`` of it), ``/schemas/types``
  (``["AVRO"]``), ``/config`` and ``/config/{s}`` (``compatibilityLevel``), ``/mode`` and
  ``/mode/{s}`` (``READONLY``).
- Questions with a body (``{"schema": "<Avro JSON text>"}``, ``schemaType`` AVRO, no references):
  ``POST /subjects/{s}`` finds the version registered with that schema (40403 if none),
  ``POST /compatibility/subjects/{s}/versions[/{v}]`` answers ``{"is_compatible": bool}`` (with
  ``messages`` when ``verbose=true``).
- Compatibility is ``BACKWARD_TRANSITIVE``: ledgerlog registers a new version only if a reader
  of it can read what every earlier version wrote (``Registry.register``; the same check answers
  the compatibility questions). Without a version, the check is against every version.
- Writes are refused: ledgerlog registers the schemas of its own code itself, so registering,
  deleting and configuring through the API answer 422 with Confluent's 42205 (what Confluent's
  registry answers in READONLY mode, which ``/mode`` reports).

Bodies are JSON of Confluent's media type, ``application/json`` or untyped (415 otherwise); the
body cap is ``http.max_body`` (413). Errors are LedgerErrors (engine/errors.py
``registry_error``), answered with Confluent's ``error_code`` by ops/api/guard.py."""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Query, Request
from fastapi.responses import Response
from fastavro.schema import SchemaParseException, parse_schema, to_parsing_canonical_form
from starlette.concurrency import run_in_threadpool

from ledgerlog.engine.codec import SchemaVersion
from ledgerlog.engine.errors import BadRequest, UnsupportedMediaTypeError, registry_error
from ledgerlog.engine.intjson import dumps_any
from ledgerlog.ops.api.guard import REGISTRY_MEDIA

if TYPE_CHECKING:
    from ledgerlog.ops.api.handlers import Edge

__all__ = ["COMPATIBILITY", "MODE", "REFUSED_OPENAPI", "WRITES", "compatibility", "compatibility_all", "config",
           "lookup", "mode", "openapi", "read_only", "schema_by_id", "schema_subjects", "schema_text_by_id",
           "schema_types", "schema_versions", "subject_config", "subject_mode", "subjects", "version",
           "version_schema", "versions"]

Endpoint = Callable[..., Any]
#: the level ledgerlog enforces when it registers a version (engine/codec.py Registry.register)
COMPATIBILITY = "BACKWARD_TRANSITIVE"
MODE = "READONLY"
#: request body types taken (Confluent's, plain JSON; none given is taken as JSON too)
_BODY_TYPES = frozenset({REGISTRY_MEDIA, "application/vnd.schemaregistry+json", "application/json",
                         "application/octet-stream", ""})
_VERSION = re.compile(r"[0-9]{1,10}")
_MAX_VERSION = 2**31 - 1
_SHOWN = 200  # characters of a bad input a message repeats
_MAX_DEPTH = 100  # JSON nesting of a schema asked about (each record field is two levels)


# -- answers and failures ---------------------------------------------------------------------------
def _answer(body: Any) -> Response:
    return Response(dumps_any(body), media_type=REGISTRY_MEDIA)


def _raw(text: str) -> Response:
    return Response(text, media_type=REGISTRY_MEDIA)


def _subject_missing(subject: str) -> Exception:
    return registry_error(40401, f"Subject '{subject[:_SHOWN]}' not found.")


def _view(edge: Edge) -> tuple[dict[int, SchemaVersion], dict[str, list[SchemaVersion]]]:
    return edge.node.chain.codec.registry.view()


def _version_id(text: str) -> int | None:
    """A version path segment as a number; None for the latest (``latest`` or ``-1``)."""
    if text in ("latest", "-1"):
        return None
    if _VERSION.fullmatch(text) and 1 <= int(text) <= _MAX_VERSION:
        return int(text)
    raise registry_error(42202, f"The specified version '{text[:_SHOWN]}' is not a valid version id: "
                                f"use a number from 1 to {_MAX_VERSION}, or latest")


def _pick(by_subject: dict[str, list[SchemaVersion]], subject: str, version: str) -> SchemaVersion:
    """``version`` of ``subject`` (42202 malformed, 40401 no subject, 40402 no such version)."""
    wanted = _version_id(version)
    versions = by_subject.get(subject)
    if not versions:
        raise _subject_missing(subject)
    found = versions[-1] if wanted is None else next((v for v in versions if v.version == wanted), None)
    if found is None:
        raise registry_error(40402, f"Version {wanted} not found.")
    return found


def _registered(sv: SchemaVersion) -> dict[str, Any]:
    return {"subject": sv.subject, "version": sv.version, "id": sv.id, "schema": sv.schema}


# -- request bodies ---------------------------------------------------------------------------------
def _shape_problem(doc: Any) -> str | None:
    """What fastavro lets through and the compatibility check must not meet: nesting deeper than
    ``_MAX_DEPTH`` (the check recurses), and a union directly in a union (Avro forbids it)."""
    todo: list[tuple[Any, int, bool]] = [(doc, 0, False)]
    while todo:
        node, depth, in_union = todo.pop()
        if depth > _MAX_DEPTH:
            return f"nested deeper than {_MAX_DEPTH} levels"
        if isinstance(node, list):
            if in_union:
                return "a union directly inside a union"
            todo.extend((n, depth + 1, True) for n in node)
        elif isinstance(node, dict):
            todo.extend((n, depth + 1, False) for n in node.values() if isinstance(n, (list, dict)))
    return None


def _parse_schema(text: str) -> Any:
    """The JSON of an Avro schema text (42201 when it is not one)."""
    try:
        doc = orjson.loads(text)
        problem = _shape_problem(doc)
        if problem is None:
            parse_schema(doc)
    except (orjson.JSONDecodeError, SchemaParseException, ValueError, TypeError, KeyError, AttributeError,
            RecursionError) as exc:
        raise registry_error(42201, f"Invalid schema: {str(exc)[:_SHOWN]}") from exc
    if problem is not None:
        raise registry_error(42201, f"Invalid schema: {problem}")
    return doc


async def _schema_of(request: Request) -> Any:
    """The schema a request body asks about, as JSON (415, 400 or 42201 when it cannot say)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in _BODY_TYPES:
        raise UnsupportedMediaTypeError(f"send the schema as JSON with Content-Type: {REGISTRY_MEDIA}")
    try:
        doc = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), str):
        raise registry_error(42201, 'Invalid schema: send {"schema": "<the Avro schema as JSON text>"}')
    kind = doc.get("schemaType")
    if kind not in (None, "AVRO"):
        raise registry_error(42201, f"Invalid schema: this registry holds AVRO schemas, not {str(kind)[:_SHOWN]}")
    if doc.get("references"):
        raise registry_error(42201, "Invalid schema: schema references are not supported")
    return _parse_schema(doc["schema"])


def _same(a: Any, b: Any, normalize: bool) -> bool:
    """Whether two schemas (JSON) are the same: equal JSON, or with ``normalize`` the same
    Parsing Canonical Form (docs, defaults, aliases and key order aside)."""
    return a == b or (normalize and to_parsing_canonical_form(a) == to_parsing_canonical_form(b))


# -- reads ----------------------------------------------------------------------------------------
def schema_types(edge: Edge) -> Endpoint:
    async def schema_types() -> Response:
        return _answer(["AVRO"])
    return schema_types


def _by_id(edge: Edge, schema_id: int) -> tuple[SchemaVersion, list[SchemaVersion]]:
    """The schema of ``schema_id`` and every version registered with it (40403 if none)."""
    by_id, by_subject = _view(edge)
    sv = by_id.get(schema_id)
    if sv is None:
        raise registry_error(40403, f"Schema {schema_id} not found")
    return sv, [v for vs in by_subject.values() for v in vs if v.id == schema_id]


def schema_by_id(edge: Edge) -> Endpoint:
    async def schema_by_id(schema_id: int) -> Response:
        sv, _ = await run_in_threadpool(_by_id, edge, schema_id)
        return _answer({"schema": sv.schema})
    return schema_by_id


def schema_text_by_id(edge: Edge) -> Endpoint:
    async def schema_text_by_id(schema_id: int) -> Response:
        sv, _ = await run_in_threadpool(_by_id, edge, schema_id)
        return _raw(sv.schema)
    return schema_text_by_id


def schema_subjects(edge: Edge) -> Endpoint:
    async def schema_subjects(schema_id: int) -> Response:
        _, versions = await run_in_threadpool(_by_id, edge, schema_id)
        return _answer(sorted({v.subject for v in versions}))
    return schema_subjects


def schema_versions(edge: Edge) -> Endpoint:
    async def schema_versions(schema_id: int) -> Response:
        _, versions = await run_in_threadpool(_by_id, edge, schema_id)
        return _answer([{"subject": v.subject, "version": v.version} for v in versions])
    return schema_versions


def subjects(edge: Edge) -> Endpoint:
    async def subjects(prefix: str = Query("", alias="subjectPrefix", max_length=255),
                       offset: int = Query(0, ge=0, le=_MAX_VERSION),
                       limit: int = Query(-1, ge=-1, le=_MAX_VERSION)) -> Response:
        _, by_subject = await run_in_threadpool(_view, edge)
        names = sorted(s for s in by_subject if s.startswith(prefix))[offset:]
        return _answer(names if limit < 0 else names[:limit])
    return subjects


def versions(edge: Edge) -> Endpoint:
    async def versions(subject: str) -> Response:
        _, by_subject = await run_in_threadpool(_view, edge)
        found = by_subject.get(subject)
        if not found:
            raise _subject_missing(subject)
        return _answer([v.version for v in found])
    return versions


def version(edge: Edge) -> Endpoint:
    async def version(subject: str, version: str) -> Response:
        _, by_subject = await run_in_threadpool(_view, edge)
        return _answer(_registered(_pick(by_subject, subject, version)))
    return version


def version_schema(edge: Edge) -> Endpoint:
    async def version_schema(subject: str, version: str) -> Response:
        _, by_subject = await run_in_threadpool(_view, edge)
        return _raw(_pick(by_subject, subject, version).schema)
    return version_schema


def _setting(edge: Edge, subject: str | None, default_to_global: bool) -> None:
    """40401 unless the subject exists (or the global setting is asked for)."""
    if subject is not None and not default_to_global and subject not in _view(edge)[1]:
        raise _subject_missing(subject)


_GLOBAL: Any = Query(False, alias="defaultToGlobal", description="the global setting for a subject not known")


def config(edge: Edge) -> Endpoint:
    async def config() -> Response:
        return _answer({"compatibilityLevel": COMPATIBILITY})
    return config


def subject_config(edge: Edge) -> Endpoint:
    async def subject_config(subject: str, default: bool = _GLOBAL) -> Response:
        await run_in_threadpool(_setting, edge, subject, default)
        return _answer({"compatibilityLevel": COMPATIBILITY})
    return subject_config


def mode(edge: Edge) -> Endpoint:
    async def mode() -> Response:
        return _answer({"mode": MODE})
    return mode


def subject_mode(edge: Edge) -> Endpoint:
    async def subject_mode(subject: str, default: bool = _GLOBAL) -> Response:
        await run_in_threadpool(_setting, edge, subject, default)
        return _answer({"mode": MODE})
    return subject_mode


# -- questions with a schema --------------------------------------------------------------------------
def lookup(edge: Edge) -> Endpoint:
    def find(subject: str, schema: Any, normalize: bool) -> dict[str, Any]:
        versions = _view(edge)[1].get(subject)
        if not versions:
            raise _subject_missing(subject)
        for sv in reversed(versions):
            if _same(schema, orjson.loads(sv.schema), normalize):
                return _registered(sv)
        raise registry_error(40403, "Schema not found")

    async def lookup(subject: str, request: Request, normalize: bool = False) -> Response:
        schema = await _schema_of(request)
        return _answer(await run_in_threadpool(find, subject, schema, normalize))
    return lookup


def _compatibility(edge: Edge, subject: str, schema: Any, version: str | None, verbose: bool) -> dict[str, Any]:
    registry = edge.node.chain.codec.registry
    by_subject = registry.view()[1]
    if version is None:  # against every version (none: nothing to be incompatible with)
        against = by_subject.get(subject, [])
    else:
        against = [_pick(by_subject, subject, version)]
    problems = registry.incompatibilities(subject, schema, against)
    answer: dict[str, Any] = {"is_compatible": not problems}
    if verbose:
        answer["messages"] = problems
    return answer


def compatibility(edge: Edge) -> Endpoint:
    async def compatibility(subject: str, version: str, request: Request, verbose: bool = False) -> Response:
        _version_id(version)  # 42202 before anything is read
        schema = await _schema_of(request)
        return _answer(await run_in_threadpool(_compatibility, edge, subject, schema, version, verbose))
    return compatibility


def compatibility_all(edge: Edge) -> Endpoint:
    async def compatibility_all(subject: str, request: Request, verbose: bool = False) -> Response:
        schema = await _schema_of(request)
        return _answer(await run_in_threadpool(_compatibility, edge, subject, schema, None, verbose))
    return compatibility_all


# -- writes: refused ---------------------------------------------------------------------------------
#: (method, path, what is refused) of Confluent's writes
WRITES: tuple[tuple[str, str, str], ...] = (
    ("POST", "/subjects/{subject}/versions", "registering a schema"),
    ("DELETE", "/subjects/{subject}", "deleting a subject"),
    ("DELETE", "/subjects/{subject}/versions/{version}", "deleting a version"),
    ("PUT", "/config", "setting the compatibility level"),
    ("DELETE", "/config", "deleting the compatibility level"),
    ("PUT", "/config/{subject}", "setting a subject's compatibility level"),
    ("DELETE", "/config/{subject}", "deleting a subject's compatibility level"),
    ("PUT", "/mode", "setting the mode"),
    ("PUT", "/mode/{subject}", "setting a subject's mode"),
    ("DELETE", "/mode/{subject}", "deleting a subject's mode"),
)


def read_only(path: str, what: str) -> Callable[[Edge], Endpoint]:
    """The endpoint factory of a refused write at ``path``: 422 REGISTRY_READ_ONLY, 42205."""
    message = (f"{what} through the API is not permitted: this registry is read-only, ledgerlog registers "
               f"the schemas of its own code (on _schemas, {COMPATIBILITY})")
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]

    def factory(edge: Edge) -> Endpoint:
        async def refused(**_: Any) -> Response:
            raise registry_error(42205, message)
        refused.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=str) for n in names])
        refused.__name__ = "refused_" + re.sub(r"\W+", "_", f"{what}").strip("_")
        return refused
    return factory


# -- /openapi.json ------------------------------------------------------------------------------------
_BODY_SCHEMA = {"type": "object", "required": ["schema"], "properties": {
    "schema": {"type": "string", "description": "the Avro schema, as JSON text"},
    "schemaType": {"type": "string", "enum": ["AVRO"]},
    "references": {"type": "array", "maxItems": 0, "items": {"type": "object"}}}}
_ERRORS = {400: {"description": "the body is not JSON (error_code 400)"},
           404: {"description": "40401 subject or 40402 version not found"},
           413: {"description": "body too large"},
           415: {"description": "not JSON"},
           422: {"description": "42201 invalid schema, 42202 invalid version"}}


def openapi(ok: str, *, body: bool = False, codes: tuple[int, ...] = (404, 422)) -> dict[str, Any]:
    """add_api_route's OpenAPI arguments of a registry route: its 200, its errors and its body."""
    out: dict[str, Any] = {"responses": {200: {"description": ok}, **{c: _ERRORS[c] for c in codes}}}
    if body:
        out["openapi_extra"] = {"requestBody": {"required": True, "content": {
            m: {"schema": _BODY_SCHEMA} for m in (REGISTRY_MEDIA, "application/json")}}}
        out["responses"].update({c: _ERRORS[c] for c in (400, 413, 415, 422)})
    return out


REFUSED_OPENAPI: dict[str, Any] = {"responses": {422: {"description": "always: the registry is read-only "
                                                      "(REGISTRY_READ_ONLY, error_code 42205)"}}}
