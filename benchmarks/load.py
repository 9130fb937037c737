"""A separate load process: GET /v1/accounts/{a} over keep-alive HTTP/1.1 connections, flat out
(rate 0) or at a fixed offered rate, bounded in count and time; prints one JSON answer
(benchmarks.common.answer).

The client is raw asyncio streams (uvloop when installed) with the request bytes prepared in
advance, so that on a small machine it costs the server as little CPU as possible: an HTTP
client library would spend more per request than the server does. ``connections`` keep-alive
connections run concurrently (flat out: each sends its next request as soon as the previous
answer is read; fixed rate: requests are due at ``start + i / rate`` and go out on the first idle
connection).

At a fixed rate, latency is counted from each request's scheduled send time, so a server that
falls behind shows its queueing in the percentiles (no coordinated omission); ``service_*`` is
send-to-answer alone. ``client_cpu_share`` is the CPU this process used per second of the run
(1.0 = one core): what the load itself takes from the machine the server shares."""
from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from benchmarks.common import answer

FLAT_CONNECTIONS = 8
FIXED_CONNECTIONS = 16
TIMEOUT = 10.0


def _pct(xs: list[float], q: float) -> float:
    return round(xs[min(len(xs) - 1, int(len(xs) * q))] * 1000, 3) if xs else 0.0


class Conn:
    """One keep-alive HTTP/1.1 connection: send a prepared GET, read one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def get(self, request: bytes) -> int:
        """Send ``request``, read the answer (Content-Length or chunked body); its status."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        i = lower.find(b"\r\ncontent-length:")
        if i >= 0:
            n = int(head[i + 17:head.index(b"\r\n", i + 2)])
            if n:
                await self.reader.readexactly(n)
        elif b"\r\ntransfer-encoding: chunked" in lower:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        if b"\r\nconnection: close" in lower:
            raise ConnectionError("the server closed the connection")
        return status

    def close(self) -> None:
        self.writer.close()


async def run(url: str, addresses: list[str], rate: float, count: int, max_seconds: float,
              connections: int | None = None) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    hosthdr = parts.netloc.encode()
    rng = random.Random(1)
    prepared = [b"GET /v1/accounts/%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (a.encode(), hosthdr) for a in addresses]
    requests = [rng.choice(prepared) for _ in range(count)]
    n_conn = max(1, connections or (FIXED_CONNECTIONS if rate > 0 else FLAT_CONNECTIONS))
    conns = [await Conn.open(host, port) for _ in range(n_conn)]
    health = b"GET /v1/health HTTP/1.1\r\nHost: %s\r\n\r\n" % hosthdr
    for c in conns:  # connect and warm up outside the measurement
        await c.get(health)

    opened: list[Conn] = []
    lat: list[float] = []
    service: list[float] = []
    ok = errors = 0
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    cpu0 = time.process_time()
    start = clock()
    end = start + max_seconds

    async def send(c: Conn, i: int, due: float) -> Conn:
        """One request on ``c``; the connection to use next (a new one after an error)."""
        nonlocal ok, errors
        t0 = clock()
        try:
            status = await asyncio.wait_for(c.get(requests[i]), TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            errors += 1
            c.close()
            fresh = await Conn.open(host, port)
            opened.append(fresh)
            return fresh
        t1 = clock()
        service.append(t1 - t0)
        lat.append(t1 - (due or t0))
        ok += status == 200
        return c

    if rate <= 0:  # flat out: every connection sends its next request when it has read an answer
        nxt = 0

        async def worker(c: Conn) -> None:
            nonlocal nxt
            while nxt < count and clock() < end:
                i, nxt = nxt, nxt + 1
                c = await send(c, i, 0.0)

        await asyncio.gather(*(worker(c) for c in conns))
    else:  # fixed rate: due times are fixed in advance; a request waits for an idle connection
        idle: asyncio.Queue[Conn] = asyncio.Queue()
        for c in conns:
            idle.put_nowait(c)
        pending: set[asyncio.Task[None]] = set()

        async def dispatch(i: int, due: float) -> None:
            c = await idle.get()
            idle.put_nowait(await send(c, i, due))

        for i in range(count):
            due = start + i / rate
            if due >= end:
                break
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            t = loop.create_task(dispatch(i, due))
            pending.add(t)
            t.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=TIMEOUT + 1)
    seconds = clock() - start
    cpu = time.process_time() - cpu0
    for c in conns + opened:
        c.close()
    lat.sort()
    service.sort()
    sent = len(lat) + errors
    return {"offered_rate": rate or None, "connections": n_conn, "sent": sent, "ok": ok, "errors": errors,
            "seconds": round(seconds, 3), "rate": round(len(lat) / seconds, 1) if seconds > 0 else 0.0,
            "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99),
            "service_p50_ms": _pct(service, 0.5), "service_p99_ms": _pct(service, 0.99),
            "client_cpu_share": round(cpu / seconds, 2) if seconds > 0 else 0.0}


def main(url: str, addresses: list[str], rate: float, count: int, max_seconds: float,
         connections: int | None = None) -> None:
    try:
        import uvloop  # the client's own overhead is what it takes from a small machine's server
        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    answer(runner(run(url, addresses, rate, count, max_seconds, connections)))


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    main(args["url"], args["addresses"], args["rate"], args["count"], args["max_seconds"], args.get("connections"))
