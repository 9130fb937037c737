"""Metrics and tracing: what /metrics reports after a generated history is ingested (values checked
against the history and the stores), projection lag in events and seconds, storage sizes, and
trace spans exported over OTLP only when an endpoint is set.

``observed_node`` (an in-process node with a FastAPI TestClient) lives in tests/nodetools.py,
shared with the monitoring, backup and storage fault tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from clitools import LEDGERLOG, cli_env
from fastapi.testclient import TestClient
from nodetools import history, ingest_all, observed_node, one, parse_metrics

from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.config import Config
from ledgerlog.ops.api.tracing import setup_tracing, traces_url
from ledgerlog.ops.data.storage import storage_bytes
from ledgerlog.ops.devtools.histgen import write_genesis
from ledgerlog.ops.node.metrics import AppendTimes
from ledgerlog.projections import energy, payouts


# -- the values ---------------------------------------------------------------------------------
def test_metrics_after_a_generated_history(tmp_path) -> None:
    with observed_node(tmp_path) as w:
        node, client, lines = w["node"], w["client"], w["lines"]
        ingest_all(client, lines)
        assert client.get("/v1/status").status_code == 200  # read-your-writes: folded everything
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        m = parse_metrics(r.text)

        objs = [json.loads(ln) for ln in lines]
        blocks = [o for o in objs if o["type"] == "block"]
        settlements = [o["body"] for o in objs if o["type"] == "settlement"]
        readings = [o for o in objs if o["type"] == "reading"]
        providers = {o["body"]["provider_id"] for o in objs if o["type"] == "provider"}
        assert settlements and readings and providers, "the history should exercise the energy market"

        # chain and admission
        assert one(m, "ledgerlog_chain_height") == blocks[-1]["header"]["height"]
        assert one(m, "ledgerlog_node_info", chain_id=w["genesis"]["chain_id"]) == 1
        assert one(m, "ledgerlog_last_block_age_seconds") >= time.time() - blocks[-1]["header"]["timestamp"] / 1000 - 5
        assert one(m, "ledgerlog_mempool_transactions") == node.mempool_size()
        assert one(m, "ledgerlog_events_admitted_total", kind="block") == len(blocks)
        assert one(m, "ledgerlog_events_rejected_total", code="MALFORMED") == 1
        assert one(m, "ledgerlog_events_duplicate_total", kind=objs[0]["type"]) == 1
        assert one(m, "ledgerlog_block_interval_seconds_count") == len(blocks) - 1
        faucet = w["keys"].wallets[0].address
        assert one(m, "ledgerlog_faucet_balance") == WriteState(node.chain.log).account(faucet).balance > 0

        # projections: all caught up
        for name in ("chainstate", "balances", "energy", "payouts"):
            assert one(m, "ledgerlog_projection_lag_events", projection=name) == 0
            assert one(m, "ledgerlog_projection_lag_seconds", projection=name) == 0
            assert one(m, "ledgerlog_projection_height", projection=name) <= blocks[-1]["header"]["height"]
        assert one(m, "ledgerlog_projection_height", projection="chainstate") == blocks[-1]["header"]["height"]

        # pool and energy, against the projections and the history
        pool = payouts.pool(node.runner.handles["payouts"].store.view())
        assert one(m, "ledgerlog_pool_workers") == pool["workers"] > 0
        assert one(m, "ledgerlog_pool_shares_total") == pool["shares"] > 0
        assert one(m, "ledgerlog_pool_pending_payouts") == pool["pending"]
        assert one(m, "ledgerlog_pool_paid_total") == pool["paid"]
        market = energy.market(node.runner.handles["energy"].store.view())
        assert one(m, "ledgerlog_energy_providers") == len(providers) == market["providers"]
        assert one(m, "ledgerlog_energy_average_price_per_kwh") == market["average_price_per_kwh"] > 0
        assert one(m, "ledgerlog_energy_traded_joules_total") == sum(s["milli_kwh"] for s in settlements) * 3600
        per_provider: dict[str, int] = {}
        for s in settlements:
            per_provider[s["provider_id"]] = per_provider.get(s["provider_id"], 0) + 1
        got = {lab["provider"]: v for lab, v in m["ledgerlog_energy_settlements_total"] if v}
        assert got == per_provider
        assert one(m, "ledgerlog_oracle_reading_latency_seconds_count") == len(readings)
        # readings carry 2023 timestamps: all in the top bucket, never negative
        assert one(m, "ledgerlog_oracle_reading_latency_seconds_sum") > 0

        # storage and process
        sizes = {(lab["component"], lab.get("projection", "")): v for lab, v in m["ledgerlog_storage_bytes"]}
        assert sizes[("log", "")] > 0 and all(sizes[("projection", n)] > 0 for n in node.runner.handles)
        assert one(m, "ledgerlog_storage_capacity_bytes") >= one(m, "ledgerlog_storage_available_bytes") > 0
        assert one(m, "ledgerlog_process_resident_memory_bytes") > 10 * 2**20
        assert one(m, "ledgerlog_process_open_fds") > 3

        # HTTP by route and status
        assert one(m, "ledgerlog_http_requests_total", route="/v1/ingest", method="POST", status="200") == 2
        assert one(m, "ledgerlog_http_requests_total", route="/v1/ingest", method="POST", status="422") == 1
        assert one(m, "ledgerlog_http_request_duration_seconds_count", route="/v1/status", method="GET",
                   status="200") == 1


def test_projection_lag_in_events_and_seconds(tmp_path) -> None:
    """Without the fold loop, appended records wait: lag counts them and their age since the
    append; folding brings both back to 0."""
    with observed_node(tmp_path, start=False) as w:
        node, lines = w["node"], w["lines"]
        before = time.time()
        s = node.admitter.admit(lines[:300])
        assert s.rejected == 0
        time.sleep(0.3)
        m = parse_metrics(node.metrics.render().decode())
        lag_events = node.runner.lag()
        for name, lag in lag_events.items():
            assert one(m, "ledgerlog_projection_lag_events", projection=name) == lag
            seconds = one(m, "ledgerlog_projection_lag_seconds", projection=name)
            if lag:
                assert 0.3 <= seconds <= time.time() - before + 0.01, (name, seconds)
            else:
                assert seconds == 0
        assert lag_events["chainstate"] > 0
        node.runner.catch_up()
        m = parse_metrics(node.metrics.render().decode())
        for name in lag_events:
            assert one(m, "ledgerlog_projection_lag_events", projection=name) == 0
            assert one(m, "ledgerlog_projection_lag_seconds", projection=name) == 0
        assert not node.metrics.appends.entries  # pruned once every projection passed them


def test_tree_sizes_heads_published_and_head_age(tmp_path) -> None:
    """ledgerlog_tree_size is each partition's leaves (its records, on the embedded log);
    ledgerlog_tree_head_age_seconds is 0 where the newest head covers the tree, else now minus
    that head's timestamp; ledgerlog_tree_heads_published_total counts what the node signed."""
    with observed_node(tmp_path, start=False) as w:  # no heads loop: heads are published below
        node, lines = w["node"], w["lines"]
        log, heads = node.chain.log, node.chain.heads

        def scrape() -> tuple[dict[str, Any], float, float]:
            before = time.time()
            m = parse_metrics(node.metrics.render().decode())
            return m, before, time.time()

        def check_sizes(m: dict[str, Any]) -> dict[tuple[str, int], Any]:
            states = log.trees.states()
            assert len(states) > 20 and ("_checkpoints", 0) not in states and ("_schemas", 0) not in states
            for (t, p), st in states.items():
                assert one(m, "ledgerlog_tree_size", topic=t, partition=str(p)) == st.size == log.end_offsets(t)[p]
            assert len(m["ledgerlog_tree_size"]) == len(m["ledgerlog_tree_head_age_seconds"]) == len(states)
            return states

        assert node.admitter.admit(lines[:len(lines) // 2]).rejected == 0
        m, _, _ = scrape()
        states = check_sizes(m)
        assert one(m, "ledgerlog_tree_heads_published_total") == heads.published == 0
        def covered(tp: tuple[str, int]) -> int:
            return heads.latest[tp]["head"]["tree_size"] if tp in heads.latest else 0

        ahead = {tp for tp, st in states.items() if st.size > covered(tp)}
        assert ("ledger.blocks", 0) in ahead
        for (t, p) in states:
            age = one(m, "ledgerlog_tree_head_age_seconds", topic=t, partition=str(p))
            assert (age > 0) == ((t, p) in ahead), (t, p, age)  # no head yet: counted from the node's start

        published = heads.publish()
        assert published == len(ahead)
        m, _, _ = scrape()
        assert one(m, "ledgerlog_tree_heads_published_total") == published
        assert {v for _, v in m["ledgerlog_tree_head_age_seconds"]} == {0.0}

        assert node.admitter.admit(lines[len(lines) // 2:]).rejected == 0
        m, before, after = scrape()
        states = check_sizes(m)
        grown = {tp for tp, st in states.items() if st.size > covered(tp)}
        assert ("ledger.blocks", 0) in grown and len(grown) < len(states)
        for (t, p) in states:
            age = one(m, "ledgerlog_tree_head_age_seconds", topic=t, partition=str(p))
            if (t, p) in grown and (t, p) in heads.latest:
                at = heads.latest[(t, p)]["head"]["timestamp"] / 1000
                assert before - at - 0.001 <= age <= after - at + 0.001, (t, p, age)
            else:
                assert (age > 0) == ((t, p) in grown), (t, p, age)


def test_append_times_oldest_unfolded() -> None:
    now = [100.0]
    ends = {"a": (0, 0), "b": (0,)}
    at = AppendTimes(lambda: dict(ends), clock=lambda: now[0])
    assert at.oldest_unfolded(["a", "b"], {}) is None
    now[0], ends["a"] = 110.0, (2, 0)
    at.note()
    now[0], ends["b"] = 120.0, (5,)
    at.note()
    assert at.oldest_unfolded(["a"], {}) == 110.0
    assert at.oldest_unfolded(["b"], {}) == 120.0
    assert at.oldest_unfolded(["a", "b"], {("a", 0): 2}) == 120.0
    assert at.oldest_unfolded(["a", "b"], {("a", 0): 2, ("b", 0): 5}) is None
    at.prune([(("a",), {("a", 0): 2}), (("b",), {})])
    assert len(at.entries) == 1 and at.base[0] == 110.0
    at.prune([(("a", "b"), {("a", 0): 2, ("b", 0): 5})])
    assert not at.entries and at.oldest_unfolded(["a", "b"], {("a", 0): 2, ("b", 0): 5}) is None


def test_storage_bytes_by_component(tmp_path) -> None:
    def put(rel: str, n: int) -> None:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * n)
    put("log/000001.sst", 100)
    put("log/MANIFEST", 10)
    put("projections/balances/v1/000002.sst", 30)
    put("projections/balances/v1-2/000003.sst", 7)
    put("projections/balances/live", 2)
    put("projections/energy/v1/CURRENT", 5)
    put("logs/node.log", 11)
    put("genesis.json", 3)
    assert storage_bytes(str(tmp_path)) == {("log", ""): 110, ("projection", "balances"): 39,
                                            ("projection", "energy"): 5, ("other", ""): 14}


def test_archived_prunes_are_measured_once_not_at_every_scrape(tmp_path, monkeypatch) -> None:
    """Retention adds an archive/h<H> directory of ~23 files a minute, and every storage scrape
    stat-ed all of them: 200 ms per scrape after two days (3,000 of them), growing for good. A
    directory renamed into place is never written again: measured once."""
    import shutil

    from ledgerlog.ops.data import storage
    for h in range(5):
        d = tmp_path / "archive" / f"h{h * 10}"
        d.mkdir(parents=True)
        for i in range(3):
            (d / f"part-{i}.avro").write_bytes(b"x" * (h + 1))
    (tmp_path / "archive" / ".tmp-h60-x").mkdir()  # a prune writing its archive: walked each time
    (tmp_path / "archive" / ".tmp-h60-x" / "part-0.avro").write_bytes(b"y" * 1000)
    first = storage_bytes(str(tmp_path))
    assert first[("other", "")] == 3 * (1 + 2 + 3 + 4 + 5) + 1000
    walked: list[str] = []
    real = os.scandir
    monkeypatch.setattr(storage.os, "scandir", lambda path: walked.append(str(path)) or real(path))
    assert storage_bytes(str(tmp_path)) == first
    assert not [w for w in walked if os.path.basename(w).startswith("h")], walked
    shutil.rmtree(tmp_path / "archive" / "h40")  # gone (copied off the machine): no longer counted
    assert storage_bytes(str(tmp_path))[("other", "")] == first[("other", "")] - 15


# -- tracing ------------------------------------------------------------------------------------
class _Collector:
    """A fake OTLP/HTTP collector on 127.0.0.1: keeps the bodies POSTed to /v1/traces."""

    def __init__(self) -> None:
        bodies: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == "/v1/traces":
                    bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.bodies = bodies
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[Any]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
        out = []
        for body in self.bodies:
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    out.extend(ss.spans)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _run_node_and_ingest(tmp_path: Path, env_extra: dict[str, str]) -> None:
    genesis, _keys, lines = history(tmp_path, events=400, seed=7, wallets=4)
    data = tmp_path / "data"
    gpath = tmp_path / "genesis.json"
    write_genesis(gpath, genesis)
    env = cli_env(**env_extra)
    subprocess.run([LEDGERLOG, "--data-dir", str(data), "init", "--genesis", str(gpath)], check=True,
                   capture_output=True, env=env)
    out = open(tmp_path / "node.out", "wb")
    proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "run", "--port", "0"], stdout=out,
                            stderr=subprocess.STDOUT, env=env)
    try:
        url = _wait_node(data, proc)
        r = httpx.post(url + "/v1/ingest", content=b"\n".join(lines) + b"\n", timeout=60,
                       headers={"Content-Type": "application/x-ndjson", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        assert r.status_code == 200, r.text
        assert httpx.get(url + "/v1/status", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        out.close()
    assert code == 0, (tmp_path / "node.out").read_text()[-3000:]


def _wait_node(data: Path, proc: subprocess.Popen, limit: float = 60) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"node exited with {proc.returncode}"
        try:
            info = json.loads((data / "node.json").read_text())
            if info["pid"] == proc.pid and httpx.get(info["url"] + "/v1/health", timeout=2).status_code == 200:
                return info["url"]
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise AssertionError("node did not come up")


def test_spans_are_exported_over_otlp_when_an_endpoint_is_set(tmp_path) -> None:
    collector = _Collector()
    try:
        _run_node_and_ingest(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url})
        spans = collector.spans()
    finally:
        collector.close()
    names = {s.name for s in spans}
    assert {"ledgerlog.admit_chunk", "ledgerlog.log_append", "ledgerlog.fold_batch",
            "POST /v1/ingest", "GET /v1/status"} <= names, names
    by_id = {s.span_id: s for s in spans}

    def ancestors(span: Any) -> list[str]:
        out = []
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            out.append(span.name)
        return out

    servers = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
    server_names = [s.name for s in servers]  # one per request (health probes too)
    assert server_names.count("POST /v1/ingest") == 1 and server_names.count("GET /v1/status") == 1
    ingest = next(s for s in servers if s.name == "POST /v1/ingest")
    # the caller's traceparent is continued; admission nests under the request, the append under it
    assert ingest.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    chunk = next(s for s in spans if s.name == "ledgerlog.admit_chunk")
    assert chunk.trace_id == ingest.trace_id and "POST /v1/ingest" in ancestors(chunk)
    append = next(s for s in spans if s.name == "ledgerlog.log_append")
    assert ancestors(append)[0] == "ledgerlog.admit_chunk"
    attrs = {a.key: a.value for a in ingest.attributes}
    assert attrs["http.route"].string_value == "/v1/ingest" and attrs["http.response.status_code"].int_value == 200
    folds = [s for s in spans if s.name == "ledgerlog.fold_batch"]
    projected = {a.value.string_value for s in folds for a in s.attributes if a.key == "ledgerlog.projection"}
    assert projected == {"chainstate", "balances", "energy", "payouts"}


def test_nothing_is_exported_without_an_endpoint(tmp_path) -> None:
    """No trace.otlp_endpoint / OTEL_EXPORTER_OTLP_ENDPOINT: no SDK provider, no exporter, even with
    the exporter's own signal-specific variable pointing at a listening collector."""
    assert setup_tracing(Config(data_dir=str(tmp_path))) is None
    collector = _Collector()
    try:
        _run_node_and_ingest(tmp_path, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url + "/v1/traces"})
        time.sleep(0.2)
        assert collector.bodies == []
    finally:
        collector.close()


def test_traces_url() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


def test_tracing_middleware_makes_one_server_span_per_request() -> None:
    """The fallback for FastAPI versions without their own request spans."""
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    from ledgerlog.ops.api.tracing import TracingMiddleware, native_http_spans

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # FastAPI's own request spans (where it has them) go to the global provider: keep them out
    app = FastAPI(**({"telemetry": {"tracing": False}} if native_http_spans() else {}))

    @app.get("/items/{item}")
    async def item(item: str) -> dict[str, str]:
        if item == "boom":
            raise RuntimeError("boom")
        return {"item": item}

    app.add_middleware(TracingMiddleware, tracer_provider=provider)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/items/a", headers={
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}).status_code == 200
        assert client.get("/items/boom").status_code == 500
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["GET /items/{item}", "GET /items/{item}"]
    ok, boom = spans
    assert ok.kind is SpanKind.SERVER and f"{ok.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ok.attributes["http.route"] == "/items/{item}" and ok.attributes["http.response.status_code"] == 200
    assert boom.attributes["http.response.status_code"] == 500 and boom.status.status_code is StatusCode.ERROR


