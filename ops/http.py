"""The node's HTTP API (PROTOCOL.md §7) on FastAPI: queries from projections (read-your-writes),
ingest through admission, Prometheus metrics, the read-only Schema Registry API and the dashboard."""
from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Optional

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from engine.errors import LedgerError, NotFoundError, SchemaError

from .admin import admin_router
from .queries import BadRequest

if TYPE_CHECKING:
    from .node import Node

__all__ = ["create_app", "MAX_INGEST_BYTES"]

MAX_INGEST_BYTES = 64 * 1024 * 1024


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def create_app(node: "Node") -> FastAPI:
    app = FastAPI(title="ledgerlog", version="1", description="Event-sourced ledger node: queries read projections; "
                  "every answer carries its provenance (projection version, log positions, height, lag).")

    @app.middleware("http")
    async def _timing(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        node.metrics.on_request(getattr(route, "path", "unmatched"), request.method, response.status_code,
                                time.perf_counter() - start)
        return response

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, "NOT_FOUND", str(exc))

    @app.exception_handler(BadRequest)
    async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
        return _error(400, "BAD_REQUEST", str(exc))

    @app.exception_handler(SchemaError)
    async def _schema(_: Request, exc: SchemaError) -> JSONResponse:
        return _error(404, "SCHEMA_NOT_FOUND", str(exc))

    @app.exception_handler(LedgerError)
    async def _ledger(_: Request, exc: LedgerError) -> JSONResponse:
        return _error(503, type(exc).__name__, str(exc))

    async def answer(fn: Any, *args: Any) -> Any:
        def run() -> Any:
            node.queries.sync()
            return fn(*args)
        return await run_in_threadpool(run)

    @app.get("/v1/health", tags=["node"], summary="Liveness")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "chain_id": node.genesis.chain_id}

    @app.get("/v1/status", tags=["chain"], summary="Chain id, height, tip hash, mempool and lag")
    async def status() -> Any:
        return await answer(node.queries.status)

    @app.get("/v1/accounts/{address}", tags=["chain"], summary="Balance, staked and nonce (optionally at a height)")
    async def account(address: str, height: Optional[int] = Query(None, ge=0)) -> Any:
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

    @app.post("/v1/ingest", tags=["ingest"], summary="Admit ingest lines (JSONL body)",
              responses={200: {"description": "nothing rejected"}, 422: {"description": "something rejected"},
                         413: {"description": "body too large"}})
    async def ingest(request: Request) -> JSONResponse:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_INGEST_BYTES:
                return _error(413, "TOO_LARGE", f"an ingest body may carry at most {MAX_INGEST_BYTES} bytes")
        lines = [(i, ln.strip()) for i, ln in enumerate(bytes(body).split(b"\n"), 1) if ln.strip()]
        summary = await run_in_threadpool(node.admit_numbered, lines)
        return JSONResponse(summary, status_code=422 if summary["rejected"] else 200)

    @app.get("/v1/dashboard", tags=["dashboard"], summary="Everything the dashboard page shows")
    async def dashboard() -> Any:
        return await run_in_threadpool(node.queries.dashboard)

    @app.get("/metrics", tags=["node"], summary="Prometheus metrics")
    async def metrics() -> Response:
        data = await run_in_threadpool(node.metrics.render)
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((resources.files("ops") / "static" / "index.html").read_text())

    _schema_registry_routes(app, node)
    app.include_router(admin_router(node))
    return app


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
            return JSONResponse({"error_code": 40403, "message": "Schema not found"}, 404, media_type=ct)
        return JSONResponse({"schema": sv.schema}, media_type=ct)

    @app.get("/subjects", tags=["schema registry"])
    async def subjects() -> Response:
        return JSONResponse(sorted(reg().by_subject), media_type=ct)

    @app.get("/subjects/{subject}/versions", tags=["schema registry"])
    async def versions(subject: str) -> Response:
        vs = reg().by_subject.get(subject)
        if not vs:
            return JSONResponse({"error_code": 40401, "message": "Subject not found"}, 404, media_type=ct)
        return JSONResponse([v.version for v in vs], media_type=ct)

    @app.get("/subjects/{subject}/versions/{version}", tags=["schema registry"])
    async def version(subject: str, version: str) -> Response:
        vs = reg().by_subject.get(subject) or []
        sv = vs[-1] if vs and version == "latest" else next((v for v in vs if str(v.version) == version), None)
        if sv is None:
            return JSONResponse({"error_code": 40402, "message": "Version not found"}, 404, media_type=ct)
        return JSONResponse({"subject": sv.subject, "version": sv.version, "id": sv.id, "schema": sv.schema},
                            media_type=ct)

