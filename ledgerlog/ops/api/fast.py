"""The hot read routes of the node's API, answered without the framework, and the pure ASGI
metrics middleware of the rest.

Why: a ``GET /v1/accounts/{address}`` does ~25 µs of work (a RocksDB get, the provenance, orjson),
but through FastAPI it cost ~1.5 ms of CPU: the middleware stack (a ``BaseHTTPMiddleware`` above
all: an extra task and memory streams per request), dependency solving and validation of the
path and query parameters, ``jsonable_encoder`` + ``json.dumps``, and a hop to the thread pool
and back (GIL hand-offs between the event loop and the worker thread). Profiled under load, the
handler itself was under 5 % of the node's time.

``FastLane`` answers the plain forms of the query routes (``GET``, the path parameter one
segment, no query string except ``?height=<decimal>`` on accounts) on the event loop, and hands
every other request to FastAPI unchanged. The routes themselves stay declared in FastAPI (so
``/openapi.json``, and anything unusual such as ``?height=-1``, is answered exactly as before);
the lane gives the same answers: the same JSON fields, the same error bodies and status codes
(400 ``BAD_REQUEST``, 404 ``NOT_FOUND``, 503 for ledger errors, 500 ``INTERNAL`` with the
traceback in the log), the same metrics series (``route`` is the route template).

Read-your-writes: on the embedded log, whose end offsets are in memory, the lane first checks,
without blocking, that the projections it reads have folded everything appended so far; if
they have (the usual case), it answers on the event loop. If not, or on Kafka (where end offsets
are a broker round trip), it waits and reads in the thread pool as the FastAPI routes do
(``Queries.sync``, bounded).

When OpenTelemetry is set up (a global tracer or meter provider, as ``trace.otlp_endpoint`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` installs), every request goes through FastAPI, so each one still
gets its SERVER span from FastAPI's own telemetry (or ``ops.tracing.TracingMiddleware``)."""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from starlette.concurrency import run_in_threadpool

from ledgerlog.engine.errors import LedgerError, NotFoundError, SchemaError, StorageError, error_code
from ledgerlog.engine.intjson import dumps_any

from ledgerlog.ops.api.guard import error_body
from ledgerlog.ops.query.queries import BadRequest

if TYPE_CHECKING:
    from ledgerlog.ops.node.lifecycle import Node

__all__ = ["FastLane", "RequestMetrics", "dumps", "json_response", "telemetry_installed"]

log = logging.getLogger("ledgerlog.http")

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Any, Send], Awaitable[None]]

_JSON = b"application/json"
_MAX_HEIGHT_DIGITS = 18  # longer (or signed, padded, ...) heights go to FastAPI's validation


def dumps(body: Any) -> bytes:
    """Compact JSON, as FastAPI writes it; orjson, or the stdlib for what orjson refuses
    (integers beyond 64 bits)."""
    return dumps_any(body)


def json_response(body: Any, status: int = 200) -> Any:
    """A starlette Response of ``body`` as JSON (skips FastAPI's jsonable_encoder)."""
    from starlette.responses import Response
    return Response(dumps(body), status_code=status, media_type="application/json")


_TELEMETRY_RECHECK = 1.0
_telemetry = [False, float("-inf")]  # [installed, checked at (monotonic)]


