"""The hot read routes of the node's API, answered without the framework, and the pure ASGI
metrics middleware of the rest.

Why: a ``GET /v1/accounts/{address}`` does ~25 µs of work (a RocksDB get, the provenance, orjson),
but through FastAPI it cost ~1.5 ms of CPU: the middleware stack, dependency solving and
validation of the path and query parameters, ``jsonable_encoder`` + ``json.dumps``, and a hop to
the thread pool and back (GIL hand-offs between the event loop and the worker thread). Profiled
under load, the handler itself was under 5 % of the node's time.

``FastLane`` is compiled from the query routes of the route table (ops/api/routes.py): it answers
their plain forms (``GET``, each path parameter one segment, query parameters only as plain
decimals of at most 18 digits) on the event loop, and hands every other request to FastAPI
unchanged, which answers it from the same table (so ``/openapi.json``, and anything unusual such
as ``?height=-1``, is FastAPI's). Errors are answered by the one builder, ops/api/guard.py
``error_answer``, as the app's exception handler answers them; metrics series are the same
(``route`` is the route template).

Read-your-writes: on a log whose end offsets are in memory (``Log.ends_are_local``), the
lane first checks, without blocking, that the projections the route reads have folded everything
appended so far; if they have (the usual case), it answers on the event loop. If not, or on Kafka
(where end offsets are a broker round trip), it waits and reads in the thread pool as the
FastAPI routes do (``Queries.sync``, bounded).

When OpenTelemetry is set up (a global tracer or meter provider, as ``trace.otlp_endpoint`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` installs), every request goes through FastAPI, so each one still
gets its SERVER span from FastAPI's own telemetry (or ``ops.tracing.TracingMiddleware``)."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from starlette.concurrency import run_in_threadpool

from ledgerlog.ops.api.guard import error_answer
from ledgerlog.ops.api.handlers import dumps, json_response

if TYPE_CHECKING:
    from ledgerlog.ops.api.routes import Route
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["FastLane", "RequestMetrics", "dumps", "json_response", "telemetry_installed"]

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Any, Send], Awaitable[None]]

_JSON = b"application/json"
_MAX_DIGITS = 18  # longer (or signed, padded, ...) integers go to FastAPI's validation


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


@dataclass(frozen=True)
class _Lane:
    """One query route as the lane serves it."""

    template: str
    reads: tuple[str, ...] | None
    answer: Callable[..., Any]
    params: tuple[tuple[str, int, int], ...]  # query parameters: name, ge, le

    def args(self, segment: str | None, query: bytes) -> tuple[Any, ...] | None:
        """The answer's arguments for a plain request; None for FastAPI to answer."""
        values: dict[str, int] = {}
        if query:
            for part in query.split(b"&"):
                name, eq, digits = part.partition(b"=")
                key = name.decode("latin-1")
                if (not eq or key in values or not digits.isdigit() or len(digits) > _MAX_DIGITS
                        or (digits[0] == 0x30 and digits != b"0")):
                    return None
                spec = next((p for p in self.params if p[0] == key), None)
                if spec is None or not spec[1] <= int(digits) <= spec[2]:
                    return None
                values[key] = int(digits)
        head = () if segment is None else (segment,)
        return head + tuple(values.get(p[0]) for p in self.params)


class FastLane:
    """Plain GETs of the query routes, answered directly (see the module docstring)."""

    def __init__(self, node: NodeContext, on_request: Callable[[str, str, int, float], None],
                 routes: tuple[Route, ...] | None = None) -> None:
        if routes is None:
            from ledgerlog.ops.api.routes import ROUTES  # the routes import this module's peers
            routes = ROUTES
        self.queries = node.queries
        self.on_request = on_request
        self.inline = node.chain.log.ends_are_local
        self.exact: dict[str, _Lane] = {}
        self.prefixed: list[tuple[str, _Lane]] = []  # path prefix -> the route of its one last segment
        for r in routes:
            if r.method != "GET" or r.answer is None or any(p.text for p in r.params):
                continue
            lane = _Lane(r.path, r.reads, r.answer(node), tuple((p.name, p.ge, p.le) for p in r.params))
            prefix, brace, rest = r.path.partition("{")
            if not brace:
                self.exact[r.path] = lane
            elif prefix.endswith("/") and "{" not in prefix and rest.endswith("}") and "/" not in rest:
                self.prefixed.append((prefix, lane))
            # any other template (two parameters, ...) is FastAPI's alone

    def match(self, scope: Scope) -> tuple[_Lane, tuple[Any, ...]] | None:
        """(route, arguments) for a request the lane answers; None for FastAPI."""
        if scope.get("method") != "GET" or scope.get("root_path") or telemetry_installed():
            return None
        path: str = scope["path"]
        query: bytes = scope.get("query_string", b"")
        lane = self.exact.get(path)
        if lane is not None:
            args = lane.args(None, query)
            return None if args is None else (lane, args)
        for prefix, lane in self.prefixed:
            if path.startswith(prefix):
                segment = path[len(prefix):]
                if not segment or "/" in segment:
                    return None  # FastAPI's 404
                args = lane.args(segment, query)
                return None if args is None else (lane, args)
        return None

    def _synced(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        self.queries.sync()
        return fn(*args)

    async def serve(self, send: Send, lane: _Lane, args: tuple[Any, ...]) -> None:
        start = time.perf_counter()
        headers: dict[str, str] = {}
        try:
            if lane.reads is None or (self.inline and self.queries.caught_up(lane.reads or None)):
                body: Any = lane.answer(*args)
            else:
                body = await run_in_threadpool(self._synced, lane.answer, args)
            status = 200
        except Exception as exc:  # noqa: BLE001 - answered as the app's one handler answers it
            status, body, headers = error_answer(exc)
        data = dumps(body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(data)).encode()), (b"content-type", _JSON),
                                *((k.lower().encode(), v.encode()) for k, v in headers.items())]})
        await send({"type": "http.response.body", "body": data})
        self.on_request(lane.template, "GET", status, time.perf_counter() - start)


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
