"""A FastAPI app served by a real uvicorn on a loopback port, in a thread, for tests that need
real sockets (413 before the body, keep-alive, the coalescing transport, refusals)."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["serve_app"]


@contextmanager
def serve_app(app: Any, **config: Any) -> Iterator[tuple[str, int]]:
    """(host, port) of ``app`` served on 127.0.0.1 until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **config))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        for _ in range(500):
            if srv.started:
                break
            threading.Event().wait(0.01)
        assert srv.started, "uvicorn did not start within 5 s"
        yield sock.getsockname()
    finally:
        srv.should_exit = True
        t.join(timeout=10)
        sock.close()
