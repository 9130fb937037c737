"""The admin API under /v1/admin/: bearer token (config ``admin.token`` / LEDGERLOG_ADMIN_TOKEN),
compared in constant time, never logged, never accepted from the query string; optionally only
from the client networks in ``admin.allow``. With no token configured the admin API is disabled
(403). ``init`` writes a random token into config.toml
(mode 0600), so the operator's CLI on the same data dir can reach it.

Every action that runs is recorded on ``ledger.admin`` (AdminActionRecorded: action, body,
client, outcome) before the reply, so auditors see it; refused requests change nothing and are
not recorded."""
from __future__ import annotations

import hmac
import ipaddress
import socket
import time
from typing import TYPE_CHECKING, Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

import orjson
from engine import topics as T
from engine.errors import ConfigError, StorageUnavailableError

if TYPE_CHECKING:
    from .node import Node

__all__ = ["admin_router", "AdminAction"]

#: name -> function(node, body) -> JSON-able result; filled by the modules that own the actions.
AdminAction = Callable[["Node", dict[str, Any]], Any]
ACTIONS: dict[str, AdminAction] = {}


def action(name: str) -> Callable[[AdminAction], AdminAction]:
    def register(fn: AdminAction) -> AdminAction:
        ACTIONS[name] = fn
        return fn
    return register


def _refuse(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def allowed_networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``admin.allow``: comma-separated IPs or CIDR networks; a typo stops the node at start."""
    try:
        return [ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(f"admin.allow: {exc}") from None


def _client_allowed(request: Request, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(request.client.host if request.client else "")
    except ValueError:
        return False
    return any(ip in net for net in networks)


def check_token(request: Request, token: str,
                allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None) -> JSONResponse | None:
    """None when the request may pass; else the refusal to send."""
    if not token:
        return _refuse(403, "ADMIN_DISABLED", "admin API is disabled: set admin.token")
    if not _client_allowed(request, allow or []):
        return _refuse(403, "FORBIDDEN", "this client address is not in admin.allow")
    if any(k.lower() in ("token", "access_token", "admin_token") for k in request.query_params):
        return _refuse(401, "UNAUTHORIZED", "send the token in the Authorization header, not the URL")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return _refuse(401, "UNAUTHORIZED", "missing bearer token")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return _refuse(403, "FORBIDDEN", "wrong token")
    return None


def admin_router(node: "Node") -> APIRouter:
    from . import actions  # noqa: F401  (registers the actions)

    router = APIRouter(prefix="/v1/admin", tags=["admin"])
    allow = allowed_networks(node.config.admin_allow)

    @router.post("/{name}", summary="Run an admin action (reproject, snapshot, ...)")
    async def run_action(name: str, request: Request) -> Any:
        refused = check_token(request, node.config.admin_token, allow)
        if refused is not None:
            return refused
        fn = ACTIONS.get(name)
        if fn is None:
            return _refuse(404, "NOT_FOUND", f"no admin action {name!r}; have {sorted(ACTIONS)}")
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return _refuse(400, "BAD_REQUEST", "body must be JSON")
        if not isinstance(body, dict):
            return _refuse(400, "BAD_REQUEST", "body must be a JSON object")
        if not node.storage_status()["writable"]:  # an action that cannot be recorded does not run
            return _refuse(503, StorageUnavailableError.code, StorageUnavailableError.public)
        client = request.client.host if request.client else ""
        return await run_in_threadpool(run_recorded, node, name, body, client)

    return router


def run_recorded(node: "Node", name: str, body: dict[str, Any], client: str = "") -> Any:
    """Run admin action ``name`` and record it on ``ledger.admin``, whatever its outcome."""
    try:
        result = ACTIONS[name](node, body)
    except Exception as exc:
        _record(node, name, body, client, "error", f"{type(exc).__name__}: {exc}")
        raise
    if isinstance(result, Response):  # a refusal the action answered itself (status >= 400)
        outcome = "ok" if result.status_code < 400 else "error"
        _record(node, name, body, client, outcome, bytes(result.body).decode(errors="replace"))
    else:
        _record(node, name, body, client, "ok", orjson.dumps(result, default=str).decode())
    return result


def _record(node: "Node", name: str, body: dict[str, Any], client: str, outcome: str, detail: str) -> None:
    event = {"action": name, "params": orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=str).decode(),
             "client": client, "outcome": outcome, "detail": detail[:4096], "node": socket.gethostname(),
             "timestamp": int(time.time() * 1000)}
    node.admitter.record(T.ADMIN, name, event, event["timestamp"])
