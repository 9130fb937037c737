"""The torture harness (`make torture`, ``python -m benchmarks.torture``) runs every kind of trial at
a tiny size and reports its figures; and its checker fails when something is wrong: a planted
loss makes the run exit 1, a tampered projection makes digests differ and answers wrong."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import REPO

from benchmarks.torture import kit
from benchmarks.torture.checks import Replay, judge, replay, served_cli
from benchmarks.torture.inputs import make_workload
from benchmarks.torture.stage import acknowledged, write_lines
from benchmarks.torture.trials import KINDS
from ledgerlog import projections
from ledgerlog.engine import storekeys as K
from ledgerlog.engine.rocks import open_store
from ledgerlog.ops.devtools.histgen import write_genesis
from ledgerlog.projections.base import jdump, jload
from ledgerlog.streams.layout import live_path

ROOT = REPO


def _torture(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.torture", "--events", "600", "--junk", "8",
                           "--seconds", "200", "--seed", "11", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, check=False, timeout=280, env=kit.env())
    return proc, json.loads((out / "torture.json").read_text())


def test_every_kind_runs_and_holds_the_invariants(tmp_path) -> None:
    proc, res = _torture(tmp_path, "--trials", "1")
    text = proc.stdout.decode()
    assert proc.returncode == 0, text[-4000:] + proc.stderr.decode()[-3000:]
    assert "seed 11" in text and "lost 0, duplicated 0" in text and "PASS" in text
    assert res["ok"] is True and res["seed"] == 11
    assert [r["kind"] for r in res["kinds"]] == list(KINDS)
    t = res["total"]
    assert t["trials"] == t["passed"] == len(KINDS) == t["digests_equal"]
    assert t["lost"] == t["duplicated"] == t["phantom"] == t["wrong_answers"] == t["server_errors"] == 0
    assert t["acknowledged"] > 0 and t["answers"] > 0 and t["kills"] > 0 and t["faults"] > 0
    for trial in res["trials"]:
        assert trial["ok"] and not trial["errors"], trial
        assert trial["acknowledged"] > 0 and trial["answers"] > 0, trial
        assert trial["kills"] + trial["faults"] > 0, trial


def test_a_planted_loss_fails_the_run(tmp_path) -> None:
    proc, res = _torture(tmp_path, "--trials", "1", "--kinds", "ingest,node", "--plant-loss")
    assert proc.returncode == 1, proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    assert "FAIL" in proc.stdout.decode()
    assert res["ok"] is False and res["total"]["lost"] == 2
    assert all(t["lost"] == 1 and not t["ok"] for t in res["trials"])


@pytest.fixture(scope="module")
def folded(tmp_path_factory) -> dict:
    """A data dir with a mixed input ingested and folded, and what its ingest acknowledged."""
    root = tmp_path_factory.mktemp("torture-check")
    w = make_workload(5, 500)
    write_genesis(root / "genesis.json", w.genesis)
    lines = w.mixed(random.Random(5), 6)
    data = root / "data"
    kit.ok_json(kit.cli(data, "init", "--genesis", str(root / "genesis.json")))
    summary = json.loads(kit.cli(data, "ingest", str(write_lines(root / "in.jsonl", lines))).stdout)
    kit.ok_json(kit.cli(data, "status"))
    acked, refused = acknowledged(lines, summary)
    return {"w": w, "data": data, "acked": acked, "refused": refused}


def test_the_checker_passes_an_intact_data_dir(folded) -> None:
    ref = replay(folded["data"], folded["w"], random.Random(1), small=True)
    v = judge(folded["data"], folded["acked"], folded["refused"], ref, served_cli(folded["data"], ref.queries))
    assert v.ok and v.digests_equal and v.lost == v.wrong_answers == 0, v
    assert v.acknowledged == len(folded["acked"]) > 0


def test_the_checker_catches_a_tampered_projection(folded, tmp_path) -> None:
    """One account's balance changed behind the projection's back: its digest no longer matches
    its state or a clean replay, and the CLI serves a wrong answer for that account."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(folded["data"], data)
    w = folded["w"]
    path, _ = live_path(kit.config(data).projections_dir, projections.balances)
    db = open_store(path, K.PROJECTION_FORMAT, create=False)
    try:
        key = b"a/" + w.poison_wallet.encode()
        row = jload(db.get(key))
        row[0] += 1
        db.put(key, jdump(row))
    finally:
        db.close()
    ref = replay(data, w, random.Random(1))
    [asked] = [q for q in ref.queries if q.args == ("account", w.poison_wallet)]
    one = Replay(ref.digests, {asked.name: ref.answers[asked.name]}, [asked])
    v = judge(data, folded["acked"], folded["refused"], one, served_cli(data, [asked]))
    assert not v.ok and not v.digests_equal
    assert v.wrong_answers == v.answers == 1
    assert v.lost == v.duplicated == 0
