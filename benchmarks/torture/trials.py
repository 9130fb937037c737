"""The trial kinds. Each runs in its own data dir under the run's work dir, kills or faults real
`ledgerlog` processes at random points, recovers the way an operator would (run the command
again, restart the node), and is judged by ``checks.judge``.

    ingest     kill -9 `ledgerlog ingest` mid-file, then ingest the file again
    node       kill -9 a node while POST /v1/ingest streams; restart, send what was not answered
    fold       kill -9 a node while it folds the log at start-up (catch-up); start it again
    reproject  kill -9 `ledgerlog reproject`; answers served meanwhile; reproject again
    snapshot   kill -9 `ledgerlog snapshot create`; list/verify; create again, restore, check
    restore    kill -9 `ledgerlog snapshot restore --force`; the data dir is old or new, never mixed
    faults     EIO / ENOSPC injected into a node (log, projections or all) while it ingests"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ledgerlog.engine.errors import StorageError

from .checks import Replay, Verdict, judge, log_ids, replay, served_cli, served_http
from .inputs import LineId
from .kit import (
    LEDGERLOG,
    cli,
    env,
    kill,
    lines_in_log,
    projection_dump,
    start_node,
    stop_node,
    wait_node_url,
)
from .stage import Stage, acknowledged, write_lines

__all__ = ["KINDS", "Outcome", "run_trial"]

NDJSON = {"Content-Type": "application/x-ndjson"}
NODE_ENV = {"LEDGERLOG_INGEST_RATE": "0"}  # one client posts as fast as answers come


@dataclass
class Outcome:
    kind: str
    kills: int = 0              # SIGKILLs sent
    mid: int = 0                # ... that landed while the process still had work in hand
    faults: int = 0             # disk faults injected
    refused_503: int = 0        # writes answered 503 while a fault held
    verdict: Verdict = field(default_factory=Verdict)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # a step that should have worked did not

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.errors

    def to_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {"kind": self.kind, "ok": self.ok, "kills": self.kills, "kills_mid_operation": self.mid,
                "faults": self.faults, "refused_503": self.refused_503, "acknowledged": v.acknowledged,
                "lost": v.lost, "duplicated": v.duplicated, "phantom": v.phantom,
                "digests_equal": v.digests_equal, "answers": v.answers, "wrong_answers": v.wrong_answers,
                "server_errors": v.server_errors, "seconds": round(self.seconds, 2),
                "errors": self.errors, "notes": v.notes}


# -- helpers -------------------------------------------------------------------------------------

def _killed(args: list[str], delay: float, **extra: str) -> bool:
    """Start `ledgerlog ARGS`, SIGKILL it after ``delay`` s; True if it was still running."""
    proc = subprocess.Popen([*LEDGERLOG, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env(**extra))
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        pass
    return kill(proc)


def _judge_cli(st: Stage, o: Outcome, data: Path, acked: set[LineId], refused: set[LineId],
               rng: random.Random) -> Replay:
    """Answers through the CLI (which folds what is left first), then the invariants."""
    ref = replay(data, st.w, rng, small=True)
    o.verdict = judge(data, acked, refused, ref, served_cli(data, ref.queries), plant_loss=st.plant_loss)
    return ref


def _judge_node(st: Stage, o: Outcome, data: Path, proc: subprocess.Popen, url: str, acked: set[LineId],
                refused: set[LineId], rng: random.Random, server_errors: int = 0) -> None:
    """Answers from the running node once it has folded everything, then stop it and check."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if not any(httpx.get(url + "/v1/status", timeout=10).json()["lag"].values()):
                break
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    else:
        o.errors.append("the node did not fold the whole log within 90 s")
    ref = replay(data, st.w, rng)
    served, errors = served_http(url, ref.queries)
    if stop_node(proc) != 0:
        o.errors.append(f"the node did not stop cleanly (exit {proc.returncode})")
    node_log = data / "logs" / "node.log"
    if node_log.exists() and b"Traceback" in node_log.read_bytes():
        text = node_log.read_bytes().decode(errors="replace")
        o.errors.append("the node logged a traceback: " + text[text.index("Traceback"):][-600:])
    o.verdict = judge(data, acked, refused, ref, served, server_errors + errors, plant_loss=st.plant_loss)


