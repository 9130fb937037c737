"""Limits and bad input at the HTTP edge (ops/limits.py): 413 for oversized bodies (declared or
streamed), 429 with Retry-After on /v1/ingest, readiness, and JSON {"code","message"} bodies for
404, 405, validation errors (400 BAD_REQUEST) and unexpected errors (500 INTERNAL, no traceback)."""
from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Keys, Lines, admit_ok, encode, load_signer
from fastapi.testclient import TestClient
from servers import serve_app

from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.limits import HttpLimits, TokenBuckets
from ledgerlog.ops.node.lifecycle import Node

NDJSON = {"Content-Type": "application/x-ndjson"}  # POST /v1/ingest takes this type only

TOKEN = "t" * 32
SMALL = HttpLimits(max_body=1024, max_ingest_body=4096)


def _make(tmp_path: Any, start: bool = True) -> Node:
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token=TOKEN)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg)
    if start:
        n.start()
    return n


@pytest.fixture
def node(tmp_path) -> Iterator[Node]:
    n = _make(tmp_path)
    yield n
    n.stop()


def lines_for(node: Node) -> Lines:
    return Lines(node.chain, Keys(*(load_signer(node.config, n) for n in ("producer", "oracle", "treasury", "faucet"))))


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["code"] == code and isinstance(body["message"], str), body
    return body


# -- 413 ------------------------------------------------------------------------------------------
def test_declared_body_over_the_cap(node):
    with TestClient(create_app(node, limits=SMALL)) as c:
        assert_error(c.post("/v1/ingest", content=b"x" * 4097, headers=NDJSON), 413, "TOO_LARGE")
        assert_error(c.post("/rpc", content=b"[" + b" " * 2000 + b"]"), 413, "TOO_LARGE")
        assert_error(c.post("/v1/faucet", content=b"{" + b" " * 2000 + b"}"), 413, "TOO_LARGE")
        assert_error(c.post("/v1/admin/pause", content=b" " * 2000,
                            headers={"Authorization": f"Bearer {TOKEN}"}), 413, "TOO_LARGE")
        assert_error(c.post("/nowhere", content=b" " * 2000), 413, "TOO_LARGE")
        # at the cap is fine
        assert c.post("/v1/ingest", content=b"\n" * 4096, headers=NDJSON).status_code == 200
        assert c.post("/rpc", content=b" " * 1000 + b'{"jsonrpc":"2.0","method":"getblockcount","id":1}'[:24]
                      ).status_code == 200


def test_streamed_body_over_the_cap(node):
    lines = lines_for(node)
    good = encode(lines.block([])) + b"\n"

    def chunks(total: int) -> Iterator[bytes]:
        sent = 0
        while sent < total:
            yield b"\n" * 512
            sent += 512

    with TestClient(create_app(node, limits=SMALL)) as c:
        assert_error(c.post("/v1/ingest", content=chunks(8192), headers=NDJSON), 413, "TOO_LARGE")
        assert_error(c.post("/rpc", content=chunks(4096)), 413, "TOO_LARGE")
        assert_error(c.post("/v1/faucet", content=chunks(4096), headers={"Content-Type": "application/json"}),
                     413, "TOO_LARGE")
        # an ingest cut off by the cap admitted nothing
        assert_error(c.post("/v1/ingest", content=iter([good, b"\n" * 5000]), headers=NDJSON), 413, "TOO_LARGE")
        assert node.chain.write_state().tip().height == 0
        r = c.post("/v1/ingest", content=iter([good]), headers=NDJSON)
        assert r.status_code == 200 and r.json()["accepted"] == 1


def test_bad_content_length(node):
    with TestClient(create_app(node, limits=SMALL)) as c:
        assert_error(c.post("/rpc", content=b"{}", headers={"Content-Length": "abc"}), 400, "BAD_REQUEST")


@pytest.fixture
def server(node) -> Iterator[tuple[str, int]]:
    with serve_app(create_app(node, limits=SMALL)) as addr:
        yield addr


def test_declared_length_is_refused_before_the_body_is_sent(server):
    """A real server answers 413 to the headers alone: the client never has to send 1 GB."""
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.putrequest("POST", "/v1/ingest")
        conn.putheader("Content-Length", str(10**9))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["code"] == "TOO_LARGE"
    finally:
        conn.close()


