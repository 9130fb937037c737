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


_EACH_FIRST = r"""
import os, sys, traceback
names = []  # found on disk: walk_packages would import the packages here, before the fork
for base, dirs, files in (w for top in ("engine", "projections", "streams")
                          for w in os.walk(os.path.join("ledgerlog", top))):
    dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
    for f in files:
        if f.endswith(".py"):
            mod = os.path.join(base, f)[:-3].replace(os.sep, ".")
            names.append(mod[:-len(".__init__")] if mod.endswith(".__init__") else mod)
names.sort()
failed = []
for name in names:
    pid = os.fork()
    if pid == 0:  # a child whose first ledgerlog import below the package is this module
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print(len(names), failed)
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """No import cycle hides behind the order the suite happens to import modules in (the lower
    layers, where modules import each other most; ops' siblings have an acyclic contract)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", _EACH_FIRST], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
