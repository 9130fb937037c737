"""The node's HTTP API (PROTOCOL.md §7) on FastAPI: queries from projections (read-your-writes),
ingest through admission, Prometheus metrics, the read-only Schema Registry API and the dashboard;
JSON-RPC 2.0 at /rpc (ops/rpc.py), readiness at /v1/ready, the faucet (ops/faucet.py), and the
limits every request meets: body size, rate limits, JSON error bodies (ops/limits.py), and who may
talk to it: Host, and the content type and origin of ingest posts (ops/http_guard.py)."""
from __future__ import annotations

import io
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any, Optional

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ledgerlog.engine.errors import LedgerError, NotFoundError, SchemaError, StorageError, StorageUnavailableError, error_code
from ledgerlog.engine.intjson import dumps_any

from ledgerlog.ops.api import rpc
from ledgerlog.ops.api.admin import admin_router
from ledgerlog.ops.api.faucet import FaucetSettings, Refused, attach
from ledgerlog.ops.api.fast import FastLane, RequestMetrics, dumps, json_response
from ledgerlog.ops.api.guard import HostGuard, error_body, ingest_refusal, origins, register_root, split_list
from ledgerlog.ops.api.limits import (
    BodyLimit,
    HttpLimits,
    TokenBuckets,
    client_key,
    controls,
    install_error_handlers,
    rate_limited,
)
from ledgerlog.ops.data.lines import numbered_lines
from ledgerlog.ops.query.queries import I64_MAX, BadRequest
from ledgerlog.ops.api.tracing import instrument_app

if TYPE_CHECKING:
    from ledgerlog.ops.node.lifecycle import Node

__all__ = ["create_app", "MAX_INGEST_BYTES"]

log = logging.getLogger("ledgerlog.http")

MAX_INGEST_BYTES = HttpLimits().max_ingest_body


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status)


class FaucetRequest(BaseModel):
    address: str = Field(pattern=r"^[0-9a-fA-F]{40}$", description="40-hex address to fund")


