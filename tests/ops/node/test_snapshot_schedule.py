"""Scheduled snapshots (``[snapshot] every / keep / keep_for``, ops/node/snapshots.py): the node
snapshots its chain on schedule, names each by height, prunes its own chain's snapshots (beyond the
newest ``keep`` and older than ``keep_for``) and leaves other chains' alone; a failing snapshot is
logged, counted in ``ledgerlog_snapshot_failures_total`` and retried without stopping the node; an
admin snapshot restarts the clock; the settings are parsed strictly; the alert rules fire when
(and only when) they should, as promtool evaluates them."""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from clitools import REPO
from fastapi.testclient import TestClient
from nodetools import NDJSON, history, one, parse_metrics

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config, load_config
from ledgerlog.engine.durations import parse_duration
from ledgerlog.engine.errors import ConfigError
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.data import snapshot as snapshot_mod
from ledgerlog.ops.data.snapshot import MANIFEST, create_snapshot, list_snapshots, read_manifest
from ledgerlog.ops.node.lifecycle import Node
from ledgerlog.ops.node.snapshots import SnapshotSchedule
from ledgerlog.streams.runner import Runner

ALERTS = REPO / "ledgerlog" / "ops" / "monitoring" / "alerts.yml"
DAY = 86400
TOKEN = "schedule-test-token"


def wait_for(what: str, cond: Callable[[], bool], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory) -> dict[str, Any]:
    """A data dir with a short history (copied per test), and one real snapshot of it."""
    root = tmp_path_factory.mktemp("sched")
    genesis, _keys, lines = history(root, events=200)
    cfg = Config(data_dir=str(root / "data"), sync=False)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        assert chain.admitter.admit(lines).rejected == 0
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            manifest = create_snapshot(chain, runner, str(root / "template"))
        finally:
            runner.close()
    return {"data": cfg.data_dir, "snapshot": manifest["path"], "manifest": manifest}


def aged(chain_dir: dict[str, Any], directory: str, name: str, age: float, chain: tuple[str, str] | None = None) -> None:
    """A copy of the template snapshot, created ``age`` seconds ago (by its manifest)."""
    path = os.path.join(directory, name)
    shutil.copytree(chain_dir["snapshot"], path)
    body = {k: v for k, v in read_manifest(path).items() if k != "manifest_sha256"}
    body["created_ms"] = int((time.time() - age) * 1000)
    if chain:
        body["chain_id"], body["genesis_hash"] = chain
    with open(os.path.join(path, MANIFEST), "wb") as f:
        f.write(snapshot_mod._manifest_bytes(body))


@pytest.fixture
def node_on(chain_dir, tmp_path) -> Iterator[Callable[..., tuple[Node, TestClient]]]:
    """Start a node on a copy of the chain with Config overrides; stopped after the test."""
    made: list[tuple[Node, TestClient]] = []

    def start(seed: Callable[[Config], None] | None = None, **overrides: Any) -> tuple[Node, TestClient]:
        data = tmp_path / "data"
        shutil.copytree(chain_dir["data"], data)
        cfg = Config(data_dir=str(data), sync=False, admin_token=TOKEN, **overrides)
        if seed:
            seed(cfg)
        node = Node(cfg)
        node.start()
        client = TestClient(create_app(node))
        made.append((node, client))
        return node, client

    yield start
    for node, client in made:
        client.close()
        node.stop()


def own(cfg: Config, genesis_hash: str) -> list[dict[str, Any]]:
    return [s for s in list_snapshots(cfg.snapshots_dir) if s["ok"] and s["genesis_hash"] == genesis_hash]


# -- the schedule ---------------------------------------------------------------------------------

