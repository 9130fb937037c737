"""ops/http_transport.py: the writes of one loop turn leave in one system call; nothing is lost,
reordered or held back; and uvicorn's protocol over it serves the node's API unchanged."""
from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from servers import serve_app

from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.limits import HttpLimits
from ledgerlog.ops.api.transport import FLUSH_BYTES, CoalescingTransport, protocol_class
from ledgerlog.ops.node.lifecycle import Node

NDJSON = {"Content-Type": "application/x-ndjson"}  # POST /v1/ingest takes this type only


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.eof = self.aborted = False
        self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 7

    def pause_reading(self) -> None:
        self.paused = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def test_writes_of_one_turn_are_joined():
    async def main() -> None:
        fake = FakeTransport()
        t = CoalescingTransport(fake, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(b"")
        t.write(bytearray(b"body"))
        assert fake.writes == [] and t.get_write_buffer_size() == 7 + 23
        await asyncio.sleep(0)
        assert fake.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        t.writelines([b"a", b"b"])
        await asyncio.sleep(0)
        assert fake.writes[-1] == b"ab"
        t.write(b"x" * (FLUSH_BYTES + 1))  # big: out at once
        assert fake.writes[-1] == b"x" * (FLUSH_BYTES + 1)
        t.write(b"last")
        t.close()  # flushed before closing
        assert fake.writes[-1] == b"last" and fake.closed
        await asyncio.sleep(0)
        assert fake.writes[-1] == b"last"  # nothing twice, nothing after close
        # delegated
        assert t.get_extra_info("peername") == ("127.0.0.1", 1) and t.is_closing()
        t.pause_reading()
        assert fake.paused
        other = FakeTransport()
        u = CoalescingTransport(other, asyncio.get_running_loop())
        u.write(b"y")
        u.write_eof()
        assert other.writes == [b"y"] and other.eof
        u.write(b"dropped")
        u.abort()
        await asyncio.sleep(0)
        assert other.writes == [b"y"] and other.aborted

    asyncio.run(main())


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, int]]:
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    node = Node(cfg)
    node.start()
    try:
        with serve_app(create_app(node, limits=HttpLimits(max_body=1024, max_ingest_body=4096)),
                       http=protocol_class()) as addr:
            yield addr
    finally:
        node.stop()


