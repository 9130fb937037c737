"""Blue/green re-projection: same digests and answers, resumes after kill -9, queries keep being
answered during it, and a projection built by older code is rebuilt instead of served."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time

import httpx
import pytest
from clitools import LEDGERLOG, cli_env

from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history
from ledgerlog.projections import balances, energy
from ledgerlog.streams import layout

NAMES = ["chainstate", "balances", "energy", "payouts"]


def cli(data: str, *args: str, env: dict | None = None, check: bool = True) -> dict:
    out = subprocess.run([LEDGERLOG, "--data-dir", data, *args], capture_output=True, check=False,
                         env=cli_env(**(env or {})))
    if check:
        assert out.returncode == 0, out.stderr.decode()
    return json.loads(out.stdout) if out.stdout.strip() else {}


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    d = tmp_path_factory.mktemp("hist")
    genesis, keys = make_genesis(5, wallets=24)
    write_genesis(str(d / "genesis.json"), genesis)
    write_history(str(d / "h.jsonl"), genesis, keys, events=12_000, seed=5)
    return d, keys


@pytest.fixture
def data(history, tmp_path):
    d, _ = history
    data = str(tmp_path / "data")
    cli(data, "init", "--genesis", str(d / "genesis.json"))
    cli(data, "ingest", str(d / "h.jsonl"))
    cli(data, "status")  # folds the live projections
    return data


def test_reproject_all_gives_same_digests_and_answers(data, history):
    _, keys = history
    addr = keys.wallets[3].address
    before = cli(data, "account", addr), cli(data, "block", "17"), cli(data, "worker", keys.wallets[0].address)
    out = cli(data, "reproject")["projections"]
    assert [p["projection"] for p in out] == NAMES
    for p in out:
        assert p["identical"] and p["swapped"] and p["digest_before"] == p["digest_after"], p
        assert layout.read_pointer(os.path.join(data, "projections"), p["projection"], "live")["dir"] == p["dir"]
        assert p["previous"] in layout.build_dirs(os.path.join(data, "projections"), p["projection"])
    after = cli(data, "account", addr), cli(data, "block", "17"), cli(data, "worker", keys.wallets[0].address)
    strip = [{k: v for k, v in x.items() if k != "provenance"} for x in (*before, *after)]
    assert strip[:3] == strip[3:]
    # a second reproject drops the version kept by the first; --discard keeps none
    first_previous = out[1]["previous"]
    out2 = cli(data, "reproject", "balances", "--discard")["projections"][0]
    dirs = layout.build_dirs(os.path.join(data, "projections"), "balances")
    assert dirs == [out2["dir"]] and first_previous not in dirs


@pytest.mark.parametrize("split", ["whole", "parts"])
def test_reproject_killed_at_random_points_resumes_with_same_digests(data, split):
    """kill -9 of a parallel reproject (two processes) at random points, then resumed: the live
    (sequentially folded) digests. ``whole``: all projections, spread over the processes;
    ``parts``: balances alone, split into parts by log partition that are merged at the end."""
    pdir = os.path.join(data, "projections")
    live = {p: cli(data, "status")["provenance"]["digest"] for p in ["chainstate"]}
    # spread over two processes however small the log
    env = {"LEDGERLOG_FOLD_BATCH": "300", "LEDGERLOG_FOLD_WORKERS": "2", "LEDGERLOG_PARALLEL_MIN_RECORDS": "0",
           "LEDGERLOG_SPLIT_GAIN": "10"}  # and balances in parts, as on more cores
    names = NAMES if split == "whole" else ["balances"]

    def under_way(name: str) -> bool:
        """Its build has started (in parts: its parts have)."""
        ptr = layout.read_pointer(pdir, name, "building")
        return bool(ptr) and (split == "whole" or os.path.isdir(os.path.join(pdir, name, ptr["dir"], "parts")))
    def left_under_way() -> bool:
        """The last kill left a build to resume (in parts: with its parts)."""
        return any(map(under_way, names))
    rng = random.Random(int(os.environ.get("LEDGERLOG_CRASH_SEED", "11")))
    resumed_any = False
    for attempt in range(12):
        if attempt >= 3 and left_under_way():
            break
        proc = subprocess.Popen([LEDGERLOG, "--data-dir", data, "reproject", *names], env=cli_env(**env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20  # kill once a rebuild is under way, at a random point
        while time.monotonic() < deadline and proc.poll() is None and not all(map(under_way, names)):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # the loop ends on a kill that landed mid-rebuild, not on a run that finished before its kill
    assert left_under_way(), "no kill landed mid-rebuild (in parts: while balances was folded in parts)"
    building = [layout.read_pointer(pdir, n, "building") for n in names]
    out = cli(data, "reproject", *names, env=env)["projections"]
    assert [p["projection"] for p in out] == names
    for p, b in zip(out, building):
        assert p["identical"], p
        resumed_any |= p["resumed"]
        if b is not None:
            assert p["resumed"] and p["dir"] == b["dir"], (p, b)
        assert not os.path.isdir(os.path.join(pdir, p["projection"], p["dir"], "parts"))
    assert resumed_any, "a rebuild was left under way, yet nothing was resumed"
    assert cli(data, "status")["provenance"]["digest"] == live["chainstate"]


def _node(data: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([LEDGERLOG, "--data-dir", data, "run", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            url = json.load(open(os.path.join(data, "node.json")))["url"]
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return proc, url
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("node did not start")


def test_queries_keep_answering_during_a_reproject_on_a_running_node(data, history):
    _, keys = history
    proc, url = _node(data)
    answers, stop = [], threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(5000):
                if stop.is_set():
                    return
                answers.append(http.get(f"/v1/accounts/{keys.wallets[1].address}").status_code)

    t = threading.Thread(target=poll)
    t.start()
    try:
        out = cli(data, "reproject", env={"LEDGERLOG_FOLD_BATCH": "500"})["projections"]  # through the node
    finally:
        stop.set()
        t.join(timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert all(p["identical"] and p["swapped"] for p in out)
    assert len(answers) > 10 and set(answers) == {200}


def test_admin_reproject_needs_the_token(data):
    proc, url = _node(data)
    try:
        assert httpx.post(url + "/v1/admin/reproject", json={}).status_code == 401
        assert httpx.post(url + "/v1/admin/reproject", json={},
                          headers={"Authorization": "Bearer wrong"}).status_code == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_a_projection_built_by_older_code_is_rebuilt_not_served(data):
    pdir = os.path.join(data, "projections")
    ptr = layout.read_pointer(pdir, "energy", "live")
    layout.write_pointer(pdir, "energy", "live", ptr["dir"], 0)  # as if version 0 built it
    digest = json.loads(subprocess.run([LEDGERLOG, "--data-dir", data, "status"], capture_output=True,
                                       check=True).stdout)
    assert digest["height"] > 0
    cfg = Config(data_dir=data)
    from ledgerlog.ops.node.lifecycle import Node
    node = Node(cfg)
    try:
        live = layout.read_pointer(pdir, "energy", "live")
        assert live["version"] == energy.VERSION and live["dir"] != ptr["dir"]
        assert not node.runner.handles["energy"].stale
    finally:
        node.stop()
    # the CLI path without a node rebuilds too
    layout.write_pointer(pdir, "balances", "live", layout.read_pointer(pdir, "balances", "live")["dir"], 0)
    cli(data, "status")
    assert layout.read_pointer(pdir, "balances", "live")["version"] == balances.VERSION


def test_reproject_replaces_a_corrupt_projection_store_and_the_node_refuses_it_before(data):
    pdir = os.path.join(data, "projections")
    live = os.path.join(pdir, "payouts", layout.read_pointer(pdir, "payouts", "live")["dir"])
    sst = sorted(f for f in os.listdir(live) if f.endswith(".sst"))
    if not sst:  # make sure the state is in table files
        from ledgerlog.streams.store import ProjectionStore
        s = ProjectionStore(live)
        s.flush()
        s.close()
        sst = sorted(f for f in os.listdir(live) if f.endswith(".sst"))
    os.truncate(os.path.join(live, sst[0]), 10)
    run = subprocess.run([LEDGERLOG, "--data-dir", data, "run", "--port", "0"], capture_output=True, timeout=60)
    assert run.returncode == 1 and sst[0] in run.stderr.decode() and "reproject payouts" in run.stderr.decode()
    out = cli(data, "reproject", "payouts")["projections"][0]
    assert out["replaced_corrupt"] and out["swapped"]
    assert cli(data, "verify")["ok"]


def test_reprojects_back_to_back_retire_the_old_stores_cleanly(data, monkeypatch):
    """A second reproject of one projection within the first one's retire delay (1 s): the store the
    first swapped out is still open when the second removes its directory; it must be closed first."""
    from ledgerlog.engine.config import load_config
    from ledgerlog.ops.node.lifecycle import Node

    failures: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(repr(args.exc_value)))
    node = Node(load_config(data, {}))
    try:
        for _ in range(3):
            (out,) = node.reproject(["balances"], keep=True)
            assert out["identical"] and out["swapped"]
        time.sleep(1.5)  # the retire timers have run
        assert failures == []
        kept = sorted(os.listdir(os.path.join(data, "projections", "balances")))
        live = layout.read_pointer(os.path.join(data, "projections"), "balances", "live")["dir"]
        previous = layout.read_pointer(os.path.join(data, "projections"), "balances", "previous")["dir"]
        assert live in kept and previous in kept
        assert len([d for d in kept if d.startswith("v")]) == 2, kept  # live + previous; older ones removed
    finally:
        node.stop()


@contextlib.contextmanager
def balances_live(data: str):
    """A live runner of balances on the data dir, and a reproject into it (keep=False) as a node
    runs one: (live, rebuild(names, **options))."""
    from ledgerlog.engine.chain import open_chain
    from ledgerlog.streams.reproject import reproject
    from ledgerlog.streams.runner import Runner

    cfg = Config(data_dir=data)
    with open_chain(cfg, read_only=True) as chain:
        live = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, names=["balances"])
        try:
            yield live, lambda names, **kw: reproject(chain.log, chain.codec, chain.genesis, cfg.projections_dir,
                                                      live, names, keep=False, **kw)
        finally:
            live.close()


def test_a_swap_adding_a_projection_leaves_queries_iterating_the_projections_unharmed(data):
    """A reproject that adds a projection the live runner lacked (a user projection registered
    after the node started) swaps in a new mapping: a query thread iterating the projections
    meanwhile (the list, lags, failures) does not fail with 'dictionary changed size'."""
    with balances_live(data) as (live, rebuild):
        reading = iter(live.handles.items())  # a query, halfway through the projections
        next(reading)
        rebuild(["energy"])
        assert list(reading) == []  # the mapping it iterates did not change under it
        assert list(live.handles) == ["balances", "energy"]


def test_a_query_holding_the_swapped_out_store_reads_on_until_it_lets_go(data):
    """A slow query (a JSON-RPC batch, a long page) that took its view before a swap keeps reading
    the old store however long it takes; the old store closes, and its directory goes, only once
    no view of it is left."""
    import gc

    with balances_live(data) as (live, rebuild):
        old = live.handles["balances"].store
        view = old.view()
        rows = view.items(b"a/")
        first = next(rows)
        rebuild(["balances"])
        time.sleep(1.5)  # past the retirement's grace period
        assert view.get(first[0]) == first[1]
        assert len(list(rows)) > 0  # the page goes on
        assert os.path.isdir(old.path) and old.db is not None
        del view, rows
        gc.collect()
        deadline = time.monotonic() + 10
        while old.db is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert old.db is None
        while os.path.exists(old.path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(old.path)


@pytest.mark.parametrize("serving", [True, False])
def test_a_swapped_out_store_closes_at_once_unless_queries_may_read_it(data, serving):
    """A node's reproject keeps the old store open a grace period (a query may be about to read it);
    a CLI one, with no queries, closes and removes it before returning, so the command does not
    sit out that grace at exit."""
    from ledgerlog.streams.reproject import RETIRE_GRACE

    with balances_live(data) as (live, rebuild):
        old = live.handles["balances"].store
        t = time.monotonic()
        rebuild(["balances"], serving=serving)
        if serving and time.monotonic() - t < RETIRE_GRACE:  # still within the grace: open
            assert old.db is not None and os.path.isdir(old.path)
        if not serving:
            assert old.db is None and not os.path.exists(old.path)
            assert [t.name for t in threading.enumerate() if t.name.startswith("retire-")] == []


def test_a_read_only_look_at_a_store_built_by_older_code_answers_not_ready(data):
    """A query command whose stores another process holds reads them read-only and cannot rebuild
    them: it served a stale store's answers, labelled with the code's version."""
    from ledgerlog.engine.chain import open_chain
    from ledgerlog.engine.errors import NotReadyError
    from ledgerlog.ops.query.queries import Queries
    from ledgerlog.streams.runner import Runner
    pdir = os.path.join(data, "projections")
    layout.write_pointer(pdir, "energy", "live", layout.read_pointer(pdir, "energy", "live")["dir"], 0)
    cfg = Config(data_dir=data)
    with open_chain(cfg, read_only=True) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, read_only=True)
        try:
            q = Queries(runner, chain.genesis.chain_id)
            with pytest.raises(NotReadyError, match="version 0"):
                q.market()
            assert q.provenance("energy")["version"] == 0
            assert q.provenance("chainstate")["version"] == runner.handles["chainstate"].module.VERSION
            assert q.status()["height"] > 0  # the others still answer
        finally:
            runner.close()


def test_a_name_given_twice_is_rebuilt_once(data):
    """`reproject balances balances` opened the store twice and answered LOCKED, blaming another process."""
    out = cli(data, "reproject", "balances", "chainstate", "balances")["projections"]
    assert [p["projection"] for p in out] == ["balances", "chainstate"] and all(p["identical"] for p in out)
