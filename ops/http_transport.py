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
else h11) with the wrapped transport; ``uvicorn.Config(app, http=protocol_class())`` uses it."""
from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["FLUSH_BYTES", "CoalescingTransport", "protocol_class"]

FLUSH_BYTES = 64 * 1024


class CoalescingTransport:
    """A transport proxy that joins the writes of one loop turn (see the module docstring)."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
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
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._buffer.clear()
        self._size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def protocol_class() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol for this environment (as ``http="auto"`` picks it), writing
    through a ``CoalescingTransport``."""
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base  # type: ignore[assignment]

    class Coalescing(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    Coalescing.__name__ = Coalescing.__qualname__ = f"Coalescing{base.__name__}"
    return Coalescing
