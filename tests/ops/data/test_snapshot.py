"""Snapshots (`ledgerlog snapshot create|list|restore`): taken from a running node under load and
from a stopped chain, restored into a new data dir that resumes at the snapshot's positions and
folds to the same digests as a fresh replay of the restored log; and a restore refuses every
corrupt, truncated, missing or unexpected file without creating or changing the target."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json, wait_node_url

from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import (
    ConfigError,
    CorruptStoreError,
    ReprojectRunningError,
    StoreLockedError,
)
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.ops.data import restore as restore_mod
from ledgerlog.ops.data import snapshot as snapshot_mod
from ledgerlog.ops.data.restore import restore_snapshot
from ledgerlog.ops.data.snapshot import MANIFEST, create_snapshot, list_snapshots, read_manifest
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history
from ledgerlog.ops.query.queries import Queries
from ledgerlog.streams.runner import Runner
from ledgerlog.streams.store import ProjectionStore

SEED = 23


def _wait_height(url: str, height: int, limit: float = 30) -> int:
    deadline, h = time.monotonic() + limit, -1
    while time.monotonic() < deadline:
        h = httpx.get(url + "/v1/status", timeout=10).json()["height"]
        if h >= height:
            return h
        time.sleep(0.2)
    raise AssertionError(f"the chain did not reach height {height} (at {h})")


def _start(data_dir: Any) -> subprocess.Popen:
    return subprocess.Popen([LEDGERLOG, "--data-dir", str(data_dir), "run", "--simulate", "--host", "127.0.0.1",
                             "--port", "0", "--seed", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert code == 0, proc.stderr.read().decode()[-4000:]


def _log_state(data_dir: Any) -> tuple[int, str, dict[str, list[int]]]:
    log = EmbeddedLog(os.path.join(str(data_dir), "log"), read_only=True)
    try:
        tip = WriteState(log).tip()
        return tip.height, tip.hash, {t: log.end_offsets(t) for t in sorted(log.topics())}
    finally:
        log.close()


def _stored_projections(data_dir: Any, like: dict[str, Any]) -> dict[str, tuple[str, dict[str, list[int]]]]:
    """name -> (digest, positions) of the live projection stores, read without folding; positions
    listed per topic and partition as in the manifest ``like``."""
    out = {}
    pdir = os.path.join(str(data_dir), "projections")
    for name in sorted(os.listdir(pdir)):
        with open(os.path.join(pdir, name, "live")) as f:
            ptr = json.load(f)
        store = ProjectionStore(os.path.join(pdir, name, ptr["dir"]), read_only=True)
        try:
            pos = store.positions()
            template = like["projections"][name]["positions"]
            assert set(pos) <= {(t, p) for t, offs in template.items() for p in range(len(offs))}
            out[name] = (store.digest_hex(), {t: [pos.get((t, p), 0) for p in range(len(offs))]
                                             for t, offs in template.items()})
        finally:
            store.close()
    return out


def _replay_and_compare(data_dir: Any, scratch: Any, addresses: list[str]) -> dict[str, str]:
    """Fold the data dir's log afresh into ``scratch``; its digests and balances must equal those of
    the data dir's own (caught-up) projections. Returns the digests."""
    cfg = Config(data_dir=str(data_dir))
    with open_chain(cfg, read_only=True) as chain:
        fresh = Runner(chain.log, chain.codec, chain.genesis, str(scratch))
        own = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, read_only=True)
        try:
            fresh.catch_up()
            assert own.lag() == {n: 0 for n in own.handles}, own.lag()
            assert fresh.digests() == own.digests()
            qf, qo = Queries(fresh, chain.genesis.chain_id), Queries(own, chain.genesis.chain_id)
            for addr in addresses:
                a, b = qf.account(addr), qo.account(addr)
                assert {k: a[k] for k in ("balance", "staked", "nonce")} == \
                       {k: b[k] for k in ("balance", "staked", "nonce")}, addr
            return fresh.digests()
        finally:
            fresh.close()
            own.close()


# -- 1. a running node under load ---------------------------------------------------------------


