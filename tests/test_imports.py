"""The import contracts of pyproject.toml (import-linter): the layers engine <- projections <-
streams <- ops, pure projections, HTTP and CLI frameworks only in ops, no cycles inside ops."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_the_contracts_are_configured() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contracts = {c["id"]: c for c in config["contracts"]}
    assert {"layers", "pure-projections", "edges-in-ops", "ops-acyclic"} <= set(contracts)
    assert contracts["layers"]["layers"] == ["ledgerlog.ops", "ledgerlog.streams", "ledgerlog.projections",
                                             "ledgerlog.engine"]
    assert contracts["ops-acyclic"]["type"] == "acyclic_siblings"


def test_every_import_contract_is_kept() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout
