"""Crash safety with real processes and kill -9 (SIGKILL) at random points.

(a) `ledgerlog ingest` killed mid-file several times, then run to completion: every valid line is
    admitted exactly once, and the log and write-side state equal a clean single ingest.
(b) the projection runner killed mid-replay several times, then finished: every projection's
    state and digest equal a clean full replay of the same log.

Kill points are random (seed printed in every assertion message; set LEDGERLOG_CRASH_SEED to
replay one). Kills are placed by observed progress, not by timing, so each run is killed while
it still has work to do."""
from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.torture import kit
from benchmarks.torture.kit import (
    LEDGERLOG,
    REPO,
    RUNNER_SNIPPET,
    cli,
    lines_in_log,
    log_dump,
    ok_json,
    projection_dump,
)
from ledgerlog import projections
from ledgerlog.engine.chain import open_chain
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history

EVENTS = 10_000
SEED = 5
KILLS = 4
SEED_RUN = int(os.environ.get("LEDGERLOG_CRASH_SEED") or random.SystemRandom().randrange(1 << 32))


@pytest.fixture(scope="module")
def hist(tmp_path_factory) -> dict[str, Any]:
    """A generated history and a clean, uninterrupted single ingest of it (the reference)."""
    root = tmp_path_factory.mktemp("crash")
    genesis, keys = make_genesis(SEED, wallets=16)
    gpath, hpath = root / "genesis.json", root / "history.jsonl"
    write_genesis(gpath, genesis)
    stats = write_history(hpath, genesis, keys, events=EVENTS, seed=SEED)
    n = len(hpath.read_bytes().splitlines())
    assert n == stats.valid_lines
    clean = root / "clean"
    ok_json(cli(clean, "init", "--genesis", str(gpath)))
    summary = ok_json(cli(clean, "ingest", str(hpath)))
    assert summary == {"accepted": n, "duplicates": 0, "rejected": 0, "rejections": []}
    assert lines_in_log(clean) == n
    # an untouched copy of the ingested data dir (no projections yet) for the runner crash test
    shutil.copytree(clean, root / "ingested")
    return {"root": root, "gpath": gpath, "hpath": hpath, "lines": n, "clean": clean,
            "ingested": root / "ingested", "genesis": genesis}