def test_snapshot_of_a_running_node_restores_and_resumes(tmp_path) -> None:
    data, restored = tmp_path / "data", tmp_path / "restored"
    init_chain(Config(data_dir=str(data)))  # what `ledgerlog init` does: dev chain, keys, admin token
    proc = _start(data)
    try:
        url = wait_node_url(str(data), proc)
        _wait_height(url, 3)
        created = ok_json(cli(data, "snapshot", "create", "--with-keys"))  # through the node's admin API
        assert created["via"] == "node" and created["with_keys"]
        snap = created["path"]
        assert os.path.dirname(snap) == os.path.join(str(data), "snapshots")
        manifest = read_manifest(snap)
        height = manifest["height"]
        assert height >= 3 and created["height"] == height and created["tip_hash"] == manifest["tip_hash"]
        assert created["name"].startswith(f"{manifest['chain_id']}-h{height}-")
        # projections were checkpointed before the log: never ahead of it
        for name, p in manifest["projections"].items():
            for t, offs in p["positions"].items():
                assert all(o <= e for o, e in zip(offs, manifest["log_end_offsets"][t])), (name, t)
        # a restore onto the data dir of a running node is refused, even with --force
        with pytest.raises(StoreLockedError):
            restore_snapshot(snap, str(data), force=True)
        listed = list_snapshots(os.path.join(str(data), "snapshots"))
        assert [s["name"] for s in listed] == [created["name"]] and listed[0]["ok"]
        _wait_height(url, height + 2)  # the node keeps running and moves on
    finally:
        _stop(proc)

    out = ok_json(cli(restored, "snapshot", "restore", snap))
    assert out["height"] == height and out["replaced"] is None
    assert not any(e.startswith(".tmp-restore") for e in os.listdir(tmp_path))
    # the restored data dir is exactly the snapshot: log at its height, projections at its positions
    assert _log_state(restored) == (height, manifest["tip_hash"], manifest["log_end_offsets"])
    assert _stored_projections(restored, manifest) == {n: (p["digest"], p["positions"])
                                             for n, p in manifest["projections"].items()}
    assert not os.path.exists(restored / "node.json") and os.path.exists(restored / "keys" / "faucet.key")
    # the original moved on past the snapshot
    assert _log_state(data)[0] > height

    status = ok_json(cli(restored, "status"))  # folds the restored projections from their positions
    assert (status["height"], status["tip_hash"]) == (height, manifest["tip_hash"])
    assert status["lag"] == {n: 0 for n in status["lag"]}
    with open(restored / "genesis.json") as f:
        genesis = json.load(f)
    addresses = [*sorted(genesis["allocations"])[:4], genesis["pool"]["address"]]
    _replay_and_compare(restored, tmp_path / "fresh1", addresses)

    # a node on the restored data dir resumes: it extends the restored chain
    proc = _start(restored)
    try:
        url = wait_node_url(str(restored), proc)
        _wait_height(url, height + 1)
    finally:
        _stop(proc)
    h2, _, _ = _log_state(restored)
    assert h2 >= height + 1
    _replay_and_compare(restored, tmp_path / "fresh2", addresses)


# -- 2. no node: create, list, restore of a generated history -------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("snap-hist")
    genesis, keys = make_genesis(SEED, wallets=8)
    write_genesis(root / "genesis.json", genesis)
    write_history(root / "history.jsonl", genesis, keys, events=1500, seed=SEED)
    return {"root": root, "genesis": genesis, "gpath": root / "genesis.json", "hpath": root / "history.jsonl"}


def _accounts(data_dir: Any, addresses: list[str]) -> list[dict[str, Any]]:
    cfg = Config(data_dir=str(data_dir))
    with open_chain(cfg, read_only=True) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, read_only=True)
        try:
            q = Queries(runner, chain.genesis.chain_id)
            return [{k: a[k] for k in ("address", "balance", "staked", "nonce")}
                    for a in map(q.account, addresses)]
        finally:
            runner.close()