def test_schedule_takes_snapshots_named_by_height_and_prunes_old_ones(node_on, chain_dir) -> None:
    other = ("someone-else", "cd" * 32)

    def seed(cfg: Config) -> None:
        os.makedirs(cfg.snapshots_dir)
        aged(chain_dir, cfg.snapshots_dir, "old-10d", 10 * DAY)
        aged(chain_dir, cfg.snapshots_dir, "old-8d", 8 * DAY)
        aged(chain_dir, cfg.snapshots_dir, "theirs-30d", 30 * DAY, chain=other)

    t0 = time.time()
    node, client = node_on(seed, snapshot_every="1s", snapshot_keep=2, snapshot_keep_for="1d")
    sched = node.snapshots
    assert sched.last_success is not None and abs(sched.last_success - (t0 - 8 * DAY)) < 60  # from the seeded one
    wait_for("three scheduled snapshots", lambda: sched.taken >= 3)
    metrics = parse_metrics(client.get("/metrics").text)
    assert one(metrics, "ledgerlog_snapshot_interval_seconds") == 1
    assert one(metrics, "ledgerlog_snapshot_last_success_timestamp_seconds") >= t0
    assert one(metrics, "ledgerlog_snapshot_failures_total", stage="create") == 0
    assert one(metrics, "ledgerlog_snapshot_failures_total", stage="prune") == 0
    assert client.get("/v1/health").json()["status"] == "ok"
    height = node.tip().height
    node.stop()  # joins the schedule thread: its last snapshot is pruned by now
    cfg, genesis_hash = node.config, node.genesis.hash
    mine = own(cfg, genesis_hash)
    # the new ones are all younger than keep_for: kept even beyond the newest 2; both old ones went
    assert len(mine) == sched.taken >= 3 and not {"old-10d", "old-8d"} & {s["name"] for s in mine}
    for s in mine:
        assert re.fullmatch(rf"{re.escape(node.genesis.chain_id)}-h{height}-\d{{8}}T\d{{6}}Z(-\d+)?", s["name"])
        assert s["height"] == height and s["independent"] and not s["with_keys"]
    assert [s["name"] for s in list_snapshots(cfg.snapshots_dir) if s["genesis_hash"] == other[1]] == ["theirs-30d"]
    assert not [e for e in os.listdir(cfg.snapshots_dir) if e.startswith(".")]


def test_schedule_keeps_exactly_keep_without_keep_for(node_on) -> None:
    node, _client = node_on(snapshot_every="1s", snapshot_keep=2, snapshot_keep_for="")
    assert node.snapshots.last_success is None  # none yet: the clock runs from the start
    wait_for("four scheduled snapshots", lambda: node.snapshots.taken >= 4)
    node.stop()
    mine = own(node.config, node.genesis.hash)
    assert len(mine) == 2
    assert max(s["created_ms"] for s in mine) / 1000 == node.snapshots.last_success  # the newest survive


