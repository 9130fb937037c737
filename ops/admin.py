"""The admin API under /v1/admin/: bearer token (config ``admin.token`` / LEDGERLOG_ADMIN_TOKEN),
compared in constant time, never logged, never accepted from the query string. With no token
configured the admin API is disabled (403). ``init`` writes a random token into config.toml
(mode 0600), so the operator's CLI on the same data dir can reach it."""
from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

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


def check_token(request: Request, token: str) -> JSONResponse | None:
    """None when the request may pass; else the refusal to send."""
    if not token:
        return _refuse(403, "ADMIN_DISABLED", "admin API is disabled: set admin.token")
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

    @router.post("/{name}", summary="Run an admin action (reproject, snapshot, ...)")
    async def run_action(name: str, request: Request) -> Any:
        refused = check_token(request, node.config.admin_token)
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
        return await run_in_threadpool(fn, node, body)

    return router