def _start(data: Path, o: Outcome, **extra: str) -> tuple[subprocess.Popen, str | None]:
    proc = start_node(data, **NODE_ENV, **extra)
    url = wait_node_url(data, proc, limit=90)
    if url is None:
        kill(proc)
        said = Path(f"{data}.stderr").read_bytes().decode(errors="replace").strip().splitlines()[-1:]
        o.errors.append(f"the node did not come up (exit {proc.returncode}): {said}")
    return proc, url


def _chunks(lines: list[bytes], rng: random.Random) -> list[list[bytes]]:
    out, i = [], 0
    while i < len(lines):
        n = rng.randint(20, 300)
        out.append(lines[i:i + n])
        i += n
    return out


class Client:
    """Posts chunks of lines as a careful client does: a chunk counts as acknowledged only once a
    200 or 422 answer says so; after a 503 or a dropped connection it is sent again."""

    def __init__(self) -> None:
        self.acked: set[LineId] = set()
        self.refused: set[LineId] = set()
        self.server_errors = 0   # 5xx other than 503
        self.refused_503 = 0
        self.in_flight = False
        self.odd: list[str] = []  # the first few 5xx answers other than 503, for the report

    def post(self, url: str, chunk: list[bytes]) -> bool:
        self.in_flight = True
        try:
            r = httpx.post(url + "/v1/ingest", content=b"\n".join(chunk) + b"\n", headers=NDJSON, timeout=60)
        except httpx.HTTPError:
            return False
        finally:
            self.in_flight = False
        if r.status_code in (200, 422):
            acked, refused = acknowledged(chunk, r.json())
            self.acked |= acked
            self.refused |= refused
            return True
        if r.status_code == 503:
            self.refused_503 += 1
        elif r.status_code >= 500:
            self.server_errors += 1
            if len(self.odd) < 3:
                self.odd.append(f"POST /v1/ingest answered {r.status_code}: {r.text[:300]}")
        return False


# -- the kinds -----------------------------------------------------------------------------------