def test_a_failing_snapshot_is_counted_retried_and_never_stops_the_node(node_on, tmp_path, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="ledgerlog.snapshots")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("snapshot.dir is a file: every snapshot fails")
    node, client = node_on(snapshot_dir=str(blocker), snapshot_every="1s", snapshot_keep=3)
    wait_for("a failed snapshot", lambda: node.snapshots.failures["create"] >= 1)
    assert any("scheduled snapshot failed" in r.getMessage() for r in caplog.records)
    metrics = parse_metrics(client.get("/metrics").text)
    assert one(metrics, "ledgerlog_snapshot_failures_total", stage="create") >= 1
    assert one(metrics, "ledgerlog_snapshot_last_success_timestamp_seconds") == node.snapshots.started
    assert node.snapshots.taken == 0
    r = client.get("/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert client.post("/v1/ingest", content=b"{not json\n", headers=NDJSON).status_code == 422  # still admitting
    blocker.unlink()  # the disk is back: the next retry (after min(every, 1 min)) succeeds
    wait_for("a snapshot after the failures", lambda: node.snapshots.taken >= 1)
    assert own(node.config, node.genesis.hash)


def test_an_admin_snapshot_restarts_the_clock(node_on) -> None:
    node, client = node_on(snapshot_every="1h")
    sched = node.snapshots
    assert sched.last_success is None and sched.next_due == sched.started + 3600
    assert one(parse_metrics(client.get("/metrics").text), "ledgerlog_snapshot_last_success_timestamp_seconds") \
        == sched.started
    r = client.post("/v1/admin/snapshot", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    created = read_manifest(os.path.join(node.config.snapshots_dir, r.json()["name"]))["created_ms"] / 1000
    assert sched.last_success == created and sched.next_due == created + 3600 and sched.taken == 0
    assert one(parse_metrics(client.get("/metrics").text), "ledgerlog_snapshot_last_success_timestamp_seconds") \
        == created


def test_a_linked_snapshot_is_no_backup_for_the_schedule_nor_for_retention(node_on, chain_dir) -> None:
    """A --link snapshot (a fast local checkpoint sharing the live files, not a backup) restarted
    the clock, so scheduled backups never came and the missed-backup alert stayed quiet; and it
    counted toward keep, so backups were pruned in its place. Now the schedule counts backups
    only, and retention counts linked snapshots apart from backups."""
    node, client = node_on(snapshot_every="1h", snapshot_keep=1, snapshot_keep_for="")
    sched = node.snapshots
    backup = os.path.join(node.config.snapshots_dir, "backup")
    aged(chain_dir, node.config.snapshots_dir, "backup", 60)
    r = client.post("/v1/admin/snapshot", json={"link": True}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["independent"] is False, r.text
    assert sched.last_success is None and sched.next_due == sched.started + 3600  # no backup was taken
    found = SnapshotSchedule(node.config, node.chain).last_success  # at a start: the newest backup
    assert found == read_manifest(backup)["created_ms"] / 1000
    report = sched.prune()
    assert report is not None and os.path.isdir(backup)  # the one backup kept: keep counts backups
    assert {k["name"] for k in report["kept"]} == {"backup", r.json()["name"]}


def test_no_schedule_no_thread_and_metrics_say_off(node_on) -> None:
    node, client = node_on()
    assert node.snapshots.every == 0
    assert not [t for t in node._threads if t.name == "ledgerlog-snapshots"]
    metrics = parse_metrics(client.get("/metrics").text)
    assert one(metrics, "ledgerlog_snapshot_interval_seconds") == 0


# -- settings --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("30s", 30), ("30m", 1800), ("12h", 43200), ("7d", 7 * DAY),
                                          ("2w", 14 * DAY), ("0s", 0)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7", "7 d", " 7d", "7d ", "7D", "1.5h", "-1d", "1h30m", "d", "", "7days", "٣d"])
def test_durations_are_parsed_strictly(text) -> None:
    with pytest.raises(ValueError, match="like 30s, 30m, 12h, 7d"):
        parse_duration(text)


def _config(tmp_path: Path, snapshot: str, env: dict[str, str] | None = None) -> Config:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "config.toml").write_text(f"[snapshot]\n{snapshot}\n")
    return load_config(str(data), env or {})


def test_snapshot_settings_from_file_and_env(tmp_path) -> None:
    cfg = _config(tmp_path, 'every = "6h"\nkeep = 3\nkeep_for = "2d"')
    assert (cfg.snapshot_every_seconds, cfg.snapshot_keep, cfg.snapshot_keep_for_seconds) == (21600, 3, 2 * DAY)
    cfg = _config(tmp_path, 'every = "6h"', {"LEDGERLOG_SNAPSHOT_EVERY": "30m", "LEDGERLOG_SNAPSHOT_KEEP": "9",
                                              "LEDGERLOG_SNAPSHOT_KEEP_FOR": "1w"})
    assert (cfg.snapshot_every_seconds, cfg.snapshot_keep, cfg.snapshot_keep_for_seconds) == (1800, 9, 7 * DAY)
    defaults = load_config(str(tmp_path / "none"), {})
    assert (defaults.snapshot_every_seconds, defaults.snapshot_keep, defaults.snapshot_keep_for_seconds) == \
        (0, 7, 7 * DAY)
    for off in ('every = 0', 'every = ""', 'every = "0"'):
        assert _config(tmp_path, off).snapshot_every_seconds == 0
    assert _config(tmp_path, 'keep_for = ""').snapshot_keep_for_seconds is None


@pytest.mark.parametrize("line,key", [('every = "6 hours"', "snapshot.every"), ('every = "-1h"', "snapshot.every"),
                                      ('keep_for = "a week"', "snapshot.keep_for"), ("keep = 0", "snapshot.keep"),
                                      ('keep = "many"', "keep")])
def test_bad_snapshot_settings_are_refused_naming_the_key(tmp_path, line, key) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        _config(tmp_path, line)


def test_scheduled_snapshots_need_the_embedded_log(tmp_path) -> None:
    kafka_like = SimpleNamespace(log=SimpleNamespace(supports_checkpoint=False), genesis=SimpleNamespace(hash="00"))
    with pytest.raises(ConfigError, match="embedded log"):
        SnapshotSchedule(Config(data_dir=str(tmp_path), snapshot_every="1h"), kafka_like)  # type: ignore[arg-type]
    assert SnapshotSchedule(Config(data_dir=str(tmp_path)), kafka_like).every == 0  # type: ignore[arg-type]


# -- the alert rules, as Prometheus evaluates them ---------------------------------------------------

def test_snapshot_alerts_fire_when_they_should(tmp_path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    missed, prune = rules["LedgerlogSnapshotMissed"], rules["LedgerlogSnapshotPruneFailing"]

    def series(name: str, instance: str, values: str, **labels: str) -> dict[str, str]:
        lab = ",".join(f'{k}="{v}"' for k, v in {"instance": instance, "job": "ledgerlog", **labels}.items())
        return {"series": f"{name}{{{lab}}}", "values": values}

    def alert(instance: str, summary: str, rule: dict[str, Any], **labels: str) -> dict[str, Any]:
        return {"exp_labels": {"severity": "warning", "instance": instance, "job": "ledgerlog", **labels},
                "exp_annotations": {"summary": summary, "description": rule["annotations"]["description"]}}

    # every 1h: "stuck" last succeeded at 0; "fine" succeeds every hour; "off" has no schedule
    interval, last = "ledgerlog_snapshot_interval_seconds", "ledgerlog_snapshot_last_success_timestamp_seconds"
    test = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            series(interval, "stuck", "3600x300"), series(last, "stuck", "0x300"),
            series(interval, "fine", "3600x300"), series(last, "fine", " ".join(str(m // 60 * 3600) for m in range(301))),
            series(interval, "off", "0x300"), series(last, "off", "0x300"),
            series("ledgerlog_snapshot_failures_total", "stuck", "0x60 1x240", stage="prune"),
            series("ledgerlog_snapshot_failures_total", "fine", "0x300", stage="prune"),
        ],
        "alert_rule_test": [
            {"eval_time": "110m", "alertname": "LedgerlogSnapshotMissed", "exp_alerts": []},  # under 2 h
            {"eval_time": "150m", "alertname": "LedgerlogSnapshotMissed",
             "exp_alerts": [alert("stuck", "no successful snapshot on stuck for 2h 30m 0s (over twice snapshot.every)",
                                  missed)]},
            {"eval_time": "50m", "alertname": "LedgerlogSnapshotPruneFailing", "exp_alerts": []},
            {"eval_time": "90m", "alertname": "LedgerlogSnapshotPruneFailing",
             "exp_alerts": [alert("stuck", "pruning old snapshots failed on stuck: snapshot.dir may fill up", prune,
                                  stage="prune")]},
            {"eval_time": "250m", "alertname": "LedgerlogSnapshotPruneFailing", "exp_alerts": []},  # an hour later
        ],
    }]}
    path = tmp_path / "snapshot-alerts.test.yml"
    path.write_text(yaml.safe_dump(test))
    proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
