"""The fast lane (ops/http_fast.py): plain GETs of the query routes are answered before FastAPI,
with the same answers FastAPI gives (status, JSON body, content type, metrics series), the same
read-your-writes, and everything else left to FastAPI. Also the per-request HTTP metrics
(ops/metrics.HttpRequestMetrics) and the load generator's client."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from clitools import REPO
from conftest import Keys, Lines, admit_ok, encode, load_signer, signer_from_byte
from fastapi.testclient import TestClient
from servers import serve_app

from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import LogError
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api import fast as http_fast
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.node.lifecycle import Node
from ledgerlog.ops.node.metrics import HttpRequestMetrics

NDJSON = {"Content-Type": "application/x-ndjson"}  # POST /v1/ingest takes this type only


@pytest.fixture
def node(tmp_path) -> Iterator[Node]:
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token="t" * 32)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg)
    n.start()
    yield n
    n.stop()


def lines_for(node: Node) -> Lines:
    return Lines(node.chain, Keys(*(load_signer(node.config, n) for n in ("producer", "oracle", "treasury", "faucet"))))


@pytest.fixture
def history(node) -> dict[str, Any]:
    """A few blocks: funded wallets, a registered provider with a reading, shares, a pending tx."""
    ln = lines_for(node)
    alice, bob = signer_from_byte(71), signer_from_byte(72)
    ln.fund(alice, bob)
    admit_ok(node.chain, ln.provider(alice, "solar-1"))
    admit_ok(node.chain, ln.reading("solar-1", 1500))
    admit_ok(node.chain, ln.share(bob, "rig1"))
    confirmed = ln.tx(alice, bob, 1000)
    admit_ok(node.chain, ln.block([confirmed]))
    pending = ln.tx(bob, alice, 5)
    admit_ok(node.chain, pending)
    node.queries.sync()
    st = node.chain.write_state()
    tip = st.tip()
    block = node.queries.block(str(tip.height))
    view = node.queries._view("chainstate")
    confirmed_id = next(t for t in json.dumps(block).split('"')
                        if len(t) == 64 and view.get(b"t/" + t.encode()) is not None)
    return {"alice": alice.address, "bob": bob.address, "tip": tip, "pending": st.pending(bob.address)[0][1],
            "confirmed": confirmed_id}


def _paths(node: Node, h: dict[str, Any]) -> list[str]:
    a, b = h["alice"], h["bob"]
    tip = h["tip"]
    return [
        "/v1/health", "/v1/status",
        f"/v1/accounts/{a}", f"/v1/accounts/{b}", f"/v1/accounts/{'0' * 40}",
        f"/v1/accounts/{a}?height=0", f"/v1/accounts/{a}?height=1", f"/v1/accounts/{a}?height={tip.height}",
        f"/v1/accounts/{a}?height=99999", "/v1/accounts/xyz", f"/v1/accounts/{a.upper()}",
        f"/v1/blocks/{tip.height}", "/v1/blocks/1", f"/v1/blocks/{tip.hash}", "/v1/blocks/404404",
        "/v1/blocks/nothex", f"/v1/tx/{'ab' * 32}", f"/v1/tx/{h['pending']}", f"/v1/tx/{h['confirmed']}",
        f"/v1/pool/workers/{b}", "/v1/pool/workers/nope",
        "/v1/energy/providers/solar-1", "/v1/energy/providers/none",
    ]


def _get(app: Any, path: str) -> tuple[int, str, Any]:
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get(path)
    return r.status_code, r.headers.get("content-type", ""), r.json()


def test_same_answers_as_fastapi(node, history):
    lane_app = create_app(node)
    plain_app = create_app(node)
    plain_app.fast_lane = None  # FastAPI alone
    served = []
    serve = lane_app.fast_lane.serve

    async def counting(*a: Any) -> None:
        served.append(a[1])
        await serve(*a)

    lane_app.fast_lane.serve = counting
    for path in _paths(node, history):
        fast, slow = _get(lane_app, path), _get(plain_app, path)
        assert fast == slow, path
        assert fast[1] == "application/json", path
    assert len(served) == len(_paths(node, history))  # every one of them took the lane
    status = _get(lane_app, f"/v1/accounts/{history['alice']}")
    assert status[0] == 200 and set(status[2]) >= {"address", "balance", "nonce", "staked", "provenance"}
    prov = status[2]["provenance"]
    assert prov["projection"] == "balances" and prov["lag"] == 0 and prov["height"] == history["tip"].height
    assert set(prov) == {"projection", "version", "height", "positions", "lag", "digest"}


def test_the_other_forms_go_to_fastapi(node, history):
    app = create_app(node)
    a = history["alice"]
    lane = app.fast_lane

    def scope(method: str, path: str, qs: bytes = b"") -> dict[str, Any]:
        return {"type": "http", "method": method, "path": path, "query_string": qs, "headers": [], "root_path": ""}

    assert lane.match(scope("GET", f"/v1/accounts/{a}")) is not None
    assert lane.match(scope("GET", f"/v1/accounts/{a}", b"height=12"))[1] == (a, 12)
    for method, path, qs in [("HEAD", f"/v1/accounts/{a}", b""), ("POST", "/v1/status", b""),
                             ("GET", f"/v1/accounts/{a}", b"height=-1"), ("GET", f"/v1/accounts/{a}", b"height=007"),
                             ("GET", f"/v1/accounts/{a}", b"height=1&x=2"), ("GET", f"/v1/accounts/{a}", b"h=1"),
                             ("GET", f"/v1/accounts/{a}", b"height=" + b"9" * 30), ("GET", f"/v1/accounts/{a}/", b""),
                             ("GET", "/v1/accounts/", b""), ("GET", "/v1/status", b"x=1"), ("GET", "/v1/statusx", b""),
                             ("GET", "/v1/ready", b""), ("GET", "/v1/dashboard", b""), ("GET", "/metrics", b"")]:
        assert lane.match(scope(method, path, qs)) is None, (method, path, qs)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get(f"/v1/accounts/{a}?height=-1")
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"
        assert c.get(f"/v1/accounts/{a}?height=abc").json()["code"] == "BAD_REQUEST"
        assert c.get(f"/v1/accounts/{a}?height=007").json()["height"] == 7
        assert c.head(f"/v1/accounts/{a}").status_code == 405
        assert c.get(f"/v1/accounts/{a}/").status_code == 404
        assert c.post("/v1/status").json()["code"] == "METHOD_NOT_ALLOWED"
        paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/accounts/{address}", "/v1/blocks/{height_or_hash}", "/v1/tx/{txid}", "/v1/status",
            "/v1/pool/workers/{address}", "/v1/energy/providers/{provider_id}", "/v1/health"} <= set(paths)
    assert [p["name"] for p in paths["/v1/accounts/{address}"]["get"]["parameters"]] == ["address", "height"]


def test_read_your_writes(node, history):
    """Every answer reflects what was admitted before the request, folded or not yet."""
    ln = lines_for(node)
    alice, bob = history["alice"], history["bob"]
    with TestClient(create_app(node)) as c:
        for i in range(15):
            before = c.get(f"/v1/accounts/{bob}").json()["balance"]
            tx = ln.tx(ln.keys.faucet, bob, 100 + i)
            r = c.post("/v1/ingest", content=encode(ln.block([tx])) + b"\n", headers=NDJSON)
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            got = c.get(f"/v1/accounts/{bob}").json()
            assert got["balance"] == before + 100 + i, (i, got)
            assert got["provenance"]["lag"] == 0
        assert c.get(f"/v1/accounts/{alice}").status_code == 200


def test_off_the_event_loop_path_answers_the_same(node, history):
    """Where end offsets are not in memory (Kafka) the lane waits and reads in the thread pool."""
    app = create_app(node)
    paths = _paths(node, history)
    inline = [_get(app, p) for p in paths]
    app.fast_lane.inline = False
    assert [_get(app, p) for p in paths] == inline


def test_errors(node, history, monkeypatch, caplog):
    app = create_app(node)
    a = history["alice"]

    def boom(*_: Any) -> Any:
        raise RuntimeError("secret detail")

    def gone(*_: Any) -> Any:
        raise LogError("the log is away")

    monkeypatch.setattr(node.queries, "account", boom)
    app.fast_lane = type(app.fast_lane)(node, node.metrics.on_request)  # picks up the patched query
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get(f"/v1/accounts/{a}")
        assert r.status_code == 500 and r.json() == {"code": "INTERNAL", "message": "internal error; see the node's log"}
        assert "secret detail" not in r.text and "secret detail" in caplog.text
        monkeypatch.setattr(node.queries, "account", gone)
        app.fast_lane = type(app.fast_lane)(node, node.metrics.on_request)
        r = c.get(f"/v1/accounts/{a}")
        assert r.status_code == 503 and r.json() == {"code": "LOG_ERROR", "message": "the log is away"}
    counts = node.metrics.http.counts()
    assert counts[("GET", "/v1/accounts/{address}", "500")] == 1
    assert counts[("GET", "/v1/accounts/{address}", "503")] == 1


def test_metrics_count_lane_and_framework_requests(node, history):
    a = history["alice"]
    with TestClient(create_app(node), raise_server_exceptions=False) as c:
        for _ in range(3):
            assert c.get(f"/v1/accounts/{a}").status_code == 200
        assert c.get("/v1/accounts/bad").status_code == 400
        assert c.get(f"/v1/accounts/{a}?height=-2").status_code == 400  # FastAPI's validation
        assert c.get("/v1/blocks/404404").status_code == 404
        assert c.get("/v1/nowhere").status_code == 404
        assert c.post("/v1/status").status_code == 405
        text = c.get("/metrics").text
    want = {('GET', '/v1/accounts/{address}', '200'): 3, ('GET', '/v1/accounts/{address}', '400'): 2,
            ('GET', '/v1/blocks/{height_or_hash}', '404'): 1, ('GET', 'unmatched', '404'): 1,
            ('POST', '/v1/status', '405'): 1}
    for (method, route, status), n in want.items():
        line = f'ledgerlog_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {float(n)}'
        assert line in text, line
        # how many requests the latency histogram observed, not how long they took
        assert (f'ledgerlog_http_request_duration_seconds_count{{method="{method}",route="{route}",'
                f'status="{status}"}} {float(n)}') in text


def test_telemetry_sends_everything_through_fastapi(node, history, monkeypatch):
    app = create_app(node)
    scope = {"type": "http", "method": "GET", "path": f"/v1/accounts/{history['alice']}", "query_string": b"",
             "headers": [], "root_path": ""}
    assert app.fast_lane.match(scope) is not None
    monkeypatch.setattr(http_fast, "_telemetry", [True, 0.0])
    assert app.fast_lane.match(scope) is None
    with TestClient(app) as c:
        assert c.get(scope["path"]).json()["address"] == history["alice"]


def test_http_request_metrics_buckets_and_exposition():
    from prometheus_client import CollectorRegistry, generate_latest
    m = HttpRequestMetrics(bounds=(0.001, 0.01, 1))
    reg = CollectorRegistry()
    reg.register(m)
    assert generate_latest(reg) == b""  # no series before the first request
    # bucketing of given durations (no clock involved): a value on a bound counts in that bucket
    for s in (0.0005, 0.001, 0.002, 0.01, 5.0):
        m.observe("/r/{x}", "GET", 200, s)
    m.observe("/r/{x}", "GET", 404, 0.2)
    text = generate_latest(reg).decode()
    labels = 'method="GET",route="/r/{x}",status="200"'
    for le, n in (("0.001", 2), ("0.01", 4), ("1", 4), ("+Inf", 5)):
        assert f'ledgerlog_http_request_duration_seconds_bucket{{le="{le}",{labels}}} {float(n)}' in text
    assert f"ledgerlog_http_request_duration_seconds_count{{{labels}}} 5.0" in text
    assert f"ledgerlog_http_requests_total{{{labels}}} 5.0" in text
    assert "# TYPE ledgerlog_http_requests_total counter" in text
    assert "# HELP ledgerlog_http_request_duration_seconds HTTP request latency" in text
    assert m.counts() == {("GET", "/r/{x}", "200"): 5, ("GET", "/r/{x}", "404"): 1}


def test_dumps_handles_big_integers():
    assert json.loads(http_fast.dumps({"a": 2**70, "b": "é"})) == {"a": 2**70, "b": "é"}
    assert http_fast.dumps({"a": 1, "b": [1, "x"]}) == b'{"a":1,"b":[1,"x"]}'


def test_load_generator_against_a_real_server(node, history, monkeypatch):
    """benchmarks.load's raw keep-alive client, flat out and at a fixed rate, on a real uvicorn."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.load import run
    with serve_app(create_app(node)) as (host, port):
        url = f"http://{host}:{port}"
        addresses = [history["alice"], history["bob"]]
        flat = asyncio.run(run(url, addresses, 0, 200, 20, connections=3))
        assert flat["sent"] == flat["ok"] == 200 and flat["errors"] == 0 and flat["connections"] == 3
        fixed = asyncio.run(run(url, addresses, 200.0, 100, 20))
        assert fixed["sent"] == fixed["ok"] == 100 and fixed["offered_rate"] == 200.0
        assert 0 < fixed["p50_ms"] <= fixed["p99_ms"] and fixed["service_p50_ms"] <= fixed["p99_ms"]
        bad = asyncio.run(run(url, ["nothex"], 0, 10, 20, connections=1))
        assert bad["sent"] == 10 and bad["ok"] == 0  # 400s are answers, not errors


def test_a_method_nobody_serves_counts_as_other_so_clients_cannot_mint_series(node):
    """The method label took the client's method: 1,300 requests of 33 methods llhttp accepts
    (PROPFIND, M-SEARCH, ...) made 24k lasting series, and /metrics grew from 24 KB to 2.8 MB."""
    with TestClient(create_app(node), raise_server_exceptions=False) as c:
        for method in ("PROPFIND", "MKCALENDAR", "M-SEARCH", "PURGE", "BREW"):
            assert c.request(method, "/v1/status").status_code == 405
        assert c.get("/v1/status").status_code == 200
        counts = node.metrics.http.counts()
    assert {m for m, _, _ in counts} == {"GET", "_OTHER"}, counts
    assert counts[("_OTHER", "/v1/status", "405")] == 5


def test_a_request_refused_for_its_host_is_counted(node):
    """The Host guard answers before the metrics middleware: its 421s never showed in
    ledgerlog_http_requests_total."""
    with TestClient(create_app(node)) as c:
        assert c.get("/v1/status", headers={"Host": "evil.example"}).status_code == 421
    assert node.metrics.http.counts() == {("GET", "unmatched", "421"): 1}
