"""What a user meets when something else is in the way: a port in use, a stale node.json (its PID
now another process's, or its URL another node's), a reproject already running. Each is one line
of JSON on stderr with a code, never a traceback, and a stale node.json never stops a command."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json, terminate, wait_node_url

from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history

TIMEOUT = 120


def one_line_error(proc: subprocess.CompletedProcess, exit_code: int, code: str) -> dict[str, Any]:
    """The single JSON line a failed command printed on stderr, checked for its code."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == exit_code, (proc.returncode, proc.stdout[-1000:], err[-3000:])
    assert "Traceback" not in err and err.count("\n") == 1, err[-3000:]
    doc = json.loads(err)
    assert doc["code"] == code and doc["error"], doc
    return doc


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("hist")
    genesis, keys = make_genesis(7, wallets=12)
    write_genesis(str(d / "genesis.json"), genesis)
    write_history(str(d / "h.jsonl"), genesis, keys, events=1500, seed=7)
    return {"genesis": str(d / "genesis.json"), "history": str(d / "h.jsonl")}


@pytest.fixture
def data(tmp_path, history) -> str:
    """A data dir holding the generated history, projections folded."""
    data = str(tmp_path / "data")
    ok_json(cli(data, "init", "--genesis", history["genesis"]))
    ok_json(cli(data, "ingest", history["history"]))
    return data


