"""Reading any projection's raw state by key, for user projections (docs/PROJECTIONS.md):
``GET /v1/projections``, ``/v1/projections/{name}`` (a page of keys) and
``/v1/projections/{name}/keys/{key}``, and the CLI's ``projections list`` and ``projection-get``.

Keys are bytes. In answers a key is its UTF-8 text when it is printable text, else ``hex:`` and
its hex; a key asked for is read the same way, so ``hex:...`` names any
key (a URL path segment cannot carry ``/``: such keys go as ``hex:``). A value is JSON when it
parses as JSON (``"encoding": "json"``, integers exact), else hex (``"encoding": "hex"``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ledgerlog.engine.errors import BadRequest, NotFoundError, PrunedError, UnknownProjectionError
from ledgerlog.engine.intjson import loads
from ledgerlog.streams import catalog

if TYPE_CHECKING:
    from ledgerlog.ops.query.queries import Queries

__all__ = ["MAX_KEY", "PAGE", "PAGE_MAX", "key_bytes", "key_text", "value_of", "listing", "entry", "page"]

MAX_KEY = 1024  # bytes of a key asked for
PAGE, PAGE_MAX = 100, 1000  # entries a page holds by default, and at most
#: entries a page walks past unserved (pruned history) before it ends, naming where to go on
SKIP_MAX = 10 * PAGE_MAX
_HEX = "hex:"
_INTERNAL = b"\x00"  # the store's own keys (positions, digest) start with it: never served


def key_bytes(text: str, what: str = "key") -> bytes:
    """A key as asked for: ``hex:<hex>`` or UTF-8 text (BAD_REQUEST when malformed or too long)."""
    if text.startswith(_HEX):
        try:
            raw = bytes.fromhex(text[len(_HEX):])
        except ValueError:
            raise BadRequest(f"{what} {text[:80]!r} is not hex after 'hex:'") from None
    else:
        raw = text.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_KEY:
        raise BadRequest(f"{what} is {len(raw)} bytes; at most {MAX_KEY}")
    return raw


def key_text(raw: bytes) -> str:
    """How an answer shows a key: its text when that reads back to the same bytes, else hex."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _HEX + raw.hex()
    if not text or not text.isprintable() or text.startswith(_HEX):
        return _HEX + raw.hex()
    return text


def value_of(raw: bytes) -> dict[str, Any]:
    """{"value", "encoding"}: the value as JSON when it parses as JSON, else its hex."""
    try:
        return {"value": loads(raw), "encoding": "json"}
    except ValueError:
        return {"value": raw.hex(), "encoding": "hex"}


def _handle(q: Queries, name: str) -> Any:
    if name not in q.runner.handles:
        catalog.module(q.runner.projections_dir, name)  # UNKNOWN_PROJECTION, or why it does not load
        raise UnknownProjectionError(f"projection {name!r} is not folded by this node; restart it after "
                                     "`ledgerlog projections add`")
    return q.runner.check_usable(name)


def listing(q: Queries) -> dict[str, Any]:
    """Every projection: name, version, source, lag, digest, height (and a stopped fold's error);
    registered user projections that do not load are listed with why."""
    lag = q.runner.lag()
    out = []
    for name, h in q.runner.handles.items():
        row = {"name": name, "version": h.module.VERSION, "user": catalog.is_user(h.module),
               "source": getattr(h.module, "SOURCE", "built-in"), "topics": list(h.module.TOPICS),
               "lag": lag[name], "height": h.store.height, "digest": h.store.digest_hex()}
        if h.failed is not None:
            row["failed"] = h.failed.to_dict()
        out.append(row)
    for name, why in sorted(catalog.load_errors(q.runner.projections_dir).items()):
        out.append({"name": name, "user": True, "error": why})
    return {"projections": out}


def _pruned_below(q: Queries, h: Any) -> int | None:
    """The prune height, for a built-in projection of a pruned log (its ``below`` tells the entries
    that hold history from under it, which the log no longer holds: never served raw)."""
    point = q.runner.log.prune_point()
    return point.height if point is not None and hasattr(h.module, "below") else None


def entry(q: Queries, name: str, key: str) -> dict[str, Any]:
    """One key of a projection: {"projection", "key", "value", "encoding", "provenance"}."""
    h = _handle(q, name)
    raw = key_bytes(key)
    value = None if raw.startswith(_INTERNAL) or not raw else h.store.view().get(raw)
    if value is None:
        raise NotFoundError(f"projection {name} has no key {key_text(raw)!r}")
    pruned = _pruned_below(q, h)
    if pruned is not None and h.module.below(raw, value, pruned):
        raise PrunedError(f"{name} key {key_text(raw)!r} holds history from below height {pruned}, which the log "
                          "no longer holds (pruned); the operator's archive of it is what holds it now")
    return {"projection": name, "key": key_text(raw), **value_of(value), "provenance": q.provenance(name)}


def page(q: Queries, name: str, prefix: str | None = None, start: str | None = None,
         limit: int | None = None, value_chars: int | None = None) -> dict[str, Any]:
    """Entries of a projection whose keys start with ``prefix``, in key order from ``start``
    (inclusive), at most ``limit``; ``next`` is the ``start`` of the next page (None at the end).
    With ``value_chars``, a value longer than that many bytes is shown by its first characters
    (``"truncated": true`` and its size in ``bytes``)."""
    h = _handle(q, name)
    pre = key_bytes(prefix, "prefix") if prefix else b""
    first = key_bytes(start, "start") if start else None
    if limit is not None and not 1 <= limit <= PAGE_MAX:
        raise BadRequest(f"limit must be between 1 and {PAGE_MAX}")
    n = limit or PAGE
    if not pre and (first is None or first < b"\x01"):
        first = b"\x01"  # past the store's own keys
    items: list[dict[str, Any]] = []
    nxt = None
    pruned = _pruned_below(q, h)
    skipped = 0
    for k, v in h.store.view().items(pre, first):
        if k.startswith(_INTERNAL):
            continue
        if pruned is not None and h.module.below(k, v, pruned):
            skipped += 1
            if skipped > SKIP_MAX:  # a long run of pruned history: this page ends, the next goes on
                nxt = key_text(k)
                break
            continue
        if len(items) == n:
            nxt = key_text(k)
            break
        if value_chars is not None and len(v) > value_chars:
            items.append({"key": key_text(k), "value": v[:value_chars].decode("utf-8", "replace") + "\u2026",
                          "truncated": True, "bytes": len(v)})
        else:
            items.append({"key": key_text(k), **value_of(v)})
    return {"projection": name, "items": items, "next": nxt, "provenance": q.provenance(name)}
