"""The endpoints of the routes that are not plain queries (ops/api/routes.py lists them all):
readiness, ingest, the faucet, JSON-RPC, the dashboard, metrics and admin actions (the Schema
Registry API's are in ops/api/registry.py). Each ``name(edge)`` makes the endpoint for one app; errors are raised as
LedgerErrors and answered by the app's one handler (ops/api/guard.py)."""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ledgerlog.engine.errors import (
    NotReadyError,
    OverloadedError,
    PausedError,
    RateLimitedError,
    StorageUnavailableError,
)
from ledgerlog.engine.intjson import dumps_any
from ledgerlog.ops.api import admin, rpc
from ledgerlog.ops.api.guard import check_ingest_headers, check_origin
from ledgerlog.ops.api.limits import HttpLimits, TokenBuckets, client_key
from ledgerlog.ops.data.lines import numbered_lines

if TYPE_CHECKING:
    from ledgerlog.ops.api.faucet import Faucet
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["Edge", "dumps", "json_response"]

Endpoint = Callable[..., Any]


#: compact JSON as FastAPI writes it; integers beyond 64 bits too
dumps = dumps_any


def json_response(body: Any, status: int = 200) -> Response:
    """A Response of ``body`` as JSON (skips FastAPI's jsonable_encoder)."""
    return Response(dumps(body), status_code=status, media_type="application/json")


@dataclass(frozen=True)
class Edge:
    """What the endpoints of one app share: the node and the app's limits, faucet and buckets."""

    node: NodeContext
    limits: HttpLimits
    faucet: Faucet
    ingest_buckets: TokenBuckets
    allowed_origins: frozenset[str]


def ready(edge: Edge) -> Endpoint:
    node, limits = edge.node, edge.limits

    async def ready() -> Response:
        lag = await run_in_threadpool(node.runner.lag)
        lagging = sorted(n for n, v in lag.items() if v > limits.ready_max_lag)
        storage = node.storage_status()
        ok = not lagging and storage["writable"]
        body: dict[str, Any] = {"ready": ok, "chain_id": node.genesis.chain_id, "lag": lag,
                                "max_lag": limits.ready_max_lag, "writable": storage["writable"],
                                "storage": storage, **node.controls.to_dict()}
        if not storage["writable"]:
            body.update(code=StorageUnavailableError.code, message=StorageUnavailableError.public)
        elif lagging:
            body.update(code=NotReadyError.code,
                        message=f"projections {lagging} lag by more than {limits.ready_max_lag} records")
        return json_response(body, 200 if ok else 503)
    return ready


INGEST_OPENAPI: dict[str, Any] = {
    "openapi_extra": {"requestBody": {"required": True, "content": {
        "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}}}},
    "responses": {200: {"description": "nothing rejected"}, 422: {"description": "something rejected"},
                  403: {"description": "an Origin not in http.allowed_origins (ORIGIN_NOT_ALLOWED)"},
                  413: {"description": "body too large"},
                  415: {"description": "not application/x-ndjson (UNSUPPORTED_MEDIA_TYPE)"},
                  429: {"description": "rate limited"},
                  503: {"description": "ingest paused by the operator (PAUSED), or the disk "
                                       "refuses writes (STORAGE_UNAVAILABLE)"}}}


#: Ingest bodies of the largest size (``http.ingest_max_body``) a node holds at once, counted in
#: bytes as they arrive (admission takes a chunk at a time anyway): what bounds the memory clients
#: can make it hold. A slow client holds only what it has sent: it cannot take the room of others.
INGEST_BODIES = 4


def ingest(edge: Edge) -> Endpoint:
    node = edge.node
    room = INGEST_BODIES * edge.limits.max_ingest_body
    held = [0]  # bytes of ingest bodies held now (the event loop's thread alone counts them)

    async def ingest(request: Request) -> Response:
        check_ingest_headers(request.headers, edge.allowed_origins)
        if node.controls.ingest_paused:
            raise PausedError("ingest is paused by the operator")
        wait = edge.ingest_buckets.take(client_key(request))
        if wait > 0:
            raise RateLimitedError("too many ingest requests from this client", wait)
        mine = 0
        try:
            # the size cap is BodyLimit's (max_ingest_body); a client gone meanwhile is ClientDisconnect
            chunks = []
            async for chunk in request.stream():
                if held[0] + len(chunk) > room:
                    raise OverloadedError(f"ingest bodies of {held[0]} bytes are under way; send this one "
                                          "again when one has been answered")
                held[0] += len(chunk)
                mine += len(chunk)
                chunks.append(chunk)
            body = b"".join(chunks)
            del chunks
            # lines are read lazily, a chunk at a time, so memory is the body and one chunk's lines
            ids = request.query_params.get("ids", "").lower() in ("1", "true", "yes")  # list admitted ids
            summary = await run_in_threadpool(node.admit_numbered, numbered_lines(io.BytesIO(body)), ids)
        finally:
            held[0] -= mine
        return json_response(summary, 422 if summary["rejected"] else 200)
    return ingest


class FaucetRequest(BaseModel):
    address: str = Field(pattern=r"^[0-9a-fA-F]{40}$", description="40-hex address to fund")


FAUCET_OPENAPI: dict[str, Any] = {
    "responses": {400: {"description": "bad address"}, 429: {"description": "rate limited (Retry-After)"},
                  503: {"description": "FAUCET_DISABLED, FAUCET_PAUSED, PAUSED or INSUFFICIENT_BALANCE"}}}


def faucet_grant(edge: Edge) -> Endpoint:
    async def faucet_grant(req: FaucetRequest, request: Request) -> Response:
        return json_response(await run_in_threadpool(edge.faucet.grant, req.address, client_key(request)))
    return faucet_grant


def faucet_status(edge: Edge) -> Endpoint:
    async def faucet_status() -> Response:
        return json_response(await run_in_threadpool(edge.faucet.status))
    return faucet_status


RPC_OPENAPI: dict[str, Any] = {
    "openapi_extra": {"requestBody": rpc.openapi_body()},
    "responses": {200: {"description": "a response object or a batch of them"},
                  204: {"description": "every call was a notification"}}}


def rpc_endpoint(edge: Edge) -> Endpoint:
    node, max_lag = edge.node, edge.limits.ready_max_lag

    async def rpc_endpoint(request: Request) -> Response:
        check_origin(request.headers, edge.allowed_origins, "call /rpc", own=True)
        body = await request.body()
        server = request.scope.get("server")
        local = (str(server[0]), int(server[1])) if server and server[1] is not None else None
        answer = await run_in_threadpool(lambda: rpc.handle(node, body, local=local, max_lag=max_lag))
        if answer is None:
            return Response(status_code=204)
        return Response(answer, media_type="application/json")  # (serialized as its budget counted it)
    return rpc_endpoint


def dashboard(edge: Edge) -> Endpoint:
    async def dashboard() -> Response:
        return json_response(await run_in_threadpool(edge.node.queries.dashboard))
    return dashboard


def metrics(edge: Edge) -> Endpoint:
    async def metrics() -> Response:
        data = await run_in_threadpool(edge.node.metrics.render)
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")
    return metrics


def index(edge: Edge) -> Endpoint:
    async def index() -> HTMLResponse:
        return HTMLResponse((resources.files("ledgerlog.ops") / "static" / "index.html").read_text())
    return index


def admin_action(edge: Edge) -> Endpoint:
    return admin.endpoint(edge.node)
