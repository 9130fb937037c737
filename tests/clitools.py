"""Helpers for tests that drive the real `ledgerlog` command and node processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent  # the repository root (tests/ is its child)
LEDGERLOG = os.path.join(os.path.dirname(sys.executable), "ledgerlog")


def ok_json(proc: subprocess.CompletedProcess) -> Any:
    """The JSON a command printed, asserting it exited 0."""
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads(proc.stdout)


def wait_node_url(data_dir: str, proc: subprocess.Popen, limit: float = 30) -> str:
    """The URL of the node `proc` runs on ``data_dir`` (from node.json) once /v1/health answers."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else proc.returncode
        try:
            with open(os.path.join(data_dir, "node.json")) as f:
                url = json.load(f)["url"]
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return url
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.2)
    raise AssertionError("node did not come up")