def create_app(node: "Node", *, limits: HttpLimits | None = None, faucet: FaucetSettings | None = None) -> FastAPI:
    """The app for ``node``. ``limits`` and ``faucet`` default to the node's Config (config.toml
    ``[http]``/``[faucet]``, overridden by LEDGERLOG_* env; see ops/limits.py and ops/faucet.py)."""
    limits = limits or HttpLimits.from_config(node.config)
    tap = attach(node, faucet or FaucetSettings.from_config(node.config))
    ingest_buckets = TokenBuckets(limits.ingest_rate, limits.ingest_burst)
    allowed_origins = origins(node.config.http_allowed_origins)
    register_root(node.config.data_dir)  # answers say <data_dir>, not where it is
    app = LedgerApp(title="ledgerlog", version="1", description="Event-sourced ledger node: queries read projections; "
                  "every answer carries its provenance (projection version, log positions, height, lag).")
    app.router.redirect_slashes = False  # /v1/status/ is 404, not a redirect: one name per resource
    install_error_handlers(app)
    # 413 TOO_LARGE: added first, so it sits inside the other middlewares, next to the routes
    # (a streamed body crossing the cap raises from the route's own receive)
    app.add_middleware(BodyLimit, limit_for=lambda path: limits.max_ingest_body if path == "/v1/ingest"
                       else limits.max_body)

    # latency and status by route (pure ASGI: BaseHTTPMiddleware costs a task and streams per request)
    app.add_middleware(RequestMetrics, on_request=node.metrics.on_request)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, "NOT_FOUND", str(exc))

    @app.exception_handler(BadRequest)
    async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
        return _error(400, "BAD_REQUEST", str(exc))

    @app.exception_handler(SchemaError)
    async def _schema(_: Request, exc: SchemaError) -> JSONResponse:
        return _error(404, "SCHEMA_NOT_FOUND", str(exc))

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        log.warning("storage: %s", exc)  # the paths go to the operator's log, not the answer
        return _error(503, exc.code, exc.public)

    @app.exception_handler(LedgerError)
    async def _ledger(_: Request, exc: LedgerError) -> JSONResponse:
        return _error(503, error_code(exc), str(exc))

    async def answer(fn: Any, *args: Any) -> Any:
        def run() -> Any:
            node.queries.sync()
            return fn(*args)
        return json_response(await run_in_threadpool(run))  # orjson, not jsonable_encoder

    @app.get("/v1/health", tags=["node"], summary="Liveness")
    async def health() -> dict[str, Any]:
        return node.health()

    @app.get("/v1/ready", tags=["node"], summary="Readiness: 503 while a projection lags too far behind the log",
             responses={503: {"description": "not ready: a projection lags by more than the threshold "
                                              "(NOT_READY), or the disk refuses writes (STORAGE_UNAVAILABLE)"}})
    async def ready() -> JSONResponse:
        lag = await run_in_threadpool(node.runner.lag)
        lagging = sorted(n for n, v in lag.items() if v > limits.ready_max_lag)
        storage = node.storage_status()
        ok = not lagging and storage["writable"]
        body: dict[str, Any] = {"ready": ok, "chain_id": node.genesis.chain_id, "lag": lag,
                                "max_lag": limits.ready_max_lag, "writable": storage["writable"],
                                "storage": storage, **controls(node).to_dict()}
        if not storage["writable"]:
            body.update(code=StorageUnavailableError.code, message=StorageUnavailableError.public)
        elif lagging:
            body.update(code="NOT_READY", message=f"projections {lagging} lag by more than {limits.ready_max_lag} records")
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v1/status", tags=["chain"], summary="Chain id, height, tip hash, mempool and lag")
    async def status() -> Any:
        return await answer(node.queries.status)

    @app.get("/v1/accounts/{address}", tags=["chain"], summary="Balance, staked and nonce (optionally at a height)")
    async def account(address: str, height: Optional[int] = Query(None, ge=0, le=I64_MAX)) -> Any:
        return await answer(node.queries.account, address, height)

    @app.get("/v1/blocks/{height_or_hash}", tags=["chain"], summary="A block by height or hash")
    async def block(height_or_hash: str) -> Any:
        return await answer(node.queries.block, height_or_hash)

    @app.get("/v1/tx/{txid}", tags=["chain"], summary="A transaction: confirmed, pending or evicted")
    async def tx(txid: str) -> Any:
        return await answer(node.queries.tx, txid)

    @app.get("/v1/pool/workers/{address}", tags=["pool"], summary="A worker's PPLNS credit, paid and pending")
    async def worker(address: str) -> Any:
        return await answer(node.queries.worker, address)

    @app.get("/v1/energy/providers/{provider_id}", tags=["energy"], summary="An energy provider")
    async def provider(provider_id: str) -> Any:
        return await answer(node.queries.provider, provider_id)

    @app.post("/v1/ingest", tags=["ingest"], summary="Admit ingest lines (application/x-ndjson body)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}}}},
              responses={200: {"description": "nothing rejected"}, 422: {"description": "something rejected"},
                         403: {"description": "an Origin not in http.allowed_origins (ORIGIN_NOT_ALLOWED)"},
                         413: {"description": "body too large"},
                         415: {"description": "not application/x-ndjson (UNSUPPORTED_MEDIA_TYPE)"},
                         429: {"description": "rate limited"},
                         503: {"description": "ingest paused by the operator (PAUSED), or the disk "
                                               "refuses writes (STORAGE_UNAVAILABLE)"}})
    async def ingest(request: Request) -> Response:
        refused = ingest_refusal(request.headers, allowed_origins)
        if refused is not None:
            return _error(*refused)
        if controls(node).ingest_paused:
            return _error(503, "PAUSED", "ingest is paused by the operator")
        wait = ingest_buckets.take(client_key(request))
        if wait > 0:
            return rate_limited(wait, "too many ingest requests from this client")
        chunks: list[bytes] = []
        try:
            async for chunk in request.stream():  # the size cap is BodyLimit's (max_ingest_body)
                chunks.append(chunk)
        except ClientDisconnect:  # gone (or timed out by the server): nothing admitted, nobody to answer
            return Response(status_code=400)
        body = b"".join(chunks)
        del chunks
        # lines are read lazily, a chunk at a time, so memory is the body and one chunk's lines
        summary = await run_in_threadpool(node.admit_numbered, numbered_lines(io.BytesIO(body)))
        return Response(dumps(summary), status_code=422 if summary["rejected"] else 200,
                        media_type="application/json")

    @app.post("/v1/faucet", tags=["faucet"], summary="Grant the faucet amount to an address (a signed transaction)",
              responses={400: {"description": "bad address"}, 429: {"description": "rate limited (Retry-After)"},
                         503: {"description": "FAUCET_DISABLED, FAUCET_PAUSED, PAUSED or INSUFFICIENT_BALANCE"}})
    async def faucet_grant(req: FaucetRequest, request: Request) -> Any:
        try:
            return await run_in_threadpool(tap.grant, req.address, client_key(request))
        except Refused as r:
            return r.response()

    @app.get("/v1/faucet", tags=["faucet"], summary="The faucet: enabled, paused, address, amount, spendable")
    async def faucet_status() -> Any:
        return await run_in_threadpool(tap.status)

    @app.post("/rpc", tags=["rpc"], summary="JSON-RPC 2.0 (bitcoind-style read methods; see ops/rpc.py)",
              openapi_extra={"requestBody": rpc.openapi_body()},
              responses={200: {"description": "a response object or a batch of them"},
                         204: {"description": "every call was a notification"}})
    async def rpc_endpoint(request: Request) -> Response:
        body = await request.body()
        server = request.scope.get("server")
        local = (str(server[0]), int(server[1])) if server and server[1] is not None else None
        answer = await run_in_threadpool(lambda: rpc.handle(node, body, local=local, max_lag=limits.ready_max_lag))
        if answer is None:
            return Response(status_code=204)
        return Response(dumps_any(answer), media_type="application/json")

    @app.get("/v1/dashboard", tags=["dashboard"], summary="Everything the dashboard page shows")
    async def dashboard() -> Any:
        return json_response(await run_in_threadpool(node.queries.dashboard))

    @app.get("/metrics", tags=["node"], summary="Prometheus metrics")
    async def metrics() -> Response:
        data = await run_in_threadpool(node.metrics.render)
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((resources.files("ledgerlog.ops") / "static" / "index.html").read_text())

    _schema_registry_routes(app, node)
    app.include_router(admin_router(node))
    instrument_app(app)  # one trace span per request (ops/tracing.py)
    app.fast_lane = FastLane(node, node.metrics.on_request)  # plain GETs of the query routes
    app.host_guard = HostGuard([node.config.http_host, *split_list(node.config.http_allowed_hosts)])
    return app