def trial_ingest(st: Stage, o: Outcome, d: Path, rng: random.Random) -> None:
    lines = st.w.mixed(rng, st.junk)
    src = write_lines(d / "input.jsonl", lines)
    data = d / "data"
    cli(data, "init", "--genesis", str(st.genesis))
    have = 0
    for frac in sorted(rng.uniform(0.05, 0.9) for _ in range(rng.randint(1, 3))):
        # killed once the log holds a random share of the lines: placed by progress, not by a clock
        proc = subprocess.Popen([*LEDGERLOG, "--data-dir", str(data), "ingest", str(src)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                env=env(LEDGERLOG_INGEST_CHUNK=str(rng.choice((17, 64, 250, 1000)))))
        target, deadline = max(have + 1, int(frac * len(lines))), time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            now = lines_in_log(data)
            if now is not None and now >= target:
                time.sleep(rng.uniform(0, 0.05))  # anywhere in the next chunk
                break
            time.sleep(rng.uniform(0.005, 0.03))
        o.kills += 1
        o.mid += kill(proc)
        have = lines_in_log(data) or have
    done = cli(data, "ingest", str(src))
    if done.returncode not in (0, 1):
        o.errors.append(f"ingest after the kills failed: {done.stderr[-300:]!r}")
        return
    _judge_cli(st, o, data, *acknowledged(lines, json.loads(done.stdout)), rng)


def trial_node(st: Stage, o: Outcome, d: Path, rng: random.Random) -> None:
    data = d / "data"
    cli(data, "init", "--genesis", str(st.genesis))
    chunks = _chunks(st.w.mixed(rng, st.junk), rng)
    kill_at = set(rng.sample(range(len(chunks)), min(len(chunks), rng.randint(1, 3))))
    client = Client()
    proc, url = _start(data, o)
    i, deadline = 0, time.monotonic() + 240
    while url is not None and i < len(chunks) and time.monotonic() < deadline:
        timer = None
        if i in kill_at:
            kill_at.discard(i)

            def shoot(p: subprocess.Popen = proc) -> None:
                mid = client.in_flight
                o.kills += 1
                o.mid += kill(p) and mid
            timer = threading.Timer(rng.uniform(0, st.est["post"]), shoot)
            timer.start()
        t0 = time.monotonic()
        if client.post(url, chunks[i]):
            st.timed("post", time.monotonic() - t0)
            i += 1
        if timer is not None:
            timer.join()
        if proc.poll() is not None:  # killed: restart, send again what was not answered
            proc, url = _start(data, o)
    if url is None:
        return
    if i < len(chunks):
        o.errors.append(f"only {i} of {len(chunks)} chunks acknowledged in time")
    o.errors += client.odd
    _judge_node(st, o, data, proc, url, client.acked, client.refused, rng, client.server_errors)


def trial_fold(st: Stage, o: Outcome, d: Path, rng: random.Random) -> None:
    data = d / "data"
    shutil.copytree(st.ingested, data)
    for _ in range(rng.randint(1, 3)):
        # a node starts in about est["node_up"] s and folds the whole log in est["node_fold"] s more
        proc = start_node(data, **NODE_ENV)
        try:
            proc.wait(timeout=st.est["node_up"] + rng.uniform(-0.2, 1.0) * st.est["node_fold"])
        except subprocess.TimeoutExpired:
            pass
        ready = (data / "node.json").exists()
        o.kills += 1
        o.mid += kill(proc) and not ready and _lag_left(data) > 0
    proc, url = _start(data, o)
    if url is None:
        return
    _judge_node(st, o, data, proc, url, st.full.acked, st.full.refused, rng)


def _lag_left(data: Path) -> int:
    """Records the projections have not folded yet (0 before a killed node made its stores)."""
    try:
        return sum(x["lag"] for x in projection_dump(data).values())
    except StorageError:  # killed before it created them: nothing folded, nothing to check yet
        return 0


def trial_reproject(st: Stage, o: Outcome, d: Path, rng: random.Random) -> None:
    data = d / "data"
    shutil.copytree(st.full.data, data)
    names = rng.choice((["chainstate", "balances", "energy", "payouts"], ["balances"], ["payouts", "energy"]))
    for _ in range(rng.randint(1, 3)):
        o.kills += 1
        o.mid += _killed(["--data-dir", str(data), "reproject", *names], rng.uniform(0.2, 1.0) * st.est["reproject"])
    # what is served while a rebuild lies half done beside the live stores
    ref = _judge_cli(st, o, data, st.full.acked, st.full.refused, rng)
    t0 = time.monotonic()
    proc = cli(data, "reproject", *names)
    if proc.returncode != 0:
        o.errors.append(f"reproject after the kills failed: {proc.stderr[-300:]!r}")
        return
    st.timed("reproject", time.monotonic() - t0)
    # and what the finished rebuild swapped in: consistent, and equal to the clean replay
    bad = [n for n, x in projection_dump(data).items()
           if not x["digest"] == x["recomputed"] == ref.digests[n] or x["lag"]]
    if bad:
        o.verdict.digests_equal = False
        o.verdict.notes.append(f"after the finishing reproject {bad} differ from a clean replay")


def trial_snapshot(st: Stage, o: Outcome, d: Path, rng: random.Random) -> None:
    data, snaps = d / "data", d / "snapshots"
    shutil.copytree(st.full.data, data)
    for _ in range(rng.randint(1, 3)):
        o.kills += 1
        o.mid += _killed(["--data-dir", str(data), "snapshot", "create", "--out", str(snaps)],
                         rng.uniform(0.2, 1.1) * st.est["snapshot"])
    if snaps.exists():
        listed = cli(data, "snapshot", "list", "--dir", str(snaps), "--verify")
        if listed.returncode != 0:
            o.errors.append(f"snapshot list after the kills failed: {listed.stderr[-300:]!r}")
        else:
            bad = [s for s in json.loads(listed.stdout)["snapshots"] if not s.get("ok")]
            if bad:
                o.errors.append(f"a killed snapshot create left a listed, broken snapshot: {bad[0]}")
    t0 = time.monotonic()
    made = cli(data, "snapshot", "create", "--out", str(snaps))
    if made.returncode != 0:
        o.errors.append(f"snapshot create after the kills failed: {made.stderr[-300:]!r}")
        return
    st.timed("snapshot", time.monotonic() - t0)
    path = json.loads(made.stdout)["path"]
    if cli(data, "snapshot", "verify", path).returncode != 0:
        o.errors.append("the snapshot made after the kills does not verify")
    restored = d / "restored"
    back = cli(restored, "snapshot", "restore", path)
    if back.returncode != 0:
        o.errors.append(f"restoring the snapshot failed: {back.stderr[-300:]!r}")
        return
    _judge_cli(st, o, restored, st.full.acked, st.full.refused, rng)
    if log_ids(data) != log_ids(restored):
        o.errors.append("the restored log differs from the live log it was taken from")


def trial_restore(st: Stage, o: Outcome, d: Path, rng: random.Random) -> None:
    data = d / "data"
    shutil.copytree(st.half.data, data)
    old, new = log_ids(st.half.data), log_ids(st.full.data)
    for _ in range(rng.randint(1, 3)):
        o.kills += 1
        o.mid += _killed(["--data-dir", str(data), "snapshot", "restore", str(st.snapshot), "--force"],
                         rng.uniform(0.1, 1.1) * st.est["restore"])
        status = cli(data, "status")  # the next open finishes (or rolls back) the restore
        if status.returncode != 0:
            o.errors.append(f"status after a killed restore failed: {status.stderr[-300:]!r}")
            return
        now = log_ids(data)
        if now not in (old, new):
            o.errors.append(f"a killed restore left neither the old nor the new log ({sum(now.values())} ids)")
            return
    t0 = time.monotonic()
    proc = cli(data, "snapshot", "restore", str(st.snapshot), "--force")
    if proc.returncode != 0:
        o.errors.append(f"restore after the kills failed: {proc.stderr[-300:]!r}")
        return
    st.timed("restore", time.monotonic() - t0)
    _judge_cli(st, o, data, st.full.acked, st.full.refused, rng)


def _set_fault(path: Path, text: str) -> None:
    """Replace the faults file in one rename (the node re-reads it when it changes)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def trial_faults(st: Stage, o: Outcome, d: Path, rng: random.Random) -> None:
    data, faults = d / "data", d / "faults"
    cli(data, "init", "--genesis", str(st.genesis))
    chunks = _chunks(st.w.mixed(rng, st.junk), rng)
    fault_at = set(rng.sample(range(len(chunks)), min(len(chunks), rng.randint(1, 3))))
    client = Client()
    hook = {"LEDGERLOG_FAULTS_FILE": str(faults)}
    proc, url = _start(data, o, **hook)
    i, deadline = 0, time.monotonic() + 240
    while url is not None and i < len(chunks) and time.monotonic() < deadline:
        clear = None
        if i in fault_at:
            fault_at.discard(i)
            kind = rng.choice(("EIO", "ENOSPC"))
            under = rng.choice(("", str(data / "log"), str(data / "projections")))
            _set_fault(faults, f"{kind} {under}".strip())
            o.faults += 1
            clear = threading.Timer(rng.uniform(0.3, 1.5), _set_fault, (faults, ""))
            clear.start()
            if rng.random() < 0.3:  # and a kill while the disk refuses writes
                client.post(url, chunks[i])
                clear.join()
                o.kills += 1
                o.mid += kill(proc)
                proc, url = _start(data, o, **hook)
                continue
        for _ in range(200):  # a refused chunk is sent again until the fault clears
            if client.post(url, chunks[i]):
                i += 1
                break
            time.sleep(0.05)
        else:
            o.errors.append("a chunk was refused for 10 s after its fault cleared")
            break
        if clear is not None:
            clear.join()
    o.refused_503 = client.refused_503
    o.errors += client.odd
    if url is None:
        return
    if i < len(chunks):
        o.errors.append(f"only {i} of {len(chunks)} chunks acknowledged in time")
    if not _ready(url, 30):
        o.errors.append("/v1/ready did not answer 200 within 30 s of the last fault clearing")
    _judge_node(st, o, data, proc, url, client.acked, client.refused, rng, client.server_errors)


def _ready(url: str, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/ready", timeout=10).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


KINDS: dict[str, Callable[[Stage, Outcome, Path, random.Random], None]] = {
    "ingest": trial_ingest, "node": trial_node, "fold": trial_fold, "reproject": trial_reproject,
    "snapshot": trial_snapshot, "restore": trial_restore, "faults": trial_faults,
}


def run_trial(st: Stage, kind: str, n: int, rng: random.Random) -> Outcome:
    """Trial ``n`` of ``kind`` in its own directory (removed afterwards when it passed)."""
    o = Outcome(kind)
    d = st.work / f"{kind}-{n}"
    d.mkdir()
    t0 = time.monotonic()
    try:
        KINDS[kind](st, o, d, rng)
    except Exception as exc:  # noqa: BLE001  # a harness step blew up: the trial failed, the run goes on
        o.errors.append(f"{type(exc).__name__}: {str(exc)[:500]}")
    o.seconds = time.monotonic() - t0
    if o.ok:
        shutil.rmtree(d, ignore_errors=True)
    return o
