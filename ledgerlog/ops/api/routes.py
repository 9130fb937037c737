"""The node's HTTP routes in one table (PROTOCOL.md §7). ``mount`` declares every route of the
table on the FastAPI app; ``FastLane`` (ops/api/fast.py) compiles the query routes of the same
table into its matcher. So what a route is (method, path, the projections it reads, its query
parameters and their bounds) is written once, and so is how its errors are answered (the error
table, through ops/api/guard.py)."""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from starlette.concurrency import run_in_threadpool

from ledgerlog.engine.errors import BadRequest
from ledgerlog.ops.api import docs
from ledgerlog.ops.api import handlers as h
from ledgerlog.ops.api import registry as reg
from ledgerlog.ops.api.handlers import json_response
from ledgerlog.ops.query.queries import I64_MAX, MAX_PROVIDER_ID, PROVIDERS_PAGE_MAX
from ledgerlog.ops.query.userviews import MAX_KEY, PAGE_MAX

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["Edge", "Param", "ROUTES", "Route", "mount", "path_params"]

Edge = h.Edge
_SR = ("schema registry",)


@dataclass(frozen=True)
class Param:
    """An optional query parameter: an integer and its bounds (out of them: 400 BAD_REQUEST), or
    with ``text`` a string of at most ``max_length`` characters (such routes are FastAPI's, not the lane's)."""

    name: str
    ge: int = 0
    le: int = I64_MAX
    text: bool = False
    max_length: int = 255


