"""Backups that are backups: a snapshot shares no byte with the live stores (it still restores
after every live SST file is damaged in place; ``--link`` checkpoints do not, and say so);
``snapshot verify`` names a flipped byte's file; a restore killed at any step is finished by the
next open of the data dir, which is never missing; stale temp dirs are removed; the admin snapshot
action writes only under snapshot.dir."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import clitools
import pytest
from clitools import REPO, cli_env, ok_json
from nodetools import observed_node

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.data.restore import STEPS, restore_snapshot
from ledgerlog.ops.data.snapshot import create_snapshot, read_manifest
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history
from ledgerlog.streams.runner import Runner

SEED = 29
ROOT = REPO


def _env() -> dict[str, str]:
    """cli_env() with this checkout first on PYTHONPATH (the killed restores run ``python -c``)."""
    return cli_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def cli(data_dir: Any, *args: str) -> subprocess.CompletedProcess:
    return clitools.cli(data_dir, *args, env=_env())


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> dict[str, Any]:
    """Two data dirs of one chain at different heights (old: 120 lines, new: 300), and a snapshot
    of the new one."""
    root = tmp_path_factory.mktemp("backup")
    genesis, keys = make_genesis(SEED, wallets=6)
    write_genesis(root / "genesis.json", genesis)
    write_history(root / "h.jsonl", genesis, keys, events=800, seed=SEED)
    lines = (root / "h.jsonl").read_bytes().splitlines()
    out: dict[str, Any] = {"root": root, "genesis": genesis}
    for name, n in (("old", 120), ("new", 300)):
        cfg = Config(data_dir=str(root / name), sync=False)
        init_chain(cfg, genesis)
        with open_chain(cfg) as chain:
            assert chain.admitter.admit(lines[:n]).rejected == 0
            runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
            try:
                runner.catch_up()
                if name == "new":
                    out["snap"] = create_snapshot(chain, runner, str(root / "snaps"))["path"]
            finally:
                runner.close()
        out[name] = ok_json(cli(root / name, "status"))
    assert out["old"]["height"] != out["new"]["height"]
    return out


def _flip(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x5A]))


def _live_ssts(data_dir: Path) -> list[str]:
    return sorted(str(p) for p in data_dir.rglob("*.sst") if "snapshots" not in p.parts)


# -- independence -------------------------------------------------------------------------------

@pytest.mark.parametrize("link", [False, True])
def test_a_snapshot_survives_damage_to_every_live_sst_unless_linked(chains, tmp_path, link) -> None:
    data = tmp_path / "data"
    shutil.copytree(chains["root"] / "new", data)
    args = ["snapshot", "create"] + (["--link"] if link else [])
    created = ok_json(cli(data, *args))
    assert created["independent"] is (not link) and read_manifest(created["path"])["linked"] is link
    ssts = _live_ssts(data)
    assert ssts, "the checkpoint flushed the memtables: the live stores hold SST files"
    for sst in ssts:  # one filesystem-level fault on the live files ...
        _flip(sst)
    verified = cli(data, "snapshot", "verify", created["path"])
    if link:  # ... takes a linked checkpoint with it
        assert verified.returncode == 1 and json.loads(verified.stderr)["code"] == "CORRUPT"
        return
    assert ok_json(verified)["ok"] is True
    restored = tmp_path / "restored"
    out = ok_json(cli(restored, "snapshot", "restore", created["path"]))
    assert out["height"] == chains["new"]["height"]
    assert ok_json(cli(restored, "status")) == chains["new"]


def test_verify_names_a_flipped_byte_and_deep_opens_the_stores(chains, tmp_path) -> None:
    snap = str(tmp_path / "snap")
    shutil.copytree(chains["snap"], snap)
    assert ok_json(cli(tmp_path, "snapshot", "verify", snap))["ok"] is True
    assert ok_json(cli(tmp_path, "snapshot", "verify", "--deep", snap))["deep"] is True
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".tmp")]
    files = sorted(read_manifest(snap)["files"])
    for rel in (next(f for f in files if f.endswith(".sst")), next(f for f in files if f.endswith("/live")),
                "genesis.json"):
        copy = str(tmp_path / f"c-{rel.replace('/', '_')}")
        shutil.copytree(snap, copy)
        _flip(os.path.join(copy, rel))
        proc = cli(tmp_path, "snapshot", "verify", copy)
        assert proc.returncode == 1, proc.stderr
        err = proc.stderr.decode().strip()
        assert len(err.splitlines()) == 1 and json.loads(err)["code"] == "CORRUPT" and rel in json.loads(err)["error"]
    assert cli(tmp_path, "snapshot", "verify", str(tmp_path / "nothing")).returncode == 2


# -- restore killed at every step -----------------------------------------------------------------

_KILL = """
import os, sys
from ledgerlog.ops.data.restore import restore_snapshot
step = sys.argv[3]
def hook(name):
    if name == step:
        os._exit(9)
