"""The genesis a log was started with travels with the log: every open checks genesis.json
against it, `init` never replaces a chain (PROTOCOL.md §7) and restores a lost genesis.json,
`genesis show` prints it."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from clitools import cli, ok_json

from ledgerlog.engine.crypto import H, canonical_json
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history


def _tree(data: Path) -> dict[str, str]:
    """Every file under the data dir with its digest (to show nothing was written)."""
    out = {}
    for p in sorted(data.rglob("*")):
        if p.is_file() and p.name not in ("LOG",) and not p.name.startswith("LOG.old"):
            out[str(p.relative_to(data))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _refused(proc: subprocess.CompletedProcess, code: str = "GENESIS_MISMATCH") -> dict[str, Any]:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    [line] = proc.stderr.decode().strip().splitlines()
    err = json.loads(line)
    assert err["code"] == code, err
    return err


@pytest.fixture
def chain(tmp_path) -> dict[str, Any]:
    genesis, keys = make_genesis(3, wallets=4)
    other = json.loads(json.dumps(genesis))
    other["allocations"][next(iter(other["allocations"]))] += 1  # another allocation, same chain id
    gpath, opath, hpath, data = (tmp_path / "genesis.json", tmp_path / "other.json",
                                 tmp_path / "history.jsonl", tmp_path / "data")
    write_genesis(gpath, genesis)
    write_genesis(opath, other)
    write_history(hpath, genesis, keys, events=200, seed=3)
    ghash = ok_json(cli(data, "init", "--genesis", str(gpath)))["genesis_hash"]
    ok_json(cli(data, "ingest", str(hpath)))
    status = ok_json(cli(data, "status"))
    return {"data": data, "genesis": genesis, "gpath": gpath, "other": opath, "status": status,
            "hash": ghash}


def test_genesis_show_prints_the_logs_genesis(chain):
    shown = ok_json(cli(chain["data"], "genesis", "show"))
    assert shown == chain["genesis"]
    assert H(canonical_json(shown)) == chain["hash"]
    assert ok_json(cli(chain["data"], "genesis", "show", "--hash"))["genesis_hash"] == chain["hash"]


def test_a_lost_genesis_json_is_restored_by_init_never_replaced(chain):
    data = chain["data"]
    (data / "genesis.json").unlink()
    err = _refused(cli(data, "status"), "CONFIG")
    assert "ledgerlog init" in err["error"]
    before = _tree(data)
    _refused(cli(data, "init", "--genesis", str(chain["other"])))  # another chain: nothing written
    assert _tree(data) == before and not (data / "genesis.json").exists()
    restored = ok_json(cli(data, "init"))  # no --genesis: the log's own
    assert restored["genesis_hash"] == chain["hash"]
    assert json.loads((data / "genesis.json").read_text()) == chain["genesis"]
    status = ok_json(cli(data, "status"))
    assert (status["chain_id"], status["height"]) == (chain["status"]["chain_id"], chain["status"]["height"])


def test_init_over_a_chain_with_another_genesis_writes_nothing(chain):
    data = chain["data"]
    before = _tree(data)
    _refused(cli(data, "init", "--genesis", str(chain["other"])))
    assert _tree(data) == before
    ok_json(cli(data, "init", "--genesis", str(chain["gpath"])))  # the same genesis: idempotent


def test_an_edited_genesis_json_is_refused_at_every_open(chain):
    data = chain["data"]
    shutil.copy(chain["other"], data / "genesis.json")
    for args in (("status",), ("account", "0" * 40), ("run", "--port", "0")):
        err = _refused(cli(data, *args))
        assert "genesis show" in err["error"], args
    verify = cli(data, "verify")  # a report, exit 1: verification failed
    assert verify.returncode == 1 and b"is not the genesis this log was started with" in verify.stdout
    ok_json(cli(data, "genesis", "show"))  # the way back
