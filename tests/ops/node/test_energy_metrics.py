"""The settlement gauges (ops/node/energy_metrics.py): unsettled energy in joules, each provider's
oldest unsettled credit's age, the settlement lag and the time since the newest settlement, from
the projections and block times; exported under promtool-clean names."""
from __future__ import annotations

import shutil
import subprocess

import orjson
import pytest
from conftest import admit_ok, signer_from_byte
from fastapi.testclient import TestClient
from nodetools import parse_metrics

from ledgerlog.engine.signing import signed_line
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.node.energy_metrics import SettlementGauges
from ledgerlog.ops.node.lifecycle import Node

OWNER = signer_from_byte(0x52)
FAMILIES = ("ledgerlog_energy_unsettled_joules", "ledgerlog_energy_provider_unsettled_age_seconds",
            "ledgerlog_energy_settlement_lag_seconds", "ledgerlog_energy_last_settlement_age_seconds")


@pytest.fixture
def node(chain, lines):
    lines.fund(OWNER)                                                              # height 1
    admit_ok(chain, lines.provider(OWNER, "a", meter_id="ma", price_per_kwh=100),
             lines.provider(OWNER, "b", meter_id="mb", price_per_kwh=100), lines.reading("a", 1000, meter_id="ma"))
    admit_ok(chain, lines.block())                                                 # height 2
    admit_ok(chain, lines.reading("a", 500, meter_id="ma"), lines.reading("b", 300, meter_id="mb"))
    admit_ok(chain, lines.block())                                                 # height 3
    admit_ok(chain, lines.settlement("s1", "a", 1000, 100))  # the first credit of a, stamped 3
    cfg = chain.config
    chain.close()
    n = Node(cfg)
    n.start()
    assert n.queries.sync()
    yield n
    n.stop()


def _block_time(node: Node, height: int) -> float:
    return node.queries.block(str(height))["header"]["timestamp"] / 1000


def test_gauges_measure_backlog_and_ages(node):
    now = _block_time(node, 3) + 100.0
    got = SettlementGauges(node, clock=lambda: now).read()
    assert got["unsettled_joules"] == (500 + 300) * 3600
    oldest = now - _block_time(node, 2)  # a's reading at height 1 is settled; its next and b's came at 2
    assert got["ages"] == {"a": oldest, "b": oldest}
    assert got["lag"] == oldest
    assert got["since_settlement"] == 100.0


def test_all_settled_means_no_age(node, keys):
    summary = node.admitter.admit([orjson.dumps(_settle(node, keys, "s2", "a", 500)),
                                   orjson.dumps(_settle(node, keys, "s3", "b", 300))])
    assert summary.accepted == 2, summary.to_dict()
    assert node.queries.sync()
    got = SettlementGauges(node, clock=lambda: _block_time(node, 3) + 5).read()
    assert got["unsettled_joules"] == 0 and got["ages"] == {} and got["lag"] == 0.0
    assert got["since_settlement"] == 5.0


def _settle(node: Node, keys, sid: str, pid: str, mkwh: int) -> dict:
    body = {"chain_id": node.genesis.chain_id, "settlement_id": sid, "provider_id": pid, "milli_kwh": mkwh,
            "amount": mkwh * 100 // 1000, "timestamp": 1}
    return signed_line("settlement", keys.treasury, body)


def test_metrics_are_exported_and_promtool_clean(node):
    client = TestClient(create_app(node))
    text = client.get("/metrics").text
    scraped = parse_metrics(text)
    assert scraped["ledgerlog_energy_unsettled_joules"][0][1] == 800 * 3600
    assert {lab["provider"] for lab, _ in scraped["ledgerlog_energy_provider_unsettled_age_seconds"]} == {"a", "b"}
    for name in FAMILIES:
        assert name in scraped, name
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package): names checked by the parser only")
    mine = "".join(line + "\n" for line in text.splitlines() if any(f in line for f in FAMILIES))
    proc = subprocess.run([promtool, "check", "metrics"], input=mine, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (proc.stdout, proc.stderr)


def test_the_lag_counts_every_provider_and_the_series_keep_the_oldest(node, keys, monkeypatch):
    """The gauges looked only at the MAX_PROVIDERS providers with the most credited energy: a
    small provider waiting longest was left out of the lag. Now every unsettled provider counts
    for the lag, and the per-provider series (capped) keep the oldest waits."""
    from ledgerlog.ops.node import energy_metrics

    summary = node.admitter.admit([orjson.dumps(_settle(node, keys, "s2", "a", 500))])  # a, the larger, all settled
    assert summary.accepted == 1, summary.to_dict()
    assert node.queries.sync()
    monkeypatch.setattr(energy_metrics, "MAX_PROVIDERS", 1)
    now = _block_time(node, 3) + 100.0
    got = SettlementGauges(node, clock=lambda: now).read()
    oldest = now - _block_time(node, 2)
    assert got["ages"] == {"b": oldest} and got["lag"] == oldest