class LedgerApp(FastAPI):
    """The FastAPI app, with the plain GETs of the query routes answered by ``fast_lane``
    (ops/http_fast.py) before the framework; everything else, and the OpenAPI description of
    those routes too, is FastAPI's."""

    fast_lane: FastLane | None = None
    host_guard: HostGuard | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        guard = self.host_guard
        if guard is not None and scope["type"] in ("http", "websocket") and not guard.allows(scope):
            await guard.refuse(send)  # DNS rebinding: a page's requests carry its own name
            return
        lane = self.fast_lane
        if lane is not None and scope["type"] == "http":
            hit = lane.match(scope)
            if hit is not None:
                await lane.serve(send, *hit)
                return
        await super().__call__(scope, receive, send)


def _schema_registry_routes(app: FastAPI, node: "Node") -> None:
    """The read-only part of Confluent's Schema Registry API, so stock Avro deserializers work."""
    ct = "application/vnd.schemaregistry.v1+json"

    def reg():  # noqa: ANN202
        r = node.chain.codec.registry
        r.refresh()
        return r

    @app.get("/schemas/ids/{schema_id}", tags=["schema registry"])
    async def schema_by_id(schema_id: int) -> Response:
        sv = reg().by_id.get(schema_id)
        if sv is None:
            return JSONResponse({"error_code": 40403, "code": "NOT_FOUND", "message": "Schema not found"}, 404, media_type=ct)
        return JSONResponse({"schema": sv.schema}, media_type=ct)

    @app.get("/subjects", tags=["schema registry"])
    async def subjects() -> Response:
        return JSONResponse(sorted(reg().by_subject), media_type=ct)

    @app.get("/subjects/{subject}/versions", tags=["schema registry"])
    async def versions(subject: str) -> Response:
        vs = reg().by_subject.get(subject)
        if not vs:
            return JSONResponse({"error_code": 40401, "code": "NOT_FOUND", "message": "Subject not found"}, 404, media_type=ct)
        return JSONResponse([v.version for v in vs], media_type=ct)

    @app.get("/subjects/{subject}/versions/{version}", tags=["schema registry"])
    async def version(subject: str, version: str) -> Response:
        vs = reg().by_subject.get(subject) or []
        sv = vs[-1] if vs and version == "latest" else next((v for v in vs if str(v.version) == version), None)
        if sv is None:
            return JSONResponse({"error_code": 40402, "code": "NOT_FOUND", "message": "Version not found"}, 404, media_type=ct)
        return JSONResponse({"subject": sv.subject, "version": sv.version, "id": sv.id, "schema": sv.schema},
                            media_type=ct)