def test_create_list_restore_without_a_node(history, tmp_path) -> None:
    data, restored, other = tmp_path / "data", tmp_path / "restored", tmp_path / "elsewhere"
    cfg = Config(data_dir=str(data))
    init_chain(cfg, history["genesis"])
    with open_chain(cfg) as chain:
        assert chain.admitter.admit(history["hpath"].read_bytes().splitlines()).rejected == 0
    created = ok_json(cli(data, "snapshot", "create"))  # no node: opens the chain, folds, snapshots
    assert created["via"] == "local" and not created["with_keys"]
    snap = created["path"]
    assert os.path.dirname(snap) == os.path.join(str(data), "snapshots")
    original = ok_json(cli(data, "status"))
    assert created["height"] == original["height"] > 5 and created["tip_hash"] == original["tip_hash"]
    assert not os.path.exists(os.path.join(snap, "keys"))
    assert os.stat(os.path.join(snap, "config.toml")).st_mode & 0o777 == 0o600  # it holds the admin token

    listed = ok_json(cli(data, "snapshot", "list", "--verify"))
    assert [(s["name"], s["ok"], s["height"]) for s in listed["snapshots"]] == \
        [(created["name"], True, created["height"])]
    assert listed["snapshots"][0]["size"] == sum(f["size"] for f in read_manifest(snap)["files"].values())

    out = ok_json(cli(restored, "snapshot", "restore", snap))
    assert out["height"] == created["height"] and out["replaced"] is None
    assert ok_json(cli(restored, "status")) == original  # same height, tip, positions, digest
    addresses = [*sorted(history["genesis"]["allocations"]), history["genesis"]["pool"]["address"]]
    digests = _replay_and_compare(restored, tmp_path / "fresh", addresses)
    assert digests == {n: p["digest"] for n, p in created["projections"].items()}
    assert _accounts(restored, addresses) == _accounts(data, addresses)

    # another snapshot elsewhere (in-process), listed from there; same chain state, another name
    with open_chain(cfg) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            second = create_snapshot(chain, runner, str(other), with_keys=True)
        finally:
            runner.close()
    assert [(s["path"], s["height"], s["ok"]) for s in list_snapshots(str(other))] == \
        [(second["path"], created["height"], True)]

    # an occupied data dir is refused and left alone; --force moves it aside
    before = sorted(os.listdir(restored))
    with pytest.raises(ConfigError, match="already holds a chain"):
        restore_snapshot(second["path"], str(restored))
    assert sorted(os.listdir(restored)) == before
    os.makedirs(os.path.join(str(restored), "archive", "h5"))  # what no snapshot holds: the answer names it
    forced = restore_snapshot(second["path"], str(restored), force=True)
    assert forced["replaced"] and os.path.exists(os.path.join(forced["replaced"], "genesis.json"))
    assert forced["replaced_holds"] == ["archive"]
    assert _accounts(restored, addresses) == _accounts(data, addresses)


# -- 3. corruption ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_snapshot(history, tmp_path_factory) -> dict[str, Any]:
    """A snapshot of a short chain, made in-process."""
    root = tmp_path_factory.mktemp("snap-small")
    cfg = Config(data_dir=str(root / "data"), sync=False)
    init_chain(cfg, history["genesis"])
    lines = history["hpath"].read_bytes().splitlines()[:150]
    with open_chain(cfg) as chain:
        assert chain.admitter.admit(lines).rejected == 0
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            manifest = create_snapshot(chain, runner, str(root / "snaps"))
        finally:
            runner.close()
    return {"root": root, "path": manifest["path"], "manifest": manifest}


