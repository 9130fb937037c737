"""Limits and bad input at the HTTP edge, and the node's run-time switches.

- **Body size** (``BodyLimit``, pure ASGI middleware): every POST/PUT/PATCH body is capped
  (``max_body``; ``POST /v1/ingest`` has its own, larger ``max_ingest_body``). A declared
  ``Content-Length`` over the cap is refused before anything is read; a chunked body is counted
  as it streams and refused as soon as it crosses the cap. Either way: 413
  ``{"code":"TOO_LARGE"}``, and the handler never sees the body.
- **Rate limits** (``TokenBuckets``): in-memory token buckets per key (client IP for
  ``POST /v1/ingest``; the faucet keeps its per-IP and per-address limits on disk, by the same
  rule: ops/api/faucet_grants.py). A refused request gets 429
  ``{"code":"RATE_LIMITED"}`` with ``Retry-After`` (whole seconds). The client is the TCP peer
  (``request.client.host``); ``X-Forwarded-For`` is not trusted. Buckets live in memory, are
  per node process and start full after a restart; at most ``MAX_BUCKETS`` keys are kept (least
  recently used dropped first).
- **Error bodies**: answered by ops/api/guard.py (``error_answer``), from the error table.
- **Switches** (``node.controls``, a ``Controls``): ``pause``/``resume`` stop and restart external writes
  (``POST /v1/ingest`` answers 503 ``{"code":"PAUSED"}``, and so does the faucet); the admission
  pipeline itself keeps running, so the node's own simulator, if enabled, keeps producing. The
  switches are in memory, on the node object: a restarted node starts unpaused.

Knobs: settings of the node's ``Config`` (engine/config.py), so each is a ``config.toml`` key
overridable by its environment variable (read once, when the CLI builds the Config), or
``HttpLimits`` passed to ``create_app``:

| config.toml | env | default | meaning |
|---|---|---|---|
| ``http.max_body`` | ``LEDGERLOG_HTTP_MAX_BODY`` | 1 MiB | bytes a POST body may carry (except ingest) |
| ``http.ingest_max_body`` | ``LEDGERLOG_INGEST_MAX_BODY`` | 64 MiB | bytes a ``POST /v1/ingest`` body may carry |
| ``http.ingest_rate`` | ``LEDGERLOG_INGEST_RATE`` | 20 | ingest requests per second per client (0 = no limit) |
| ``http.ingest_burst`` | ``LEDGERLOG_INGEST_BURST`` | 60 | ingest requests a client may make at once |
| ``http.ready_max_lag`` | ``LEDGERLOG_READY_MAX_LAG`` | 10000 | records a projection may lag before ``/v1/ready`` says 503 |
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledgerlog.engine.config import Config, env_values
from ledgerlog.engine.errors import BadRequest, TooLargeError
from ledgerlog.ops.api.guard import send_error, unmapped

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext

__all__ = [
    "MAX_BUCKETS",
    "BodyLimit",
    "Controls",
    "HttpLimits",
    "TokenBuckets",
    "client_key",
    "pause_action",
    "resume_action",
]

log = logging.getLogger("ledgerlog.http")

MiB = 1024 * 1024
_DEFAULTS = Config()
MAX_BODY = _DEFAULTS.http_max_body                 # 1 MiB
MAX_INGEST_BODY = _DEFAULTS.http_ingest_max_body   # 64 MiB
INGEST_RATE = _DEFAULTS.http_ingest_rate           # 20 / s
INGEST_BURST = _DEFAULTS.http_ingest_burst         # 60
READY_MAX_LAG = _DEFAULTS.http_ready_max_lag       # 10,000 records
MAX_BUCKETS = 100_000


# -- settings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpLimits:
    max_body: int = MAX_BODY
    max_ingest_body: int = MAX_INGEST_BODY
    ingest_rate: float = INGEST_RATE
    ingest_burst: int = INGEST_BURST
    ready_max_lag: int = READY_MAX_LAG

    @classmethod
    def from_config(cls, config: Config) -> HttpLimits:
        """The limits a node's Config sets (config.toml ``[http]``, overridden by LEDGERLOG_* env)."""
        return cls(max_body=config.http_max_body, max_ingest_body=config.http_ingest_max_body,
                   ingest_rate=config.http_ingest_rate, ingest_burst=config.http_ingest_burst,
                   ready_max_lag=config.http_ready_max_lag)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HttpLimits:
        """The defaults overridden by ``env`` alone (no config.toml); prefer ``from_config``."""
        return cls.from_config(replace(Config(), **env_values(env)))


