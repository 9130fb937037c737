"""A Kafka-aware TCP proxy on 127.0.0.1 for lost-answer tests: it forwards whole request and
response frames, and can lose the broker's answers to a kind of request: the broker acts on the
request, then the proxy closes the client's connection instead of passing the answer on (as a
network failure after the write would). Requests are told apart by their API key (0: Produce).

    with LosingProxy(("127.0.0.1", broker_port)) as proxy:   # proxy.port: where clients connect
        proxy.lose(api_key=0, count=1); ...
"""
from __future__ import annotations

import socket
import struct
import threading
from typing import Self

__all__ = ["LosingProxy", "PRODUCE", "ADD_PARTITIONS_TO_TXN"]

PRODUCE = 0
ADD_PARTITIONS_TO_TXN = 24  # a transaction's records are sent only once the broker answered this
_REQUEST_HEAD = struct.Struct(">ihhi")  # size, api key, api version, correlation id
_RESPONSE_HEAD = struct.Struct(">ii")   # size, correlation id


def _frame(sock: socket.socket) -> bytes | None:
    """One size-prefixed frame, or None at the end of the stream."""
    data = b""
    need = 4
    while len(data) < need:
        part = sock.recv(min(65536, need - len(data)))
        if not part:
            return None
        data += part
        if need == 4 and len(data) == 4:
            need = 4 + struct.unpack(">i", data)[0]
    return data


class LosingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._losing: dict[int, int] = {}  # api key -> answers left to lose
        self.lost = 0
        self._closed = False
        threading.Thread(target=self._accept, name="losing-proxy", daemon=True).start()

    def lose(self, api_key: int, count: int) -> None:
        """Lose the answers to the next ``count`` requests of ``api_key`` (0: stop losing)."""
        with self._lock:
            self._losing[api_key] = count

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                continue
            doomed: set[int] = set()  # correlation ids whose answers this connection loses
            threading.Thread(target=self._requests, args=(client, server, doomed), daemon=True).start()
            threading.Thread(target=self._answers, args=(client, server, doomed), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, doomed: set[int]) -> None:
        try:
            while (frame := _frame(client)) is not None:
                _size, api_key, _version, correlation = _REQUEST_HEAD.unpack_from(frame)
                with self._lock:
                    if self._losing.get(api_key, 0) > 0:
                        self._losing[api_key] -= 1
                        doomed.add(correlation)
                server.sendall(frame)
        except OSError:
            pass
        self._shut(client, server)

    def _answers(self, client: socket.socket, server: socket.socket, doomed: set[int]) -> None:
        try:
            while (frame := _frame(server)) is not None:
                if _RESPONSE_HEAD.unpack_from(frame)[1] in doomed:
                    self.lost += 1
                    break  # the broker did it; the client never hears
                client.sendall(frame)
        except OSError:
            pass
        self._shut(client, server)

    @staticmethod
    def _shut(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
