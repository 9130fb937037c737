"""One ``send()`` per HTTP response: uvicorn's HTTP protocols with their writes coalesced.

uvicorn writes a response's status line and headers when the app sends ``http.response.start``
and the body when it sends ``http.response.body``: two ``send()`` system calls, so two TCP
segments, each waking the client (the first only to read the headers and wait again). For the
small JSON answers of the query routes that doubles the per-request system-call and wake-up
cost on both ends, which on a small VM is most of the server's CPU (profiled: ~45 % of the event
loop's time was in those two writes).

``CoalescingTransport`` wraps the connection's transport: writes made while one event-loop
callback runs are joined and handed to the real transport at the next turn of the loop (or at
once past ``FLUSH_BYTES``, and before ``close``/``write_eof``), so a response sent in one go goes
out in one system call. ``protocol_class()`` is uvicorn's protocol (httptools when installed,
else h11) with the wrapped transport; ``uvicorn.Config(app, http=protocol_class())`` uses it.

The same protocol guards the edge (``EdgeSettings``), which uvicorn alone does not: its only
timeout is keep-alive (reset by any byte, so a client trickling a header byte keeps a
connection forever), and ``limit_concurrency`` answers 503 to every request once N connections
are open, idle ones included, so 1,100 idle sockets starve everyone. Here:

- **header timeout**: a connection has ``header_timeout`` seconds, from connecting (or from the
  first byte after a response), to send a whole request head; then 408 ``TIMEOUT`` and closed.
- **body timeout**: a request has ``body_timeout`` seconds after its head to send its whole body
  (time the server itself stops reading, because the app has not consumed what came, does not
  count); then 408 (if no answer has started) and closed.
- **head size**: a request head (request line and headers) may carry ``max_head_bytes``
  (64 KiB); past it 431 ``HEAD_TOO_LARGE`` and closed. uvicorn's httptools protocol appends
  every chunk of an unfinished URL to the one before (quadratic), and nothing else caps it.
- **connection cap**: past ``max_connections`` open connections, the one idle longest (between
  requests, or still sending its head), or else the one whose answer has been stalled longest
  (the client does not read it), is closed to make room; only when every connection is busy in
  a request does the new one get 503 ``OVERLOADED`` and closed. So idle and slow clients cannot
  turn well-behaved ones away.
- **send timeout**: an answer the client does not read for ``send_timeout`` seconds (the
  socket's buffer stays full) is given up and the connection aborted; and once the answers so
  stalled hold more than ``MAX_STALLED_BYTES`` in all, the one stalled longest is aborted at
  once. So clients that ask and never read cannot pin the node's memory.
- **pipelining**: at most ``MAX_PIPELINED`` requests wait on one connection; the rest of what
  it sent waits unparsed (and the socket unread) until answers are out. uvicorn alone parses
  every request of each 256 KiB read after every answer, so one client grew memory ~100 MB/s.
- **malformed HTTP** (bad chunk sizes, two lengths, a bad method or URL byte) gets a JSON 400
  ``BAD_REQUEST`` instead of uvicorn's plain-text one, and a DEBUG line naming the client
  instead of uvicorn's WARNING (one per bad request let any client flood the log); WebSocket
  upgrades are not served (the request is answered as plain HTTP, so the Host guard and routes
  answer it).
Every refusal above is written, then the write side shut, and the connection closed once the
client closes or after ``LINGER`` seconds: closing with its request unread would make the
kernel send a reset, and the client would never see the answer. Each is counted through
``on_refusal`` (the request metrics, route ``unmatched``), and the warnings of refusals and
aborts are written at most once per ``WARN_EVERY`` seconds.
Keep-alive stays uvicorn's (``timeout_keep_alive``)."""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from ledgerlog.engine.errors import (
    BadRequest,
    HeadTooLargeError,
    LedgerError,
    OverloadedError,
    RequestTimeoutError,
)
from ledgerlog.engine.intjson import dumps_any
from ledgerlog.ops.api.guard import error_answer

if TYPE_CHECKING:
    from ledgerlog.engine.config import Config

__all__ = ["FLUSH_BYTES", "MAX_PIPELINED", "MAX_STALLED_BYTES", "CoalescingTransport", "EdgeSettings",
           "protocol_class"]