def test_ingest_killed_at_random_points(hist, tmp_path) -> None:
    rng = random.Random(SEED_RUN)
    why = f"LEDGERLOG_CRASH_SEED={SEED_RUN}"
    n = hist["lines"]
    data = tmp_path / "crashed"
    ok_json(cli(data, "init", "--genesis", str(hist["gpath"])))
    # kill at increasing, random fractions of the file; small chunks give many commit points
    targets = sorted(rng.uniform(0.05, 0.9) for _ in range(KILLS))
    committed = [0]
    killed_mid = 0
    for frac in targets:
        proc = subprocess.Popen([*LEDGERLOG, "--data-dir", str(data), "ingest", str(hist["hpath"])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=kit.env(LEDGERLOG_INGEST_CHUNK=str(rng.choice((17, 64, 250)))))
        try:
            target = max(committed[-1] + 1, int(frac * n))
            deadline = time.monotonic() + 90
            for _ in range(100_000):
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
                have = lines_in_log(data)
                if have is not None and have >= target:
                    time.sleep(rng.uniform(0, 0.05))  # land anywhere in the next chunk
                    break
                time.sleep(rng.uniform(0.005, 0.03))
            was_running = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        if was_running:
            assert proc.returncode == -signal.SIGKILL, (why, proc.returncode, err[-2000:])
        else:  # it finished before the kill: a normal, complete summary
            assert proc.returncode == 0 and json.loads(out)["rejected"] == 0, (why, out, err[-2000:])
        have = lines_in_log(data)
        assert have is not None, why
        # what a killed run committed stays; nothing is ever admitted twice
        assert committed[-1] <= have <= n, (why, committed, have)
        if was_running and have < n:
            killed_mid += 1
        committed.append(have)
    print("ingest committed after each kill:", committed, why)
    assert killed_mid >= 1, (why, committed)

    final = cli(data, "ingest", str(hist["hpath"]))
    summary = ok_json(final)
    assert summary["rejected"] == 0 and summary["rejections"] == [], (why, summary)
    assert summary["duplicates"] == committed[-1], (why, summary, committed)
    # accepted over all runs: what each killed run committed, plus the last run's own count
    per_run = [b - a for a, b in itertools.pairwise(committed)] + [summary["accepted"]]
    assert all(x >= 0 for x in per_run) and sum(per_run) == n, (why, per_run, n)
    assert summary["accepted"] + summary["duplicates"] == n

    # the log and the write side equal those of a clean, single ingest
    ends, state, records = log_dump(data)
    ref_ends, ref_state, ref_records = log_dump(hist["clean"])
    assert ends == ref_ends, why
    assert len(state) == len(ref_state) and state == ref_state, why
    for topic in ref_records:
        assert records[topic] == ref_records[topic], (why, topic)
    st = ok_json(cli(data, "status"))
    ref_st = ok_json(cli(hist["clean"], "status"))
    assert (st["height"], st["tip_hash"], st["provenance"]["digest"]) == (
        ref_st["height"], ref_st["tip_hash"], ref_st["provenance"]["digest"]), why


def _fold_and_kill(data: Path, rng: random.Random, until: int, batch: int) -> tuple[bool, int]:
    """Run the runner snippet; SIGKILL it once it has folded ``until`` events (summed over the
    projections), a random instant into the step after. Returns (killed before it finished,
    events it reported folded)."""
    proc = subprocess.Popen([sys.executable, "-c", RUNNER_SNIPPET, str(data), str(batch)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kit.env())
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    folded, finished = 0, False
    try:
        for _ in range(100_000):
            line = proc.stdout.readline().split()
            if not line or line[0] == b"done":
                finished = bool(line)
                break
            if line[0] == b"step":
                folded += int(line[1])
                if folded >= until:
                    time.sleep(rng.uniform(0, 0.02))  # anywhere inside the next step
                    break
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert finished or proc.returncode == -signal.SIGKILL, (proc.returncode, err[-3000:])
    return not finished, folded


def test_runner_killed_at_random_points(hist) -> None:
    rng = random.Random(SEED_RUN + 1)
    why = f"LEDGERLOG_CRASH_SEED={SEED_RUN}"
    data = hist["ingested"]
    assert not (data / "projections").exists()
    with open_chain(kit.config(data), read_only=True) as chain:  # events to fold, over all projections
        total = sum(sum(chain.log.end_offsets(t)) for m in projections.ALL.values() for t in m.TOPICS)
    # kill at increasing random fractions of the replay; a step folds at most 4 * batch events
    targets = sorted(rng.uniform(0.05, 0.8) for _ in range(KILLS))
    killed_mid, lags = 0, [total]
    for frac in targets:
        done = total - lags[-1]
        killed, _ = _fold_and_kill(data, rng, until=max(1, int(frac * total) - done),
                                   batch=rng.choice((150, 300)))
        dump = projection_dump(data)
        # what a killed runner committed is consistent: the digest matches the state it covers
        for name, d in dump.items():
            assert d["digest"] == d["recomputed"], (why, name)
        lags.append(sum(d["lag"] for d in dump.values()))
        killed_mid += killed and lags[-1] > 0
    print("runner lag after each kill:", lags, why)
    assert killed_mid >= 1, (why, lags)
    assert all(a >= b for a, b in itertools.pairwise(lags)), (why, lags)  # never goes back

    # finish through the CLI (which folds everything before answering), then compare with a
    # clean full replay of the same history in another data dir
    st = ok_json(cli(data, "status"))
    ref_st = ok_json(cli(hist["clean"], "status"))
    assert (st["height"], st["tip_hash"], st["provenance"]["digest"]) == (
        ref_st["height"], ref_st["tip_hash"], ref_st["provenance"]["digest"]), why
    got, ref = projection_dump(data), projection_dump(hist["clean"])
    assert set(got) == set(ref) == {"chainstate", "balances", "energy", "payouts"}
    for name in ref:
        assert got[name]["lag"] == ref[name]["lag"] == 0, (why, name)
        assert got[name]["positions"] == ref[name]["positions"], (why, name)
        assert got[name]["digest"] == got[name]["recomputed"] == ref[name]["digest"] == ref[name]["recomputed"], (why, name)
        assert got[name]["state"] == ref[name]["state"], (why, name)
