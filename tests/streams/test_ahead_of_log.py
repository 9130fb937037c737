"""Never serve state the log does not hold: a store whose positions are past the log's end
offsets (a lost WAL tail after kill -9, a restore of the log alone) is refused at open with
exit 2, naming topic, partition, both offsets and the fix; verify reports it; reproject mends it."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json, wait_node_url

from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history

EVENTS = 600


def _refused(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    """The one-line typed refusal of a store ahead of its log."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, proc.stderr.decode()
    err = json.loads(lines[0])
    assert err["code"] == "AHEAD_OF_LOG", err
    assert "ledger.blocks[0]" in err["error"] and "reproject" in err["error"], err
    return err


@pytest.fixture
def halves(tmp_path) -> tuple[Path, Path, Path]:
    genesis, keys = make_genesis(11, wallets=6)
    gpath, hpath, data = tmp_path / "genesis.json", tmp_path / "history.jsonl", tmp_path / "data"
    write_genesis(gpath, genesis)
    write_history(hpath, genesis, keys, events=EVENTS, seed=11)
    lines = hpath.read_bytes().splitlines()
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"\n".join(lines[: len(lines) // 2]) + b"\n")
    second.write_bytes(b"\n".join(lines[len(lines) // 2:]) + b"\n")
    ok_json(cli(data, "init", "--genesis", str(gpath)))
    return data, first, second


def test_a_log_restored_alone_is_refused_then_reprojected(halves, tmp_path):
    data, first, second = halves
    ok_json(cli(data, "ingest", str(first)))
    h1 = ok_json(cli(data, "status"))["height"]
    shutil.copytree(data / "log", tmp_path / "log-at-first")
    ok_json(cli(data, "ingest", str(second)))
    h2 = ok_json(cli(data, "status"))["height"]
    assert h2 > h1
    shutil.rmtree(data / "log")
    shutil.copytree(tmp_path / "log-at-first", data / "log")  # a restore of the log alone

    err = _refused(cli(data, "status"))
    assert "the log ends at" in err["error"]
    _refused(cli(data, "account", "0" * 40))
    report = json.loads(cli(data, "verify", "--skip-signatures").stdout)
    assert not report["ok"]
    codes = {p["code"] for p in report["projections"]["problems"]}
    assert "POSITIONS_AHEAD" in codes, report["projections"]
    ok_json(cli(data, "reproject"))
    assert ok_json(cli(data, "status"))["height"] == h1


def _wal(data: Path) -> Path:
    """The log's live write-ahead log file (RocksDB's newest NNNNNN.log)."""
    wals = sorted((data / "log").glob("*.log"))
    assert wals, list((data / "log").iterdir())
    return wals[-1]


def test_a_lost_wal_tail_after_kill_9_is_refused_at_open(halves, tmp_path):
    data, first, second = halves
    out = open(tmp_path / "node.out", "wb")
    proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "run", "--port", "0"],
                            stdout=out, stderr=subprocess.STDOUT, env=cli_env())
    try:
        url = wait_node_url(str(data), proc)
        headers = {"content-type": "application/x-ndjson"}
        assert httpx.post(url + "/v1/ingest", content=first.read_bytes(), headers=headers,
                          timeout=60).status_code == 200
        h1 = httpx.get(url + "/v1/status", timeout=10).json()["height"]
        kept = _wal(data).stat().st_size  # the WAL holds everything appended since the node started
        assert httpx.post(url + "/v1/ingest", content=second.read_bytes(), headers=headers,
                          timeout=60).status_code == 200
        deadline = time.monotonic() + 30
        while httpx.get(url + "/v1/status", timeout=10).json()["height"] <= h1:  # folded
            assert time.monotonic() < deadline
            time.sleep(0.1)
        wal = _wal(data)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        out.close()
    with open(wal, "r+b") as f:  # the disk lost the WAL's tail: the second POST's records
        f.truncate(kept)
    (data / "node.json").unlink(missing_ok=True)

    _refused(cli(data, "status"))
    run = cli(data, "run", "--port", "0", timeout=60)  # the node refuses to serve, too
    _refused(run)
    ok_json(cli(data, "reproject"))
    assert ok_json(cli(data, "status"))["height"] == h1
