"""Helpers for tests that drive the real `ledgerlog` command and node processes."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent  # the repository root (tests/ is its child)
LEDGERLOG = os.path.join(os.path.dirname(sys.executable), "ledgerlog")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a `ledgerlog` subprocess: os.environ without the caller's LEDGERLOG_* and
    OTEL_* settings (a test sets what it means, as ``extra``) and without PYTHONDONTWRITEBYTECODE
    (so CLI processes reuse compiled modules)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGERLOG_", "OTEL_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def cli(data_dir: str | os.PathLike[str], *args: str, stdin: bytes | None = None, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """`ledgerlog --data-dir DATA_DIR ARGS...` run to its end with its output captured, ``stdin`` as
    its input (else an empty stdin), in ``env`` (default cli_env())."""
    feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([LEDGERLOG, "--data-dir", str(data_dir), *args], capture_output=True, timeout=timeout,
                          env=cli_env() if env is None else env, check=False, **feed)


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


def terminate(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Stop ``proc`` as an operator would: SIGTERM, then SIGKILL if it has not exited in ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def running_node(data_dir: str | os.PathLike[str], env: dict[str, str] | None = None,
                 limit: float = 60) -> Iterator[str]:
    """`ledgerlog run --port 0` on ``data_dir`` (output to ``<data_dir>.node.log``) in ``env``
    (default cli_env()); yields its URL once it answers, stops it with SIGTERM (exit 0) after."""
    log_path = f"{os.fspath(data_dir).rstrip(os.sep)}.node.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data_dir), "run", "--port", "0"],
                                env=cli_env() if env is None else env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        yield wait_node_url(str(data_dir), proc, limit=limit)
    finally:
        terminate(proc)
    assert proc.returncode == 0, Path(log_path).read_text(errors="replace")[-3000:]
