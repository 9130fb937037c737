"""User projections end to end (docs/PROJECTIONS.md): the issue's tx_count example registered on a
chain equals an independent count of the input; kill -9 mid-fold, version bumps, a raising fold, a
non-deterministic fold, the HTTP and CLI reads and the notebook API."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json, wait_node_url
from nodetools import TX_COUNT, history

from ledgerlog.ops.devtools.histkeys import write_genesis

SLOW = "    __import__('time').sleep(0.06)  # a slow fold, so a kill lands mid-fold\n"


def module_text(*, version: int = 1, step: int = 1, slow: bool = False) -> str:
    """The docs' example (nodetools.TX_COUNT) at another version, counting by ``step``."""
    text = TX_COUNT.replace('"tx_count", 1,', f'"tx_count", {version},').replace("+ 1)", f"+ {step})")
    assert text != TX_COUNT or (version, step) == (1, 1)
    return text + (SLOW if slow else "")


def write_module(where: Path, name: str = "tx_count", *, version: int = 1, step: int = 1, slow: bool = False,
                 text: str | None = None) -> Path:
    path = where / f"{name}.py"
    path.write_text(text or module_text(version=version, step=step, slow=slow))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # an edit within the same tick still counts
    return path


def confirmed_per_sender(lines: list[bytes]) -> Counter[str]:
    """The independent count: every transaction of every block line of the input (all admitted)."""
    out: Counter[str] = Counter()
    for line in lines:
        doc = json.loads(line)
        if doc.get("type") == "block":
            out.update(tx["body"]["sender"] for tx in doc["transactions"])
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, list[bytes], list[bytes]]:
    """A data dir with the first 2/3 of a mixed history ingested (copied by each test), those
    lines, and the rest (for a running node)."""
    root = tmp_path_factory.mktemp("userproj")
    genesis, _keys, lines = history(root, events=1500)
    write_genesis(root / "genesis.json", genesis)
    ok_json(cli(root / "data", "init", "--genesis", str(root / "genesis.json")))
    cut = 2 * len(lines) // 3
    summary = ok_json(cli(root / "data", "ingest", "-", stdin=b"\n".join(lines[:cut]) + b"\n"))
    assert summary["rejected"] == 0 and summary["accepted"] == cut
    return root / "data", lines[:cut], lines[cut:]


@pytest.fixture
def data(template, tmp_path) -> Path:
    shutil.copytree(template[0], tmp_path / "data")
    return tmp_path / "data"


