"""Who may talk to the node over HTTP, and what an answer may not reveal.

- **Host** (``HostGuard``): a request whose ``Host`` is not the node's own (the address the
  connection reached, ``localhost``, ``127.0.0.1``, ``[::1]``, ``http.host`` and the names in
  ``http.allowed_hosts``) gets 421 ``HOST_NOT_ALLOWED``: a web page on a rebinding domain
  resolves to 127.0.0.1 but its requests still say their own name.
- **Writes from browsers** (``check_ingest_headers``): ``POST /v1/ingest`` takes
  ``Content-Type: application/x-ndjson`` only (415 ``UNSUPPORTED_MEDIA_TYPE``; a form or
  ``text/plain`` post is what a page can send without asking) and an ``Origin``, when present,
  must be in ``http.allowed_origins`` (403 ``ORIGIN_NOT_ALLOWED``; none by default).
  ``POST /rpc`` takes ``text/plain`` (bitcoind's clients send it), so its ``Origin``, when
  present, must be the node's own or in ``http.allowed_origins`` (``check_origin``): a page of
  another site could otherwise make its visitors' browsers post batches to a node on 127.0.0.1.
- **Paths** (``public``): the message of every error body, and an admin action's result, pass
  through ``public``, which writes the data dir as ``<data_dir>`` and any other absolute
  filesystem path as ``…/<its last name>``.
- **Errors** (``error_answer``, ``install_error_handlers``): the one builder of error answers.
  Every error is a LedgerError answered as its class says (engine/errors.py: ``http_status``,
  ``code``, ``public``) in the one shape ``{"code","message"}``; the framework's own errors too
  (unknown route 404 ``NOT_FOUND``, 405 ``METHOD_NOT_ALLOWED``, validation errors 400
  ``BAD_REQUEST``), and anything unexpected is 500 ``INTERNAL`` with its traceback in the log only.
  On the Schema Registry API's paths (``registry_path``) the body also carries Confluent's
  ``error_code`` (the error's ``registry_code``, else its HTTP status, as Confluent's server
  answers generic errors) and the type is Confluent's ``application/vnd.schemaregistry.v1+json``."""
from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ledgerlog.engine.errors import (
    BadRequest,
    HostNotAllowedError,
    InternalError,
    LedgerError,
    MethodNotAllowedError,
    NotFoundError,
    OriginNotAllowedError,
    RateLimitedError,
    StorageError,
    TooLargeError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    error_code,
    public_message,
)
from ledgerlog.engine.intjson import dumps_any

__all__ = ["NDJSON", "REGISTRY_MEDIA", "HostGuard", "registry_path", "error_answer", "error_body", "error_response", "host_name", "check_ingest_headers", "check_origin",
           "install_error_handlers", "public", "public_json", "register_root", "send_error", "split_list"]

log = logging.getLogger("ledgerlog.http")

NDJSON = "application/x-ndjson"
#: Confluent's Schema Registry media type: what its API answers (requests may also send JSON)
REGISTRY_MEDIA = "application/vnd.schemaregistry.v1+json"
#: the first path segments of the Schema Registry API (ops/api/registry.py)
_REGISTRY_ROOTS = frozenset({"subjects", "schemas", "config", "mode", "compatibility"})
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def split_list(spec: str) -> list[str]:
    """A comma-separated config value as its non-empty, stripped items."""
    return [p.strip() for p in spec.split(",") if p.strip()]


# -- paths --------------------------------------------------------------------------------------
_ROOTS: dict[str, str] = {}  # absolute directory -> what an answer says instead
#: An absolute path of two or more names (not an API route, not inside a URL).
_ABS_PATH = re.compile(r"(?<![\w:/.~>-])/(?!v1/|rpc\b|schemas/|subjects/|compatibility/|metrics\b|openapi)"
                       r"(?:[^\s/'\"<>]+/)+([^\s/'\"<>]*)")


def register_root(path: str, label: str = "<data_dir>") -> None:
    """Answers write ``path`` (and anything under it) as ``label``."""
    for p in {os.path.abspath(path), os.path.realpath(path)}:
        _ROOTS[p.rstrip("/") or "/"] = label


def public(text: str, keep: Iterable[str] = ()) -> str:
    """``text`` without absolute filesystem paths (see the module docstring), except those in
    ``keep`` (paths the client itself sent, which tell it nothing new)."""
    if "/" not in text:
        return text
    for root in sorted(_ROOTS, key=len, reverse=True):
        if root != "/":
            text = text.replace(root, _ROOTS[root])
    kept = [k for k in sorted(set(keep), key=len, reverse=True) if k.startswith("/") and k in text]
    for i, k in enumerate(kept):
        text = text.replace(k, f"\x00{i}\x00")
    text = _ABS_PATH.sub(lambda m: "…/" + m.group(1), text)
    for i, k in enumerate(kept):
        text = text.replace(f"\x00{i}\x00", k)
    return text


def public_json(value: Any, keep: Iterable[str] = ()) -> Any:
    """``value`` (JSON-like) with ``public`` applied to every string in it."""
    keep = tuple(keep)
    if isinstance(value, str):
        return public(value, keep)
    if isinstance(value, dict):
        return {k: public_json(v, keep) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_json(v, keep) for v in value]
    return value


def error_body(code: str, message: str) -> dict[str, str]:
    """The one error shape of the API: ``{"code","message"}``, the message made ``public``."""
    return {"code": code, "message": public(message)}


# -- errors ---------------------------------------------------------------------------------------
def registry_path(path: str) -> bool:
    """Whether ``path`` is one of the Schema Registry API's (its errors carry ``error_code``)."""
    return path.split("/", 2)[1] in _REGISTRY_ROOTS if path.startswith("/") else False