def _mutate(path: str, how: str) -> None:
    size = os.path.getsize(path)
    if how == "delete":
        os.unlink(path)
    elif size == 0:  # nothing to flip or cut: make it longer instead
        with open(path, "ab") as f:
            f.write(b"\x00")
    elif how == "truncate":
        os.truncate(path, size // 2)
    else:
        with open(path, "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0x5A]))


def _refused(snap: str, target: str) -> str:
    with pytest.raises(CorruptStoreError) as exc:
        restore_snapshot(snap, target)
    assert not os.path.exists(target)
    assert not any(e.startswith(".tmp-restore") for e in os.listdir(os.path.dirname(target)))
    return str(exc.value)


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_restore_refuses_every_damaged_file(small_snapshot, tmp_path, how) -> None:
    snap = small_snapshot["path"]
    files = [*sorted(small_snapshot["manifest"]["files"]), MANIFEST]
    assert any(f.startswith("log/") for f in files) and any(f.endswith("/live") for f in files)
    for i, rel in enumerate(files):
        copy = str(tmp_path / f"snap{i}")
        shutil.copytree(snap, copy)  # real copies: the original's SSTs are hard links to live files
        _mutate(os.path.join(copy, rel), how)
        message = _refused(copy, str(tmp_path / f"target{i}"))
        assert rel in message, (rel, message)
        shutil.rmtree(copy)
    restore_snapshot(snap, str(tmp_path / "intact"))  # the undamaged snapshot still restores


def test_restore_refuses_unexpected_files_and_cli_exits_1(small_snapshot, tmp_path) -> None:
    snap = small_snapshot["path"]
    for i, rel in enumerate(["notes.txt", "log/000999.sst", "projections/balances/extra/CURRENT"]):
        copy = str(tmp_path / f"extra{i}")
        shutil.copytree(snap, copy)
        os.makedirs(os.path.dirname(os.path.join(copy, rel)), exist_ok=True)
        with open(os.path.join(copy, rel), "wb") as f:
            f.write(b"x")
        assert rel in _refused(copy, str(tmp_path / f"t{i}"))
    # through the CLI: exit 1, a clear error naming the file, nothing created
    copy = str(tmp_path / "cli")
    shutil.copytree(snap, copy)
    victim = next(rel for rel in sorted(small_snapshot["manifest"]["files"]) if rel.endswith(".sst"))
    _mutate(os.path.join(copy, victim), "flip")
    proc = cli(tmp_path / "cli-target", "snapshot", "restore", copy)
    assert proc.returncode == 1, proc.stderr
    err = json.loads(proc.stderr)
    assert err["code"] == "CORRUPT" and victim in err["error"]
    assert not os.path.exists(tmp_path / "cli-target")
    assert cli(tmp_path / "cli-target", "snapshot", "restore", str(tmp_path / "no-such-snapshot")).returncode == 2
    listed = list_snapshots(str(tmp_path), verify=True)
    assert {s["name"]: s["ok"] for s in listed if s["name"] in ("cli", "extra0")} == {"cli": False, "extra0": False}


def test_restore_is_all_or_nothing(small_snapshot, tmp_path, monkeypatch) -> None:
    """A failure half-way through the copy leaves no data dir (or the old one, with --force)."""
    snap = small_snapshot["path"]
    real, calls = snapshot_mod._copy_hashed, []

    def failing(src: str, dst: str, progress: Any = None) -> tuple[int, str]:
        calls.append(src)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")
        return real(src, dst, progress)

    monkeypatch.setattr(restore_mod, "_copy_hashed", failing)  # what restore copies with
    target = str(tmp_path / "target")
    with pytest.raises(OSError):
        restore_snapshot(snap, target)
    assert not os.path.exists(target) and os.listdir(tmp_path) == []
    monkeypatch.setattr(snapshot_mod, "_copy_hashed", real)
    restore_snapshot(snap, target)
    marker = os.path.join(target, "genesis.json")
    with open(marker, "rb") as f:
        before = f.read()
    calls.clear()
    monkeypatch.setattr(restore_mod, "_copy_hashed", failing)  # what restore copies with
    with pytest.raises(OSError):
        restore_snapshot(snap, target, force=True)
    assert sorted(os.listdir(tmp_path)) == ["target"]
    with open(marker, "rb") as f:
        assert f.read() == before
    monkeypatch.setattr(snapshot_mod, "_copy_hashed", real)
    with pytest.raises(ConfigError):
        restore_snapshot(snap, target)
    with pytest.raises(ConfigError):
        restore_snapshot(snap, os.path.join(snap, "inside"))
    # a process holding the target's log (no node.json) makes --force refuse too
    with open_chain(Config(data_dir=target, sync=False)), pytest.raises(StoreLockedError):
        restore_snapshot(snap, target, force=True)
    out = restore_snapshot(snap, target, force=True)
    assert out["replaced"] and sorted(os.listdir(tmp_path)) == sorted(["target", os.path.basename(out["replaced"])])


# -- where a restore lands ------------------------------------------------------------------------
def test_restore_into_a_symlinked_data_dir_restores_where_it_points(small_snapshot, tmp_path) -> None:
    """/var/lib/ledgerlog -> /mnt/big/ledgerlog: the journal was written, then renaming the link's
    target failed (ENOTDIR) at every later open: the data dir was wedged. The restore now works on
    the directory the link points at; the link stays, and points at the restored chain."""
    real = tmp_path / "bigdisk" / "ledgerlog"
    real.mkdir(parents=True)
    link = tmp_path / "var" / "ledgerlog"
    link.parent.mkdir()
    os.symlink(real, link)
    out = restore_snapshot(small_snapshot["path"], str(link))
    assert out["data_dir"] == str(real) and os.path.islink(link) and os.path.isdir(real / "log")
    assert ok_json(cli(link, "status"))["height"] == small_snapshot["manifest"]["height"]
    (real / "extra").write_text("x")  # --force: the old chain moves aside beside the real directory
    forced = restore_snapshot(small_snapshot["path"], str(link), force=True)
    assert os.path.islink(link) and os.path.isdir(real / "log") and not (real / "extra").exists()
    assert os.path.dirname(forced["replaced"]) == str(real.parent)


def test_restore_into_a_mount_point_is_refused_before_anything_is_written(small_snapshot, tmp_path,
                                                                           monkeypatch) -> None:
    """A data dir that is its own file system cannot be renamed aside nor the copy into it: the
    journal then wedged every command on it. Refused up front, naming the way out."""
    target = tmp_path / "mnt"
    target.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(restore_mod.os.path, "ismount", lambda p: p == str(target) or real_ismount(p))
    with pytest.raises(ConfigError, match=r"mount point.*restore into a directory inside it"):
        restore_snapshot(small_snapshot["path"], str(target))
    assert os.listdir(tmp_path) == ["mnt"] and os.listdir(target) == []


def test_the_restore_lock_is_not_shared_with_one_opened_before_its_holder_removed_it(tmp_path,
                                                                                       monkeypatch) -> None:
    """A holder removes the lock file on the way out; a process that had opened it just before got
    the flock on the removed file, and the next one a flock on a new file: two holders (an open of
    the data dir then 'settled' a running restore's copy away). The lock is taken on the file in
    place, or retried."""
    import fcntl
    import threading

    from ledgerlog.engine import restorejournal
    target = str(tmp_path / "data")
    opened, go = threading.Event(), threading.Event()
    real_flock = fcntl.flock
    late: dict[str, Any] = {}

    def flock(fd: int, op: int) -> None:
        if threading.current_thread() is late.get("thread") and not go.is_set():
            opened.set()  # the late one has opened the lock file, and waits before its flock
            go.wait(10)
        real_flock(fd, op)
    monkeypatch.setattr(restorejournal.fcntl, "flock", flock)

    def take() -> None:
        with restorejournal.held(target):
            late["holding"] = True
            late["release"].wait(10)
    late["release"] = threading.Event()
    with restorejournal.held(target):  # the first holder, leaving
        late["thread"] = threading.Thread(target=take)
        late["thread"].start()
        assert opened.wait(10)
    go.set()
    deadline = time.monotonic() + 10
    while not late.get("holding") and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert late.get("holding")
        with pytest.raises(StoreLockedError):  # a third one, e.g. an open's recover(): refused
            with restorejournal.held(target):
                pass
    finally:
        late["release"].set()
        late["thread"].join(10)


_HOLD = """
import sys, time
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config
from ledgerlog.streams.reproject import reproject_lock
from ledgerlog.streams.runner import Runner
data, what = sys.argv[1], sys.argv[2]
cfg = Config(data_dir=data, sync=False)
if what == "stores":  # a query command or a reproject: projection stores open, log read-only
    chain = open_chain(cfg, read_only=True)
    runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
    print("held", flush=True)
    time.sleep(60)
else:
    with reproject_lock(cfg.projections_dir):
        print("held", flush=True)
        time.sleep(60)
"""


@pytest.mark.parametrize("what", ["stores", "reproject_lock"])
def test_restore_force_is_refused_while_another_process_holds_the_data_dir(small_snapshot, tmp_path, what) -> None:
    """A CLI reproject (log opened read-only, projection stores open) went unnoticed: the data dir
    was moved aside under it, and it wrote its next files into the restored one by path, which
    was then corrupt. Every store held open, and the reproject lock, now refuse the restore."""
    target = tmp_path / "data"
    restore_snapshot(small_snapshot["path"], str(target))
    before = sorted(e for e in os.listdir(target) if not e.endswith(".lock"))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(target), what],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        assert holder.stdout is not None and holder.stderr is not None
        assert holder.stdout.readline() == b"held\n", holder.stderr.read()
        with pytest.raises((StoreLockedError, ReprojectRunningError)):
            restore_snapshot(small_snapshot["path"], str(target), force=True)
        assert sorted(e for e in os.listdir(target) if not e.endswith(".lock")) == before
        assert not [e for e in os.listdir(tmp_path) if e.startswith("data.replaced")]
    finally:
        holder.kill()
        holder.wait()
    assert restore_snapshot(small_snapshot["path"], str(target), force=True)["replaced"]
