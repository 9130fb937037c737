"""The admin API under /v1/admin/: bearer token (config ``admin.token`` / LEDGERLOG_ADMIN_TOKEN),
compared in constant time, never logged, never accepted from the query string; optionally only
from the client networks in ``admin.allow``. With no token configured the admin API is disabled
(403). ``init`` writes a random token into config.toml
(mode 0600), so the operator's CLI on the same data dir can reach it.

Every action that runs is recorded on ``ledger.admin`` (AdminActionRecorded: action, body,
client, outcome) before the reply, so auditors see it; refused requests change nothing and are
not recorded. Body fields an action declares ``secret`` (a key's seed) are recorded as
``"<redacted>"``. The actions are one explicit table (``node.actions``, ops/node/actions.py
``ACTIONS``: name -> ``Action(fn, fields)``); each declares the body fields it takes and their
types: an unknown field or a value of the wrong type is 400 ``BAD_REQUEST`` before anything runs.
An action raises LedgerErrors, answered as the error table says (a ``ConfigError`` 400 ``CONFIG``);
an ``OSError`` is mapped to the StorageError it stands for (503); no answer carries an absolute
filesystem path (ops/api/guard.py ``public``)."""
from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ledgerlog.engine import topics as T
from ledgerlog.engine.errors import (
    AdminDisabledError,
    BadRequest,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    StorageUnavailableError,
    UnauthorizedError,
    storage_error,
)
from ledgerlog.ops.api.guard import public_json, unmapped

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["Action", "AdminAction", "allowed_networks", "body_problem", "check_token", "endpoint", "run_recorded"]

#: function(node, body) -> JSON-able result (the node as its module types it)
AdminAction = Callable[[Any, dict[str, Any]], Any]


@dataclass(frozen=True)
class Action:
    """An admin action: its function, the body fields it takes with their JSON types (null is
    "not given"), and those of them that are secrets (redacted in the audit record)."""

    fn: AdminAction
    fields: Mapping[str, type] = field(default_factory=dict)
    secret: frozenset[str] = frozenset()


def body_problem(action: Action, name: str, body: dict[str, Any]) -> str | None:
    """Why ``body`` does not fit ``action``'s fields; None when it does."""
    fields = action.fields
    unknown = sorted(set(body) - set(fields))
    if unknown:
        takes = ", ".join(sorted(fields)) or "no fields"
        return f"admin {name} takes {takes}; unknown: {', '.join(k[:40] for k in unknown[:5])}"
    for key, typ in fields.items():
        v = body.get(key)
        if v is not None and (not isinstance(v, typ) or (typ is int and isinstance(v, bool))):
            return f"{key} must be {_TYPE_NAMES.get(typ, typ.__name__)}"
        if typ is int and isinstance(v, int) and not -(2**63) <= v < 2**63:
            return f"{key} must be a signed 64-bit integer, not {str(v)[:40]}"
    return None


_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", list: "an array", dict: "an object"}


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
        ip = ipaddress.ip_address(unmapped(request.client.host) if request.client else "")
    except ValueError:
        return False
    return any(ip in net for net in networks)


def check_token(request: Request, token: str,
                allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None) -> None:
    """Raise unless the request may pass (403 ADMIN_DISABLED or FORBIDDEN, 401 UNAUTHORIZED)."""
    token = token.strip()  # as the token a client sends is: one with spaces around in config.toml still matches
    if not token:
        raise AdminDisabledError("admin API is disabled: set admin.token")
    if not _client_allowed(request, allow or []):
        raise ForbiddenError("this client address is not in admin.allow")
    if any(k.lower() in ("token", "access_token", "admin_token") for k in request.query_params):
        raise UnauthorizedError("send the token in the Authorization header, not the URL")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UnauthorizedError("missing bearer token")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ForbiddenError("wrong token")


def endpoint(node: NodeContext) -> Callable[..., Any]:
    """The endpoint of ``POST /v1/admin/{name}``: runs an action of ``node.actions``."""
    allow = allowed_networks(node.config.admin_allow)

    async def run_action(name: str, request: Request) -> Any:
        check_token(request, node.config.admin_token, allow)
        action = node.actions.get(name)
        if action is None:
            raise NotFoundError(f"no admin action {name[:64]!r}; have {sorted(node.actions)}")
        try:
            raw = await request.body()
            body = json.loads(raw, parse_constant=_no_constant) if raw.strip() else {}
        except (ValueError, RecursionError):
            raise BadRequest("body must be JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        if not _plain_text(body):
            raise BadRequest("body strings must be Unicode text without NUL; a lone surrogate escape "
                             "(\\ud800-\\udfff) is not, nor \\u0000")
        problem = body_problem(action, name, body)
        if problem is not None:
            raise BadRequest(problem)
        if not node.storage_status()["writable"]:  # an action that cannot be recorded does not run
            raise StorageUnavailableError(StorageUnavailableError.public)
        client = request.client.host if request.client else ""
        try:
            result = await run_in_threadpool(run_recorded, node, name, body, client)
        except OSError as exc:  # a file the action wrote or read: the storage error it stands for
            raise storage_error(exc, f"admin {name}") from exc
        sent = [v for v in body.values() if isinstance(v, str)]  # e.g. a snapshot's --out: the client's own
        return public_json(result, keep=sent)

    return run_action


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _plain_text(doc: Any) -> bool:
    """Are all the strings in ``doc`` (keys too) encodable as UTF-8, and free of NUL? JSON lets a
    body spell a lone surrogate ("\\ud800"), which no record on the log can hold, and a NUL,
    which no path (snapshot out, archive dir) can."""
    todo = [doc]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            todo.extend(item)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return True


def _text(value: str) -> str:
    """``value`` as UTF-8-safe text for the audit record (a file name the OS gave an exception
    message may hold undecodable bytes as surrogates: they are written as escapes)."""
    return value.encode("utf-8", "backslashreplace").decode()


def _dumps(value: Any) -> str:
    """Canonical JSON of a body or result for the audit record; integers of any size."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def run_recorded(node: NodeContext, name: str, body: dict[str, Any], client: str = "") -> Any:
    """Run admin action ``name`` and record it on ``ledger.admin``, whatever its outcome."""
    try:
        result = node.actions[name].fn(node, body)
    except Exception as exc:
        _record(node, name, body, client, "error", f"{type(exc).__name__}: {exc}")
        raise
    _record(node, name, body, client, "ok", _dumps(result))
    return result


REDACTED = "<redacted>"


def _record(node: NodeContext, name: str, body: dict[str, Any], client: str, outcome: str, detail: str) -> None:
    secret = node.actions[name].secret
    params = {k: REDACTED if k in secret and v is not None else v for k, v in body.items()}
    event: dict[str, Any] = {"action": name, "params": _text(_dumps(params)),
             "client": client, "outcome": outcome, "detail": _text(detail[:4096]), "node": socket.gethostname(),
             "timestamp": int(time.time() * 1000)}
    node.admitter.record(T.ADMIN, name, event, event["timestamp"])