def run(data: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([LEDGERLOG, "--data-dir", str(data), *args], cwd=cwd, capture_output=True,
                          env=env or cli_env(), timeout=180, check=False)


def error(proc: subprocess.CompletedProcess[bytes]) -> dict:
    return json.loads(proc.stderr.decode().strip().splitlines()[-1])


def all_keys(data: Path, name: str, cwd: Path) -> dict[str, int]:
    out, start = {}, None
    while True:
        page = ok_json(run(data, "projections", "keys", name, "--limit", "3", *(["--start", start] if start else []),
                           cwd=cwd))
        out.update((i["key"], i["value"]) for i in page["items"])
        if page["next"] is None:
            return out
        start = page["next"]


def test_the_example_equals_an_independent_count(data, template, tmp_path) -> None:
    write_module(tmp_path)
    added = ok_json(run(data, "projections", "add", "tx_count", cwd=tmp_path))
    assert added["added"] == "tx_count" and added["determinism_check"]["events"] > 0
    built = ok_json(run(data, "reproject", "tx_count", cwd=tmp_path))["projections"]
    assert [b["projection"] for b in built] == ["tx_count"] and built[0]["swapped"]
    expected = confirmed_per_sender(template[1])
    assert sum(expected.values()) > 100
    assert all_keys(data, "tx_count", tmp_path) == dict(expected)  # three keys a page, paged to the end
    one = next(iter(expected))
    got = ok_json(run(data, "projections", "get", "tx_count", one, cwd=tmp_path))
    assert got["value"] == expected[one] and got["encoding"] == "json"
    assert got["provenance"]["projection"] == "tx_count" and got["provenance"]["lag"] == 0
    listed = {p["name"]: p for p in ok_json(run(data, "projections", "list", cwd=tmp_path))["projections"]}
    assert listed["tx_count"]["user"] and listed["tx_count"]["source"] == "tx_count"
    assert listed["tx_count"]["digest"] == built[0]["digest_after"] and not listed["balances"]["user"]
    # from another directory: the registry remembers where the module was found
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert ok_json(run(data, "projections", "get", "tx_count", one, cwd=elsewhere))["value"] == expected[one]
    verified = ok_json(run(data, "verify", cwd=elsewhere))
    assert verified["ok"] is True
    mine = verified["projections"]["projections"]["tx_count"]  # replayed and compared like the built-ins
    assert mine["compared"] and mine["replay_digest"] == mine["live_digest"]
    # exported as JSON lines, every key once, in key order; DuckDB reads it as a table
    exported = ok_json(run(data, "projections", "export", "tx_count", "--out", str(tmp_path / "tx.jsonl"),
                           cwd=elsewhere))
    rows = [json.loads(ln) for ln in (tmp_path / "tx.jsonl").read_bytes().splitlines()]
    assert exported["lines"] == len(rows) == len(expected) and [r["key"] for r in rows] == sorted(expected)
    assert {r["key"]: r["value"] for r in rows} == dict(expected)
    piped = run(data, "projections", "export", "tx_count", cwd=elsewhere)
    assert piped.returncode == 0 and piped.stdout == (tmp_path / "tx.jsonl").read_bytes()
    duckdb = pytest.importorskip("duckdb")
    total = duckdb.connect().execute(f"SELECT sum(value) FROM read_json('{tmp_path / 'tx.jsonl'}')").fetchone()
    assert total is not None and total[0] == sum(expected.values())
    # a reproject of everything spreads the user projection over processes like the built-ins
    again = ok_json(run(data, "reproject", cwd=elsewhere, env=cli_env(LEDGERLOG_FOLD_WORKERS="2")))["projections"]
    assert {r["projection"] for r in again} == {"chainstate", "balances", "energy", "payouts", "tx_count"}
    assert all(r["identical"] and r["swapped"] for r in again), again


def test_bad_modules_are_refused_with_a_code_and_change_nothing(data, tmp_path) -> None:
    cases = {
        "no_such_module": "BAD_PROJECTION",
        "builtin": ("NAME, VERSION, TOPICS = 'balances', 1, ('ledger.transactions',)\n"
                    "def fold(g, events, txn): pass\n", "BAD_PROJECTION"),
        "badtopic": ("NAME, VERSION, TOPICS = 'badtopic', 1, ('ledger.nope',)\ndef fold(g, e, t): pass\n",
                     "BAD_PROJECTION"),
        "badversion": ("NAME, VERSION, TOPICS = 'badversion', True, ('ledger.transactions',)\n"
                       "def fold(g, e, t): pass\n", "BAD_PROJECTION"),
        "raises": ("NAME, VERSION, TOPICS = 'raises', 1, ('ledger.transactions',)\n"
                   "def fold(g, events, txn):\n    raise RuntimeError('boom')\n", "BAD_PROJECTION"),
        "clock": ("import time\nNAME, VERSION, TOPICS = 'clock', 1, ('ledger.transactions',)\n"
                  "def fold(g, events, txn):\n    txn.put(b'last', str(time.perf_counter_ns()).encode())\n",
                  "NONDETERMINISTIC"),
        "counter": ("NAME, VERSION, TOPICS = 'counter', 1, ('ledger.transactions',)\nSEEN = [0]\n"
                    "def fold(g, events, txn):\n    SEEN[0] += 1\n    txn.put(b'calls', str(SEEN[0]).encode())\n",
                    "NONDETERMINISTIC"),
    }
    for name, case in cases.items():
        if isinstance(case, tuple):
            write_module(tmp_path, name, text=case[0])
            code = case[1]
        else:
            code = case
        proc = run(data, "projections", "add", name, cwd=tmp_path)
        assert proc.returncode in (1, 2), (name, proc.stdout, proc.stderr)
        err = error(proc)
        assert err["code"] == code, (name, err)
        assert "\n" not in err["error"] and "Traceback" not in proc.stderr.decode()
    assert not (data.parent / "user-projections.json").exists()
    names = [p["name"] for p in ok_json(run(data, "projections", "list", cwd=tmp_path))["projections"]]
    assert names == ["chainstate", "balances", "energy", "payouts"]
    assert error(run(data, "projections", "get", "nope", "x", cwd=tmp_path))["code"] == "UNKNOWN_PROJECTION"
    assert error(run(data, "reproject", "nope", cwd=tmp_path))["code"] == "USAGE"  # a wrong argument
    assert error(run(data, "projections", "remove", "balances", cwd=tmp_path))["code"] == "BAD_PROJECTION"


def test_a_reproject_killed_mid_fold_resumes_to_the_clean_digest(data, tmp_path) -> None:
    from ledgerlog.ops.notebook import replay

    write_module(tmp_path, slow=True)
    ok_json(run(data, "projections", "add", "tx_count", cwd=tmp_path))
    env = cli_env(LEDGERLOG_FOLD_BATCH="20")  # many small commits: the kill lands between and inside them
    proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "reproject", "tx_count"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    building = data / "projections" / "tx_count" / "building"
    deadline = time.monotonic() + 60
    while not building.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into the fold (its batches take 0.06 s each, the whole of it several seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the reproject ended before the kill: make the fold slower"
    resumed = ok_json(run(data, "reproject", "tx_count", cwd=tmp_path, env=env))["projections"][0]
    assert resumed["swapped"]
    with replay(str(tmp_path / "tx_count.py"), str(data), progress=False) as clean:
        assert resumed["digest_after"] == clean.digest


def test_a_version_bump_rebuilds_blue_green_and_a_disagreeing_rebuild_is_refused(data, template, tmp_path) -> None:
    write_module(tmp_path)
    ok_json(run(data, "projections", "add", "tx_count", cwd=tmp_path))
    first = ok_json(run(data, "reproject", "tx_count", cwd=tmp_path))["projections"][0]
    write_module(tmp_path, version=2, step=2)  # the code changed: it counts twice
    expected = {k: 2 * v for k, v in confirmed_per_sender(template[1]).items()}
    # any read (offline: a query folds first) rebuilds a projection whose code moved on, blue/green
    one = next(iter(expected))
    got = ok_json(run(data, "projections", "get", "tx_count", one, cwd=tmp_path))
    assert got["value"] == expected[one] and got["provenance"]["version"] == 2
    live = json.loads((data / "projections" / "tx_count" / "live").read_text())
    assert live["version"] == 2 and live["dir"] != "v1"
    assert all_keys(data, "tx_count", tmp_path) == expected
    # the same version folding to another state: the rebuild is not swapped in, exit 1
    write_module(tmp_path, version=2, step=3)
    proc = run(data, "reproject", "tx_count", cwd=tmp_path)
    assert proc.returncode == 1 and error(proc)["code"] == "NONDETERMINISTIC", proc.stderr
    assert json.loads(proc.stdout)["projections"][0]["swapped"] is False
    assert json.loads((data / "projections" / "tx_count" / "live").read_text()) == live
    assert first["digest_after"] != live  # (the first build's digest is of version 1)


def test_the_node_folds_serves_and_isolates_user_projections(data, template, tmp_path) -> None:
    write_module(tmp_path)
    tip = max(json.loads(ln)["header"]["height"] for ln in template[1] if b'"type":"block"' in ln)
    raising = ("NAME, VERSION, TOPICS = 'fragile', 1, ('ledger.transactions',)\n"
               "def fold(g, events, txn):\n"
               "    for _t, e in events:\n"
               f"        if e['height'] > {tip}:\n"
               "            raise ValueError('too high for me')\n"
               "        txn.put(e['txid'].encode(), b'1')\n")
    write_module(tmp_path, "fragile", text=raising)
    ok_json(run(data, "projections", "add", "tx_count", cwd=tmp_path))
    ok_json(run(data, "projections", "add", "fragile", cwd=tmp_path))
    env = cli_env(LEDGERLOG_LOG_SYNC="0")
    with open(tmp_path / "node.log", "wb") as log:
        node = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "run", "--port", "0"], cwd=tmp_path / "..",
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = wait_node_url(str(data), node, limit=60)
        r = httpx.post(url + "/v1/ingest", content=b"\n".join(template[2]) + b"\n",
                       headers={"Content-Type": "application/x-ndjson"}, timeout=120)
        assert r.status_code == 200 and r.json()["accepted"] == len(template[2]), r.text[:500]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = httpx.get(url + "/v1/status", timeout=10).json()
            if status["lag"].get("tx_count") == 0 and "fragile" in status["failed_projections"]:
                break
            time.sleep(0.2)
        failed = status["failed_projections"]["fragile"]
        assert failed["topic"] == "ledger.transactions" and failed["offset"] is not None
        assert "too high for me" in failed["error"]
        assert status["lag"]["tx_count"] == 0 and set(status["failed_projections"]) == {"fragile"}
        expected = confirmed_per_sender(template[1] + template[2])  # the node kept it current
        one = next(iter(expected))
        r = httpx.get(f"{url}/v1/projections/tx_count/keys/{one}", timeout=10)
        assert r.status_code == 200 and r.json()["value"] == expected[one]
        r = httpx.get(f"{url}/v1/projections/tx_count/keys/hex:{one.encode().hex()}", timeout=10)
        assert r.json()["key"] == one and r.json()["value"] == expected[one]
        page = httpx.get(f"{url}/v1/projections/tx_count", params={"limit": 1000}, timeout=10).json()
        assert {i["key"]: i["value"] for i in page["items"]} == dict(expected) and page["next"] is None
        assert page["provenance"]["digest"]
        for path, status_code, code in [
                ("/v1/projections/nope/keys/x", 404, "UNKNOWN_PROJECTION"),
                ("/v1/projections/tx_count/keys/nokey", 404, "NOT_FOUND"),
                ("/v1/projections/tx_count/keys/hex:zz", 400, "BAD_REQUEST"),
                ("/v1/projections/tx_count/keys/hex:00706f73", 404, "NOT_FOUND"),  # the store's own keys
                ("/v1/projections/tx_count?limit=0", 400, None),
                ("/v1/projections/tx_count?limit=1001", 400, None),
                ("/v1/projections/fragile/keys/x", 503, "PROJECTION_FAILED")]:
            r = httpx.get(url + path, timeout=10)
            assert r.status_code == status_code, (path, r.text)
            if code:
                assert r.json()["code"] == code, (path, r.text)
        internal = httpx.get(f"{url}/v1/projections/tx_count", params={"prefix": "hex:00"}, timeout=10).json()
        assert internal["items"] == []
        # the CLI goes through the node; the built-ins went on
        got = ok_json(run(data, "projections", "get", "tx_count", one, cwd=tmp_path))
        assert got["value"] == expected[one]
        assert ok_json(run(data, "account", one, cwd=tmp_path))["address"] == one
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert 'projection="tx_count"' in metrics
        listed = {p["name"]: p for p in httpx.get(url + "/v1/projections", timeout=10).json()["projections"]}
        assert listed["fragile"]["failed"]["projection"] == "fragile" and listed["tx_count"]["lag"] == 0
        assert error(run(data, "projections", "remove", "tx_count", cwd=tmp_path))["code"] == "NODE_RUNNING"
    finally:
        node.terminate()
        node.wait(timeout=30)
    removed = ok_json(run(data, "projections", "remove", "fragile", cwd=tmp_path))
    assert removed == {"removed": "fragile"} and not (data / "projections" / "fragile").exists()


def test_the_notebook_api_folds_up_to_a_height(data, template, tmp_path, capsys) -> None:
    from ledgerlog.ops.notebook import replay

    write_module(tmp_path)
    lines = template[1]
    blocks = [json.loads(ln) for ln in lines if b'"type":"block"' in ln]
    height = blocks[len(blocks) // 2]["header"]["height"]
    expected: Counter[str] = Counter()
    for b in blocks:
        if b["header"]["height"] <= height:
            expected.update(tx["body"]["sender"] for tx in b["transactions"])
    with replay(str(tmp_path / "tx_count.py"), str(data), height=height, progress=False) as view:
        assert view.to_dict() == {k: v for k, v in expected.items()}
        assert view.height == height and view.version == 1 and view.events == sum(expected.values())
        key = next(iter(expected))
        assert view.get(key) == str(expected[key]).encode() and view.get(b"\x00pos") is None
        scratch = view.path
    assert not os.path.exists(scratch)  # its own scratch dir is removed on close
    with replay("balances", str(data)) as whole:  # a built-in, by name, to the end, with its bar
        assert "replay balances" in capsys.readouterr().err
        assert whole.digest == ok_json(run(data, "projections", "list", cwd=tmp_path))["projections"][1]["digest"]


def test_a_snapshot_keeps_the_user_projections_and_a_restore_serves_them(data, template, tmp_path) -> None:
    """A snapshot holds the user projections' stores and their registration: the restored data
    dir serves them at once (same digest), without `projections add` again or a rebuild."""
    write_module(tmp_path)
    ok_json(run(data, "projections", "add", "tx_count", cwd=tmp_path))
    built = ok_json(run(data, "reproject", "tx_count", cwd=tmp_path))["projections"][0]
    snap = ok_json(run(data, "snapshot", "create", cwd=tmp_path))
    assert "tx_count" in snap["projections"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    restored = tmp_path / "restored"
    ok_json(run(restored, "snapshot", "restore", snap["path"], cwd=elsewhere))
    listed = {p["name"]: p for p in ok_json(run(restored, "projections", "list", cwd=elsewhere))["projections"]}
    assert listed["tx_count"]["user"] and listed["tx_count"]["digest"] == built["digest_after"]
    one = next(iter(confirmed_per_sender(template[1])))
    assert ok_json(run(restored, "projections", "get", "tx_count", one, cwd=elsewhere))["value"] == \
        ok_json(run(data, "projections", "get", "tx_count", one, cwd=elsewhere))["value"]


@pytest.mark.parametrize("args", [["bogus"], ["balances", "--prefix", "hex:zz"]])
def test_a_failed_projections_export_leaves_the_out_file_as_it_was(data, tmp_path, args) -> None:
    """The file was opened (emptied) before the first page was read: an unknown name or a bad
    prefix left a user's existing file at 0 bytes."""
    out = tmp_path / "keep.jsonl"
    out.write_bytes(b"precious\n")
    proc = run(data, "projections", "export", *args, "--out", str(out), cwd=tmp_path)
    assert proc.returncode != 0 and out.read_bytes() == b"precious\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


def test_verify_of_a_pruned_log_still_checks_the_user_projections_stores(data, tmp_path) -> None:
    """On a pruned log a user projection is not replayed (the anchor holds the built-ins only),
    and verify said nothing of it, even of a store whose content was edited under its recorded
    digest: that is now a RECORDED_DIGEST_MISMATCH, and the report says what was not replayed."""
    from ledgerlog.engine import storekeys as K
    from ledgerlog.engine.rocks import open_store

    write_module(tmp_path)
    ok_json(run(data, "projections", "add", "tx_count", cwd=tmp_path))
    ok_json(run(data, "reproject", "tx_count", cwd=tmp_path))
    height = ok_json(run(data, "status", cwd=tmp_path))["height"]
    ok_json(run(data, "prune", "--before-height", str(height // 2), cwd=tmp_path))
    live = json.loads((data / "projections" / "tx_count" / "live").read_text())["dir"]
    db = open_store(str(data / "projections" / "tx_count" / live), K.PROJECTION_FORMAT)
    key = next(k for k, _v in db.items() if not k.startswith(b"\x00"))
    db.put(key, b"999999")
    db.close()
    proc = run(data, "verify", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)["projections"]
    assert [(p["code"], p["where"]) for p in report["problems"]] == [("RECORDED_DIGEST_MISMATCH", "tx_count live store")]
    assert any("tx_count" in n and "not replayed" in n for n in report["notes"]), report["notes"]


def test_after_a_prune_a_plain_reproject_rebuilds_the_built_ins_and_names_what_it_cannot(data, tmp_path) -> None:
    """A user projection registered before a prune cannot be rebuilt after it (the anchor holds
    the built-ins only); a plain `reproject` (all) then failed PRUNED and rebuilt nothing. It
    rebuilds the built-ins and names the user projection; the user projection keeps folding."""
    write_module(tmp_path)
    ok_json(run(data, "projections", "add", "tx_count", cwd=tmp_path))
    ok_json(run(data, "reproject", "tx_count", cwd=tmp_path))
    height = ok_json(run(data, "status", cwd=tmp_path))["height"]
    ok_json(run(data, "prune", "--before-height", str(height // 2), cwd=tmp_path))
    out = ok_json(run(data, "reproject", cwd=tmp_path))
    assert [p["projection"] for p in out["projections"]] == ["chainstate", "balances", "energy", "payouts"]
    assert all(p["identical"] for p in out["projections"])
    [skipped] = out["not_rebuilt"]
    assert skipped["projection"] == "tx_count" and "pruned" in skipped["why"]
    proc = run(data, "reproject", "tx_count", cwd=tmp_path)  # named: refused, saying why
    assert proc.returncode == 1 and error(proc)["code"] == "PRUNED"
    assert ok_json(run(data, "projections", "list", cwd=tmp_path))  # and it still answers


class DictTxn(dict):
    """The txn a user fold is handed, as a dict (for calling a fold by hand)."""

    def put(self, key: bytes, value: bytes) -> None:
        self[key] = value


def test_a_module_edited_within_the_second_it_was_compiled_is_read_again(tmp_path, monkeypatch) -> None:
    """Python validates a cached .pyc by the source's mtime in whole seconds and its size: a module
    edited within the same second to text of the same length (VERSION 1 -> 2, "+ 1" -> "+ 2")
    ran the old code, stored under the new version (seen as a flaky version-bump test)."""
    import sys

    from ledgerlog.streams import catalog

    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as in a CLI process: .pyc files are written
    pdir = tmp_path / "data" / "projections"
    pdir.mkdir(parents=True)
    path = write_module(tmp_path, version=1, step=1)
    t = os.stat(path).st_mtime_ns
    entry = {"file": str(path)}
    catalog.write_registered(str(pdir), {"tx_count": entry})
    first = catalog.module(str(pdir), "tx_count")
    assert first.VERSION == 1
    path.write_text(module_text(version=2, step=2))  # same length, same second
    os.utime(path, ns=(t + 1000, t + 1000))
    again = catalog.module(str(pdir), "tx_count")
    assert again.VERSION == 2
    txn = DictTxn()
    again.fold(None, [("ledger.transactions", {"body": {"sender": "ab" * 20}})], txn)
    assert list(txn.values()) == [b"2"], txn  # counted by the new step


def test_modules_by_name_load_as_import_would_have_them(tmp_path, monkeypatch) -> None:
    """Compiling sources broke what importlib did: a module shipped as a .pyc alone no longer
    loaded, and a notebook's own `import mod` was replaced in sys.modules (its reload failed)."""
    import importlib
    import py_compile
    import sys
    import textwrap

    from ledgerlog.streams import catalog

    body = textwrap.dedent("""
        NAME = "{name}"
        VERSION = 1
        TOPICS = ("ledger.transactions",)
        def fold(genesis, events, txn):
            pass
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "src_only.py").write_text(body.format(name="pyconly"))
    py_compile.compile(str(tmp_path / "src_only.py"), cfile=str(tmp_path / "pyconly.pyc"))
    (tmp_path / "src_only.py").unlink()
    assert catalog.load("pyconly", str(tmp_path))[0].NAME == "pyconly"  # sourceless: its loader
    (tmp_path / "nbproj.py").write_text(body.format(name="nbproj"))
    mine = importlib.import_module("nbproj")
    catalog.load("nbproj", str(tmp_path))
    assert sys.modules["nbproj"] is mine
    importlib.reload(mine)
    for name in ("pyconly", "nbproj"):
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize("edit", ["version_2", "fails_halfway"])
def test_the_projection_in_use_keeps_its_code_when_its_module_is_loaded_again(tmp_path, monkeypatch, edit) -> None:
    """Re-running the new source in the module object in use gave the running v1 fold the new
    globals: a v1 store got v2's writes (or a half-run broken edit's)."""
    import sys
    import textwrap

    from ledgerlog.streams import catalog

    name = f"glob_{edit}"  # (a name of its own: the catalog adds each module's directory to sys.path)
    text = textwrap.dedent('''
        NAME = "{name}"
        VERSION = {v}
        TOPICS = ("ledger.transactions",)
        STEP = b"{v}"
        def fold(genesis, events, txn):
            for _t, _e in events:
                txn.put(b"k", STEP)
    ''')
    pdir, src = tmp_path / "data" / "projections", tmp_path / "src"
    pdir.mkdir(parents=True)
    src.mkdir()
    (src / f"{name}.py").write_text(text.format(name=name, v=1))
    catalog.write_registered(str(pdir), {name: {"module": name, "path": str(src)}})
    in_use = catalog.module(str(pdir), name)
    new = (text.format(name=name, v=2) if edit == "version_2"
           else text.format(name=name, v=1) + "STEP = b'half'\nraise RuntimeError('typo')\n")
    (src / f"{name}.py").write_text(new)
    os.utime(src / f"{name}.py", ns=(time.time_ns() + 10**9,) * 2)
    catalog.modules(str(pdir))  # what any later lookup (a query, a reproject) does
    txn = DictTxn()
    in_use.fold(None, [("ledger.transactions", {})], txn)
    assert txn == {b"k": b"1"}
    monkeypatch.delitem(sys.modules, name, raising=False)