def error_answer(exc: BaseException, path: str = "") -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) answering ``exc`` on ``path``, as its class in the error table says;
    anything that is not a LedgerError is a bug: 500 INTERNAL, its traceback in the log, not the
    answer."""
    if not isinstance(exc, LedgerError):
        log.error("unexpected error answering a request", exc_info=exc)
        exc = InternalError()
    elif isinstance(exc, StorageError):
        log.warning("storage: %s", exc)  # the paths go to the operator's log, not the answer
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(exc.retry_seconds)
    elif isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    body: dict[str, Any] = error_body(error_code(exc), public_message(exc))
    if registry_path(path):
        body = {"error_code": exc.registry_code or exc.http_status, **body}
    return exc.http_status, body, headers


def _media(path: str) -> str:
    return REGISTRY_MEDIA if registry_path(path) else "application/json"


def error_response(exc: BaseException, path: str = "") -> Response:
    """The Response answering ``exc`` on ``path``."""
    status, body, headers = error_answer(exc, path)
    return Response(dumps_any(body), status_code=status, headers=headers, media_type=_media(path))


async def send_error(send: Callable[[Any], Awaitable[None]], exc: BaseException, *, close: bool = False,
                     path: str = "") -> None:
    """Answer ``exc`` on a raw ASGI ``send`` (middleware that runs before the framework)."""
    status, body, headers = error_answer(exc, path)
    data = dumps_any(body)  # an error may quote a client's string that is not UTF-8
    raw = [(b"content-type", _media(path).encode()), (b"content-length", str(len(data)).encode()),
           *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


#: HTTP status the framework raises -> the table's class answering it
_FRAMEWORK = {404: NotFoundError, 405: MethodNotAllowedError, 413: TooLargeError, 415: UnsupportedMediaTypeError}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """The app's one exception handler: every error, the framework's included, through
    ``error_answer``."""

    @app.exception_handler(LedgerError)
    async def _ledger(request: Request, exc: LedgerError) -> Response:
        return error_response(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        cls = _FRAMEWORK.get(exc.status_code, BadRequest if exc.status_code < 500 else InternalError)
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail else cls.__name__
        response = error_response(cls(detail), request.url.path)
        response.headers.update(exc.headers or {})  # e.g. 405's Allow
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(BadRequest(_validation_message(exc)), request.url.path)  # FastAPI would say 422

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # the client left (or the server timed its body out): no one reads this answer
        return error_response(BadRequest("the client disconnected before sending the whole request"),
                              request.url.path)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        return error_response(exc, request.url.path)  # 500 INTERNAL; the traceback goes to the log


# -- Host -----------------------------------------------------------------------------------------
def host_name(value: str) -> str | None:
    """The host of a ``Host`` header, lowercased, without port, brackets or a trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not re.fullmatch(r":\d{1,5}", value[end + 1:])):
            return None
        name = value[1:end]
    else:
        name, _, port = value.partition(":")
        if port and not port.isdigit():
            return None
    name = name.rstrip(".")
    return name or None


def unmapped(address: str) -> str:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.5``, how a dual-stack socket bound to ``::``
    sees IPv4 peers and its own IPv4 addresses) as its IPv4 address; anything else as it is."""
    if "." not in address or ":" not in address:
        return address
    try:
        mapped = ipaddress.IPv6Address(address).ipv4_mapped
    except ValueError:
        return address
    return str(mapped) if mapped is not None else address


class HostGuard:
    """Which ``Host`` headers the node answers (see the module docstring)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.allowed = _LOOPBACK | {n for n in (host_name(x) for x in names) if n and n not in ("0.0.0.0", "::")}

    def allows(self, scope: MutableMapping[str, Any]) -> bool:
        host = None
        for k, v in scope.get("headers", ()):
            if k == b"host":
                if host is not None:
                    return False  # two Host headers: ambiguous
                host = v
        name = host_name(host.decode("latin-1")) if host is not None else None
        if name is None:
            return False
        if name in self.allowed:
            return True
        server = scope.get("server")
        return server is not None and name in (str(server[0]).lower(), unmapped(str(server[0])))

    async def refuse(self, send: Send, path: str = "") -> None:
        await send_error(send, HostNotAllowedError("this node does not answer to that Host; "
                                                   "add the name to http.allowed_hosts"), path=path)


# -- writes from browsers -------------------------------------------------------------------------
def check_ingest_headers(headers: Any, allowed_origins: frozenset[str]) -> None:
    """Refuse a ``POST /v1/ingest`` by its headers (415 or 403, see the module docstring)."""
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != NDJSON:
        raise UnsupportedMediaTypeError(f"send ingest lines with Content-Type: {NDJSON}")
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):  # a compressed body read as lines is all MALFORMED
        raise UnsupportedMediaTypeError(f"ingest bodies are not decoded (Content-Encoding: {encoding[:40]}); "
                                        "send the lines uncompressed")
    check_origin(headers, allowed_origins, "post ingest lines")


def check_origin(headers: Any, allowed_origins: frozenset[str], what: str, *, own: bool = False) -> None:
    """Refuse (403) a request whose ``Origin`` (a browser's, which tools do not send) is not in
    ``allowed_origins``, nor, with ``own``, the node's own (the pages it serves, e.g. /docs)."""
    origin = headers.get("origin")
    if origin is None:
        return
    origin = origin.strip().lower().rstrip("/")
    if origin in allowed_origins:
        return
    if own and origin.split("://", 1)[-1] == headers.get("host", "").strip().lower():
        return
    raise OriginNotAllowedError(f"this web origin may not {what}; add it to http.allowed_origins")


def origins(spec: str) -> frozenset[str]:
    """``http.allowed_origins`` as the set ``check_ingest_headers`` checks."""
    return frozenset(o.lower().rstrip("/") for o in split_list(spec))