@dataclass(frozen=True)
class Route:
    """One route. A query route has ``answer``: ``answer(node)`` is the function answering it,
    called with the path parameters then the query ``params``, after the projections it
    ``reads`` caught up (``()``: all of them; None: no waiting). Any other route has
    ``endpoint``: ``endpoint(edge)`` makes its FastAPI endpoint."""

    method: str
    path: str
    tags: tuple[str, ...]
    summary: str = ""
    answer: Callable[[NodeContext], Callable[..., Any]] | None = None
    reads: tuple[str, ...] | None = None
    params: tuple[Param, ...] = ()
    endpoint: Callable[[h.Edge], Callable[..., Any]] | None = None
    openapi: dict[str, Any] = field(default_factory=dict)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/health", ("node",), "Liveness", answer=lambda n: n.health),
    Route("GET", "/v1/ready", ("node",), "Readiness: 503 while a projection lags too far behind the log",
          endpoint=h.ready, openapi={"responses": {503: {"description": "not ready: a projection lags by more "
                                     "than the threshold (NOT_READY), or the disk refuses writes (STORAGE_UNAVAILABLE)"}}}),
    Route("GET", "/v1/status", ("chain",), "Chain id, height, tip hash, mempool and lag",
          answer=lambda n: n.queries.status, reads=()),
    Route("GET", "/v1/accounts/{address}", ("chain",), "Balance, staked and nonce (optionally at a height)",
          answer=lambda n: n.queries.account, reads=("balances",), params=(Param("height"),)),
    Route("GET", "/v1/blocks/{height_or_hash}", ("chain",), "A block by height or hash",
          answer=lambda n: n.queries.block, reads=("chainstate",)),
    Route("GET", "/v1/tx/{txid}", ("chain",), "A transaction: confirmed, pending or evicted",
          answer=lambda n: n.queries.tx, reads=("chainstate",)),
    Route("GET", "/v1/tx/{txid}/proof", ("chain", "proofs"),
          "That a confirmed transaction is in its block: the branch to the header's tx_root",
          answer=lambda n: n.queries.tx_proof, reads=("chainstate",)),
    Route("GET", "/v1/proofs/inclusion", ("proofs",),
          "RFC 6962 inclusion proof of a record (index or offset) in a partition's tree of tree_size leaves",
          answer=lambda n: n.queries.inclusion_proof,
          params=(Param("topic", text=True), Param("partition", le=2**31 - 1), Param("index"), Param("offset"),
                  Param("tree_size"))),
    Route("GET", "/v1/proofs/consistency", ("proofs",),
          "RFC 6962 consistency proof between a partition's trees of first and second leaves",
          answer=lambda n: n.queries.consistency_proof,
          params=(Param("topic", text=True), Param("partition", le=2**31 - 1), Param("first"), Param("second"))),
    Route("GET", "/v1/tree-heads", ("proofs",), "The newest signed tree head of a partition",
          answer=lambda n: n.queries.tree_head,
          params=(Param("topic", text=True), Param("partition", le=2**31 - 1))),
    Route("GET", "/v1/pool/workers/{address}", ("pool",), "A worker's PPLNS credit, paid and pending",
          answer=lambda n: n.queries.worker, reads=("payouts",)),
    Route("GET", "/v1/energy/providers/{provider_id}", ("energy",), "An energy provider (optionally at a height)",
          answer=lambda n: n.queries.provider, reads=("energy",), params=(Param("height"),)),
    Route("GET", "/v1/energy/providers", ("energy",),
          "Energy providers in provider_id order, a page at a time (cursor: after=next_after)",
          answer=lambda n: n.queries.providers, reads=("energy",),
          params=(Param("limit", ge=1, le=PROVIDERS_PAGE_MAX), Param("after", text=True, max_length=MAX_PROVIDER_ID),
                  Param("height"))),
    Route("GET", "/v1/energy/market", ("energy",), "Energy market totals and average price (optionally at a height)",
          answer=lambda n: n.queries.market, reads=("energy",), params=(Param("height"),)),
    Route("GET", "/v1/energy/governance", ("energy",), "Governance parameters in force (optionally at a height)",
          answer=lambda n: n.queries.governance, reads=("energy",), params=(Param("height"),)),
    Route("GET", "/v1/projections", ("projections",),
          "Every projection: name, version, source, lag, height, digest (user projections too)",
          answer=lambda n: n.queries.projections, reads=()),
    Route("GET", "/v1/projections/{name}", ("projections",),
          "A page of a projection's keys and values in key order (prefix, start, limit; next is the next start)",
          answer=lambda n: n.queries.projection_page, reads=(),
          params=(Param("prefix", text=True, max_length=2 * MAX_KEY + 4),
                  Param("start", text=True, max_length=2 * MAX_KEY + 4), Param("limit", ge=1, le=PAGE_MAX))),
    Route("GET", "/v1/projections/{name}/keys/{key}", ("projections",),
          "One key of a projection (hex:<hex> for keys that are not plain text or hold '/')",
          answer=lambda n: n.queries.projection_entry, reads=()),
    Route("POST", "/v1/ingest", ("ingest",), "Admit ingest lines (application/x-ndjson body)", endpoint=h.ingest,
          openapi=h.INGEST_OPENAPI),
    Route("POST", "/v1/faucet", ("faucet",), "Grant the faucet amount to an address (a signed transaction)",
          endpoint=h.faucet_grant, openapi=h.FAUCET_OPENAPI),
    Route("GET", "/v1/faucet", ("faucet",), "The faucet: enabled, paused, address, amount, spendable",
          endpoint=h.faucet_status),
    Route("POST", "/rpc", ("rpc",), "JSON-RPC 2.0 (bitcoind-style read methods; see ops/api/rpc.py)",
          endpoint=h.rpc_endpoint, openapi=h.RPC_OPENAPI),
    Route("GET", "/v1/dashboard", ("dashboard",), "Everything the dashboard page shows", endpoint=h.dashboard),
    Route("GET", "/metrics", ("node",), "Prometheus metrics", endpoint=h.metrics),
    Route("GET", "/", (), endpoint=h.index, openapi={"include_in_schema": False}),
    Route("GET", "/docs", (), endpoint=docs.swagger, openapi={"include_in_schema": False}),
    Route("GET", "/favicon.ico", (), endpoint=docs.favicon, openapi={"include_in_schema": False}),
    # Confluent's Schema Registry API over _schemas (ops/api/registry.py: read-only, BACKWARD_TRANSITIVE)
    Route("GET", "/schemas/types", _SR, "Schema types: [\"AVRO\"]", endpoint=reg.schema_types,
          openapi=reg.openapi("the schema types", codes=())),
    Route("GET", "/schemas/ids/{schema_id}", _SR, "The schema of an id", endpoint=reg.schema_by_id,
          openapi=reg.openapi("{schema}", codes=(404,))),
    Route("GET", "/schemas/ids/{schema_id}/schema", _SR, "The schema of an id, raw", endpoint=reg.schema_text_by_id,
          openapi=reg.openapi("the schema's JSON", codes=(404,))),
    Route("GET", "/schemas/ids/{schema_id}/subjects", _SR, "The subjects registered with an id",
          endpoint=reg.schema_subjects, openapi=reg.openapi("subject names", codes=(404,))),
    Route("GET", "/schemas/ids/{schema_id}/versions", _SR, "The subject versions registered with an id",
          endpoint=reg.schema_versions, openapi=reg.openapi("[{subject, version}]", codes=(404,))),
    Route("GET", "/subjects", _SR, "Subject names", endpoint=reg.subjects, openapi=reg.openapi("subject names", codes=())),
    Route("POST", "/subjects/{subject}", _SR, "Look up the version registered with a schema", endpoint=reg.lookup,
          openapi=reg.openapi("{subject, version, id, schema}; 40403 when no version has it", body=True)),
    Route("GET", "/subjects/{subject}/versions", _SR, "A subject's versions", endpoint=reg.versions,
          openapi=reg.openapi("version numbers", codes=(404,))),
    Route("GET", "/subjects/{subject}/versions/{version}", _SR, "A version (a number or latest)", endpoint=reg.version,
          openapi=reg.openapi("{subject, version, id, schema}")),
    Route("GET", "/subjects/{subject}/versions/{version}/schema", _SR, "A version's schema, raw",
          endpoint=reg.version_schema, openapi=reg.openapi("the schema's JSON")),
    Route("POST", "/compatibility/subjects/{subject}/versions/{version}", _SR,
          "Whether a schema can read what a version wrote", endpoint=reg.compatibility,
          openapi=reg.openapi("{is_compatible} (and messages with verbose=true)", body=True)),
    Route("POST", "/compatibility/subjects/{subject}/versions", _SR,
          "Whether a schema can read what every version wrote", endpoint=reg.compatibility_all,
          openapi=reg.openapi("{is_compatible} (and messages with verbose=true)", body=True)),
    Route("GET", "/config", _SR, "The compatibility level: BACKWARD_TRANSITIVE", endpoint=reg.config,
          openapi=reg.openapi("{compatibilityLevel}", codes=())),
    Route("GET", "/config/{subject}", _SR, "A subject's compatibility level", endpoint=reg.subject_config,
          openapi=reg.openapi("{compatibilityLevel}", codes=(404,))),
    Route("GET", "/mode", _SR, "The registry's mode: READONLY", endpoint=reg.mode,
          openapi=reg.openapi("{mode}", codes=())),
    Route("GET", "/mode/{subject}", _SR, "A subject's mode", endpoint=reg.subject_mode,
          openapi=reg.openapi("{mode}", codes=(404,))),
    *(Route(method, path, _SR, f"Refused: {what} (422, error_code 42205)", endpoint=reg.read_only(path, what),
            openapi=reg.REFUSED_OPENAPI) for method, path, what in reg.WRITES),
    Route("POST", "/v1/admin/{name}", ("admin",), "Run an admin action (reproject, snapshot, ...)",
          endpoint=h.admin_action),
)