def test_the_api_over_the_coalescing_protocol(server):
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        for path, status in [("/v1/health", 200), ("/v1/status", 200), ("/v1/accounts/" + "0" * 40, 200),
                             ("/v1/accounts/bad", 400), ("/nowhere", 404), ("/metrics", 200), ("/openapi.json", 200)]:
            conn.request("GET", path)  # one keep-alive connection throughout
            r = conn.getresponse()
            body = r.read()
            assert r.status == status, (path, body[:200])
            assert int(r.getheader("content-length")) == len(body)
        conn.request("POST", "/v1/ingest", body=b"\n", headers=NDJSON)
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["accepted"] == 0
        conn.request("POST", "/v1/ingest", body=iter([b"\n" * 1024] * 8), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked", "Content-Type": "application/x-ndjson"})
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["code"] == "TOO_LARGE"
    finally:
        conn.close()
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.request("GET", "/v1/status", headers={"Connection": "close"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["height"] == 0
    finally:
        conn.close()


@pytest.mark.parametrize("coalesce", [True, False])
def test_one_write_per_response(tmp_path, coalesce):
    """Through uvicorn's own protocol (httptools or h11, whichever is installed) on a recording
    transport: with the coalescing protocol a response is one write; without it, more."""
    from uvicorn.server import ServerState
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    node = Node(cfg)
    node.start()
    try:
        config = uvicorn.Config(create_app(node), log_level="warning", access_log=False, lifespan="off")
        config.load()
        cls = protocol_class() if coalesce else config.http_protocol_class

        async def main() -> list[bytes]:
            fake = FakeTransport()
            fake.get_extra_info = lambda name, default=None: {  # type: ignore[method-assign]
                "peername": ("127.0.0.1", 5), "sockname": ("127.0.0.1", 80)}.get(name, default)
            fake.resume_reading = lambda: None  # type: ignore[attr-defined]
            proto = cls(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
            proto.connection_made(fake)  # type: ignore[arg-type]
            for _ in range(3):
                proto.data_received(b"GET /v1/accounts/" + b"0" * 40 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                for _ in range(200):
                    await asyncio.sleep(0.005)
                    if fake.writes and fake.writes[-1].endswith(b"}"):
                        break
            proto.connection_lost(None)
            return fake.writes

        writes = asyncio.run(main())
    finally:
        node.stop()
    answers = [w for w in writes if w.startswith(b"HTTP/1.1 200")]
    if coalesce:
        assert len(writes) == len(answers) == 3
        assert all(json.loads(w.partition(b"\r\n\r\n")[2])["address"] == "0" * 40 for w in writes)
    else:
        assert len(writes) >= 6  # status line and headers, then the body


class _Reads(FakeTransport):
    """A FakeTransport that also resumes reading (uvicorn calls both)."""

    def resume_reading(self) -> None:
        self.paused = False

    def can_write_eof(self) -> bool:
        return True


def _connected(app: Any, *, proto: Any = None, state: Any = None, on_refusal: Any = None) -> tuple[Any, _Reads]:
    """The edge protocol (``proto``, or one of default settings) serving ``app``, connected to a
    fake transport (call it inside the running loop); ``state``: the server's (its connections)."""
    from uvicorn.server import ServerState

    from ledgerlog.ops.api.transport import EdgeSettings
    proto = proto or protocol_class(EdgeSettings(), on_refusal=on_refusal)
    config = uvicorn.Config(app, http=proto, log_level="warning")
    config.load()
    p = proto(config=config, server_state=state or ServerState(), app_state={}, _loop=asyncio.get_running_loop())
    fake = _Reads()
    p.connection_made(fake)
    return p, fake


def test_pipelined_requests_waiting_on_a_connection_are_bounded_whatever_the_read_sizes():
    """Reads of 16 KiB or less were parsed whole whatever was already queued: one client sending
    small writes of tiny requests grew the queue (and memory) without bound. Past MAX_PIPELINED
    waiting requests, what comes stays unparsed and reading pauses."""
    from ledgerlog.ops.api.transport import MAX_PIPELINED

    async def never_answers(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        p, fake = _connected(never_answers)
        tiny = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        read = tiny * (10_000 // len(tiny))  # ~10 KB: one read, under the parser's piece size
        for _ in range(5):
            p.data_received(read)
        assert 0 < len(p.pipeline) <= MAX_PIPELINED + len(read) // len(tiny), len(p.pipeline)
        assert fake.paused and p._held  # the rest waits unread
        for task in list(p.tasks):
            task.cancel()
        p.connection_lost(None)

    asyncio.run(main())


def test_a_close_that_leaves_answers_unsent_becomes_a_reset_after_the_timeout():
    """asyncio's close waits for the write buffer to drain: a client that never reads its last
    answer (kept alive, then closed by the keep-alive timeout or to make room) held its
    connection, "closing", for good."""
    async def main() -> None:
        fake = FakeTransport()  # its write buffer never drains (7 bytes)
        t = CoalescingTransport(fake, asyncio.get_running_loop(), close_timeout=0.05)
        t.write(b"an answer nobody reads")
        t.close()
        assert fake.closed and not fake.aborted
        await asyncio.sleep(0.2)
        assert fake.aborted

    asyncio.run(main())


def test_a_refused_pipelined_request_is_answered_after_the_requests_before_it():
    """A 431 (or 400) for the second of two pipelined requests was written at once, ahead of the
    first one's answer, which was then dropped: the client read the refusal as the answer to its
    first request (maybe an ingest that went in)."""

    async def main() -> None:
        go = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await go.wait()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

        p, fake = _connected(app)
        big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        p.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + big[:16_000])
        p.data_received(big[16_000:])
        await asyncio.sleep(0.01)
        assert b"".join(fake.writes) == b""  # nothing before the first answer
        go.set()
        for _ in range(20):
            await asyncio.sleep(0.01)
        out = b"".join(fake.writes)
        assert out.startswith(b"HTTP/1.1 200") and b"ok" in out, out[:200]
        assert out.index(b"HTTP/1.1 431") > out.index(b"ok"), out[:400]
        p.connection_lost(None)

    asyncio.run(main())


def test_a_malformed_request_is_counted_and_logs_no_warning(caplog):
    """Each malformed request wrote an unthrottled WARNING naming no client (3,800 a second from one
    local client: 24 GiB of log a day), and the 400 never reached the request metrics."""
    import logging

    seen: list[tuple[str, str, int]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a malformed request reaches no app")

    async def main() -> None:
        p, fake = _connected(app, on_refusal=lambda route, method, status, _: seen.append((route, method, status)))
        p.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        assert b"".join(fake.writes).startswith(b"HTTP/1.1 400")
        p.connection_lost(None)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert seen == [("unmatched", "", 400)]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("127.0.0.1" in r.getMessage() for r in caplog.records if r.name == "ledgerlog.http")


def test_connections_refused_as_overload_are_counted_and_warned_of_once_a_while(caplog):
    """Past the cap with every connection busy, each newcomer's 503 wrote its own WARNING and was
    never counted: monitoring read a 0% 5xx ratio through an overload."""
    import logging

    from uvicorn.server import ServerState

    from ledgerlog.ops.api.transport import EdgeSettings

    seen: list[int] = []

    async def busy(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        state = ServerState()
        proto = protocol_class(EdgeSettings(max_connections=1), on_refusal=lambda *a: seen.append(a[2]))
        first, _ = _connected(busy, proto=proto, state=state)
        first.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # busy in a request
        refused = [_connected(busy, proto=proto, state=state) for _ in range(50)]
        for p, fake in refused:
            assert b"".join(fake.writes).startswith(b"HTTP/1.1 503")
            p.connection_lost(None)
        for task in list(first.tasks):
            task.cancel()
        first.connection_lost(None)

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert seen == [503] * 50
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "refusing" in warned[0], warned


def test_an_idle_connection_timed_out_is_not_counted_as_a_request():
    """A connection that never sent a byte (a browser's preconnect, a TCP health check) got its 408
    counted as a request, with the header timeout as its latency; one that sent part of a head is
    a slow request, and counts."""
    from ledgerlog.ops.api.transport import EdgeSettings

    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("no request reaches the app")

    async def main() -> None:
        proto = protocol_class(EdgeSettings(header_timeout=0.05), on_refusal=lambda *a: seen.append(a[2]))
        idle, idle_fake = _connected(app, proto=proto)
        slow, slow_fake = _connected(app, proto=proto)
        slow.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n")  # and no more
        await asyncio.sleep(0.3)
        for p, fake in ((idle, idle_fake), (slow, slow_fake)):
            assert b"".join(fake.writes).startswith(b"HTTP/1.1 408")
            p.connection_lost(None)

    asyncio.run(main())
    assert seen == [408]
