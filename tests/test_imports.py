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


def test_one_namespace_from_any_directory(tmp_path) -> None:
    """Installed, ledgerlog's packages import as ledgerlog.*; nothing generic (engine, ops, ...)
    lands at the top level of site-packages."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ok = subprocess.run([sys.executable, "-c", "import ledgerlog.engine, ledgerlog.ops.cli, ledgerlog.schemas"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    for name in ("engine", "ops", "streams", "projections", "schemas"):
        bad = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "ModuleNotFoundError" in bad.stderr, name
