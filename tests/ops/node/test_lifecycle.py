"""`ledgerlog run` as an operator runs it: logs in <data_dir>/logs/node.log (levels, JSON lines,
reopened on SIGHUP after logrotate renamed the file), SIGTERM exits 0, and SIGTERM in the middle
of an ingest load loses nothing that was acknowledged: after a restart every acknowledged batch is
there and the node resumes at the last acknowledged block."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, cli_env

from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history

NDJSON = {"Content-Type": "application/x-ndjson"}  # POST /v1/ingest takes this type only


class Node:
    """A `ledgerlog [--log-level L] run --port 0` process; ``url`` once it answers /v1/health."""

    def __init__(self, data: Path, *, log_level: str | None = None, **env: str) -> None:
        self.data = data
        self.out = open(data.parent / f"stdout-{time.monotonic_ns()}.txt", "wb")
        args = [LEDGERLOG, "--data-dir", str(data)] + (["--log-level", log_level] if log_level else []) + \
            ["run", "--port", "0"]
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=subprocess.STDOUT, env=cli_env(**env))
        self.url = self._wait_ready()

    def _wait_ready(self, limit: float = 60) -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"node exited with {self.proc.returncode}: {self.output()}")
            try:
                info = json.loads((self.data / "node.json").read_text())
                if info["pid"] == self.proc.pid and httpx.get(info["url"] + "/v1/health", timeout=2).status_code == 200:
                    return info["url"]
            except (OSError, ValueError, KeyError, httpx.HTTPError):
                pass
            time.sleep(0.05)
        self.proc.kill()
        pytest.fail(f"node not ready: {self.output()}")

    def output(self) -> str:
        if not self.out.closed:
            self.out.flush()
        return Path(self.out.name).read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.out.close()


def _wait_for(predicate: Any, limit: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lifecycle")
    genesis, keys = make_genesis(29, wallets=8)
    write_genesis(root / "genesis.json", genesis)
    write_history(root / "history.jsonl", genesis, keys, events=6000, seed=29)
    return {"root": root, "lines": (root / "history.jsonl").read_bytes().splitlines()}


def _init(world: dict[str, Any], name: str) -> Path:
    data = world["root"] / name
    proc = subprocess.run([LEDGERLOG, "--data-dir", str(data), "init", "--genesis", str(world["root"] / "genesis.json")],
                          check=False, capture_output=True, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    return data


def _log_lines(data: Path, name: str = "node.log") -> list[str]:
    path = data / "logs" / name
    return path.read_text().splitlines() if path.exists() else []


def test_run_logs_to_data_dir_and_sigterm_exits_0(world) -> None:
    data = _init(world, "plain")
    node = Node(data)
    try:
        _wait_for(lambda: any("serving on" in ln for ln in _log_lines(data)), what="the serving line")
        assert httpx.get(node.url + "/metrics", timeout=10).status_code == 200
    finally:
        code = node.terminate()
    assert code == 0, node.output()
    lines = _log_lines(data)
    assert any(" INFO ledgerlog.node: ledgerlog node for " in ln for ln in lines), lines
    assert any("signal SIGTERM: shutting down" in ln for ln in lines) and "node stopped" in lines[-1]
    assert not any(" DEBUG " in ln for ln in lines)  # default level INFO
    assert "serving on" in node.output()  # and on stderr, for the journal
    assert not (data / "node.json").exists()


def test_log_level_debug_shows_debug_lines(world) -> None:
    data = _init(world, "debug")
    node = Node(data, log_level="DEBUG")
    try:
        assert httpx.get(node.url + "/metrics", timeout=10).status_code == 200
        _wait_for(lambda: any(" DEBUG ledgerlog.metrics: metrics scraped" in ln for ln in _log_lines(data)),
                  what="a debug line")
    finally:
        assert node.terminate() == 0, node.output()
    assert any(" DEBUG ledgerlog.logs: logging to " in ln for ln in _log_lines(data))


def test_json_log_lines_parse(world) -> None:
    data = _init(world, "json")
    node = Node(data, LEDGERLOG_LOG_JSON="true")
    try:
        r = httpx.post(node.url + "/v1/ingest", content=b"\n".join(world["lines"][:50]) + b"\n", timeout=60, headers=NDJSON)
        assert r.status_code == 200, r.text
    finally:
        assert node.terminate() == 0, node.output()
    lines = _log_lines(data)
    assert len(lines) >= 3
    records = [json.loads(ln) for ln in lines]  # every line is one JSON object
    for rec in records:
        assert {"ts", "level", "logger", "msg", "thread"} <= set(rec) and rec["ts"].endswith("Z")
    assert any(r["logger"] == "ledgerlog.node" and "serving on" in r["msg"] for r in records)
    assert records[-1]["msg"] == "ledgerlog node stopped" and records[-1]["level"] == "INFO"


def test_sighup_reopens_the_log_file_after_rotation(world) -> None:
    data = _init(world, "sighup")
    node = Node(data)
    logs = data / "logs"
    try:
        _wait_for(lambda: any("serving on" in ln for ln in _log_lines(data)), what="the serving line")
        os.rename(logs / "node.log", logs / "node.log.1")  # what logrotate's `create` mode does
        node.signal(signal.SIGHUP)
        _wait_for(lambda: (logs / "node.log").exists() and any("reopened log file" in ln for ln in _log_lines(data)),
                  what="a new node.log")
        assert node.proc.poll() is None  # SIGHUP does not stop the node
        assert httpx.get(node.url + "/v1/health", timeout=10).status_code == 200
        old_size = (logs / "node.log.1").stat().st_size
        node.signal(signal.SIGHUP)  # a second one, without renaming: appends to the same file
        _wait_for(lambda: sum("reopened log file" in ln for ln in _log_lines(data)) == 2, what="a second reopen")
    finally:
        assert node.terminate() == 0, node.output()
    new, old = _log_lines(data), _log_lines(data, "node.log.1")
    assert any("serving on" in ln for ln in old) and not any("reopened" in ln for ln in old)
    assert (logs / "node.log.1").stat().st_size == old_size  # nothing written to the renamed file
    assert any("signal SIGTERM" in ln for ln in new) and "node stopped" in new[-1]


def test_size_rotation(world) -> None:
    data = _init(world, "rotate")
    node = Node(data, log_level="DEBUG", LEDGERLOG_LOG_MAX_BYTES="2000", LEDGERLOG_LOG_BACKUPS="2")
    try:
        for _ in range(40):  # every scrape logs a debug line
            httpx.get(node.url + "/metrics", timeout=10)
    finally:
        assert node.terminate() == 0, node.output()
    logs = sorted(p.name for p in (data / "logs").iterdir())
    assert logs == ["node.log", "node.log.1", "node.log.2"], logs
    assert all((data / "logs" / n).stat().st_size <= 2000 for n in logs)


def test_sigterm_under_ingest_load_loses_nothing_acknowledged(world) -> None:
    data = _init(world, "load")
    lines = world["lines"]
    batches = [lines[i:i + 60] for i in range(0, len(lines), 60)]
    node = Node(data)
    acked: list[tuple[int, int, dict[str, Any]]] = []  # (batch index, status, reply)
    failed: list[str] = []
    started = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=node.url, timeout=60) as client:
            for i, batch in enumerate(batches):
                try:
                    r = client.post("/v1/ingest", content=b"\n".join(batch) + b"\n", headers=NDJSON)
                except httpx.HTTPError as exc:  # the node stopped taking requests
                    failed.append(f"batch {i}: {type(exc).__name__}")
                    return
                if r.status_code not in (200, 422):
                    failed.append(f"batch {i}: HTTP {r.status_code}")
                    return
                acked.append((i, r.status_code, r.json()))
                if i == 3:
                    started.set()

    t = threading.Thread(target=load)
    t.start()
    try:
        assert started.wait(60), node.output()
        node.signal(signal.SIGTERM)  # while batches are in flight
        code = node.proc.wait(timeout=60)
    finally:
        t.join(timeout=120)
        node.kill()
    assert code == 0, node.output()
    assert 4 <= len(acked) < len(batches), (len(acked), failed)  # SIGTERM arrived mid-load
    assert [i for i, _, _ in acked] == list(range(len(acked)))  # sequential: a prefix was acknowledged
    assert all(status == 200 and reply["rejected"] == 0 for _, status, reply in acked)
    acked_lines = [ln for i, _, _ in acked for ln in batches[i]]
    last_block = [json.loads(ln) for ln in acked_lines if b'"type":"block"' in ln][-1]["header"]["height"]

    node = Node(data)  # restart: resumes where it stopped
    try:
        with httpx.Client(base_url=node.url, timeout=120) as client:
            status = client.get("/v1/status").json()
            # nothing acknowledged was lost; at most the batch in flight went further
            in_flight = batches[len(acked)] if len(acked) < len(batches) else []
            later_blocks = [json.loads(ln)["header"]["height"] for ln in in_flight if b'"type":"block"' in ln]
            assert status["height"] == last_block or status["height"] in later_blocks, (status, last_block)
            if not later_blocks:
                assert status["height"] == last_block
            r = client.post("/v1/ingest", content=b"\n".join(acked_lines) + b"\n", headers=NDJSON)
            assert r.status_code == 200, r.text
            assert r.json() == {"accepted": 0, "duplicates": len(acked_lines), "rejected": 0, "rejections": []}
            # and it goes on from there: the rest of the history is admitted
            rest = [ln for b in batches[len(acked):] for ln in b]
            r = client.post("/v1/ingest", content=b"\n".join(rest) + b"\n", headers=NDJSON)
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] + r.json()["duplicates"] == len(rest) and r.json()["rejected"] == 0
            final = client.get("/v1/status").json()
            assert final["height"] == [json.loads(ln) for ln in lines if b'"type":"block"' in ln][-1]["header"]["height"]
    finally:
        assert node.terminate() == 0, node.output()
