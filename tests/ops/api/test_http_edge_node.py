"""The HTTP edge of a real `ledgerlog run` process over real sockets on 127.0.0.1 (PROTOCOL.md §7,
DESIGN "Trust at the edges"): idle, slow, pipelining and non-reading clients cannot starve others
or grow its memory (connection cap that closes idle and stalled connections first, header, body,
keep-alive and send timeouts, bounded pipelining), malformed HTTP and oversized heads get JSON
refusals the client can read, ingest bodies are held by their bytes, a stopping node answers the
ingest under way, and the CLI ingests a file larger than the node's body cap in chunks. Every
loop is bounded."""
from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, cli_env

from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history

NDJSON = {"Content-Type": "application/x-ndjson"}
MiB = 1024 * 1024


# -- the real node: connections and timeouts ------------------------------------------------------
def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        pytest.skip(f"needs {want} open files; the hard limit is {hard}")


@contextmanager
def node_process(root: Path, env: dict[str, str], genesis: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """A `ledgerlog run --port 0` on 127.0.0.1 over a new data dir, with ``env`` set."""
    data = root / "data"
    full = cli_env(LEDGERLOG_LOG_SYNC="0", **env)
    init = [LEDGERLOG, "--data-dir", str(data), "init"] + (["--genesis", str(genesis)] if genesis else [])
    subprocess.run(init, check=True, capture_output=True, env=full, timeout=120)
    with open(root / "node.log", "ab") as log:
        proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "run", "--port", "0"], stdout=log,
                                stderr=subprocess.STDOUT, env=full)
    try:
        url = None
        for _ in range(600):  # 60 s
            assert proc.poll() is None, (root / "node.log").read_text()[-3000:]
            try:
                info = json.loads((data / "node.json").read_text())
                if info.get("pid") == proc.pid and httpx.get(info["url"] + "/v1/health", timeout=2).status_code == 200:
                    url = info["url"]
                    break
            except (OSError, ValueError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        assert url, (root / "node.log").read_text()[-3000:]
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (EOF or reset), without blocking."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_1100_idle_sockets_and_a_slowloris_client_do_not_starve_others(tmp_path):
    """Past http.max_connections the idle connections are closed first, so a well-behaved
    client is served at once while 1,100 idle sockets and a slowloris client stay connected
    (the header timeout is long here, so eviction is what frees the room)."""
    _raise_nofile(4096)
    with node_process(tmp_path, {"LEDGERLOG_HTTP_HEADER_TIMEOUT": "120"}) as (url, _proc):
        addr = _addr(url)
        idle: list[socket.socket] = []
        slow = socket.create_connection(addr, timeout=5)
        slow.sendall(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            for _ in range(1100):
                idle.append(socket.create_connection(addr, timeout=5))
            slow.sendall(b"X")  # still trickling its head
            with httpx.Client(base_url=url, timeout=3) as c:  # "within a second", with slack
                for _ in range(5):
                    r = c.get("/v1/status")
                    assert r.status_code == 200, r.text
                    assert c.post("/v1/ingest", content=b"\n", headers=NDJSON).status_code == 200
            closed = sum(_closed_by_peer(s) for s in idle)
            assert closed >= 100, closed  # at least the ones over the cap (1,000) were closed
        finally:
            for s in idle:
                s.close()
            slow.close()


def _wait_closed(sock: socket.socket, drip: bytes, rounds: int = 60, every: float = 0.25) -> bytes:
    """Send ``drip`` every ``every`` seconds until the server closes; what it answered."""
    got = b""
    sock.settimeout(every)
    for _ in range(rounds):
        try:
            sock.sendall(drip)
        except OSError:
            return got
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return got
        if not data:
            return got
        got += data
    raise AssertionError(f"the server kept a slow client for {rounds * every:.0f} s")


def test_slow_clients_are_timed_out(tmp_path):
    env = {"LEDGERLOG_HTTP_HEADER_TIMEOUT": "1", "LEDGERLOG_HTTP_BODY_TIMEOUT": "1",
           "LEDGERLOG_HTTP_KEEP_ALIVE_TIMEOUT": "1"}
    with node_process(tmp_path, env) as (url, _proc):
        addr = _addr(url)
        # slowloris: a header byte every quarter second, never a whole head
        loris = socket.create_connection(addr, timeout=5)
        loris.sendall(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        answer = _wait_closed(loris, b"a")
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "TIMEOUT"
        loris.close()
        # a connection that never sends anything
        silent = socket.create_connection(addr, timeout=5)
        assert _wait_closed(silent, b"") is not None
        silent.close()
        # CRLFs between requests never make a request but must not keep the connection either
        crlf = socket.create_connection(addr, timeout=5)
        assert _wait_closed(crlf, b"\r\n") is not None
        crlf.close()
        # a slow body: the head is whole, the body trickles
        body = socket.create_connection(addr, timeout=5)
        body.sendall(b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        answer = _wait_closed(body, b"\n")
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        body.close()
        # and a well-behaved client is served meanwhile and after
        assert httpx.get(url + "/v1/status", timeout=3).status_code == 200


def test_a_request_head_over_64_kib_is_431_and_closed(tmp_path):
    """An endless URL (or header) is cut at 64 KiB: uvicorn alone would buffer it, copying the
    whole URL again with every chunk, for the whole header timeout; others are served meanwhile."""
    with node_process(tmp_path, {"LEDGERLOG_HTTP_HEADER_TIMEOUT": "60"}) as (url, _proc):
        addr = _addr(url)
        for start in (b"GET /" , b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "):
            sock = socket.create_connection(addr, timeout=5)
            try:
                sock.sendall(start)
                answer = _wait_closed(sock, b"a" * 8192, rounds=40, every=0.05)
            finally:
                sock.close()
            assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "HEAD_TOO_LARGE"
        big_but_fine = httpx.get(url + "/v1/status", headers={"X-Pad": "p" * 30_000}, timeout=5)
        assert big_but_fine.status_code == 200  # a large head under the cap still goes through


def _served(url: str, rounds: int = 3) -> None:
    """A well-behaved client gets /v1/health within 3 s, each of ``rounds`` times."""
    with httpx.Client(base_url=url, timeout=3) as c:
        for _ in range(rounds):
            assert c.get("/v1/health").status_code == 200


def test_one_pipelining_client_cannot_grow_memory_or_starve_others(tmp_path):
    """One connection pipelines requests as fast as it can and reads the answers: uvicorn queued
    every request of each 256 KiB read after every answer (memory grew ~100 MB/s, health took
    seconds); the requests waiting on a connection are now bounded."""
    with node_process(tmp_path, {}) as (url, proc):
        httpx.get(url + "/v1/health", timeout=10)
        before = _rss(proc.pid, "VmRSS")
        sock = socket.create_connection(_addr(url), timeout=5)
        block = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 1500  # ~64 KiB
        stop = time.monotonic() + 5
        reader = threading.Thread(target=_drain, args=(sock, stop + 5), daemon=True)
        reader.start()
        try:
            sent = 0
            while time.monotonic() < stop and sent < 400:  # bounded: 5 s, 26 MB
                try:
                    sock.sendall(block)
                except OSError:
                    break
                sent += 1
            _served(url)
        finally:
            sock.close()
        grew = _rss(proc.pid, "VmHWM") - before
        assert grew < 150 * MiB, f"peak RSS grew by {grew / MiB:.0f} MiB for one pipelining client"
        _served(url)


def _drain(sock: socket.socket, until: float) -> None:
    sock.settimeout(0.5)
    while time.monotonic() < until:
        try:
            if not sock.recv(1 << 20):
                return
        except TimeoutError:
            continue
        except OSError:
            return


def test_clients_that_never_read_their_answers_are_closed_and_do_not_starve_others(tmp_path):
    """Connections that ask for large answers and never read them were "busy" for ever: past the
    connection cap every newcomer got 503. A connection whose answer makes no progress for
    http.send_timeout is closed, and one stalled so counts as idle when room is needed."""
    env = {"LEDGERLOG_HTTP_MAX_CONNECTIONS": "20", "LEDGERLOG_HTTP_SEND_TIMEOUT": "2"}
    with node_process(tmp_path, env) as (url, _proc):
        ask = b"GET /static/swagger-ui-bundle.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 10
        stalled = []
        try:
            for _ in range(30):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(5)
                s.connect(_addr(url))
                s.sendall(ask)
                stalled.append(s)
            time.sleep(2.0)  # until the node has filled their buffers (slower on a loaded CI machine: 0.5 s was not)
            _served(url)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(map(_reset_or_closed, stalled)):
                time.sleep(0.5)
            assert all(map(_reset_or_closed, stalled)), "stalled readers were kept open"
            _served(url)
        finally:
            for s in stalled:
                s.close()


def _reset_or_closed(sock: socket.socket) -> bool:
    """Whether the server closed or reset ``sock``, by its TCP state (reading it would make the
    progress the server waits for)."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state in (7, 8)  # TCP_CLOSE (reset), TCP_CLOSE_WAIT (the server's FIN)


def _exchange(addr: tuple[str, int], raw: bytes) -> bytes:
    """Send ``raw`` in one write (without closing), then read one answer (to its content-length,
    or until the server closes)."""
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(raw)
        got = b""
        try:
            while data := sock.recv(65536):
                got += data
                head, sep, body = got.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                if sep and length and len(body) >= int(length[1]):
                    break
        except ConnectionResetError:
            raise AssertionError(f"reset before the answer was read (got {got[:200]!r})") from None
        return got


def _json_error(answer: bytes, status: int, code: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), answer[:300]
    assert b"content-type: application/json" in head.lower(), head
    assert json.loads(body)["code"] == code, body


@pytest.mark.parametrize("name,raw", [
    ("two lengths", b"POST /v1/faucet HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
    ("length and chunked", b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bad chunk size", b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"),
    ("unknown method", b"BREW /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    ("byte 0x80 in the path", b"GET /v1/\x80status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
])
def test_malformed_http_gets_a_json_400_the_client_can_read(tmp_path, name, raw):
    """uvicorn answered these in plain text; refusals were closed with the request unread, so the
    kernel reset the connection and the client never saw the answer."""
    with node_process(tmp_path, {}) as (url, _proc):
        _json_error(_exchange(_addr(url), raw), 400, "BAD_REQUEST")
        _served(url, 1)


def test_a_head_over_64_kib_in_one_write_is_431_and_read_whole(tmp_path):
    """A head that arrived whole in one read never passed the byte count: 70 KB of headers were
    served. And the 431 arrives rather than a reset."""
    with node_process(tmp_path, {}) as (url, _proc):
        raw = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        _json_error(_exchange(_addr(url), raw), 431, "HEAD_TOO_LARGE")
        raw = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
        _json_error(_exchange(_addr(url), raw), 431, "HEAD_TOO_LARGE")
        _served(url, 1)


def test_websocket_upgrades_are_answered_as_plain_http(tmp_path):
    """A WebSocket upgrade with a foreign Host was a 500 with a traceback logged each time (the
    Host guard answered a websocket scope with an HTTP response); the node serves no WebSocket."""
    with node_process(tmp_path, {}) as (url, _proc):
        upgrade = (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        _json_error(_exchange(_addr(url), b"GET /v1/health HTTP/1.1\r\nHost: evil.example\r\n" + upgrade),
                    421, "HOST_NOT_ALLOWED")
        answer = _exchange(_addr(url), b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + upgrade)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert "Traceback" not in (tmp_path / "node.log").read_text()


def _slow_ingest(addr: tuple[str, int], length: int, sent: bytes) -> socket.socket:
    """An ingest request whose head and the first bytes of its body are sent, the rest not."""
    s = socket.create_connection(addr, timeout=5)
    s.sendall(b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n"
              b"Content-Length: %d\r\n\r\n" % length + sent)
    return s


def test_slow_ingest_bodies_do_not_take_the_room_of_others(tmp_path):
    """Four ingest requests from one peer, sending their bodies slowly, held every ingest slot:
    everyone else got 503 OVERLOADED for the whole body timeout, again and again. The node now
    holds bodies by the bytes that arrived: a slow client holds what it sent, not a slot."""
    from ledgerlog.ops.api.handlers import INGEST_BODIES
    with node_process(tmp_path, {"LEDGERLOG_HTTP_BODY_TIMEOUT": "60"}) as (url, _proc):
        slow = [_slow_ingest(_addr(url), 1000, b"\n") for _ in range(4 * INGEST_BODIES)]
        try:
            time.sleep(0.5)  # the node has read their heads and first bytes
            r = httpx.post(url + "/v1/ingest", content=b"\n", headers=NDJSON, timeout=5)
            assert r.status_code == 200, r.text
        finally:
            for s in slow:
                s.close()


def test_ingest_bodies_past_the_byte_room_are_503_until_one_is_answered(tmp_path):
    """What bounds the memory clients make the node hold: bodies (up to http.ingest_max_body each)
    of INGEST_BODIES full bodies in all, counted as they arrive; past it 503 OVERLOADED (other
    routes are served meanwhile), and room again once a request has been answered."""
    from ledgerlog.ops.api.handlers import INGEST_BODIES
    cap = 4096
    with node_process(tmp_path, {"LEDGERLOG_HTTP_BODY_TIMEOUT": "60", "LEDGERLOG_INGEST_MAX_BODY": str(cap)}) \
            as (url, _proc):
        addr = _addr(url)
        slow = []
        try:
            for _ in range(INGEST_BODIES):  # each has sent all but the last byte of a full body
                slow.append(_slow_ingest(addr, cap, b"\n" * (cap - 1)))
            deadline = time.monotonic() + 10
            while True:  # the node reads them in its own time; 100 more bytes do not fit
                r = httpx.post(url + "/v1/ingest", content=b"\n" * 100, headers=NDJSON, timeout=5)
                if r.status_code == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert r.status_code == 503 and r.json()["code"] == "OVERLOADED", r.text
            assert httpx.get(url + "/v1/status", timeout=5).status_code == 200
        finally:
            for s in slow:
                s.close()
        deadline = time.monotonic() + 10
        while (r := httpx.post(url + "/v1/ingest", content=b"\n" * 100, headers=NDJSON,
                               timeout=5)).status_code == 503:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.status_code == 200, r.text


# -- the real node: memory and answer size ------------------------------------------------------
def _rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_memory_stays_bounded_for_millions_of_tiny_junk_lines(tmp_path):
    with node_process(tmp_path, {"LEDGERLOG_INGEST_RATE": "0"}) as (url, proc):
        httpx.get(url + "/v1/status", timeout=10)
        before = _rss(proc.pid, "VmRSS")
        body = b"x\n" * 2_000_000  # 4 MB
        r = httpx.post(url + "/v1/ingest", content=body, headers=NDJSON, timeout=300)
        assert r.status_code == 422, r.text[:300]
        assert len(r.content) < MiB
        out = r.json()
        assert out["rejected"] == 2_000_000 and out["rejections_truncated"] is True
        assert len(out["rejections"]) == 1000
        grew = _rss(proc.pid, "VmHWM") - before
        assert grew < 100 * MiB, f"peak RSS grew by {grew / MiB:.0f} MiB for a 4 MB body"


# -- the CLI streams a large file to a running node in chunks ---------------------------------------
@pytest.mark.parametrize("cli_knows_the_cap", [True, False])
def test_cli_ingests_a_file_larger_than_the_nodes_body_cap_in_chunks(tmp_path, cli_knows_the_cap):
    """Lines over the node's cap are MALFORMED and the rest admitted, whether the CLI's own
    settings carry the node's cap or not (the node's came from its environment: the line the node
    refused with 413 stopped the whole ingest, TOO_LARGE, and the lines after it were never sent)."""
    genesis, keys = make_genesis(7, wallets=4)
    gpath, hpath = tmp_path / "genesis.json", tmp_path / "history.jsonl"
    write_genesis(gpath, genesis)
    write_history(hpath, genesis, keys, events=1500, seed=7)
    good = hpath.read_bytes().splitlines()
    cap = 64 * 1024
    # junk at known lines, blank lines kept (line numbers count them), a line over the cap
    lines = [*good[:2], b"{junk", *good[2:], b"", b"x" * (cap + 10), b"not json"]
    src = tmp_path / "big.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    assert src.stat().st_size > 4 * cap
    env = {"LEDGERLOG_INGEST_MAX_BODY": str(cap), "LEDGERLOG_INGEST_RATE": "0"}
    with node_process(tmp_path, env, genesis=gpath) as (url, _proc):
        full = cli_env(**env)
        if not cli_knows_the_cap:  # the node took its cap from its environment alone (a systemd EnvironmentFile)
            full = cli_env(LEDGERLOG_INGEST_RATE="0")
            toml = tmp_path / "data" / "config.toml"
            toml.write_text("\n".join(ln for ln in toml.read_text().splitlines() if not ln.startswith("ingest_max_body")))
        out = subprocess.run([LEDGERLOG, "--data-dir", str(tmp_path / "data"), "ingest", str(src)],
                             check=False, capture_output=True, env=full, timeout=300)
        assert out.returncode == 1, out.stderr[-2000:]
        summary = json.loads(out.stdout)
        assert summary["accepted"] == len(good) and summary["duplicates"] == 0, summary
        assert summary["rejected"] == 3
        assert [(x["line"], x["code"]) for x in summary["rejections"]] == [
            (3, "MALFORMED"), (len(lines) - 1, "MALFORMED"), (len(lines), "MALFORMED")], summary
        status = httpx.get(url + "/v1/status", timeout=10).json()
        assert status["height"] == sum(1 for ln in good if b'"type":"block"' in ln.replace(b" ", b""))


def test_sigterm_during_a_long_ingest_answers_it_and_loses_nothing(tmp_path):
    """SIGTERM while a large ingest was being admitted: after 10 s uvicorn cancelled the request
    (a text/plain 500 for lines mostly admitted) while admission ran on up to the log's close.
    The node now lets it finish (a JSON answer, every accepted line on the log after restart) and
    closes the log only once no admission runs."""
    genesis, keys = make_genesis(9, wallets=6)
    gpath, hpath = tmp_path / "genesis.json", tmp_path / "history.jsonl"
    write_genesis(gpath, genesis)
    write_history(hpath, genesis, keys, events=250_000, seed=9)  # ~100 MB: admitted in well over 10 s here
    body = hpath.read_bytes()
    answer: list[Any] = []
    env = {"LEDGERLOG_INGEST_RATE": "0", "LEDGERLOG_INGEST_MAX_BODY": str(256 * MiB)}
    with node_process(tmp_path, env, genesis=gpath) as (url, proc):
        def post() -> None:
            try:
                answer.append(httpx.post(url + "/v1/ingest", content=body, headers=NDJSON, timeout=120))
            except httpx.HTTPError as exc:
                answer.append(exc)
        t = threading.Thread(target=post)
        t.start()
        time.sleep(1.0)  # the body is in; admission is under way
        proc.terminate()
        t.join(150)
        assert proc.wait(timeout=120) == 0
    [r] = answer
    assert isinstance(r, httpx.Response) and r.status_code == 200, r
    accepted = r.json()["accepted"]
    assert accepted > 0 and r.json()["rejected"] == 0
    again = subprocess.run([LEDGERLOG, "--data-dir", str(tmp_path / "data"), "ingest", str(hpath)],
                           capture_output=True, env=cli_env(LEDGERLOG_LOG_SYNC="0"), timeout=300, check=False)
    summary = json.loads(again.stdout)
    assert summary["duplicates"] == accepted and summary["rejected"] == 0, summary
