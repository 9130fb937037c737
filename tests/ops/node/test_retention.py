"""Pruning a running node: `ledgerlog prune` goes through its admin API (recorded on ledger.admin,
archives only under retention.archive_dir) while it serves; HTTP answers 410 PRUNED below the
prune height and as before above it, RPC says pruned; the retention setting makes the node prune
below tip - keep_heights by itself, in bounded runs, with ledgerlog_pruned_below_height."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import cli, cli_env, ok_json, running_node

from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history

SEED = 43


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("retention")
    genesis, keys = make_genesis(SEED, wallets=5)
    write_genesis(root / "genesis.json", genesis)
    write_history(root / "h.jsonl", genesis, keys, events=1500, seed=SEED)
    data = root / "data"
    init_chain(Config(data_dir=str(data), sync=False), genesis)
    assert ok_json(cli(data, "ingest", str(root / "h.jsonl")))["rejected"] == 0
    status = ok_json(cli(data, "status"))
    return {"root": root, "data": data, "tip": status["height"]}


def _copy(loaded: dict[str, Any], tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(loaded["data"], data)
    return data


def _metric(url: str, series: str) -> float | None:
    """The value of ``series`` (a name, or a name with its labels as exposed) at /metrics."""
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_prune_through_a_running_node_which_then_answers_pruned_below_and_as_before_above(loaded, tmp_path) -> None:
    data, tip = _copy(loaded, tmp_path), loaded["tip"]
    h = tip // 2
    with running_node(data) as url:
        before = httpx.get(f"{url}/v1/blocks/{h}", timeout=10).json()
        old = httpx.get(f"{url}/v1/blocks/{h - 1}", timeout=10)
        assert old.status_code == 200
        done = ok_json(cli(data, "prune", "--before-height", str(h)))
        assert done["via"] == "node" and done["height"] == h and done["records"] > 0
        assert done["archive"]["path"] == str(data.resolve() / "archive" / f"h{h}")
        assert (data / "archive" / f"h{h}" / "manifest.json").exists()
        for path in (f"/v1/blocks/{h - 1}", f"/v1/blocks/{old.json()['hash']}", "/v1/blocks/1",
                     f"/v1/accounts/{before['header']['producer']}?height={h - 1}"):
            r = httpx.get(url + path, timeout=10)
            assert r.status_code == 410 and r.json()["code"] == "PRUNED", (path, r.text)
            assert f"below height {h}" in r.json()["message"] and f"archive/h{h}" in r.json()["message"]
        after = httpx.get(f"{url}/v1/blocks/{h}", timeout=10).json()
        assert {k: v for k, v in after.items() if k != "provenance"} == \
            {k: v for k, v in before.items() if k != "provenance"}
        status = httpx.get(f"{url}/v1/status", timeout=10).json()
        assert status["pruned"]["height"] == h and status["height"] == tip
        rpc = httpx.post(f"{url}/rpc", json=[{"jsonrpc": "2.0", "id": 1, "method": "getblockchaininfo"},
                                              {"jsonrpc": "2.0", "id": 2, "method": "getblock", "params": [h - 1]},
                                              {"jsonrpc": "2.0", "id": 3, "method": "getblockhash", "params": [h]}],
                         timeout=10).json()
        by_id = {a["id"]: a for a in rpc}
        assert by_id[1]["result"]["pruned"] is True and by_id[1]["result"]["pruneheight"] == h
        assert by_id[2]["error"]["code"] == -1 and "pruned" in by_id[2]["error"]["message"]
        assert by_id[3]["result"] == before["hash"]
        assert _metric(url, "ledgerlog_pruned_below_height") == h
        token = _token(data)
        refused = httpx.post(f"{url}/v1/admin/prune", json={"before_height": h + 1, "archive": str(tmp_path / "elsewhere")},
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert refused.status_code == 400 and not (tmp_path / "elsewhere").exists()
        assert ok_json(cli(data, "verify"))["ok"]
    admin = [json.loads(line) for line in cli(data, "tail", "ledger.admin").stdout.splitlines()]
    assert [a["value"]["outcome"] for a in admin if a["value"]["action"] == "prune"] == ["ok", "error"]


def _token(data: Path) -> str:
    import tomllib
    with open(data / "config.toml", "rb") as f:
        return str(tomllib.load(f)["admin"]["token"])


def test_the_retention_setting_prunes_by_itself_in_bounded_runs(loaded, tmp_path) -> None:
    data, tip = _copy(loaded, tmp_path), loaded["tip"]
    keep = 10
    step = (tip - keep) // 2 + 1  # two runs to get there
    env = cli_env(LEDGERLOG_RETENTION_KEEP_HEIGHTS=str(keep), LEDGERLOG_RETENTION_INTERVAL="0.2",
                  LEDGERLOG_RETENTION_MAX_HEIGHTS=str(step))
    with running_node(data, env=env) as url:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            got = _metric(url, "ledgerlog_pruned_below_height")
            if got == tip - keep:
                break
            time.sleep(0.2)
        assert _metric(url, "ledgerlog_pruned_below_height") == tip - keep
        assert _metric(url, 'ledgerlog_prunes_total{outcome="ok"}') == 2
        r = httpx.get(f"{url}/v1/blocks/{tip - keep - 1}", timeout=10)
        assert r.status_code == 410
        assert httpx.get(f"{url}/v1/blocks/{tip - keep}", timeout=10).status_code == 200
    archives = sorted(p.name for p in (data / "archive").iterdir())
    assert archives == sorted([f"h{step}", f"h{tip - keep}"])
    assert ok_json(cli(data, "archive", "verify", str(data / "archive")))["ok"]
    assert ok_json(cli(data, "verify"))["ok"]
