"""`ledgerlog stats` and `ledgerlog compact`: sizes, records and keys per topic and projection from
the stores (read-only, also while a node runs); compaction offline, through the node's admin API
while it runs, refused without an admin token or while another process holds a store; state and
digests unchanged by compaction."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import clitools
import httpx
import pytest
from clitools import LEDGERLOG, cli_env

from ledgerlog import projections
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history

SEED = 17
EVENTS = 1200


cli = partial(clitools.cli, timeout=300)  # compaction takes its time


def ok_json(proc: subprocess.CompletedProcess) -> Any:
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("storage")
    genesis, keys = make_genesis(SEED, wallets=6)
    write_genesis(root / "genesis.json", genesis)
    stats = write_history(root / "history.jsonl", genesis, keys, events=EVENTS, seed=SEED)
    data = root / "data"
    ok_json(cli(data, "init", "--genesis", str(root / "genesis.json")))
    ok_json(cli(data, "ingest", str(root / "history.jsonl")))
    lines = [json.loads(ln) for ln in (root / "history.jsonl").read_bytes().splitlines()]
    return {"root": root, "data": data, "stats": stats, "lines": lines}


def _start_node(data: Path, out: Path) -> tuple[subprocess.Popen, str]:
    with open(out, "ab") as f:  # the child keeps its own descriptor
        proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "run", "--port", "0"],
                                stdout=f, stderr=subprocess.STDOUT, env=cli_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()[-3000:]
        try:
            info = json.loads((data / "node.json").read_text())
            if info["pid"] == proc.pid and httpx.get(info["url"] + "/v1/health", timeout=2).status_code == 200:
                return proc, info["url"]
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("node did not come up")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_stats_counts_records_keys_and_bytes(chain) -> None:
    data, lines = chain["data"], chain["lines"]
    s = ok_json(cli(data, "stats"))
    topics = s["log"]["topics"]
    blocks = [o for o in lines if o["type"] == "block"]
    assert topics["ledger.blocks"]["records"] == len(blocks)
    assert topics["ledger.transactions"]["records"] == sum(len(b["transactions"]) for b in blocks)
    assert topics["energy.readings"]["records"] == sum(o["type"] == "reading" for o in lines)
    assert topics["pool.shares"]["records"] == sum(o["type"] == "share" for o in lines)
    assert s["log"]["bytes"] > 0 and s["log"]["estimated_keys"] > 0 and s["log"]["sst_files"] >= 0
    assert s["bytes"]["total"] == s["bytes"]["log"] + s["bytes"]["projections"] + s["bytes"]["other"]
    assert s["bytes"]["log"] == s["log"]["bytes"]
    assert s["filesystem"]["capacity_bytes"] >= s["filesystem"]["available_bytes"] > 0
    assert s["node_running"] is False and s["exact"] is False
    for name, p in s["projections"].items():  # offline ingest folds nothing: no store yet
        records = sum(topics[t]["records"] for t in p["topics"])
        assert (p["live"], p["bytes"], p["records_folded"], p["lag"]) == (None, 0, 0, records), name

    ok_json(cli(data, "status"))  # folds the projections to the end of the log
    s = ok_json(cli(data, "stats", "--exact"))
    assert s["exact"] is True
    for topic, t in s["log"]["topics"].items():
        assert t["records_counted"] == t["records"], topic
        assert (t["bytes"] > 0) == (t["records"] > 0), topic
    assert s["log"]["state_keys"] > 0 and s["log"]["keys"] > s["log"]["state_keys"]
    for name, p in s["projections"].items():
        assert p["live"] == f"v{projections.ALL[name].VERSION}" and p["bytes"] == sum(p["builds"].values()) > 0
        assert p["records_folded"] == sum(s["log"]["topics"][t]["records"] for t in p["topics"])
        assert p["lag"] == 0 and p["height"] <= blocks[-1]["header"]["height"], name
        assert p["keys"] > 0 and p["key_value_bytes"] > 0 and re.fullmatch(r"[0-9a-f]{32}", p["digest"])
    assert s["projections"]["chainstate"]["height"] == blocks[-1]["header"]["height"]


def test_compact_offline_keeps_state(chain) -> None:
    data = chain["data"]
    ok_json(cli(data, "status"))
    before = ok_json(cli(data, "stats", "--exact"))
    out = ok_json(cli(data, "compact"))
    assert out["through_node"] is False
    comps = [c["component"] for c in out["compacted"]]
    assert comps[0] == "log" and {c.split("/")[1] for c in comps[1:]} == {"chainstate", "balances", "energy", "payouts"}
    assert all(c["bytes_before"] > 0 and c["bytes_after"] > 0 for c in out["compacted"])
    after = ok_json(cli(data, "stats", "--exact"))
    assert after["log"]["topics"] == before["log"]["topics"]
    assert after["log"]["state_keys"] == before["log"]["state_keys"]
    for name, p in before["projections"].items():
        q = after["projections"][name]
        assert (q["digest"], q["keys"], q["height"], q["records_folded"]) == \
            (p["digest"], p["keys"], p["height"], p["records_folded"]), name


def test_compact_refuses_while_another_process_holds_the_stores(chain) -> None:
    from ledgerlog.engine.log.embedded import EmbeddedLog
    holder = EmbeddedLog(str(chain["data"] / "log"))  # takes the RocksDB lock, as a node would
    try:
        proc = cli(chain["data"], "compact")
    finally:
        holder.close()
    assert proc.returncode == 1, proc.stderr
    err = json.loads(proc.stderr.decode().strip().splitlines()[-1])
    assert err["code"] == "LOCKED" and "in use by another process" in err["error"]


def test_stats_and_compact_while_a_node_runs(chain) -> None:
    data, root = chain["data"], chain["root"]
    proc, url = _start_node(data, root / "node.out")
    try:
        s = ok_json(cli(data, "stats"))  # read-only opens: no lock needed
        assert s["node_running"] is True
        height = httpx.get(url + "/v1/status", timeout=10).json()["height"]
        assert s["projections"]["chainstate"]["height"] == height

        out = ok_json(cli(data, "compact"))  # through the node's admin API
        assert out["through_node"] is True
        assert [c["component"].split("/")[:2] for c in out["compacted"]] == \
            [["log"], ["projection", "chainstate"], ["projection", "balances"], ["projection", "energy"],
             ["projection", "payouts"]]
        assert httpx.get(url + "/v1/status", timeout=10).json()["height"] == height  # still serving

        # without an admin token the CLI cannot reach the node's admin API: a clear refusal
        cfg = data / "config.toml"
        text = cfg.read_text()
        cfg.write_text(re.sub(r'(?m)^token = ".*"$', 'token = ""', text))
        try:
            refused = cli(data, "compact")
        finally:
            cfg.write_text(text)
        assert refused.returncode == 1
        err = json.loads(refused.stderr.decode().strip().splitlines()[-1])
        assert err["code"] == "NODE_RUNNING" and "stop it first" in err["error"] and "admin.token" in err["error"]
    finally:
        _stop(proc)
