"""The benchmark harness keeps working: a tiny run with the cheap peer only, checked for the
shape of results.json and for positive figures. No timing is asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _positive(d: dict, *keys: str) -> None:
    for k in keys:
        assert isinstance(d.get(k), (int, float)) and d[k] > 0, (k, d)


def test_tiny_run_writes_every_figure(tmp_path) -> None:
    out = tmp_path / "bench-out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--size", "tiny", "--peers", "sqlite",
                           "--out", str(out)], cwd=ROOT, capture_output=True, check=False, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert b"ledgerlog/x" in proc.stdout  # the table was printed
    res = json.loads((out / "results.json").read_text())

    assert res["size"] == "tiny"
    m = res["machine"]
    assert m["cpus"] >= 1 and m["python"] and m["platform"] and len(m["load_average_at_start"]) == 3
    assert res["versions"]["ledgerlog"] and res["versions"]["fastavro"] and res["versions"]["rocksdict"]
    assert res["history"]["signed"]["events"] >= 2000 and res["history"]["shares"]["shares"] > 0
    assert res["history"]["transfer_events"] > 0

    ingest = res["ingest"]
    _positive(ingest["signed"], "lines", "events", "lines_per_s", "events_per_s", "signed_events_per_s")
    _positive(ingest["unsigned"], "events", "events_per_s", "shares_per_s")
    for key in ("first_fold", "all", "balances"):
        _positive(res["rebuild"][key], "events", "events_per_s")
    assert res["rebuild"]["all"]["identical_digests"] and res["rebuild"]["balances"]["identical_digests"]
    for key in ("all", "balances"):
        _positive(res["rebuild"][key]["rss"], "peak_mib", "first_quarter_mean_mib", "last_quarter_mean_mib", "samples")

    for key in ("max", "fixed"):
        q = res["query"][key]
        assert "error" not in q, q
        assert q["ok"] == q["sent"] > 0
        _positive(q, "rate", "p50_ms", "p99_ms")

    ceiling = res["ceiling"]
    _positive(ceiling["fold"], "events", "events_per_s", "iterate_per_s", "iterate_decode_per_s")
    _positive(ceiling["append"], "events", "events_per_s")
    _positive(ceiling["ed25519"], "verify_per_s_one_core", "sign_per_s_one_core")
    assert res["checks"]["ceiling_checksum_ok"] is True
    assert ceiling["fold"]["events"] == res["history"]["transfer_events"]

    assert list(res["peers"]) == ["sqlite"]
    peer = res["peers"]["sqlite"]
    assert "error" not in peer, peer
    _positive(peer["ingest"], "events", "events_per_s")
    _positive(peer["rebuild"], "events", "events_per_s")
    assert peer["checksum_ok"] is True and peer["checksum"] == res["checks"]["reference_checksum"]

    r = res["ratios"]
    for key in ("rebuild_balances_vs_ceiling_fold", "rebuild_all_vs_ceiling_fold",
                "ingest_unsigned_vs_ceiling_append", "ingest_signatures_vs_verify_all_cores",
                "rebuild_balances_vs_sqlite", "rebuild_all_vs_sqlite", "ingest_signed_vs_sqlite", "ingest_unsigned_vs_sqlite"):
        _positive(r, key)

    kw = res["kafka_workers"]  # the balances shards on Tansu: figures, or an error entry without a broker
    if "error" in kw:
        assert r["kafka_workers_2_vs_1"] is None
    else:
        for fig in (kw["one_worker"], kw["two_workers"], kw["fold_only"]["one_worker"], kw["fold_only"]["two_workers"]):
            _positive(fig, "events", "events_per_s", "cores_busy", "cpu_us_per_event")
            assert fig["events"] == kw["balances_events"] == kw["derive"]["events"]  # every pass does all of it
        _positive(kw["derive"], "events", "records", "events_per_s")
        _positive(kw["fold_only"], "ratio_2_vs_1")
        assert kw["digests_equal"] is True and kw["digest_equals_embedded"] is True
        _positive(r, "kafka_workers_2_vs_1")
        assert b"kafka: balances shards, derive + fold, 2 worker processes" in proc.stdout
        assert b"kafka: balances shards, fold only, 2 worker processes" in proc.stdout

    goals = {g["goal"]: g for g in res["goals"]}
    assert len(goals) == 14 and b"goals (issues 5, 15, 17):" in proc.stdout
    trees = res["trees"]
    _positive(trees["ingest_unsigned_events_per_s"], "with_trees", "without_trees")
    # the appending process's share; with the leaves of shares hashed by the workers it may round to 0
    assert isinstance(trees["upkeep_share"], float) and 0 <= trees["upkeep_share"] < 1, trees
    _positive(trees["proofs"]["inclusion"], "proofs", "per_s", "p99_ms")
    _positive(trees["proofs"]["consistency"], "proofs", "per_s", "p99_ms")
    _positive(trees["storage"], "records", "tree_bytes", "tree_bytes_per_million_records")
    assert b"verifiable log: unsigned ingest" in proc.stdout
    assert all(g["met"] in (True, False, None) and g["target"] for g in goals.values())
    sqlite = goals["rebuild all projections vs naive SQLite rebuild"]
    assert sqlite["measured"] == r["rebuild_all_vs_sqlite"] and sqlite["met"] == (sqlite["measured"] >= 1.0)
    balances = goals["rebuild balances vs naive SQLite rebuild"]
    assert balances["measured"] == r["rebuild_balances_vs_sqlite"] and balances["met"] == (balances["measured"] >= 1.5)
    # steady figures: three runs each, and a ceiling no rebuild of ledgerlog's goes above
    for fig in (res["rebuild"]["first_fold"], res["rebuild"]["all"], res["rebuild"]["balances"], ceiling["fold"],
                peer["rebuild"]):
        assert len(fig["steady"]["runs_per_s"]) == 3 and fig["steady"]["spread"] is not None
    _positive(ceiling["fold"]["one_core"], "events_per_s")
    assert ceiling["fold"]["synced"] is True and ceiling["fold"]["write_every"] == 10_000
    assert goals["rebuild all projections vs quixstreams"]["met"] is None  # not run here


def test_memory_run_samples_rss_over_fold_and_reproject(tmp_path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--events", "3000", "--out", str(out)],
                          cwd=ROOT, capture_output=True, check=False, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    res = json.loads((out / "memory.json").read_text())
    assert res["events"] == 3000 and res["ingest"]["events"] >= 3000  # the history closes its last block
    assert res["reproject_all"]["identical_digests"] is True
    for key in ("first_fold", "reproject_all"):
        _positive(res[key], "seconds", "events_per_s")
        rss = res[key]["rss"]
        _positive(rss, "peak_mib", "first_quarter_mean_mib", "last_quarter_mean_mib", "samples")
        assert rss["series_mib"] and max(rss["series_mib"]) == rss["peak_mib"]


def test_unknown_peer_is_a_usage_error(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--size", "tiny", "--peers", "nosuch",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, check=False, timeout=60)
    assert proc.returncode != 0 and b"unknown peers" in proc.stderr


def test_steady_repeats_each_run_to_the_floor_and_reports_the_median() -> None:
    from benchmarks.common import steady

    passes = iter([(10, 0.5)] * 4 + [(30, 1.0)] * 2 + [(5, 1.0)] * 2)  # runs: 40/2s, 60/2s, 10/2s
    fig = steady(lambda: next(passes), runs=3, min_seconds=2.0)
    assert fig["runs_per_s"] == [20.0, 30.0, 5.0]
    assert fig["per_s"] == 20.0 and fig["units"] == 40 and fig["seconds"] == 2.0
    assert fig["spread"] == round((30 - 5) / 20, 3)
    assert steady(lambda: (7, 0.01), runs=1, min_seconds=0.0)["runs_per_s"] == [700.0]


def test_kafka_workers_run_alone_prints_figures_and_removes_its_work_dir(tmp_path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "LEDGERLOG_BENCH_MIN_SECONDS": "0.01"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kafka_workers", "--events", "400"],
                          cwd=ROOT, env=env, capture_output=True, check=False, timeout=240)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    res = json.loads(proc.stdout)
    assert "error" not in res, res
    _positive(res["one_worker"], "events_per_s")
    _positive(res["two_workers"], "events_per_s")
    assert not list(tmp_path.glob("ll-kw-*"))  # its chain, stores and broker log are gone