restore_snapshot(sys.argv[1], sys.argv[2], force=True, on_step=hook)
"""


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("fresh", [False, True])
def test_restore_killed_at_each_step_is_finished_or_rolled_back(chains, tmp_path, step, fresh) -> None:
    target = tmp_path / "data"
    if not fresh:
        shutil.copytree(chains["root"] / "old", target)
    proc = subprocess.run([sys.executable, "-c", _KILL, chains["snap"], str(target), step],
                          capture_output=True, timeout=120, env=_env())
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    # the next start (any command on the data dir) finishes the restore or leaves the old state
    status = cli(target, "status")
    if fresh and not target.exists():
        assert step == "copied"  # killed before the commit point: nothing was restored
    else:
        got = ok_json(status)
        assert got in (chains["old"], chains["new"]), got
        if step != "copied":  # journaled: the restore is finished
            assert got == chains["new"]
    left = [e for e in os.listdir(tmp_path) if e.startswith(".")]
    assert left == [], left  # no temp dirs, journal or lock file
    replaced = [e for e in os.listdir(tmp_path) if ".replaced-" in e]
    assert len(replaced) == (1 if not fresh and step != "copied" else 0)


def test_the_node_finishes_a_journaled_restore_at_open(chains, tmp_path) -> None:
    target = tmp_path / "data"
    shutil.copytree(chains["root"] / "old", target)
    proc = subprocess.run([sys.executable, "-c", _KILL, chains["snap"], str(target), "moved_aside"],
                          capture_output=True, timeout=120, env=_env())
    assert proc.returncode == 9 and not target.exists()
    with open_chain(Config(data_dir=str(target), sync=False)) as chain:  # what Node() does first
        assert chain.status()["height"] == chains["new"]["height"]
    assert [e for e in os.listdir(tmp_path) if e.startswith(".")] == []


# -- stale temp dirs -----------------------------------------------------------------------------

def test_stale_temp_dirs_are_removed_live_ones_kept(chains, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(chains["root"] / "new", data)
    snaps = data / "snapshots"
    (snaps / ".tmp-snapshot-dead1").mkdir(parents=True)
    (snaps / ".tmp-snapshot-dead1" / "x.sst").write_bytes(b"x" * 100)
    live = snaps / ".tmp-snapshot-live1"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a create under way in another process holds it
    (tmp_path / ".tmp-restore-data-dead2").mkdir()  # a restore killed while copying
    (tmp_path / ".data.restore.json.k2j3h4.tmp").write_text("{")  # one killed writing its journal
    (tmp_path / ".data-b.restore.json.z9.tmp").write_text("{")  # another data dir's
    other = tmp_path / ".tmp-restore-data-b-live3"  # a restore into the data dir "data-b", not this one's
    other.mkdir()
    try:
        listed = ok_json(cli(data, "snapshot", "list"))
        assert listed["snapshots"] == []
        assert sorted(os.listdir(snaps)) == [".tmp-snapshot-live1"]
        ok_json(cli(data, "status"))
        assert not (tmp_path / ".tmp-restore-data-dead2").exists()
        assert not (tmp_path / ".data.restore.json.k2j3h4.tmp").exists()
        assert other.exists() and (tmp_path / ".data-b.restore.json.z9.tmp").exists()
    finally:
        os.close(fd)
    created = ok_json(cli(data, "snapshot", "create"))
    assert sorted(os.listdir(snaps)) == [created["name"]]


# -- the admin action writes only under snapshot.dir ----------------------------------------------

def test_admin_snapshot_writes_only_under_the_snapshot_dir(tmp_path) -> None:
    with observed_node(tmp_path) as w:
        node, client = w["node"], w["client"]
        node.config = replace(node.config, admin_token="t0ken")
        auth = {"Authorization": "Bearer t0ken"}
        root = Path(node.config.snapshots_dir)
        root.mkdir(parents=True, exist_ok=True)
        outside = tmp_path / "elsewhere"
        (root / "leak").symlink_to(outside, target_is_directory=True)
        for out in (str(outside), "../../elsewhere", "leak", "leak/deeper", "/", 7):
            r = client.post("/v1/admin/snapshot", json={"out": out}, headers=auth)
            assert r.status_code == 400, (out, r.text)
            assert r.json()["code"] == ("BAD_REQUEST" if out == 7 else "SNAPSHOT_DIR_REFUSED")
            assert str(tmp_path) not in r.text
        assert not outside.exists() and sorted(os.listdir(root)) == ["leak"]
        r = client.post("/v1/admin/snapshot", json={"out": "weekly"}, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["dir"] == "weekly" and body["independent"] is True and "path" not in body
        assert str(tmp_path) not in r.text
        assert os.listdir(root / "weekly") == [body["name"]]
        r = client.post("/v1/admin/snapshot", json={}, headers=auth)
        assert r.status_code == 200 and r.json()["dir"] == ""
        restore_snapshot(str(root / "weekly" / body["name"]), str(tmp_path / "restored"))
