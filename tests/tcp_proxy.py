"""A small TCP proxy on 127.0.0.1 for outage tests: forwards every connection to an upstream
address, and can cut the path (close every live connection, refuse new ones) and restore it.

    with TcpProxy(("127.0.0.1", broker_port)) as proxy:   # proxy.port: where clients connect
        ...; proxy.cut(); ...; proxy.restore()
"""
from __future__ import annotations

import selectors
import socket
import threading
from typing import Self

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._pumps: dict[tuple[socket.socket, socket.socket], int] = {}
        self._up = True
        self._stop = threading.Event()
        self.bytes_up = 0        # client -> upstream, over the proxy's life
        self.connections = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    # -- control ------------------------------------------------------------------------------
    def cut(self) -> None:
        """Close every live connection and refuse new ones until ``restore()``."""
        with self._lock:
            self._up = False
            pairs, self._pairs = list(self._pairs), set()
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self) -> None:
        with self._lock:
            self._up = True

    @property
    def is_up(self) -> bool:
        return self._up

    def close(self) -> None:
        self._stop.set()
        self.cut()
        try:
            self._listener.close()
        except OSError:
            pass
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            try:
                if not sel.select(timeout=0.1):
                    continue
                client, _ = self._listener.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if not self._up:
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if not self._up:
                    client.close()
                    server.close()
                    continue
                self._pairs.add((client, server))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if upward:
                    self.bytes_up += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            pair = (src, dst) if upward else (dst, src)
            with self._lock:
                self._pairs.discard(pair)
                left = self._pumps[pair] = self._pumps.get(pair, 2) - 1
                if left == 0:
                    del self._pumps[pair]
            if left == 0:  # the second pump to stop closes both sockets
                for s in pair:
                    s.close()
