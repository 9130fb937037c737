"""Query: a node serving the ingested chain on a loopback port, and account lookups from a
separate load process (benchmarks.load), flat out and at a fixed offered rate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from .common import run_json

__all__ = ["query"]


def _node_url(data_dir: str, node: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise RuntimeError(f"the node exited with {node.returncode}")
        try:
            with open(os.path.join(data_dir, "node.json")) as f:
                return str(json.load(f)["url"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
    raise RuntimeError(f"the node did not start within {timeout:.0f}s")


def query(data_dir: str, addresses: list[str], *, count: int, seconds: float, rate: float) -> dict[str, Any]:
    """{"max": {...}, "fixed": {...}} from one node on ``data_dir`` (stopped afterwards)."""
    exe = os.path.join(os.path.dirname(sys.executable), "ledgerlog")
    node = subprocess.Popen([exe, "--data-dir", data_dir, "run", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        url = _node_url(data_dir, node)
        out = {}
        for key, r in (("max", 0.0), ("fixed", rate)):
            out[key] = run_json("benchmarks.load", {"url": url, "addresses": addresses, "rate": r,
                                                    "count": count, "max_seconds": seconds},
                                timeout=seconds + 60)
        return out
    finally:
        node.terminate()
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(timeout=10)