FLUSH_BYTES = 64 * 1024
MAX_PIPELINED = 32  # requests waiting on one connection
MAX_STALLED_BYTES = 256 * 1024 * 1024  # answers buffered for clients that do not read them, in all
LINGER = 2.0  # seconds a refused connection stays half-closed for its answer to be read
_FEED = 16 * 1024  # bytes handed to the parser at a time while requests may pile up
WARN_EVERY = 10.0  # seconds between two warnings of one kind that clients can cause
_UVICORN_INVALID = "Invalid HTTP request received."  # uvicorn's WARNING for each malformed request

log = logging.getLogger("ledgerlog.http")


class _Throttled:
    """A warning logged at most once per ``period`` seconds; the next one says how many like it
    were held back meanwhile. (Clients cause these: one line each would let them flood the log.)"""

    def __init__(self, period: float = WARN_EVERY) -> None:
        self.period = period
        self._last = float("-inf")
        self._held = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.period:
            self._held += 1
            return
        if self._held:
            msg += f" (and {self._held} more like it in the last {now - self._last:.0f} s)"
        self._last, self._held = now, 0
        log.warning(msg, *args)


def _drop_uvicorn_invalid_request(record: logging.LogRecord) -> bool:
    return record.msg != _UVICORN_INVALID


@dataclass(frozen=True)
class EdgeSettings:
    """Connection limits and timeouts of the node's HTTP server (see the module docstring)."""

    header_timeout: float = 10.0  # seconds; 0 = none
    body_timeout: float = 60.0    # seconds; 0 = none
    max_connections: int = 1000   # 0 = no limit
    max_head_bytes: int = 64 * 1024  # 0 = no limit
    send_timeout: float = 30.0    # seconds; 0 = none

    @classmethod
    def from_config(cls, config: Config) -> EdgeSettings:
        return cls(header_timeout=config.http_header_timeout, body_timeout=config.http_body_timeout,
                   max_connections=config.http_max_connections, send_timeout=config.http_send_timeout)


