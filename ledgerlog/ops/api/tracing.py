"""Trace spans through the OpenTelemetry SDK.

Spans: ``ledgerlog.admit_chunk`` (one admitted chunk of ingest lines) with its child
``ledgerlog.log_append`` (the atomic, synced append), ``ledgerlog.fold_batch`` (one projection
batch: fold and commit), and one SERVER span per HTTP request (``GET /v1/status``: method and
route template), which the admission spans of an ingest request nest under. Recent FastAPI
versions make those request spans themselves (``fastapi.telemetry``, with child spans for the
endpoint and serialization); with older ones ``TracingMiddleware`` here makes them. The hooks in
``engine/`` and ``streams/`` use only ``opentelemetry-api`` (``trace.get_tracer``); this module
installs the SDK provider they report to.

Export: OTLP over HTTP/protobuf to ``trace.otlp_endpoint`` (env ``OTEL_EXPORTER_OTLP_ENDPOINT``,
the collector's base URL; ``/v1/traces`` is appended). Without an endpoint no SDK provider is
installed, so spans stay no-ops and nothing is exported."""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from ledgerlog.engine.config import Config

__all__ = [
    "SPAN_NAMES",
    "TracingMiddleware",
    "instrument_app",
    "native_http_spans",
    "setup_tracing",
    "traces_url",
]

log = logging.getLogger("ledgerlog.tracing")

#: The span names ledgerlog emits (HTTP spans are named "<METHOD> <route>").
SPAN_NAMES = ("ledgerlog.admit_chunk", "ledgerlog.log_append", "ledgerlog.fold_batch")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]

def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector base URL (as OTEL_EXPORTER_OTLP_ENDPOINT means it)."""
    base = endpoint.strip().rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def setup_tracing(config: Config, *, exporter: SpanExporter | None = None,
                  chain_id: str | None = None) -> TracerProvider | None:
    """Install the process-wide SDK TracerProvider exporting to ``config.otlp_endpoint`` (or to
    ``exporter``, for tests); None, installing nothing, when neither is given."""
    endpoint = config.otlp_endpoint.strip()
    if exporter is None and not endpoint:
        log.debug("tracing: no OTLP endpoint set; spans are not recorded")
        return None
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(endpoint=traces_url(endpoint))
    attrs: dict[str, Any] = {"service.name": "ledgerlog"}
    if chain_id:
        attrs["ledgerlog.chain_id"] = chain_id
    provider = TracerProvider(resource=Resource.create(attrs))  # flushes and shuts down at exit
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing: exporting spans to %s", traces_url(endpoint) if endpoint else type(exporter).__name__)
    return provider


class TracingMiddleware:
    """ASGI middleware: one SERVER span per HTTP request, continuing an incoming W3C traceparent."""

    def __init__(self, app: ASGIApp, tracer_provider: Any = None) -> None:
        self.app = app
        self.tracer = trace.get_tracer("ledgerlog.http", tracer_provider=tracer_provider)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        with self.tracer.start_as_current_span(
                method, context=propagate.extract(carrier), kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope.get("path", "")}) as span:
            status = 0

            async def send_traced(message: Message) -> None:
                nonlocal status
                if message.get("type") == "http.response.start":
                    status = int(message.get("status", 0))
                    span.set_attribute("http.response.status_code", status)
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            except BaseException:
                if not status:  # the server answers 500; the span records the exception
                    span.set_attribute("http.response.status_code", 500)
                raise
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                if status >= 500 or status == 0:
                    span.set_status(Status(StatusCode.ERROR))


def native_http_spans() -> bool:
    """True when FastAPI traces requests itself (its ``fastapi.telemetry``: a SERVER span per request
    with route, status and the caller's traceparent, whenever a tracer provider is installed)."""
    import importlib.util
    return importlib.util.find_spec("fastapi.telemetry") is not None


def instrument_app(app: Any) -> None:
    """One SERVER span per request: FastAPI's own where it has them, else ``TracingMiddleware``."""
    if not native_http_spans():
        app.add_middleware(TracingMiddleware)
