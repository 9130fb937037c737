"""`ledgerlog generate` writes a deterministic history that `init --genesis` + `ingest` admit whole."""
import json
import subprocess

from clitools import LEDGERLOG


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LEDGERLOG, *args], capture_output=True)


def test_generate_then_ingest(tmp_path):
    h, g = str(tmp_path / "h.jsonl"), str(tmp_path / "g.json")
    out = json.loads(run("generate", "--events", "400", "--seed", "9", "--out", h, "--genesis-out", g).stdout)
    again = run("generate", "--events", "400", "--seed", "9", "--out", "-").stdout
    assert open(h, "rb").read() == again and out["lines"] == again.count(b"\n")
    data = str(tmp_path / "d")
    assert run("--data-dir", data, "init", "--genesis", g).returncode == 0
    res = run("--data-dir", data, "ingest", h)
    assert res.returncode == 0 and json.loads(res.stdout)["accepted"] == out["lines"]
    assert json.loads(run("--data-dir", data, "status").stdout)["height"] == out["blocks"]
    assert run("generate", "--events", "0", "--out", h).returncode == 2