class CoalescingTransport:
    """A transport proxy that joins the writes of one loop turn (see the module docstring)."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop, close_timeout: float = 0.0) -> None:
        """``close_timeout``: a close that leaves answers unsent (the client does not read them)
        becomes a reset after that many seconds (0: asyncio's close, which waits for ever)."""
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._size = 0
        self._eof = False
        self._close_timeout = close_timeout

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._eof:  # (an answer still under way when a refusal shut the write side)
            return
        if not self._buffer:
            self._loop.call_soon(self.flush)
        self._buffer.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + self._size

    def write_eof(self) -> None:
        self.flush()
        self._eof = True
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()
        if self._close_timeout > 0 and self._transport.get_write_buffer_size():
            self._loop.call_later(self._close_timeout, self._reset_if_open)

    def abort(self) -> None:
        self._buffer.clear()
        self._size = 0
        self._transport.abort()

    def reset(self) -> None:
        """Abort with a reset: a plain close would leave the kernel holding what the client does
        not read, with the FIN queued behind it."""
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.abort()

    def _reset_if_open(self) -> None:
        if self._transport.get_write_buffer_size():  # (0 once the close went through)
            log.debug("resetting a closed connection whose client does not read its last answer")
            self.reset()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def _raw_response(exc: LedgerError) -> tuple[int, bytes]:
    """The status and whole HTTP/1.1 response answering ``exc`` (ops/api/guard.py
    ``error_answer``), closing."""
    status, body, _ = error_answer(exc)
    data = dumps_any(body)  # an error may quote a client's string that is not UTF-8
    return status, (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(data)}\r\nconnection: close\r\n\r\n").encode() + data


def protocol_class(edge: EdgeSettings | None = None, *,
                   on_refusal: Callable[[str, str, int, float], None] | None = None) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol for this environment (as ``http="auto"`` picks it), writing
    through a ``CoalescingTransport`` and guarding the edge with ``edge`` (default settings
    when None; see the module docstring). ``on_refusal(route, method, status, seconds)`` counts
    each refusal (the signature of the request metrics' ``on_request``)."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]
    settings = edge or EdgeSettings()
    uvicorn_log = logging.getLogger("uvicorn.error")
    if _drop_uvicorn_invalid_request not in uvicorn_log.filters:
        uvicorn_log.addFilter(_drop_uvicorn_invalid_request)  # send_400_response logs it, at DEBUG
    refusing, aborting = _Throttled(), _Throttled()

    class Guarded(base):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _seen_cycle: Any = None
        _idle_since = 0.0
        _head_bytes = 0  # bytes received of the request head under way
        _send_timer: asyncio.TimerHandle | None = None
        _stalled_since: float | None = None  # when the client stopped reading our answer
        _lingering = False  # refused: the answer written, the write side shut
        _deferred: LedgerError | None = None  # a refusal waiting for the answers before it to go out
        _held = b""  # received but not parsed yet: MAX_PIPELINED requests wait already
        _in_head = False  # a request head is being parsed

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, self.loop,  # type: ignore[arg-type]
                                                        close_timeout=settings.send_timeout))
            self._idle_since = time.monotonic()
            self._arm_head()
            if settings.max_connections and len(self.connections) > settings.max_connections:
                self._make_room()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            self._cancel("_send_timer")
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused():  # what still comes is read and dropped
                return
            if self._held:
                self._held += data
                self.flow.pause_reading()
                return
            pipeline = getattr(self, "pipeline", None)
            for at in range(0, len(data), _FEED):  # a piece at a time: stop once requests pile up
                if pipeline is not None and len(pipeline) >= MAX_PIPELINED:
                    self._held = data[at:]
                    self.flow.pause_reading()
                    return
                self._parse(data[at:at + _FEED])
                if self._refused():
                    return

        def _parse(self, data: bytes) -> None:
            super().data_received(data)
            if self._refused():
                self._cancel_timers()
                return
            cycle = self.cycle
            if cycle is not None and cycle is not self._seen_cycle:  # a request head was parsed
                self._seen_cycle = cycle
                self._cancel_timers()
                if cycle.more_body and settings.body_timeout > 0 and self._body_timer is None:
                    self._body_timer = self.loop.call_later(settings.body_timeout, self._body_expired)
            if self._body_timer is not None and (cycle is None or not cycle.more_body):
                self._cancel("_body_timer")
            if self._idle() or self._in_head:  # bytes of a request head (or stray CRLFs)
                if self._idle():  # the head clock runs
                    self._arm_head()
                self._head_bytes += len(data)
                if settings.max_head_bytes and self._head_bytes > settings.max_head_bytes:
                    log.debug("closing %s: a request head over %s bytes", self.client, settings.max_head_bytes)
                    self._close_with(HeadTooLargeError(
                        f"a request head (line and headers) may carry at most {settings.max_head_bytes} bytes"))
            else:
                self._head_bytes = 0

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._idle_since = time.monotonic()
            self._head_bytes = 0
            if self._deferred is not None and self._idle():  # the answers before it are out
                exc, self._deferred = self._deferred, None
                self._close_with(exc)
                return
            if self._held and not self._refused() and len(self.pipeline) < MAX_PIPELINED:
                held, self._held = self._held, b""
                self.data_received(held)
            if self._held:
                self.flow.pause_reading()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True

        def on_headers_complete(self) -> None:
            """A whole head in one read never passed the byte count of ``data_received``."""
            self._in_head = False
            self._head_bytes = 0
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if settings.max_head_bytes and size > settings.max_head_bytes:
                self._close_with(HeadTooLargeError(
                    f"a request head (line and headers) may carry at most {settings.max_head_bytes} bytes"))
                raise _Refused  # stops the parser; uvicorn then calls send_400_response
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            cycle = self.cycle  # its body is what is malformed: the 400 answers the request under way
            receiving = cycle is not None and cycle.more_body and not cycle.response_started
            log.debug("refusing %s: %s", self.client, msg)
            if not self._refused():
                self._close_with(BadRequest(f"the request is not valid HTTP/1.1 ({msg.rstrip('.')}); "
                                            "send a well-formed request"), answering=receiving)

        def _unsupported_upgrade_warning(self) -> None:
            log.debug("answering an upgrade request from %s as plain HTTP", self.client)

        # -- answers the client does not read --------------------------------------------------
        def pause_writing(self) -> None:
            super().pause_writing()
            self._stalled_since = time.monotonic()
            if settings.send_timeout > 0 and self._send_timer is None:
                self._send_timer = self.loop.call_later(settings.send_timeout, self._send_expired)
            stalled = [c for c in self.connections if isinstance(c, Guarded) and c._stalled_since is not None
                       and not c.transport.is_closing()]
            held = sum(c.transport.get_write_buffer_size() for c in stalled)
            for c in sorted(stalled, key=lambda c: c._stalled_since or 0.0):
                if held <= MAX_STALLED_BYTES:
                    break
                held -= c.transport.get_write_buffer_size()
                aborting.warning("answers stalled on unread connections hold over %d bytes: aborting the one "
                                 "from %s", MAX_STALLED_BYTES, c.client)
                c._abort()

        def resume_writing(self) -> None:
            super().resume_writing()
            self._stalled_since = None
            self._cancel("_send_timer")

        def _send_expired(self) -> None:
            self._send_timer = None
            if self._stalled_since is not None:
                log.debug("aborting %s: an answer not read for %s s", self.client, settings.send_timeout)
                self._abort()

        def _abort(self) -> None:
            self._cancel_timers()
            self._cancel("_send_timer")
            self._stalled_since = None
            self.transport.reset()  # type: ignore[attr-defined]  # the CoalescingTransport's

        # -- state -----------------------------------------------------------------------------
        def _idle(self) -> bool:
            """Between requests (or still sending a head): nothing of the app's under way."""
            cycle = self.cycle
            return (cycle is None or cycle.response_complete) and not getattr(self, "pipeline", None)

        def _refused(self) -> bool:
            """Closed or closing, refused and waiting for the client to close, or a refusal waits
            for the answers before it."""
            return self._lingering or self._deferred is not None or bool(self.transport.is_closing())

        def _arm_head(self) -> None:
            if settings.header_timeout > 0 and self._head_timer is None:
                self._head_timer = self.loop.call_later(settings.header_timeout, self._head_expired)

        def _cancel(self, name: str) -> None:
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

        def _cancel_timers(self) -> None:
            self._cancel("_head_timer")
            self._cancel("_body_timer")

        # -- refusals --------------------------------------------------------------------------
        def _close_with(self, exc: LedgerError, *, answering: bool = False) -> None:
            """Answer ``exc`` and close: the write side at once, the connection once the client
            closes (or after LINGER s), so its unread request does not turn the close into a reset.
            Unless ``exc`` answers the request under way (``answering``), a refusal of a pipelined
            request waits for the answers to the requests before it (they keep their order)."""
            self._cancel_timers()
            if self._refused():
                return
            if not answering and not self._idle():
                self._deferred = exc
                self._held = b""
                self.flow.pause_reading()
                return
            self._lingering = True
            self._held = b""
            status, answer = _raw_response(exc)
            self.transport.write(answer)
            # counted: a refused request, not one the app counts (``answering``), nor a connection
            # that never sent a byte of one (a preconnect, a health check) timing out
            if on_refusal is not None and not answering and (self._head_bytes or status != 408):
                on_refusal("unmatched", "", status, time.monotonic() - self._idle_since)
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.flow.resume_reading()  # read (and drop) what comes, to see the client's close
                self.loop.call_later(LINGER, self.transport.close)
            else:
                self.transport.close()

        def _head_expired(self) -> None:
            self._head_timer = None
            if self._idle():
                log.debug("closing %s: no whole request head within %s s", self.client, settings.header_timeout)
                self._close_with(RequestTimeoutError(
                    f"send a whole request head within {settings.header_timeout:g} s"))

        def _body_expired(self) -> None:
            self._body_timer = None
            cycle = self.cycle
            if cycle is None or not cycle.more_body or self.transport.is_closing():
                return
            if self.flow.read_paused:  # the app has not read what came: the server's delay, not the client's
                self._body_timer = self.loop.call_later(settings.body_timeout, self._body_expired)
                return
            log.debug("closing %s: request body not received within %s s", self.client, settings.body_timeout)
            if cycle.response_started:
                self.transport.close()
                self._cancel_timers()
            else:
                self._close_with(RequestTimeoutError(
                    f"send the whole request body within {settings.body_timeout:g} s of its head"), answering=True)

        def _make_room(self) -> None:
            """Past the cap: close the connection idle longest; if none is idle, refuse this one."""
            others = [c for c in self.connections if c is not self and isinstance(c, Guarded) and not c._refused()]
            idle = [c for c in others if c._idle()]
            stalled = [c for c in others if c._stalled_since is not None]
            if idle:
                victim = min(idle, key=lambda c: c._idle_since)
                log.debug("%d connections open: closing the idle one from %s", len(self.connections), victim.client)
                victim._cancel_timers()
                victim.transport.close()
            elif stalled:
                victim = min(stalled, key=lambda c: c._stalled_since or 0.0)
                log.debug("%d connections open: aborting %s, which reads no answer", len(self.connections), victim.client)
                victim._abort()
            else:
                refusing.warning("%d connections open, all busy: refusing %s", len(self.connections), self.client)
                self._close_with(OverloadedError("the node has no free connection; retry shortly"))

    class _Refused(Exception):
        """Raised in a parser callback to stop parsing a refused connection's bytes."""

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded
