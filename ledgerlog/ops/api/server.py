"""Serving an ASGI app on uvicorn the node's way (the node's API, the stream worker's endpoint):
a socket bound before a slow start, so a taken port fails at once, and the edge protocol of
ops/api/transport.py (one send() per response, header/body timeouts, the connection cap)."""
from __future__ import annotations

import errno
import logging
import resource
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from ledgerlog.engine.errors import ConfigError, PortInUseError
from ledgerlog.ops.api.transport import EdgeSettings, protocol_class

__all__ = ["bind", "listen", "raise_open_files", "uvicorn_server"]

log = logging.getLogger("ledgerlog.http")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (``serve`` listens on it when the node is ready);
    PortInUseError, one line naming the fix, when the port is taken."""
    # proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections (it checks proto);
    # without it keep-alive responses wait ~40 ms on delayed ACKs
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _bind_error(host, port, exc) from None
    return sock


def listen(sock: socket.socket, host: str, port: int) -> None:
    """Listen before node.json is written: a node named there never refuses a connection, so a
    refusal says node.json is stale (ops/query/client.py)."""
    try:
        sock.listen(2048)
    except OSError as exc:  # two sockets may bind one port with SO_REUSEADDR; only one listens
        raise _bind_error(host, port, exc) from None


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return PortInUseError(f"{host}:{port} is already in use by another process; stop it, or run on "
                              "another port with --port N (0 picks a free one)")
    return ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port")


def uvicorn_server(app: Any, edge: EdgeSettings, *, keep_alive: float = 5, graceful: float = 10,
                   on_refusal: Callable[[str, str, int, float], None] | None = None) -> uvicorn.Server:
    """A uvicorn server for ``app``: the edge protocol (its refusals counted by ``on_refusal``),
    no proxy headers (per-IP limits trust the TCP peer), uvicorn's logs through ours; run it
    with ``server.run(sockets=[bind(...)])``."""
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, log_config=None,
                                         http=protocol_class(edge, on_refusal=on_refusal), proxy_headers=False,
                                         timeout_keep_alive=keep_alive,  # type: ignore[arg-type]  # a float works
                                         timeout_graceful_shutdown=int(graceful), ws="none"))


def raise_open_files(connections: int) -> None:
    """Let the process hold ``connections`` sockets besides its stores' files: raise the soft
    RLIMIT_NOFILE towards the hard one (as Go's runtime does); warn when even that is short."""
    want = (connections or 4096) + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    except (ValueError, OSError):
        pass
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        log.warning("open-file limit %d is below http.max_connections + 1024 (%d); raise `ulimit -n` or "
                    "lower http.max_connections", resource.getrlimit(resource.RLIMIT_NOFILE)[0], want)