class Node:
    """``ledgerlog run --port 0`` on a data dir, stopped by its PID."""

    def __init__(self, data: str) -> None:
        self.data = data
        self.proc = subprocess.Popen([LEDGERLOG, "--data-dir", data, "run", "--port", "0"], env=cli_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            self.url = wait_node_url(data, self.proc, limit=60)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        terminate(self.proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a port in use --------------------------------------------------------------------------------


def test_run_on_a_port_in_use_prints_one_line_and_exits_2(tmp_path):
    data = str(tmp_path / "d")
    ok_json(cli(data, "init"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = cli(data, "run", "--port", str(port))
    doc = one_line_error(res, 2, "PORT_IN_USE")
    assert str(port) in doc["error"] and "--port" in doc["error"]
    assert not os.path.exists(os.path.join(data, "node.json"))


# -- a stale node.json ----------------------------------------------------------------------------


def _write_node_json(data: str, pid: int, url: str, instance: str | None = "ab" * 16) -> str:
    """node.json as a node writes it (an older node wrote no ``instance``: pass None)."""
    path = os.path.join(data, "node.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"pid": pid, "url": url, **({"instance": instance} if instance else {})}, f)
    return path


def test_node_json_naming_a_live_unrelated_process_and_a_dead_url_is_ignored(data, history):
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        path = _write_node_json(data, sleeper.pid, f"http://127.0.0.1:{_free_port()}")
        st = ok_json(cli(data, "status"))
        assert st["height"] > 0
        assert not os.path.exists(path)  # nothing listens there: no node of this data dir does
        _write_node_json(data, sleeper.pid, f"http://127.0.0.1:{_free_port()}")
        again = ok_json(cli(data, "ingest", history["history"]))
        assert again["accepted"] == 0 and again["duplicates"] > 0
        _write_node_json(data, sleeper.pid, f"http://127.0.0.1:{_free_port()}")
        out = ok_json(cli(data, "reproject", "balances"))
        assert out["projections"][0]["identical"] is True
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_node_json_of_a_dead_pid_is_removed(data):
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    path = _write_node_json(data, gone.pid, f"http://127.0.0.1:{_free_port()}")
    assert ok_json(cli(data, "status"))["height"] > 0
    assert not os.path.exists(path)


def test_node_json_naming_another_nodes_url_is_not_believed(data, tmp_path):
    other = str(tmp_path / "other")
    ok_json(cli(other, "init"))  # a different (empty) chain
    node = Node(other)
    try:
        theirs = json.load(open(os.path.join(other, "node.json")))
        assert theirs.get("instance"), theirs  # the node says who it is ...
        assert httpx.get(node.url + "/v1/status", timeout=10).json()["instance"] == theirs["instance"]
        # ... so a node.json left on this data dir with the other node's PID and URL fools no one
        path = _write_node_json(data, node.proc.pid, node.url, instance="0" * 32)
        st = ok_json(cli(data, "status"))
        assert st["height"] > 0 and st["tip_hash"] != httpx.get(node.url + "/v1/status").json()["tip_hash"]
        assert not os.path.exists(path)
        # an old node.json without an instance is not believed either
        _write_node_json(data, node.proc.pid, node.url, instance=None)
        assert ok_json(cli(data, "status"))["height"] > 0
    finally:
        node.stop()


def test_the_cli_still_goes_through_the_real_node(data):
    node = Node(data)
    try:
        st = ok_json(cli(data, "status"))
        assert st["height"] > 0 and os.path.exists(os.path.join(data, "node.json"))
        out = ok_json(cli(data, "reproject", "energy"))  # through the admin API (the node holds the locks)
        assert out["projections"][0]["identical"] is True
    finally:
        node.stop()


# -- a reproject already running ------------------------------------------------------------------


def test_a_second_reproject_is_refused_with_a_code(data):
    from ledgerlog.streams.reproject import reproject_lock

    pdir = os.path.join(data, "projections")
    with reproject_lock(pdir):  # as a reproject in another process holds it
        one_line_error(cli(data, "reproject"), 1, "REPROJECT_RUNNING")
    ok_json(cli(data, "reproject", "payouts"))  # and once it is done, one runs


def test_admin_reproject_while_one_runs_is_409_and_the_cli_says_so(data):
    from ledgerlog.streams.reproject import reproject_lock

    node = Node(data)
    token = _admin_token(data)
    try:
        with reproject_lock(os.path.join(data, "projections")):
            r = httpx.post(node.url + "/v1/admin/reproject", json={}, timeout=60,
                           headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 409 and r.json()["code"] == "REPROJECT_RUNNING", r.text
            assert "/" not in r.json()["message"].replace("/v1/", "")  # no filesystem path in the answer
            one_line_error(cli(data, "reproject"), 1, "REPROJECT_RUNNING")
        # two at once through the node: each one runs or is refused with the code, nothing else
        answers: list[httpx.Response] = []

        def post() -> None:
            answers.append(httpx.post(node.url + "/v1/admin/reproject", json={}, timeout=120,
                                      headers={"Authorization": f"Bearer {token}"}))
        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=150)
        assert len(answers) == 2
        for a in answers:
            assert a.status_code == 200 or (a.status_code == 409 and a.json()["code"] == "REPROJECT_RUNNING"), a.text
        assert any(a.status_code == 200 for a in answers)
    finally:
        node.stop()


def _admin_token(data: str) -> str:
    import tomllib
    with open(os.path.join(data, "config.toml"), "rb") as f:
        return tomllib.load(f)["admin"]["token"]


def test_reproject_lock_is_exclusive_across_threads_and_reentrant_in_one(tmp_path):
    from ledgerlog.engine.errors import ReprojectRunningError
    from ledgerlog.streams.reproject import reproject_lock

    pdir = str(tmp_path / "projections")
    os.makedirs(pdir)
    refused: list[BaseException] = []

    def other() -> None:
        try:
            with reproject_lock(pdir):
                pass
        except ReprojectRunningError as exc:
            refused.append(exc)

    with reproject_lock(pdir):
        with reproject_lock(pdir):  # the holder may enter again (the CLI locks, then reprojects)
            t = threading.Thread(target=other)
            t.start()
            t.join(timeout=10)
    assert len(refused) == 1 and getattr(refused[0], "code", None) == "REPROJECT_RUNNING"
    t = threading.Thread(target=other)
    t.start()
    t.join(timeout=10)
    assert len(refused) == 1  # released: the next one gets it


@pytest.mark.parametrize("args", [["tx", b"\xff"], ["block", b"\xff"], ["provider", b"\xff"],
                                  ["providers", "--after", b"\xff", "--limit", "1"]])
def test_an_argument_that_is_not_utf8_is_a_usage_error_not_an_internal_one(data, args):
    """The shell hands Python bytes that are not UTF-8 as lone surrogates, which no key can be
    made of: one line, USAGE, exit 2 (it was INTERNAL)."""
    proc = subprocess.run([LEDGERLOG, "--data-dir", data, *args], capture_output=True, env=cli_env(),
                          timeout=TIMEOUT, check=False)
    assert "UTF-8" in one_line_error(proc, 2, "USAGE")["error"]


@pytest.mark.parametrize("address", ["{a}\n", "{a}\n\n"])
def test_an_address_with_a_trailing_newline_is_refused_not_answered_with_zeros(data, address):
    """``$`` matched before a final newline: the address plus one gave 200 with a zero balance."""
    from ledgerlog.engine.genesis import Genesis

    a = sorted(Genesis.load(os.path.join(data, "genesis.json")).allocations)[0]
    for cmd in ("account", "worker"):
        proc = subprocess.run([LEDGERLOG, "--data-dir", data, cmd, address.format(a=a)], capture_output=True,
                              env=cli_env(), timeout=TIMEOUT, check=False)
        one_line_error(proc, 2, "BAD_REQUEST")


def test_a_block_height_with_leading_zeros_is_that_height(data):
    assert ok_json(cli(data, "block", "0" * 25 + "1"))["height"] == 1


@pytest.mark.parametrize("args,code", [
    (["init", "--partitions", "99999999999999999999"], "CONFIG"),
    (["init", "--partitions", "3000000000"], "CONFIG"),
    (["run", "--port", "70000"], "USAGE"),
    (["run", "--port", "-1"], "USAGE"),
    (["stream-worker", "--worker-dir", "w", "--port", "70000"], "USAGE"),
    (["stream-worker", "--worker-dir", "w", "--batch", "0"], "USAGE"),
    (["stream-worker", "--worker-dir", "w", "--session-timeout", "nan"], "USAGE"),
    (["stream-worker", "--worker-dir", "w", "--shard", "balances", "--partitions", "99999999999999999999"], "USAGE"),
])
def test_out_of_range_arguments_are_refused_before_anything_is_written(tmp_path, args, code):
    """Each was INTERNAL (an OverflowError, a struct.error, an AssertionError), hung (a batch of
    0 folds nothing, 3e9 partitions are created one by one), and left files behind."""
    data = tmp_path / "data"
    proc = subprocess.run([LEDGERLOG, "--data-dir", str(data), *args], capture_output=True, env=cli_env(),
                          timeout=TIMEOUT, check=False, cwd=tmp_path)
    one_line_error(proc, 2, code)
    assert not data.exists() and not (tmp_path / "w").exists()


def test_env_port_out_of_range_is_a_config_error(tmp_path):
    proc = subprocess.run([LEDGERLOG, "--data-dir", str(tmp_path / "d"), "run"], capture_output=True,
                          env=cli_env(LEDGERLOG_HTTP_PORT="70000"), timeout=TIMEOUT, check=False)
    assert "65535" in one_line_error(proc, 2, "CONFIG")["error"]


@pytest.mark.parametrize("args", [
    ["sign-tx", "--to", "a" * 40, "--amount", "99999999999999999999999", "--nonce", "1", "--fee", "1",
     "--chain-id", "c"],
    ["sign", "transaction", "--body", '{"amount": 99999999999999999999999, "recipient": "%s", "fee": 1, '
     '"nonce": 1, "memo": "", "chain_id": "c", "timestamp": 1}' % ("b" * 40)],
    ["sign", "transaction", "--body", "[1]"],
    ["sign", "transaction", "--body", "null"],
])
def test_signing_odd_bodies_is_a_usage_error(tmp_path, args):
    """An integer past 64 bits (OverflowError in the encoder) or a body that is not an object
    (AttributeError) was INTERNAL."""
    key = tmp_path / "k.key"
    ok_json(cli(tmp_path / "d", "keys", "new", "--out", str(key)))
    proc = subprocess.run([LEDGERLOG, "--data-dir", str(tmp_path / "d"), *args, "--key", str(key)],
                          capture_output=True, env=cli_env(), timeout=TIMEOUT, check=False)
    one_line_error(proc, 2, "USAGE")


@pytest.mark.parametrize("command", [["reproject"], ["reproject", "balances"]])
def test_reproject_on_a_directory_that_is_not_a_chain_writes_nothing(tmp_path, command):
    """It said CONFIG but had made projections/.reproject.lock (and the directory) first."""
    not_chain = tmp_path / "nc"
    not_chain.mkdir()
    proc = subprocess.run([LEDGERLOG, "--data-dir", str(not_chain), *command], capture_output=True, env=cli_env(),
                          timeout=TIMEOUT, check=False)
    assert proc.returncode != 0 and json.loads(proc.stderr)["code"] in ("CONFIG", "NOT_INITIALISED", "USAGE"), proc.stderr
    assert list(not_chain.iterdir()) == []


def test_export_to_a_dash_is_refused_not_a_file_named_dash(tmp_path):
    proc = subprocess.run([LEDGERLOG, "--data-dir", str(tmp_path / "d"), "export", "--topic", "ledger.blocks",
                           "--format", "jsonl", "--out", "-"], capture_output=True, env=cli_env(), timeout=TIMEOUT,
                          check=False, cwd=tmp_path)
    assert "tail" in one_line_error(proc, 2, "USAGE")["error"]
    assert not (tmp_path / "-").exists()