# -- body size ------------------------------------------------------------------------------------
class _TooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body crosses the cap: an HTTPException, so FastAPI's
    body parsing re-raises it and the error handler answers 413 ``TOO_LARGE``."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"a request body here may carry at most {limit} bytes")


class BodyLimit:
    """ASGI middleware: cap request bodies of POST/PUT/PATCH (413 ``TOO_LARGE``)."""

    def __init__(self, app: Any, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limit_for(path)
        declared = [v for k, v in scope.get("headers", ()) if k.lower() == b"content-length"]
        if declared:
            text = declared[0].decode("latin-1").strip()
            if not text.isdigit() or len(declared) > 1:
                await send_error(send, BadRequest("invalid Content-Length"), close=True, path=path)
                return
            if int(text) > limit:
                await send_error(send, TooLargeError(f"a request body here may carry at most {limit} bytes"),
                                 close=True, path=path)
                return
        received = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return msg

        async def tracked(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if started:
                raise
            await send_error(send, TooLargeError(f"a request body here may carry at most {limit} bytes"),
                             close=True, path=path)


# -- rate limits ----------------------------------------------------------------------------------
class TokenBuckets:
    """Token buckets by key: ``burst`` tokens, one more every ``1/rate`` seconds. Thread-safe.
    ``rate <= 0`` disables the limit. ``clock`` is injectable for tests."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = MAX_BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token (0 when it has one now); takes nothing."""
        if not self.enabled:
            return 0.0
        with self._lock:
            level = self._level(key, self.clock())
        return 0.0 if level >= 1 else (1 - level) / self.rate

    def take(self, key: str) -> float:
        """Take a token: 0 when taken, else the seconds to wait (and nothing is taken)."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self.clock()
            level = self._level(key, now)
            if level < 1:
                return (1 - level) / self.rate
            self._buckets[key] = (level - 1, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return 0.0

    def __len__(self) -> int:
        return len(self._buckets)


def client_key(request: Request) -> str:
    """The client a limit applies to: the TCP peer's address (proxies are not trusted); an IPv6
    peer by its /64, which one home line or host holds whole (2^64 addresses to go through, a
    new client at each), an IPv4-mapped one as its IPv4 address."""
    host = request.client.host if request.client else ""
    try:
        ip = ipaddress.ip_address(unmapped(host))
    except ValueError:
        return host or "unknown"
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


# -- run-time switches ----------------------------------------------------------------------------
@dataclass
class Controls:
    """A node's switches, set by admin actions; in memory (a restart starts unpaused)."""

    ingest_paused: bool = False
    faucet_paused: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"ingest_paused": self.ingest_paused, "faucet_paused": self.faucet_paused}


#: how long a pause waits for the external writes under way before answering
PAUSE_WAIT = 30.0


def pause_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """Stop external writes: POST /v1/ingest (and the faucet) answer 503 PAUSED. Answers once
    the writes under way are done (``admitting`` says how many still run after PAUSE_WAIT s),
    so nothing from outside is admitted after it. The node keeps folding and serving queries;
    its own simulator, if running, keeps admitting."""
    c = node.controls
    with c.lock:
        was, c.ingest_paused = c.ingest_paused, True
    log.warning("ingest paused by admin")
    running = node.external_writes_settled(PAUSE_WAIT)
    return {"ingest": {"paused": True, "was_paused": was, **({"admitting": running} if running else {})}}


def resume_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """Let external writes in again."""
    c = node.controls
    with c.lock:
        was, c.ingest_paused = c.ingest_paused, False
    log.warning("ingest resumed by admin")
    return {"ingest": {"paused": False, "was_paused": was}}
