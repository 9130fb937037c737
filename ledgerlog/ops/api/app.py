"""The node's HTTP API (PROTOCOL.md §7) on FastAPI, served from one route table
(ops/api/routes.py): queries from projections (read-your-writes; their plain GETs by the fast
lane, ops/api/fast.py), ingest through admission, the faucet, JSON-RPC at /rpc, readiness,
Prometheus metrics, the read-only Schema Registry API, the dashboard and the admin actions.
Every request meets the limits of ops/api/limits.py and the guards of ops/api/guard.py, and every
error is answered by one handler from the error table (engine/errors.py)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from ledgerlog.ops.api.docs import mount_static
from ledgerlog.ops.api.fast import FastLane, RequestMetrics
from ledgerlog.ops.api.faucet import FaucetSettings, attach
from ledgerlog.ops.api.guard import (
    HostGuard,
    install_error_handlers,
    origins,
    register_root,
    split_list,
)
from ledgerlog.ops.api.limits import BodyLimit, HttpLimits, TokenBuckets
from ledgerlog.ops.api.routes import ROUTES, Edge, mount
from ledgerlog.ops.api.tracing import instrument_app

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["create_app", "MAX_INGEST_BYTES"]

MAX_INGEST_BYTES = HttpLimits().max_ingest_body


def create_app(node: NodeContext, *, limits: HttpLimits | None = None, faucet: FaucetSettings | None = None) -> FastAPI:
    """The app for ``node``. ``limits`` and ``faucet`` default to the node's Config (config.toml
    ``[http]``/``[faucet]``, overridden by LEDGERLOG_* env; see ops/api/limits.py and ops/node/faucet.py)."""
    limits = limits or HttpLimits.from_config(node.config)
    edge = Edge(node, limits, attach(node, faucet or FaucetSettings.from_config(node.config)),  # type: ignore[arg-type]
                TokenBuckets(limits.ingest_rate, limits.ingest_burst), origins(node.config.http_allowed_origins))
    register_root(node.config.data_dir)  # answers say <data_dir>, not where it is
    app = LedgerApp(title="ledgerlog", version="1", description="Event-sourced ledger node: queries read projections; "
                    "every answer carries its provenance (projection version, log positions, height, lag).",
                    docs_url=None, redoc_url=None)  # /docs is in the route table, offline (ops/api/docs.py)
    app.router.redirect_slashes = False  # /v1/status/ is 404, not a redirect: one name per resource
    install_error_handlers(app)
    # 413 TOO_LARGE: added first, so it sits inside the other middlewares, next to the routes
    # (a streamed body crossing the cap raises from the route's own receive)
    app.add_middleware(BodyLimit, limit_for=lambda path: limits.max_ingest_body if path == "/v1/ingest"
                       else limits.max_body)
    # latency and status by route (pure ASGI: BaseHTTPMiddleware costs a task and streams per request)
    app.add_middleware(RequestMetrics, on_request=node.metrics.on_request)
    mount(app, edge, ROUTES)
    mount_static(app)
    if edge.allowed_origins:  # their pages may post ingest lines and read answers (CORS), never send a token
        app.add_middleware(CORSMiddleware, allow_origins=sorted(edge.allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["content-type"], max_age=600,
                           allow_private_network=True)  # a listed public site may reach a node on 127.0.0.1 (Chrome asks)
        app.cors_origins = edge.allowed_origins
    instrument_app(app)  # one trace span per request (ops/node/tracing.py)
    app.fast_lane = FastLane(node, node.metrics.on_request, ROUTES)  # plain GETs of the query routes
    app.host_guard = HostGuard([node.config.http_host, *split_list(node.config.http_allowed_hosts)])
    app.on_refusal = node.metrics.on_request  # what the guard refuses never reaches RequestMetrics
    return app


class LedgerApp(FastAPI):
    """The FastAPI app, with the Host guard first and the plain GETs of the query routes answered
    by ``fast_lane`` before the framework; everything else is FastAPI's."""

    fast_lane: FastLane | None = None
    host_guard: HostGuard | None = None
    on_refusal: Callable[[str, str, int, float], None] | None = None
    cors_origins: frozenset[str] = frozenset()  # their requests go through the CORS middleware

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            send = _with_safety_headers(send)
        guard = self.host_guard
        if guard is not None and scope["type"] in ("http", "websocket") and not guard.allows(scope):
            start = time.perf_counter()
            await guard.refuse(send, scope.get("path", ""))  # DNS rebinding: a page's requests carry its own name
            if self.on_refusal is not None:
                self.on_refusal("unmatched", scope.get("method", ""), 421, time.perf_counter() - start)
            return
        lane = self.fast_lane
        if lane is not None and scope["type"] == "http" and not (self.cors_origins and _origin(scope) in self.cors_origins):
            hit = lane.match(scope)
            if hit is not None:
                await lane.serve(send, *hit)
                return
        await super().__call__(scope, receive, send)


def _origin(scope: Any) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == b"origin":
            return str(v.decode("latin-1").strip().lower().rstrip("/"))
    return None


#: on every answer: no framing by another site (clickjacking), no sniffing a type, no Referer
_SAFETY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                   (b"content-security-policy", b"frame-ancestors 'none'"), (b"referrer-policy", b"no-referrer")]


def _with_safety_headers(send: Any) -> Any:
    """``send`` adding _SAFETY_HEADERS to the response head, and ``no-cache`` to an HTML page
    (revalidated, so an upgrade's page is seen at once)."""
    async def send_safe(message: Any) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            names = {k.lower() for k, _ in headers}
            headers += [h for h in _SAFETY_HEADERS if h[0] not in names]
            if b"cache-control" not in names and any(k.lower() == b"content-type" and v.startswith(b"text/html")
                                                     for k, v in headers):
                headers.append((b"cache-control", b"no-cache"))
            message = {**message, "headers": headers}
        await send(message)
    return send_safe
