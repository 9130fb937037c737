"""`ledgerlog verify` and the start-up store guard (ops/verify.py) on a generated history:
a clean data dir passes; storage corruption (a flipped byte in a log or projection table file,
a deleted table file, a truncated one) is found and named by file, and ``check_stores`` refuses
it with CorruptStoreError; a tampered but decodable log record fails its signature and id; a
tampered projection value fails the digest comparison."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from clitools import LEDGERLOG, REPO, cli_env
from conftest import folded_digests

from ledgerlog.engine import storekeys as K
from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import CorruptStoreError
from ledgerlog.engine.rocks import open_store
from ledgerlog.ops.devtools.histgen import generate, make_genesis
from ledgerlog.ops.verify.checks import check_stores, verify
from ledgerlog.streams.runner import Runner
from ledgerlog.streams.store import ProjectionStore

SEED = 23
EVENTS = 1000


def _cfg(data: Path) -> Config:
    return Config(data_dir=str(data), sync=False, verify_workers=1)


def _fold_and_flush(cfg: Config) -> None:
    """Fold every projection to the end of the log, then flush every store so the data sits in
    table (.sst) files, and close everything."""
    with open_chain(cfg) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            for h in runner.handles.values():
                h.store.flush()
        finally:
            runner.close()
        chain.log.raw().flush()


@functools.cache
def _history() -> tuple[dict[str, Any], list[bytes]]:
    genesis, keys = make_genesis(SEED, wallets=8)
    return genesis, list(generate(genesis, keys, events=EVENTS, seed=SEED))


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    """A data dir holding a generated history, its projections folded, all stores flushed."""
    data = tmp_path_factory.mktemp("verify") / "golden"
    genesis, lines = _history()
    cfg = _cfg(data)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        summary = chain.admitter.admit(lines)
        assert summary.rejected == 0 and summary.accepted > 100, summary.to_dict()
    _fold_and_flush(cfg)
    return data


@pytest.fixture
def data(golden, tmp_path) -> Path:
    """A private copy of the golden data dir, to corrupt."""
    dst = tmp_path / "data"
    shutil.copytree(golden, dst)
    return dst


def _store_dir(data: Path, store: str) -> Path:
    if store == "log":
        return data / "log"
    ptr = json.loads((data / "projections" / store / "live").read_text())
    return data / "projections" / store / ptr["dir"]


def _largest_sst(store_dir: Path) -> Path:
    ssts = sorted(store_dir.glob("*.sst"), key=lambda p: p.stat().st_size)
    assert ssts, f"no table files in {store_dir}: the stores were not flushed"
    return ssts[-1]


def _codes(section: dict[str, Any]) -> set[str]:
    return {p["code"] for p in section["problems"]}


# -- clean ----------------------------------------------------------------------------------------
def test_clean_data_dir_verifies(data) -> None:
    proc = subprocess.run([LEDGERLOG, "--data-dir", str(data), "verify"], capture_output=True,
                          timeout=120, env=cli_env())
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    for name in ("storage", "log", "supply", "projections"):
        sec = report[name]
        assert sec["ok"] and sec["problems"] == [] and sec["problem_count"] == 0, (name, sec)
    assert report["storage"]["checked"] == 5  # the log and four live projections
    assert report["log"]["checked"] > 500 and report["log"]["signatures_verified"] > 500
    assert report["log"]["height"] == report["height"] > 10
    assert report["supply"]["total"] == report["supply"]["expected"] == report["supply"]["write_side_total"]
    projs = report["projections"]["projections"]
    assert all(p["compared"] and p["live_content_digest"] == p["replay_digest"] == p["live_digest"]
               for p in projs.values()), projs
    for mode in ("quick", "full", "auto"):
        assert set(check_stores(_cfg(data), mode)["stores"]) == {"log", "chainstate", "balances", "energy", "payouts"}


def _cli(data: Path, *args: str) -> tuple[int, str]:
    """The CLI in-process (cheaper than a process per call): (exit code, stdout)."""
    from typer.testing import CliRunner

    from ledgerlog.ops.cli import _register_commands, app
    _register_commands()
    result = CliRunner().invoke(app, ["--data-dir", str(data), *args], env={"LEDGERLOG_DATA_DIR": str(data)})
    return result.exit_code, result.stdout


def test_usage_error_exits_2(data) -> None:
    assert _cli(data, "verify", "--no-such-flag")[0] == 2


# -- storage corruption ---------------------------------------------------------------------------
def _flip(path: Path, at: float = 0.2) -> None:
    """Flip bits of one byte among the data blocks (they come first in a table file; the bloom
    filter block near its end is neither read nor checked by RocksDB reads, see ops/verify.py)."""
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0x5A
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("store,damage", [
    ("log", "flip"), ("balances", "flip"), ("log", "delete"), ("chainstate", "delete"),
    ("log", "truncate"), ("payouts", "truncate"),
])
def test_storage_corruption_is_found_and_named(data, store, damage) -> None:
    sst = _largest_sst(_store_dir(data, store))
    {"flip": _flip, "delete": os.unlink, "truncate": _truncate}[damage](sst)
    cfg = _cfg(data)

    report = verify(cfg)
    assert report["ok"] is False
    storage = report["storage"]
    assert not storage["ok"]
    named = [p for p in storage["problems"] if p["store"] == store]
    assert named and all(p["file"] == str(sst) for p in named), storage["problems"]
    want = {"flip": "CORRUPT_FILE", "delete": "MISSING_FILE", "truncate": "TRUNCATED_FILE"}[damage]
    assert named[0]["code"] == want, named
    assert ("snapshot restore" if store == "log" else f"reproject {store}") in named[0]["remedy"]
    assert storage["stores"][store]["ok"] is False
    assert all(i["ok"] for n, i in storage["stores"].items() if n != store)

    modes = ("full", "auto") if damage == "flip" else ("quick", "full", "auto")
    for mode in modes:  # a flipped data byte is found by reading it; quick sees missing/short files
        with pytest.raises(CorruptStoreError) as caught:
            check_stores(cfg, mode)
        message = str(caught.value)
        assert str(sst) in message and "What to do" in message, message
        assert caught.value.problems[0]["file"] == str(sst)  # type: ignore[attr-defined]


_WRITE_AND_DIE = """
import os, sys
from ledgerlog.engine.log.embedded import EmbeddedLog
log = EmbeddedLog(sys.argv[1], sync=True)
for i in range(300):
    log.commit_positions("verify-test", {("ledger.blocks", 0): i})
