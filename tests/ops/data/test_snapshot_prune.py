"""Snapshot retention (`ledgerlog snapshot prune --keep N [--older-than D]`, ops/data/snapshot_prune.py):
exactly the snapshots beyond the newest N that are also older than D are deleted, per chain; never
the newest, never one a restore or verify reads, never anything but an intact snapshot directly in
the directory; --dry-run changes nothing; the CLI parses durations strictly, draws progress only on
a terminal, and goes through a running node (admin action snapshot-prune, recorded on
ledger.admin), which refuses directories outside snapshot.dir."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json, running_node

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import ConfigError, StoreLockedError, UsageError
from ledgerlog.ops.data import snapshot as snapshot_mod
from ledgerlog.ops.data.restore import restore_snapshot
from ledgerlog.ops.data.snapshot import (
    MANIFEST,
    create_snapshot,
    list_snapshots,
    read_manifest,
    reading,
)
from ledgerlog.ops.data.snapshot_prune import _claim, apply_prune, plan_prune, prune_snapshots
from ledgerlog.ops.devtools.histgen import make_genesis, write_history
from ledgerlog.streams.runner import Runner

DAY = 86400
NOW = 1_900_000_000.0  # a fixed "now": ages are exact


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Any]:
    """One real snapshot of a short chain (the template every test copies), and its data dir."""
    root = tmp_path_factory.mktemp("prune-base")
    genesis, keys = make_genesis(7, wallets=4)
    write_history(root / "h.jsonl", genesis, keys, events=120, seed=7)
    cfg = Config(data_dir=str(root / "data"), sync=False)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        assert chain.admitter.admit((root / "h.jsonl").read_bytes().splitlines()).rejected == 0
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            manifest = create_snapshot(chain, runner, str(root / "template"))
        finally:
            runner.close()
    return {"path": manifest["path"], "manifest": manifest, "data": cfg.data_dir}


def fake(base: dict[str, Any], directory: Path, name: str, age: float, *, height: int | None = None,
         chain: tuple[str, str] | None = None, now: float = NOW) -> str:
    """A copy of the template snapshot as ``directory/name``, its manifest saying it was created
    ``age`` seconds before ``now`` (at ``height`` if given, of ``chain`` = (chain_id, genesis_hash) if
    given), with a valid manifest checksum: ages are what prune reads (the manifest's created_ms)."""
    path = directory / name
    shutil.copytree(base["path"], path)
    doc = read_manifest(str(path))
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    body["created_ms"] = int((now - age) * 1000)
    if height is not None:  # (only listed and pruned then: a restore checks the log's real height)
        body["height"] = height
    if chain is not None:
        body.update(chain_id=chain[0], genesis_hash=chain[1])
    (path / MANIFEST).write_bytes(snapshot_mod._manifest_bytes(body))
    read_manifest(str(path))  # still valid
    return str(path)


def names(directory: Path) -> set[str]:
    return {s["name"] for s in list_snapshots(str(directory))}


def tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``directory`` -> (size, mtime_ns): what a dry run must leave alone."""
    out = {}
    for p in sorted(directory.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(directory))] = (st.st_size, st.st_mtime_ns)
    return out


def du(path: str) -> int:
    return sum(p.lstat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


# -- which ones go --------------------------------------------------------------------------------

def test_keep_n_deletes_all_beyond_the_newest_n(base, tmp_path) -> None:
    snaps = {f"c-h{h}": fake(base, tmp_path, f"c-h{h}", age=(6 - h) * DAY, height=h) for h in range(1, 6)}
    sizes = {n: du(p) for n, p in snaps.items()}
    report = prune_snapshots(str(tmp_path), keep=2, now=NOW)
    assert names(tmp_path) == {"c-h5", "c-h4"}
    assert [e["name"] for e in report["deleted"]] == ["c-h3", "c-h2", "c-h1"]  # newest first
    assert [(e["name"], e["reason"]) for e in report["kept"]] == [("c-h5", "newest"), ("c-h4", "one of the newest 2")]
    assert [e["height"] for e in report["deleted"]] == [3, 2, 1]
    assert [e["age_seconds"] for e in report["deleted"]] == [3 * DAY, 4 * DAY, 5 * DAY]
    assert report["bytes_freed"] == sizes["c-h1"] + sizes["c-h2"] + sizes["c-h3"] > 0
    assert all(e["bytes"] == e["bytes_freed"] == sizes[e["name"]] for e in report["deleted"])
    assert sorted(os.listdir(tmp_path)) == ["c-h4", "c-h5"]  # no temp dir left behind
    assert report["failed"] == [] and report["ignored"] == [] and not report["dry_run"]


def test_keep_and_older_than_both_must_hold(base, tmp_path) -> None:
    ages = {"a": 10 * DAY, "b": 8 * DAY, "c": 7 * DAY, "d": 6 * DAY, "e": 3 * DAY, "f": 3600}
    for n, age in ages.items():
        fake(base, tmp_path, n, age)
    report = prune_snapshots(str(tmp_path), keep=2, older_than=7 * DAY, now=NOW)
    # e, f: the newest 2; c (exactly 7 days: not older), d: beyond them but young enough; a, b: both
    assert names(tmp_path) == {"c", "d", "e", "f"}
    assert {e["name"] for e in report["deleted"]} == {"a", "b"}
    reasons = {e["name"]: e["reason"] for e in report["kept"]}
    assert reasons == {"f": "newest", "e": "one of the newest 2", "d": f"not older than {7 * DAY} s",
                       "c": f"not older than {7 * DAY} s"}
    assert report["older_than_seconds"] == 7 * DAY


def test_the_newest_is_never_deleted(base, tmp_path) -> None:
    for n, age in (("old", 30 * DAY), ("older", 40 * DAY)):
        fake(base, tmp_path, n, age)
    report = prune_snapshots(str(tmp_path), keep=1, older_than=0, now=NOW)
    assert names(tmp_path) == {"old"} and [e["name"] for e in report["deleted"]] == ["older"]
    assert prune_snapshots(str(tmp_path), keep=1, older_than=0, now=NOW)["deleted"] == []
    with pytest.raises(UsageError, match="at least 1"):
        plan_prune(str(tmp_path), keep=0)
    assert names(tmp_path) == {"old"}


def test_each_chain_is_counted_apart_and_a_chain_filter_leaves_others(base, tmp_path) -> None:
    other = ("otherchain", "ab" * 32)
    for i in range(3):
        fake(base, tmp_path, f"mine-{i}", age=(10 - i) * DAY)
        fake(base, tmp_path, f"theirs-{i}", age=(10 - i) * DAY, chain=other)
    own_hash = base["manifest"]["genesis_hash"]
    report = prune_snapshots(str(tmp_path), keep=2, genesis_hash=own_hash, now=NOW)
    assert {e["name"] for e in report["deleted"]} == {"mine-0"}
    assert {e["name"] for e in report["ignored"]} == {"theirs-0", "theirs-1", "theirs-2"}
    assert all("another chain" in e["reason"] for e in report["ignored"])
    report = prune_snapshots(str(tmp_path), keep=1, now=NOW)  # no filter: each chain keeps its newest
    assert {e["name"] for e in report["deleted"]} == {"mine-1", "theirs-0", "theirs-1"}
    assert names(tmp_path) == {"mine-2", "theirs-2"}


def test_dry_run_changes_nothing_and_names_what_a_real_run_deletes(base, tmp_path) -> None:
    for i in range(4):
        fake(base, tmp_path, f"s{i}", age=(9 - i) * DAY)
    before = tree(tmp_path)
    dry = prune_snapshots(str(tmp_path), keep=1, older_than=7 * DAY, dry_run=True, now=NOW)
    assert tree(tmp_path) == before
    assert dry["dry_run"] and {e["name"] for e in dry["deleted"]} == {"s0", "s1"} and dry["bytes_freed"] > 0
    real = prune_snapshots(str(tmp_path), keep=1, older_than=7 * DAY, now=NOW)
    assert [e["name"] for e in real["deleted"]] == [e["name"] for e in dry["deleted"]]
    assert real["bytes_freed"] == dry["bytes_freed"]


# -- what is never touched --------------------------------------------------------------------------

def test_nothing_outside_the_directory_nor_anything_but_an_intact_snapshot(base, tmp_path) -> None:
    snaps, outside = tmp_path / "snaps", tmp_path / "outside"
    snaps.mkdir()
    outside.mkdir()
    target = fake(base, outside, "far-away", age=50 * DAY)
    os.symlink(target, snaps / "linked-old")             # a symlink to an old snapshot elsewhere
    broken = fake(base, snaps, "broken", age=60 * DAY)     # an unreadable manifest
    with open(os.path.join(broken, MANIFEST), "ab") as f:
        f.write(b" ")
    (snaps / "notes.txt").write_text("mine")
    (snaps / "plain-dir").mkdir()
    busy = snaps / ".tmp-snapshot-writing"                 # a snapshot being written (its writer's lock)
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for i in range(3):
            fake(base, snaps, f"s{i}", age=(9 - i) * DAY)
        report = prune_snapshots(str(snaps), keep=1, now=NOW)
    finally:
        os.close(fd)
    assert {e["name"] for e in report["deleted"]} == {"s0", "s1"}
    assert sorted(os.listdir(snaps)) == [".tmp-snapshot-writing", "broken", "linked-old", "notes.txt",
                                         "plain-dir", "s2"]
    assert os.path.isfile(os.path.join(target, MANIFEST)) and du(target) == du(base["path"])
    ignored = {e["name"]: e["reason"] for e in report["ignored"]}
    assert set(ignored) == {"broken", "plain-dir"} and all("not an intact snapshot" in r for r in ignored.values())


def test_a_snapshot_being_read_is_kept_and_one_being_deleted_cannot_be_read(base, tmp_path) -> None:
    for i in range(3):
        fake(base, tmp_path, f"s{i}", age=(9 - i) * DAY)
    with reading(str(tmp_path / "s0")):  # what restore and verify hold
        report = prune_snapshots(str(tmp_path), keep=1, now=NOW)
    assert [e["name"] for e in report["deleted"]] == ["s1"]
    assert {e["name"]: e["reason"] for e in report["kept"]}["s0"].startswith("in use")
    fd = _claim(str(tmp_path / "s0"))  # what prune holds while it deletes
    assert fd is not None
    try:
        with pytest.raises(StoreLockedError, match="being deleted"):
            restore_snapshot(str(tmp_path / "s0"), str(tmp_path / "restored"))
        assert not (tmp_path / "restored").exists()
        assert _claim(str(tmp_path / "s0")) is None  # a second prune skips it too
    finally:
        os.close(fd)
    plan = plan_prune(str(tmp_path), keep=1, now=NOW)
    shutil.rmtree(tmp_path / "s0")  # gone between the plan and its deletion: reported, nothing else
    report = apply_prune(plan)
    assert [e["name"] for e in report["failed"]] == ["s0"] and report["deleted"] == []
    with pytest.raises(ConfigError, match="no snapshot"):
        with reading(str(tmp_path / "s0")):
            pass


def test_restore_still_works_on_a_kept_snapshot(base, tmp_path) -> None:
    """The shared lock restore now takes does not get in its own way."""
    (tmp_path / "snaps").mkdir()
    path = fake(base, tmp_path / "snaps", "only", age=DAY)
    out = restore_snapshot(path, str(tmp_path / "restored"))
    assert out["height"] == base["manifest"]["height"] and (tmp_path / "restored" / "log").is_dir()


# -- the command ------------------------------------------------------------------------------------

def _aged_data_dir(base: dict[str, Any], tmp_path: Path, ages: list[float]) -> Path:
    """A copy of the template's data dir whose snapshots/ holds copies aged ``ages`` days from now."""
    data = tmp_path / "data"
    shutil.copytree(base["data"], data)
    (data / "snapshots").mkdir()
    for i, age in enumerate(ages):
        fake(base, data / "snapshots", f"snap-{i}", age=age * DAY, now=time.time())
    return data


def test_cli_prune_local_report_and_dry_run(base, tmp_path) -> None:
    data = _aged_data_dir(base, tmp_path, [10, 9, 2, 1])
    dry = ok_json(cli(data, "snapshot", "prune", "--keep", "1", "--older-than", "7d", "--dry-run"))
    assert dry["via"] == "local" and dry["dry_run"] and dry["older_than"] == "7d"
    assert {e["name"] for e in dry["deleted"]} == {"snap-0", "snap-1"}
    assert len(os.listdir(data / "snapshots")) == 4
    out = ok_json(cli(data, "snapshot", "prune", "--keep", "1", "--older-than", "7d"))
    assert {e["name"] for e in out["deleted"]} == {"snap-0", "snap-1"} and out["bytes_freed"] == dry["bytes_freed"]
    assert out["dir"] == os.path.realpath(data / "snapshots")
    listed = ok_json(cli(data, "snapshot", "list"))
    assert [s["name"] for s in listed["snapshots"]] == ["snap-2", "snap-3"]


@pytest.mark.parametrize("args", [["--keep", "2", "--older-than", bad] for bad in
                                  ("7 days", "7D", "1.5h", "-1d", "7", "1h30m", "", " 7d")]
                         + [["--keep", "0"], ["--keep", "x"], ["--older-than", "7d"]])  # the last: no --keep
def test_cli_usage_errors(tmp_path, args) -> None:
    proc = cli(tmp_path / "data", "snapshot", "prune", *args)
    assert proc.returncode == 2 and proc.stdout == b"", proc
    err = json.loads(proc.stderr)
    assert err["code"] == "USAGE", err
    if "--keep" not in args:
        assert "--keep" in err["error"]
    elif "--older-than" in args:
        assert "--older-than" in err["error"] and "like 30s, 30m, 12h, 7d" in err["error"]


def _on_tty(args: list[str]) -> tuple[int, bytes, bytes]:
    """``ledgerlog ARGS`` with stderr on a pseudo-terminal, stdout on a pipe: (exit, stdout, stderr)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([LEDGERLOG, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                                env=cli_env(COLUMNS="100", LINES="30", TERM="xterm"))
    finally:
        os.close(slave)
    err = bytearray()
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        out = proc.stdout.read() if proc.stdout else b""
        rc = proc.wait(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return rc, out, bytes(err)


def test_cli_prune_progress_on_a_terminal_and_none_on_a_pipe(base, tmp_path) -> None:
    data = _aged_data_dir(base, tmp_path, [10, 9, 8, 1])
    rc, out, err = _on_tty(["--data-dir", str(data), "snapshot", "prune", "--keep", "2"])
    assert rc == 0, err
    assert len(json.loads(out)["deleted"]) == 2
    assert b"snapshot prune" in err and b"100%" in err, err
    fake(base, data / "snapshots", "again", age=0)
    proc = cli(data, "snapshot", "prune", "--keep", "1")
    assert ok_json(proc)["deleted"] and proc.stderr == b""


def test_cli_and_admin_action_through_a_running_node(base, tmp_path) -> None:
    data = _aged_data_dir(base, tmp_path, [10, 9, 1])
    token = "prune-test-token"
    env = cli_env(LEDGERLOG_ADMIN_TOKEN=token)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fake(base, elsewhere, "far", age=30 * DAY)
    fake(base, elsewhere, "far-newer", age=20 * DAY)
    with running_node(data, env=env) as url:
        import httpx
        refused = cli(data, "snapshot", "prune", "--keep", "1", "--dir", str(elsewhere), env=env)
        assert refused.returncode == 2 and json.loads(refused.stderr)["code"] == "SNAPSHOT_DIR_REFUSED"
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(url + "/v1/admin/snapshot-prune", json={"keep": 1, "dir": str(elsewhere)}, headers=auth)
        assert r.status_code == 400 and r.json()["code"] == "SNAPSHOT_DIR_REFUSED"
        r = httpx.post(url + "/v1/admin/snapshot-prune", json={"keep": 1, "dir": "../../"}, headers=auth)
        assert r.status_code == 400 and r.json()["code"] == "SNAPSHOT_DIR_REFUSED"
        r = httpx.post(url + "/v1/admin/snapshot-prune", json={"keep": 1, "older_than": "a week"}, headers=auth)
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST" and "older_than" in r.json()["message"]
        r = httpx.post(url + "/v1/admin/snapshot-prune", json={"older_than": "1d"}, headers=auth)
        assert r.status_code == 400 and "keep" in r.json()["message"]
        r = httpx.post(url + "/v1/admin/snapshot-prune", json={"keep": 0}, headers=auth)
        assert r.status_code == 400 and "at least 1" in r.json()["message"]
        r = httpx.post(url + "/v1/admin/snapshot-prune", json={"keep": 1, "dry_run": True}, headers=auth)
        assert r.status_code == 200 and {e["name"] for e in r.json()["deleted"]} == {"snap-0", "snap-1"}
        assert str(tmp_path) not in r.text and r.json()["dir"] == ""  # names, never paths
        out = ok_json(cli(data, "snapshot", "prune", "--keep", "1", "--older-than", "5d", env=env))
        assert out["via"] == "node" and {e["name"] for e in out["deleted"]} == {"snap-0", "snap-1"}
        assert out["dir"] == os.path.realpath(data / "snapshots")
    assert names(data / "snapshots") == {"snap-2"} and names(elsewhere) == {"far", "far-newer"}
    events = [json.loads(x)["value"] for x in cli(data, "tail", "ledger.admin").stdout.splitlines()]
    prunes = [e for e in events if e["action"] == "snapshot-prune"]
    assert [e["outcome"] for e in prunes] == ["error"] * 5 + ["ok", "ok"]
    assert json.loads(prunes[-1]["params"]) == {"keep": 1, "older_than": "5d", "dry_run": False,
                                                "dir": str(data / "snapshots")}