def telemetry_installed() -> bool:
    """True when a global OpenTelemetry tracer or meter provider is set (FastAPI's telemetry, or
    ops.tracing's middleware, then make spans and metrics per request). The answer is kept for
    a second while False (asking the API reads the environment: ~5 µs) and for good once True
    (a global provider, once set, stays)."""
    if _telemetry[0]:
        return True
    now = time.monotonic()
    if now - _telemetry[1] < _TELEMETRY_RECHECK:
        return False
    tp = trace.get_tracer_provider()
    installed = (not isinstance(tp, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
                 or type(metrics.get_meter_provider()).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider"))
    _telemetry[:] = [installed, now]
    return installed


def _error(exc: Exception) -> tuple[int, dict[str, str]]:
    """The status and body the app's exception handlers give ``exc`` (most specific class first)."""
    for cls in type(exc).__mro__:
        if cls is BadRequest:
            return 400, error_body("BAD_REQUEST", str(exc))
        if cls is NotFoundError:
            return 404, error_body("NOT_FOUND", str(exc))
        if cls is SchemaError:
            return 404, error_body("SCHEMA_NOT_FOUND", str(exc))
        if cls is StorageError:  # its message names files: answer the path-free one
            return 503, error_body(exc.code, exc.public)  # type: ignore[attr-defined]
        if cls is LedgerError:
            return 503, error_body(error_code(exc), str(exc))
    raise exc


class FastLane:
    """Plain GETs of the query routes, answered directly (see the module docstring)."""

    ACCOUNTS = "/v1/accounts/{address}"

    def __init__(self, node: Node, on_request: Callable[[str, str, int, float], None]) -> None:
        self.node = node
        self.queries = node.queries
        self.on_request = on_request
        self.inline = node.chain.log.ends_are_local  # end offsets in memory
        q = node.queries
        everything: tuple[str, ...] = ()  # () = every projection
        self.exact: dict[str, tuple[str, tuple[str, ...] | None, Callable[..., Any]]] = {
            "/v1/health": ("/v1/health", None, self._health),
            "/v1/status": ("/v1/status", everything, q.status),
        }
        #: path prefix -> (route template, projections to be caught up, answer(param))
        self.prefixed: tuple[tuple[str, str, tuple[str, ...], Callable[..., Any]], ...] = (
            ("/v1/accounts/", self.ACCOUNTS, ("balances",), q.account),
            ("/v1/blocks/", "/v1/blocks/{height_or_hash}", ("chainstate",), q.block),
            ("/v1/tx/", "/v1/tx/{txid}", ("chainstate",), q.tx),
            ("/v1/pool/workers/", "/v1/pool/workers/{address}", ("payouts",), q.worker),
            ("/v1/energy/providers/", "/v1/energy/providers/{provider_id}", ("energy",), q.provider),
        )

    def _health(self) -> dict[str, Any]:
        return self.node.health()

    def match(self, scope: Scope) -> tuple[str, tuple[str, ...] | None, Callable[..., Any], tuple[Any, ...]] | None:
        """(route, projections, answer, args) for a request the lane answers; None for FastAPI."""
        if scope.get("method") != "GET" or scope.get("root_path") or telemetry_installed():
            return None
        path: str = scope["path"]
        query: bytes = scope.get("query_string", b"")
        hit = self.exact.get(path)
        if hit is not None:
            return (*hit, ()) if not query else None
        for prefix, route, names, fn in self.prefixed:
            if path.startswith(prefix):
                param = path[len(prefix):]
                if not param or "/" in param:
                    return None  # FastAPI's 404
                if not query:
                    return (route, names, fn, (param,) if route != self.ACCOUNTS else (param, None))
                if route == self.ACCOUNTS and query.startswith(b"height="):
                    digits = query[7:]
                    if (digits.isdigit() and len(digits) <= _MAX_HEIGHT_DIGITS
                            and (digits[0] != 0x30 or digits == b"0")):
                        return route, names, fn, (param, int(digits))
                return None
        return None

    def _synced(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        self.queries.sync()
        return fn(*args)

    async def serve(self, send: Send, route: str, names: tuple[str, ...] | None, fn: Callable[..., Any],
                    args: tuple[Any, ...]) -> None:
        start = time.perf_counter()
        try:
            try:
                if names is None or (self.inline and self.queries.caught_up(names or None)):
                    body: Any = fn(*args)
                else:
                    body = await run_in_threadpool(self._synced, fn, args)
                status = 200
            except Exception as exc:  # noqa: BLE001 - mapped as the app's handlers map it
                status, body = _error(exc)
        except Exception:
            log.exception("GET %s failed", route)
            status, body = 500, {"code": "INTERNAL", "message": "internal error; see the node's log"}
        data = dumps(body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(data)).encode()), (b"content-type", _JSON)]})
        await send({"type": "http.response.body", "body": data})
        self.on_request(route, "GET", status, time.perf_counter() - start)


class RequestMetrics:
    """Pure ASGI middleware: every HTTP request's latency and status by route template (the
    FastAPI routes'; ``unmatched`` when none matched). A request that fails with an exception
    counts as 500, which is what the server answers."""

    def __init__(self, app: ASGIApp, on_request: Callable[[str, str, int, float], None]) -> None:
        self.app = app
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.on_request(route, scope.get("method", ""), status, time.perf_counter() - start)