os._exit(0)  # no close: the writes live only in the write-ahead log
"""


def test_corrupt_write_ahead_log_is_found(data) -> None:
    """A bad record in the middle of the log's WAL: RocksDB's default (point-in-time) recovery
    would drop it and everything after it without a word; the checks refuse it."""
    subprocess.run([sys.executable, "-c", _WRITE_AND_DIE, str(data / "log")], check=True, timeout=60,
                   cwd=str(REPO))
    wals = [p for p in sorted((data / "log").glob("*.log")) if p.stat().st_size > 0]
    assert wals, "the writes did not stay in a write-ahead log"
    _flip(wals[0], 0.5)
    cfg = _cfg(data)
    with pytest.raises(CorruptStoreError) as caught:
        check_stores(cfg, "quick")
    assert str(wals[0]) in str(caught.value)
    report = verify(cfg)
    assert report["ok"] is False
    assert [(p["store"], p["file"]) for p in report["storage"]["problems"]] == [("log", str(wals[0]))]


def test_cli_exits_1_on_corruption(data) -> None:
    _flip(_largest_sst(_store_dir(data, "energy")))
    code, out = _cli(data, "verify", "--skip-signatures")
    assert code == 1, out[-3000:]
    report = json.loads(out)
    assert report["ok"] is False and report["signatures"] == "skipped"
    assert report["storage"]["problems"][0]["store"] == "energy"
    assert report["log"]["ok"] and report["supply"]["ok"]


# -- semantic corruption --------------------------------------------------------------------------
def test_tampered_log_record_fails_signature_and_id(data) -> None:
    cfg = _cfg(data)
    with open_chain(cfg) as chain:
        rec = chain.log.read(T.TRANSACTIONS, 0, 3, 1)[0]
        ev = chain.codec.decode(T.TRANSACTIONS, rec.value)
        ev["body"]["amount"] += 1  # decodable, well-formed, but not what the sender signed
        value = chain.codec.encode(T.TRANSACTIONS, ev)
        raw = chain.log.raw()
        key = K.record_key(T.TRANSACTIONS, 0, 3)
        head = raw.get(key)
        ts, klen = int.from_bytes(head[:8], "big", signed=True), int.from_bytes(head[8:12], "big")
        raw.put(key, head[:12 + klen] + value)
        raw.flush()
        assert ts == ev["body"]["timestamp"]
    assert check_stores(cfg, "full")["mode"] == "full"  # the storage itself is sound

    report = verify(cfg)
    assert report["ok"] is False and report["storage"]["ok"]
    where = f"{T.TRANSACTIONS}[0]@3"
    mine = {p["code"] for p in report["log"]["problems"] if p["where"] == where}
    assert {"BAD_SIGNATURE", "BAD_ID"} <= mine, report["log"]["problems"]
    # the block still lists the original txid, which is no longer on the log
    assert {"MISSING_TX", "ORPHAN_TX"} <= _codes(report["log"])
    # the replay moves one more unit than the write side did; the live stores folded the original
    assert "ACCOUNT_MISMATCH" in _codes(report["supply"])
    mismatched = {p["where"] for p in report["projections"]["problems"] if p["code"] == "DIGEST_MISMATCH"}
    assert mismatched == {"balances live store", "chainstate live store"}, report["projections"]["problems"]

    skipped = verify(cfg, signatures=False)  # ids still catch it without signatures
    assert "BAD_ID" in _codes(skipped["log"]) and "BAD_SIGNATURE" not in _codes(skipped["log"])
    trees = [p for p in report["log"]["problems"] if p["code"] == "TREE_MISMATCH"]
    assert [p["where"] for p in trees] == [f"{T.TRANSACTIONS}[0]"], trees  # the Merkle tree no longer fits


def test_verify_never_folds_a_tampered_record_into_the_live_stores(data, tmp_path) -> None:
    """Verify caught the live projections up before it checked the log: a tampered record past
    their positions went into them (and was then served), and live matched the replay, so the
    projections were reported sound. Now only a log that checks clean is folded into them."""
    genesis, lines = _history()
    cfg = _cfg(tmp_path / "lagging")
    init_chain(cfg, genesis)
    half = len(lines) // 2
    with open_chain(cfg) as chain:
        assert chain.admitter.admit(lines[:half]).rejected == 0
    _fold_and_flush(cfg)
    with open_chain(cfg) as chain:
        assert chain.admitter.admit(lines[half:]).rejected == 0  # not folded yet
        off = chain.log.end_offsets(T.TRANSACTIONS)[0] - 1
        rec = chain.log.read(T.TRANSACTIONS, 0, off, 1)[0]
        ev = chain.codec.decode(T.TRANSACTIONS, rec.value)
        ev["body"]["amount"] += 777
        raw = chain.log.raw()
        key = K.record_key(T.TRANSACTIONS, 0, off)
        head = raw.get(key)
        raw.put(key, head[:12 + int.from_bytes(head[8:12], "big")] + chain.codec.encode(T.TRANSACTIONS, ev))
        raw.flush()
    live = json.loads((tmp_path / "lagging" / "projections" / "balances" / "live").read_text())["dir"]
    store = ProjectionStore(str(tmp_path / "lagging" / "projections" / "balances" / live), read_only=True)
    before = store.positions()
    store.close()
    report = verify(cfg)
    assert report["ok"] is False and "BAD_ID" in _codes(report["log"])
    store = ProjectionStore(str(tmp_path / "lagging" / "projections" / "balances" / live), read_only=True)
    try:
        assert store.positions() == before  # nothing of the unchecked log went in
    finally:
        store.close()


def test_every_key_of_the_write_side_state_is_checked_against_a_replay(data) -> None:
    """Only the accounts and the tip's height and hash were compared: a provider's owner, a pool
    round's cap, a block hash by height, a transaction's status or the tip's time could be changed
    (and admission then judged new lines against them) and verify said ok."""
    import orjson

    cfg = _cfg(data)
    assert verify(cfg)["ok"]  # clean: the replay makes exactly the stored state
    with open_chain(cfg) as chain:
        raw = chain.log.raw()
        prefix = K.STATE_PREFIX
        victims = [k for k in (next((k for k in raw.keys(from_key=prefix + p) if k.startswith(prefix + p)), None)
                               for p in (b"pv/", b"bh/", b"tx/")) if k is not None]
        assert len(victims) == 3, victims
        raw.put(victims[0], raw.get(victims[0]).replace(b"0", b"1", 1))
        raw.put(victims[1], orjson.dumps("ab" * 32))
        raw.delete(victims[2])
        tip = orjson.loads(raw.get(prefix + b"tip"))
        tip[2] = 1  # its timestamp
        raw.put(prefix + b"tip", orjson.dumps(tip))
        raw.flush()
    report = verify(cfg)
    assert report["ok"] is False
    where = {p["where"] for p in report["write_state"]["problems"] if p["code"] == "WRITE_STATE_MISMATCH"}
    shown = {f"state {k[len(K.STATE_PREFIX):].decode(errors='backslashreplace')[:120]}" for k in victims}
    assert shown | {"state tip"} <= where, where


def test_a_damaged_tree_store_is_named(data) -> None:
    cfg = _cfg(data)
    with open_chain(cfg) as chain:
        raw = chain.log.raw()
        (node_key,) = [k for k in raw.keys(from_key=K.TREE_NODE_PREFIX) if k.startswith(K.TREE_NODE_PREFIX)][:1]
        raw.put(node_key, b"\x00" * 32)
        raw.flush()
    report = verify(cfg, signatures=False)
    problems = report["log"]["problems"]
    assert [p["code"] for p in problems] == ["TREE_MISMATCH"] and "level" in problems[0]["message"], problems


def test_tampered_projection_value_fails_digest(data) -> None:
    cfg = _cfg(data)
    path = str(_store_dir(data, "balances"))
    db = open_store(path, K.PROJECTION_FORMAT)
    try:
        key, value = next((k, v) for k, v in db.items() if k.startswith(b"a/"))
        acct = orjson.loads(value)
        acct[0] += 1
        db.put(key, orjson.dumps(acct))
        db.flush()
    finally:
        db.close()

    report = verify(cfg)
    assert report["ok"] is False
    assert report["storage"]["ok"] and report["log"]["ok"] and report["supply"]["ok"]
    problems = [p for p in report["projections"]["problems"] if p["where"] == "balances live store"]
    assert {p["code"] for p in problems} == {"RECORDED_DIGEST_MISMATCH", "DIGEST_MISMATCH"}, problems
    diff = next(p for p in problems if p["code"] == "DIGEST_MISMATCH")["differences"]
    assert diff and diff[0]["key"] == key.decode(), diff
    assert all(p["where"].startswith("balances") for p in report["projections"]["problems"])


# -- a node on the data dir -----------------------------------------------------------------------
def test_running_node_is_verified_read_only_at_live_positions(tmp_path) -> None:
    """With node.json naming a running node, verify takes no lock and compares each live store
    with a replay stopped at its own positions (here: projections behind admitted lines)."""
    data = tmp_path / "data"
    genesis, lines = _history()
    cfg = _cfg(data)
    init_chain(cfg, genesis)
    half = len(lines) // 2
    with open_chain(cfg) as chain:
        assert chain.admitter.admit(lines[:half]).rejected == 0
    _fold_and_flush(cfg)
    shutil.copytree(data / "log", tmp_path / "log-at-half")
    with open_chain(cfg) as chain:  # the rest, not folded yet
        assert chain.admitter.admit(lines[half:]).rejected == 0
    from servers import serve_app
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    instance = "c0ffee" * 5 + "00"  # a stand-in node: this process, answering node.json's instance
    app = Starlette(routes=[Route("/v1/status", lambda _: JSONResponse({"instance": instance}))])
    with serve_app(app) as (host, port):
        url = f"http://{host}:{port}"
        (data / "node.json").write_text(json.dumps({"pid": os.getpid(), "url": url, "instance": instance}))
        report = verify(cfg)
    assert report["ok"] is True, {k: report[k]["problems"] for k in ("storage", "log", "supply", "projections")}
    assert report["node"] == url
    projs = report["projections"]["projections"]
    assert {p["compared_at"] for p in projs.values()} == {"live positions"}, projs
    assert all(p["compared"] and not p["at_log_end"] for p in projs.values()), projs
    (data / "node.json").unlink()
    report = verify(cfg)  # no node: the live stores are first brought to the end of the log
    assert report["ok"] is True
    assert {p["compared_at"] for p in report["projections"]["projections"].values()} == {"log end"}

    # the log restored from an older copy: the projections have folded records it no longer has
    shutil.rmtree(data / "log")
    shutil.copytree(tmp_path / "log-at-half", data / "log")
    report = verify(cfg)
    assert report["ok"] is False and report["storage"]["ok"] and report["log"]["ok"] and report["supply"]["ok"]
    ahead = {p["where"] for p in report["projections"]["problems"] if p["code"] == "POSITIONS_AHEAD"}
    assert ahead == {f"{n} live store" for n in ("chainstate", "balances", "energy", "payouts")}, ahead


@pytest.mark.parametrize("step", ["no CURRENT yet", "no format key yet"])
def test_a_projection_store_killed_while_being_created_is_not_damage(data, step) -> None:
    """A node SIGKILLed at start-up while RocksDB creates a projection store (before CURRENT is
    renamed into place) or right after (before the format key is written) leaves a store that
    never held anything (found by `make torture`): the next start initialises and folds it
    rather than refusing it as CORRUPT."""
    from ledgerlog.engine.rocks import _open, _options
    from ledgerlog.projections import energy
    from ledgerlog.streams import layout

    cfg = _cfg(data)
    before = folded_digests(cfg)
    shutil.rmtree(data / "projections" / "energy")
    path, _ = layout.live_path(cfg.projections_dir, energy)
    _open(path, _options(True), None).close()  # created, never written
    if step == "no CURRENT yet":
        os.unlink(os.path.join(path, "CURRENT"))
    assert check_stores(cfg, "auto")["stores"]["energy"]["missing"] is True  # does not raise
    assert verify(cfg)["storage"]["stores"]["energy"]["ok"]
    assert folded_digests(cfg) == before  # opened, initialised and folded from the log


def test_a_projection_store_missing_current_with_tables_is_damage(data) -> None:
    """The exception above is narrow: a store that holds table files but lost CURRENT is damage."""
    store = _store_dir(data, "balances")
    assert list(store.glob("*.sst"))
    (store / "CURRENT").unlink()
    with pytest.raises(CorruptStoreError, match="CURRENT"):
        check_stores(_cfg(data), "quick")


