"""The admin API under /v1/admin/: bearer token (config ``admin.token`` / LEDGERLOG_ADMIN_TOKEN),
compared in constant time, never logged, never accepted from the query string; optionally only
from the client networks in ``admin.allow``. With no token configured the admin API is disabled
(403). ``init`` writes a random token into config.toml
(mode 0600), so the operator's CLI on the same data dir can reach it.

Every action that runs is recorded on ``ledger.admin`` (AdminActionRecorded: action, body,
client, outcome) before the reply, so auditors see it; refused requests change nothing and are
not recorded. Each action declares the body fields it takes and their types: an unknown field or
a value of the wrong type is 400 ``BAD_REQUEST`` before anything runs; an action's own
``ConfigError`` (a bad value) is 400 and an ``OSError`` 503 ``IO_ERROR``; no answer carries an
absolute filesystem path (ops/http_guard.py ``public``)."""
from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import time
from typing import TYPE_CHECKING, Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

import orjson
from ledgerlog.engine import topics as T
from ledgerlog.engine.errors import ConfigError, StorageUnavailableError

from ledgerlog.ops.api.guard import error_body, public_json

if TYPE_CHECKING:
    from ledgerlog.ops.node.lifecycle import Node

__all__ = ["admin_router", "AdminAction"]

#: name -> function(node, body) -> JSON-able result; filled by the modules that own the actions.
AdminAction = Callable[["Node", dict[str, Any]], Any]
ACTIONS: dict[str, AdminAction] = {}
#: name -> the body fields the action takes and their JSON types (null is "not given").
FIELDS: dict[str, dict[str, type]] = {}


def action(name: str, fields: dict[str, type] | None = None) -> Callable[[AdminAction], AdminAction]:
    """Register ``fn`` as admin action ``name`` taking the body ``fields`` (none by default)."""
    def register(fn: AdminAction) -> AdminAction:
        ACTIONS[name] = fn
        FIELDS[name] = dict(fields or {})
        return fn
    return register


def body_problem(name: str, body: dict[str, Any]) -> str | None:
    """Why ``body`` does not fit action ``name``'s fields; None when it does."""
    fields = FIELDS.get(name, {})
    unknown = sorted(set(body) - set(fields))
    if unknown:
        takes = ", ".join(sorted(fields)) or "no fields"
        return f"admin {name} takes {takes}; unknown: {', '.join(k[:40] for k in unknown[:5])}"
    for key, typ in fields.items():
        v = body.get(key)
        if v is not None and (not isinstance(v, typ) or (typ is int and isinstance(v, bool))):
            return f"{key} must be {_TYPE_NAMES.get(typ, typ.__name__)}"
    return None


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", list: "an array", dict: "an object"}


def _refuse(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


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
    router = APIRouter(prefix="/v1/admin", tags=["admin"])
    allow = allowed_networks(node.config.admin_allow)

    @router.post("/{name}", summary="Run an admin action (reproject, snapshot, ...)")
    async def run_action(name: str, request: Request) -> Any:
        refused = check_token(request, node.config.admin_token, allow)
        if refused is not None:
            return refused
        fn = ACTIONS.get(name)
        if fn is None:
            return _refuse(404, "NOT_FOUND", f"no admin action {name[:64]!r}; have {sorted(ACTIONS)}")
        try:
            raw = await request.body()
            body = json.loads(raw, parse_constant=_no_constant) if raw.strip() else {}
        except (ValueError, RecursionError):
            return _refuse(400, "BAD_REQUEST", "body must be JSON")
        if not isinstance(body, dict):
            return _refuse(400, "BAD_REQUEST", "body must be a JSON object")
        problem = body_problem(name, body)
        if problem is not None:
            return _refuse(400, "BAD_REQUEST", problem)
        if not node.storage_status()["writable"]:  # an action that cannot be recorded does not run
            return _refuse(503, StorageUnavailableError.code, StorageUnavailableError.public)
        client = request.client.host if request.client else ""
        try:
            result = await run_in_threadpool(run_recorded, node, name, body, client)
        except ConfigError as exc:  # a value the action cannot use (BadRequest is one)
            return _refuse(400, "BAD_REQUEST", str(exc))
        except OSError as exc:
            return _refuse(503, "IO_ERROR", f"admin {name}: {exc}")
        sent = [v for v in body.values() if isinstance(v, str)]  # e.g. a snapshot's --out: the client's own
        return result if isinstance(result, Response) else public_json(result, keep=sent)

    return router


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _dumps(value: Any) -> str:
    """Canonical JSON of a body or result for the audit record; integers of any size."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


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
        _record(node, name, body, client, "ok", _dumps(result))
    return result


def _record(node: "Node", name: str, body: dict[str, Any], client: str, outcome: str, detail: str) -> None:
    event = {"action": name, "params": _dumps(body),
             "client": client, "outcome": outcome, "detail": detail[:4096], "node": socket.gethostname(),
             "timestamp": int(time.time() * 1000)}
    node.admitter.record(T.ADMIN, name, event, event["timestamp"])