def test_append_times_coalesce_close_appends() -> None:
    now = [100.0]
    ends = {"a": (0,)}
    at = AppendTimes(lambda: dict(ends), clock=lambda: now[0])
    for i in range(1, 6):
        now[0], ends["a"] = 100.0 + i * 0.01, (i,)
        at.note()
    assert len(at.entries) == 1 and at.entries[0] == (100.01, {"a": (5,)})
    assert at.oldest_unfolded(["a"], {("a", 0): 3}) == 100.01


def test_events_folded_never_goes_down_across_a_reproject(tmp_path) -> None:
    """The swap put the rebuild's handle in place with the rebuild's count: the counter fell
    (16,558 -> 84 after a prune) or, on a node that had folded nothing since its start, jumped by
    the whole log; Prometheus reads either as a reset, and the fold-rate panel spiked."""
    from ledgerlog.ops.node.lifecycle import Node

    with observed_node(tmp_path) as w:
        ingest_all(w["client"], w["lines"])
        assert w["client"].get("/v1/status").status_code == 200
        w["node"].stop()
        node = Node(w["config"])  # restarted: nothing folded since its start
        node.start()
        try:
            node.runner.catch_up()
            assert {h.events for h in node.runner.handles.values()} == {0}
            node.reproject(["balances", "chainstate"], keep=False)
            after = parse_metrics(node.metrics.render().decode())
            for name in node.runner.handles:
                assert one(after, "ledgerlog_projection_events_folded_total", projection=name) == 0, name
        finally:
            node.stop()
