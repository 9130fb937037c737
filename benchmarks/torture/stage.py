"""What every trial starts from, made once per run: the workload, its genesis file, prepared data
dirs (the mixed input ingested; ingested and folded; a prefix of it; a snapshot), which line ids
each acknowledged, and how long each uninterrupted operation took (kills are placed inside that)."""
from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ledgerlog.ops.devtools.histgen import write_genesis

from .inputs import LineId, Workload, line_id
from .kit import cli, ok_json, start_node, stop_node, wait_node_url

__all__ = ["Ingested", "Stage", "acknowledged", "prepare"]


@dataclass
class Ingested:
    """A data dir and what its ingest acknowledged (accepted or duplicate) and refused."""

    data: Path
    acked: set[LineId]
    refused: set[LineId]


@dataclass
class Stage:
    work: Path
    w: Workload
    genesis: Path
    junk: int
    full: Ingested          # the mixed input ingested and folded
    ingested: Path          # the same, before any fold (no projections yet)
    half: Ingested          # a prefix of it, folded
    snapshot: Path          # a snapshot of ``full``
    plant_loss: bool = False
    est: dict[str, float] = field(default_factory=dict)  # seconds an uninterrupted run took

    def timed(self, what: str, seconds: float) -> None:
        """Remember how long an uninterrupted ``what`` took (a running mean)."""
        self.est[what] = seconds if what not in self.est else 0.5 * (self.est[what] + seconds)


def acknowledged(lines: list[bytes], summary: dict) -> tuple[set[LineId], set[LineId]]:
    """The ids of the lines an ingest summary accepted (or found duplicate), and of those it refused;
    line numbers count from 1 over ``lines``."""
    refused_at = {r["line"] for r in summary["rejections"]}
    acked: set[LineId] = set()
    refused: set[LineId] = set()
    for i, line in enumerate(lines, 1):
        lid = line_id(line)
        if lid is not None:
            (refused if i in refused_at else acked).add(lid)
    return acked, refused


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _ingest(st_work: Path, gpath: Path, name: str, lines: list[bytes]) -> tuple[Ingested, float]:
    data = st_work / name
    ok_json(cli(data, "init", "--genesis", str(gpath)))
    t0 = time.monotonic()
    proc = cli(data, "ingest", str(write_lines(st_work / f"{name}.jsonl", lines)))
    took = time.monotonic() - t0
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return Ingested(data, *acknowledged(lines, json.loads(proc.stdout))), took


def prepare(work: Path, w: Workload, rng: random.Random, junk: int) -> Stage:
    gpath = work / "genesis.json"
    write_genesis(gpath, w.genesis)
    lines = w.mixed(rng, junk)
    full, took_ingest = _ingest(work, gpath, "full", lines)
    shutil.copytree(full.data, work / "ingested")
    t0 = time.monotonic()
    ok_json(cli(full.data, "status"))  # folds every projection
    took_fold = time.monotonic() - t0
    half, _ = _ingest(work, gpath, "half", lines[:len(lines) // 2])
    ok_json(cli(half.data, "status"))
    t0 = time.monotonic()
    snap = ok_json(cli(full.data, "snapshot", "create", "--out", str(work / "snapshots")))
    took_snap = time.monotonic() - t0
    st = Stage(work, w, gpath, junk, full, work / "ingested", half, Path(snap["path"]))
    up = _node_ready_after(full.data)  # start-up alone: nothing to fold
    shutil.copytree(st.ingested, work / "cold")
    cold = _node_ready_after(work / "cold")  # start-up and a fold of the whole log
    shutil.rmtree(work / "cold")
    st.est.update(ingest=took_ingest, fold=took_fold, node_up=up, node_fold=max(0.05, cold - up),
                  reproject=2 * took_fold, snapshot=took_snap, restore=took_snap, post=0.1)
    return st


def _node_ready_after(data: Path) -> float:
    """Seconds from starting a node on ``data`` to its first answer (it is stopped after)."""
    t0 = time.monotonic()
    proc = start_node(data)
    try:
        if wait_node_url(data, proc, limit=120) is None:
            raise RuntimeError(f"a node on {data} did not come up (exit {proc.poll()})")
        return time.monotonic() - t0
    finally:
        stop_node(proc)
