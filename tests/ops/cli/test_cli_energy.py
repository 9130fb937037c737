"""`ledgerlog market`, `providers`, `provider --height`, `governance` and `sign governance`, offline
and through a running node (the same answers), and their usage errors."""
from __future__ import annotations

import json
import subprocess
from typing import Any

from clitools import LEDGERLOG, cli, cli_env, ok_json, wait_node_url


def _sign(data: str, kind: str, key: str, body: dict[str, Any]) -> bytes:
    proc = cli(data, "sign", kind, "--key", f"{data}/keys/{key}.key", "--body", json.dumps(body))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _answers(data: str) -> dict[str, Any]:
    """What the query commands print, provenance aside (its lag and positions are the same)."""
    out = {}
    for name, args in {"market": ["market"], "market0": ["market", "--height", "0"],
                       "page": ["providers", "--limit", "2"], "all": ["providers", "--all", "--limit", "2"],
                       "gov": ["governance"], "gov0": ["governance", "--height", "0"],
                       "provider": ["provider", "solar-b", "--height", "1"]}.items():
        doc = ok_json(cli(data, *args))
        assert doc.pop("provenance")["projection"] == "energy"
        out[name] = doc
    return out


def test_energy_commands_offline_and_through_the_node(tmp_path):
    data = str(tmp_path / "data")
    ok_json(cli(data, "init"))
    genesis = json.loads((tmp_path / "data" / "genesis.json").read_text())
    faucet = json.loads((tmp_path / "data" / "keys" / "faucet.key").read_text())["address"]
    stake = genesis["energy"]["min_stake"]
    lines = [_sign(data, "provider", "faucet", {"provider_id": pid, "owner": faucet, "meter_id": f"m-{pid}",
                                                "stake": stake, "price_per_kwh": price})
             for pid, price in (("solar-c", 300), ("solar-a", 100), ("solar-b", 200))]
    lines.append(_sign(data, "governance", "treasury", {"parameter": "min_stake", "value": 3 * stake}))
    lines.append(_sign(data, "reading", "oracle", {"meter_id": "m-solar-b", "provider_id": "solar-b",
                                                   "milli_kwh": 1500}))
    assert ok_json(cli(data, "ingest", "-", stdin=b"".join(lines)))["accepted"] == 5
    refused = cli(data, "ingest", "-", stdin=_sign(data, "governance", "oracle", {"parameter": "min_stake", "value": 1}))
    assert refused.returncode == 1 and json.loads(refused.stdout)["rejections"][0]["code"] == "BAD_SIGNATURE"

    offline = _answers(data)
    assert offline["market"]["providers"] == 3 and offline["market"]["credited_milli_kwh"] == 1500
    assert offline["market"]["average_price_per_kwh"] == 200  # only solar-b has credited energy
    assert offline["market0"]["providers"] == 3 and offline["market0"]["height"] == 0
    assert [p["provider_id"] for p in offline["page"]["providers"]] == ["solar-a", "solar-b"]
    assert offline["page"]["next_after"] == "solar-b"
    assert [p["provider_id"] for p in offline["all"]["providers"]] == ["solar-a", "solar-b", "solar-c"]
    assert offline["gov"]["parameters"]["min_stake"]["value"] == 3 * stake == offline["gov0"]["parameters"]["min_stake"]["value"]
    assert offline["provider"]["unsettled_milli_kwh"] == 1500 and offline["provider"]["height"] == 1

    node = subprocess.Popen([LEDGERLOG, "--data-dir", data, "run", "--port", "0"], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_node_url(data, node)
        assert _answers(data) == offline  # through the node: the same answers
        bad = cli(data, "providers", "--limit", "0")
        assert bad.returncode == 2 and json.loads(bad.stderr)["code"] == "BAD_REQUEST"
    finally:
        node.terminate()
        assert node.wait(timeout=60) == 0
    for args in (["providers", "--limit", "1001"], ["market", "--height", "-1"], ["governance", "--height", "-1"]):
        bad = cli(data, *args)
        assert bad.returncode == 2 and json.loads(bad.stderr)["code"] == "BAD_REQUEST", (args, bad.stderr)
