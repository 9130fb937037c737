"""Who may talk to the node over HTTP, and what an answer may not reveal.

- **Host** (``HostGuard``): a request whose ``Host`` is not the node's own (the address the
  connection reached, ``localhost``, ``127.0.0.1``, ``[::1]``, ``http.host`` and the names in
  ``http.allowed_hosts``) gets 421 ``HOST_NOT_ALLOWED``: a web page on a rebinding domain
  resolves to 127.0.0.1 but its requests still say their own name.
- **Writes from browsers** (``ingest_refusal``): ``POST /v1/ingest`` takes
  ``Content-Type: application/x-ndjson`` only (415 ``UNSUPPORTED_MEDIA_TYPE``; a form or
  ``text/plain`` post is what a page can send without asking) and an ``Origin``, when present,
  must be in ``http.allowed_origins`` (403 ``ORIGIN_NOT_ALLOWED``; none by default).
- **Paths** (``public``): the message of every error body, and an admin action's result, pass
  through ``public``, which writes the data dir as ``<data_dir>`` and any other absolute
  filesystem path as ``…/<its last name>``."""
from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

__all__ = ["NDJSON", "HostGuard", "error_body", "host_name", "ingest_refusal", "public", "public_json",
           "register_root", "split_list"]

NDJSON = "application/x-ndjson"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def split_list(spec: str) -> list[str]:
    """A comma-separated config value as its non-empty, stripped items."""
    return [p.strip() for p in spec.split(",") if p.strip()]


# -- paths --------------------------------------------------------------------------------------
_ROOTS: dict[str, str] = {}  # absolute directory -> what an answer says instead
#: An absolute path of two or more names (not an API route, not inside a URL).
_ABS_PATH = re.compile(r"(?<![\w:/.~>-])/(?!v1/|rpc\b|schemas/|subjects/|metrics\b|openapi)"
                       r"(?:[^\s/'\"<>]+/)+([^\s/'\"<>]*)")


def register_root(path: str, label: str = "<data_dir>") -> None:
    """Answers write ``path`` (and anything under it) as ``label``."""
    for p in {os.path.abspath(path), os.path.realpath(path)}:
        _ROOTS[p.rstrip("/") or "/"] = label


def public(text: str, keep: Iterable[str] = ()) -> str:
    """``text`` without absolute filesystem paths (see the module docstring), except those in
    ``keep`` (paths the client itself sent, which tell it nothing new)."""
    if "/" not in text:
        return text
    for root in sorted(_ROOTS, key=len, reverse=True):
        if root != "/":
            text = text.replace(root, _ROOTS[root])
    kept = [k for k in sorted(set(keep), key=len, reverse=True) if k.startswith("/") and k in text]
    for i, k in enumerate(kept):
        text = text.replace(k, f"\x00{i}\x00")
    text = _ABS_PATH.sub(lambda m: "…/" + m.group(1), text)
    for i, k in enumerate(kept):
        text = text.replace(f"\x00{i}\x00", k)
    return text


def public_json(value: Any, keep: Iterable[str] = ()) -> Any:
    """``value`` (JSON-like) with ``public`` applied to every string in it."""
    keep = tuple(keep)
    if isinstance(value, str):
        return public(value, keep)
    if isinstance(value, dict):
        return {k: public_json(v, keep) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public_json(v, keep) for v in value]
    return value


def error_body(code: str, message: str) -> dict[str, str]:
    """The one error shape of the API: ``{"code","message"}``, the message made ``public``."""
    return {"code": code, "message": public(message)}


# -- Host -----------------------------------------------------------------------------------------
def host_name(value: str) -> str | None:
    """The host of a ``Host`` header, lowercased, without port, brackets or a trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not re.fullmatch(r":\d{1,5}", value[end + 1:])):
            return None
        name = value[1:end]
    else:
        name, _, port = value.partition(":")
        if port and not port.isdigit():
            return None
    name = name.rstrip(".")
    return name or None


class HostGuard:
    """Which ``Host`` headers the node answers (see the module docstring)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.allowed = _LOOPBACK | {n for n in (host_name(x) for x in names) if n and n not in ("0.0.0.0", "::")}

    def allows(self, scope: MutableMapping[str, Any]) -> bool:
        host = None
        for k, v in scope.get("headers", ()):
            if k == b"host":
                if host is not None:
                    return False  # two Host headers: ambiguous
                host = v
        name = host_name(host.decode("latin-1")) if host is not None else None
        if name is None:
            return False
        if name in self.allowed:
            return True
        server = scope.get("server")
        return server is not None and name == str(server[0]).lower()

    async def refuse(self, send: Send) -> None:
        body = orjson.dumps(error_body("HOST_NOT_ALLOWED", "this node does not answer to that Host; "
                                       "add the name to http.allowed_hosts"))
        await send({"type": "http.response.start", "status": 421,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# -- writes from browsers -------------------------------------------------------------------------
def ingest_refusal(headers: Any, allowed_origins: frozenset[str]) -> tuple[int, str, str] | None:
    """(status, code, message) refusing a ``POST /v1/ingest`` by its headers; None to go on."""
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != NDJSON:
        return 415, "UNSUPPORTED_MEDIA_TYPE", f"send ingest lines with Content-Type: {NDJSON}"
    origin = headers.get("origin")
    if origin is not None and origin.strip().lower().rstrip("/") not in allowed_origins:
        return 403, "ORIGIN_NOT_ALLOWED", "this web origin may not post ingest lines; add it to http.allowed_origins"
    return None


def origins(spec: str) -> frozenset[str]:
    """``http.allowed_origins`` as the set ``ingest_refusal`` checks."""
    return frozenset(o.lower().rstrip("/") for o in split_list(spec))