def path_params(path: str) -> list[str]:
    """The parameter names of a path template, in order."""
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


#: an integer query parameter: decimal digits (leading zeros too), no sign, space, point or _
_DECIMAL = re.compile(r"[0-9]+")


def _plain_params(request: Request, route: Route) -> None:
    """BadRequest for a parameter given twice, or an integer one spelt other than in plain
    digits (FastAPI's lax int took " 1", "+1", "1.0" and "1_0" as 1; the fast lane does not)."""
    for p in route.params:
        values = request.query_params.getlist(p.name)
        if len(values) > 1:
            raise BadRequest(f"{p.name} is given {len(values)} times: give it once")
        if values and not p.text and not _DECIMAL.fullmatch(values[0]):
            raise BadRequest(f"{p.name} must be an integer in plain digits, not {values[0][:40]!r}")


def _query_endpoint(route: Route, edge: h.Edge) -> Callable[..., Any]:
    """The FastAPI endpoint of a query route: its parameters declared (FastAPI validates them and
    describes them in /openapi.json), its answer read after the projections caught up."""
    assert route.answer is not None
    fn = route.answer(edge.node)
    names = path_params(route.path)
    queries = edge.node.queries

    def synced(args: tuple[Any, ...]) -> Any:
        queries.sync()
        return fn(*args)

    async def endpoint(request: Request, **kw: Any) -> Any:
        _plain_params(request, route)
        args = tuple(kw[n] for n in names) + tuple(kw[p.name] for p in route.params)
        if route.reads is None:
            return json_response(fn(*args))
        return json_response(await run_in_threadpool(synced, args))  # orjson, not jsonable_encoder

    kw_only = inspect.Parameter.KEYWORD_ONLY
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("request", kw_only, annotation=Request)]
        + [inspect.Parameter(n, kw_only, annotation=str) for n in names]
        + [inspect.Parameter(p.name, kw_only, annotation=str | None, default=Query(None, max_length=p.max_length))
           if p.text else
           inspect.Parameter(p.name, kw_only, annotation=int | None, default=Query(None, ge=p.ge, le=p.le))
           for p in route.params])
    endpoint.__name__ = route.path.strip("/").replace("/", "_").replace("{", "").replace("}", "") or "root"
    return endpoint


def mount(app: FastAPI, edge: h.Edge, routes: tuple[Route, ...] = ROUTES) -> None:
    """Declare every route of ``routes`` on ``app``."""
    for route in routes:
        endpoint = _query_endpoint(route, edge) if route.answer is not None else route.endpoint(edge)  # type: ignore[misc]
        app.add_api_route(route.path, endpoint, methods=[route.method], tags=list(route.tags) or None,
                          summary=route.summary or None, **route.openapi)
