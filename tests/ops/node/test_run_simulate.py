"""What `make run` promises: a fresh chain, `ledgerlog run --simulate` moves, and the dashboard
page and its data endpoint answer; SIGTERM stops it cleanly (exit 0) and a restart resumes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
from clitools import LEDGERLOG, wait_node_url


def _start(data_dir: str) -> subprocess.Popen:
    return subprocess.Popen([LEDGERLOG, "--data-dir", data_dir, "run", "--simulate", "--port", "0", "--seed", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_simulated_node_moves_and_serves_the_dashboard(tmp_path):
    data = str(tmp_path / "data")
    subprocess.run([LEDGERLOG, "--data-dir", data, "init"], check=True, capture_output=True)
    proc = _start(data)
    try:
        url = wait_node_url(data, proc)
        deadline, height = time.monotonic() + 40, 0
        while time.monotonic() < deadline and height < 3:
            height = httpx.get(url + "/v1/status", timeout=10).json()["height"]
            time.sleep(0.3)
        assert height >= 3, "the chain did not move"
        page = httpx.get(url + "/", timeout=10)
        assert page.status_code == 200 and 'id="height"' in page.text and "/v1/dashboard" in page.text
        dash = httpx.get(url + "/v1/dashboard", timeout=10).json()
        assert dash["status"]["height"] >= 3 and dash["status"]["total_txs"] > 0
        assert set(dash["lag"]) == {"chainstate", "balances", "energy", "payouts"}
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert "ledgerlog_chain_height" in metrics and 'ledgerlog_events_admitted_total{kind="block"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, proc.stderr.read().decode()
    assert not os.path.exists(os.path.join(data, "node.json"))
    status = json.loads(subprocess.run([LEDGERLOG, "--data-dir", data, "status"], check=True,
                                       capture_output=True).stdout)
    assert status["height"] >= height and status["lag"] == {k: 0 for k in status["lag"]}
