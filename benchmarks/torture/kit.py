"""Real processes for crash tests: run the `ledgerlog` command and node, kill them with SIGKILL,
and read what a data dir holds afterwards (log, write side, projections). Shared by
tests/test_crash.py and the torture harness (``python -m benchmarks.torture``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ledgerlog.engine import topics as T
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config, load_config
from ledgerlog.engine.digest import DIGEST_MOD, entry_hash
from ledgerlog.streams.runner import Runner

__all__ = ["LEDGERLOG", "REPO", "RUNNER_SNIPPET", "cli", "config", "env", "kill", "lines_in_log",
           "log_dump", "ok_json", "projection_dump", "start_node", "stop_node", "wait_node_url"]

REPO = str(Path(__file__).resolve().parents[2])
#: The `ledgerlog` command of this source tree (not whatever the venv's script points at): the
#: CLI's main, run by this interpreter with this tree first on PYTHONPATH (see ``env``).
LEDGERLOG = [sys.executable, "-c", "import sys; from ledgerlog.ops.cli import main; sys.argv[0] = 'ledgerlog'; sys.exit(main())"]

#: Fold every projection in small batches, printing "step <events folded>" after each committed step.
RUNNER_SNIPPET = r"""
import sys
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import load_config
from ledgerlog.streams.runner import Runner
cfg = load_config(sys.argv[1], {})
chain = open_chain(cfg, read_only=True)
runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, batch=int(sys.argv[2]))
print("open", flush=True)
while True:
    n = runner.step()
    if not n:
        break
    print("step", n, flush=True)
runner.close()
chain.close()
print("done", flush=True)
"""


def env(**extra: str) -> dict[str, str]:
    """This process's environment without LEDGERLOG_* settings, with this tree first on
    PYTHONPATH, plus ``extra``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERLOG_")}
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    out["PYTHONPATH"] = os.pathsep.join([REPO, *(p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p)])
    out.update(extra)
    return out


def cli(data_dir: Any, *args: str, timeout: float = 180, **extra: str) -> subprocess.CompletedProcess:
    """Run `ledgerlog --data-dir DATA_DIR ARGS...` to completion, capturing its output."""
    return subprocess.run([*LEDGERLOG, "--data-dir", str(data_dir), *args], check=False, capture_output=True,
                          timeout=timeout, env=env(**extra))


def ok_json(proc: subprocess.CompletedProcess) -> Any:
    """The JSON a command printed, asserting it exited 0."""
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads(proc.stdout)


def config(data: Any) -> Config:
    return load_config(str(data), {})


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL ``proc`` and reap it; True if it was still running when killed."""
    running = proc.poll() is None
    if running:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return running


def start_node(data: Any, **extra: str) -> subprocess.Popen:
    """`ledgerlog run` on 127.0.0.1, a free port; its stderr appended to ``<data>.stderr``."""
    with open(f"{data}.stderr", "ab") as err:
        return subprocess.Popen([*LEDGERLOG, "--data-dir", str(data), "run", "--host", "127.0.0.1", "--port", "0"],
                                stdout=subprocess.DEVNULL, stderr=err, env=env(**extra))


def wait_node_url(data: Any, proc: subprocess.Popen, limit: float = 60) -> str | None:
    """The URL of the node ``proc`` runs on ``data`` (from node.json) once /v1/health answers;
    None if the process exits or ``limit`` seconds pass first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open(os.path.join(str(data), "node.json")) as f:
                doc = json.load(f)
            if doc.get("pid") == proc.pid and httpx.get(doc["url"] + "/v1/health", timeout=2).status_code == 200:
                return str(doc["url"])
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    return None


def stop_node(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM (a clean stop: drain, flush), SIGKILL if it does not exit in ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
    return proc.returncode


def lines_in_log(data: Path) -> int | None:
    """How many ingest lines the log holds: one event per line, except a block line, which also
    writes one ledger.transactions event per transaction. None if the log cannot be read now."""
    try:
        with open_chain(config(data), read_only=True) as chain:
            log = chain.log
            return sum(sum(log.end_offsets(t)) for t in T.EVENT_TOPICS if t != T.TRANSACTIONS)
    except Exception:  # noqa: BLE001  # e.g. opened while the writer renames files: try again later
        return None


def log_dump(data: Path) -> tuple[dict[str, list[int]], list[tuple[bytes, bytes]], dict[str, list[Any]]]:
    """End offsets, write-side state and every record of every topic; not what each data dir
    makes its own: the signed tree heads on _checkpoints (its log key, its clock) and the state's
    record of that key."""
    with open_chain(config(data), read_only=True) as chain:
        log = chain.log
        ends = {t: log.end_offsets(t) for t in sorted(log.topics()) if t != T.CHECKPOINTS}
        state = [(k, v) for k, v in log.state_items(b"") if k != WriteState.LOG_ORIGIN]
        records = {t: [(r.partition, r.offset, r.key, r.value, r.timestamp)
                       for p in range(len(ends[t])) for r in log.scan(t, p)] for t in ends}
    return ends, state, records


def projection_dump(data: Path) -> dict[str, Any]:
    """Per projection: stored digest, digest recomputed from its state, positions, and state."""
    out = {}
    cfg = config(data)
    with open_chain(cfg, read_only=True) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, read_only=True)
        try:
            for name, h in runner.handles.items():
                state = [(k, v) for k, v in h.store.db.items() if not k.startswith(b"\x00")]
                recomputed = sum(entry_hash(k, v) for k, v in state) % DIGEST_MOD
                out[name] = {"digest": h.store.digest_hex(), "recomputed": f"{recomputed:032x}",
                             "positions": runner.positions(name), "lag": runner.lag()[name], "state": state}
        finally:
            runner.close()
    return out