def test_chunked_upload_over_the_cap_on_a_real_server(server):
    conn = http.client.HTTPConnection(*server, timeout=10)
    try:
        conn.request("POST", "/v1/ingest", body=iter([b"\n" * 1024] * 8), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked", "Content-Type": "application/x-ndjson"})
        resp = conn.getresponse()
        assert resp.status == 413 and json.loads(resp.read())["code"] == "TOO_LARGE"
    finally:
        conn.close()


# -- 429 ------------------------------------------------------------------------------------------
def test_ingest_rate_limit_per_client(node):
    app = create_app(node, limits=HttpLimits(ingest_rate=0.01, ingest_burst=2))
    with TestClient(app, client=("10.1.1.1", 1)) as one, TestClient(app, client=("10.1.1.2", 1)) as two:
        assert one.post("/v1/ingest", content=b"", headers=NDJSON).status_code == 200
        assert one.post("/v1/ingest", content=b"", headers=NDJSON).status_code == 200
        r = one.post("/v1/ingest", content=b"", headers=NDJSON)
        assert_error(r, 429, "RATE_LIMITED")
        assert int(r.headers["Retry-After"]) >= 1
        assert two.post("/v1/ingest", content=b"", headers=NDJSON).status_code == 200
        assert one.get("/v1/status").status_code == 200  # queries are not limited
    unlimited = create_app(node, limits=HttpLimits(ingest_rate=0))
    with TestClient(unlimited) as c:
        assert all(c.post("/v1/ingest", content=b"", headers=NDJSON).status_code == 200 for _ in range(5))


def test_token_buckets_refill_and_stay_bounded():
    now = [0.0]
    b = TokenBuckets(rate=2.0, burst=3, max_keys=10, clock=lambda: now[0])
    assert [b.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("a") == pytest.approx(0.5)
    assert b.wait("a") == pytest.approx(0.5) and b.wait("zz") == 0.0
    now[0] += 0.5
    assert b.take("a") == 0.0 and b.take("a") > 0
    for i in range(50):
        b.take(f"k{i}")
    assert len(b) == 10
    assert TokenBuckets(rate=0, burst=1).take("x") == 0.0  # disabled


# -- readiness ------------------------------------------------------------------------------------
def test_ready_reflects_projection_lag(tmp_path):
    node = _make(tmp_path, start=False)  # no background folding: lag stays until caught up
    try:
        lines = lines_for(node)
        with TestClient(create_app(node, limits=HttpLimits(ready_max_lag=1))) as c:
            r = c.get("/v1/ready")
            assert r.status_code == 200 and r.json()["ready"] is True
            admit_ok(node.chain, lines.block([lines.tx(lines.keys.faucet, lines.keys.oracle, 5)]))
            admit_ok(node.chain, lines.block([]))
            r = c.get("/v1/ready")
            body = assert_error(r, 503, "NOT_READY")
            assert body["ready"] is False and body["lag"]["chainstate"] > 1 and body["max_lag"] == 1
            assert c.get("/v1/health").status_code == 200  # liveness is not readiness
            node.runner.catch_up()
            assert c.get("/v1/ready").json()["ready"] is True
    finally:
        node.stop()


# -- JSON error bodies ----------------------------------------------------------------------------
def test_error_bodies(node):
    with TestClient(create_app(node), raise_server_exceptions=False) as c:
        assert_error(c.get("/nowhere"), 404, "NOT_FOUND")
        assert_error(c.get("/v1/status/"), 404, "NOT_FOUND")       # no slash redirects
        assert_error(c.get("/v1/blocks/99"), 404, "NOT_FOUND")
        assert_error(c.get("/v1/tx/abc"), 404, "NOT_FOUND")
        r = assert_error(c.post("/v1/status"), 405, "METHOD_NOT_ALLOWED")
        assert "GET" in c.post("/v1/status").headers.get("allow", "")
        assert_error(c.get("/v1/ingest"), 405, "METHOD_NOT_ALLOWED")
        assert_error(c.delete("/rpc"), 405, "METHOD_NOT_ALLOWED")
        # FastAPI's validation errors: 400 BAD_REQUEST with a message (not its 422 "detail" list)
        assert_error(c.get(f"/v1/accounts/{'00' * 20}?height=-1"), 400, "BAD_REQUEST")
        body = assert_error(c.get(f"/v1/accounts/{'00' * 20}?height=abc"), 400, "BAD_REQUEST")
        assert "height" in body["message"]
        r = c.get("/schemas/ids/notanint")  # the Schema Registry's errors: its media type and error_code
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST" and r.json()["error_code"] == 400
        assert_error(c.get("/v1/accounts/zz"), 400, "BAD_REQUEST")
        assert_error(c.post("/v1/faucet", json={"address": 1}), 400, "BAD_REQUEST")
        r = c.get("/schemas/ids/999999")  # Confluent's media type and error_code, plus our code
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND" and r.json()["error_code"] == 40403
        # POST /v1/ingest keeps 422 for "something was rejected" (PROTOCOL.md §7)
        r = c.post("/v1/ingest", content=b"{oops\n", headers=NDJSON)
        assert r.status_code == 422 and r.json()["rejected"] == 1


def test_internal_errors_hide_the_traceback(node, monkeypatch):
    def boom() -> Any:
        raise RuntimeError("secret-detail in /very/private/path")
    monkeypatch.setattr(node.queries, "status", boom)
    with TestClient(create_app(node), raise_server_exceptions=False) as c:
        r = c.get("/v1/status")
        assert_error(r, 500, "INTERNAL")
        assert "secret" not in r.text and "Traceback" not in r.text and "private" not in r.text
        assert c.get("/v1/health").status_code == 200  # the app keeps serving
