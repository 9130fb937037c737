"""Kafka mode, one projection over many workers: the balances projection sharded by account
(ledgerlog/streams/shards) on a Tansu broker, by one worker process and by two.

Setup (not timed): a Tansu broker and a Kafka chain holding the history (at most ``CAP`` events).
Two figures, each for 1 and 2 worker processes, alternating, each by ``steady`` (passes repeated
to at least 2 s, median of three runs with their spread):

- **end to end** (``one_worker`` / ``two_workers``; ``ratios.kafka_workers_2_vs_1``): fresh
  repartition topics and empty stores each pass; the workers share the derive leases (source
  partitions) and the shards as the group deals them (``LeaseLayout.dealt``), derive and fold at
  once, and the pass ends when every source partition is derived and every shard has folded all
  of it. The rate is the chain's balances events (the five source topics) per second.
- **fold only** (``fold_only``): one process derives the repartition topic once (its rate is
  ``derive``), then each pass folds that topic with empty stores, shards split between the workers.

Each pass starts fresh worker processes, waits until every one is ready (imports, broker
connection, stores opened: excluded) and tells them to go; each worker is the shard engine of
`ledgerlog stream-worker --shard balances` with its leases given by ``assign`` (the group's join
delays are not the work's cost). The workers' and the broker's CPU seconds are measured over each
pass's work (from the go until the last worker's result).
The combined digest of every pass is checked against the embedded fold's.

Run alone: ``python -m benchmarks.kafka_workers --events N [--work DIR]`` (prints JSON; its temp
work directory is removed unless ``--work`` names one)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Any

from ledgerlog.engine.errors import LedgerError

from .common import MARK, ROOT, rate, steady

__all__ = ["CAP", "PARTITIONS", "kafka_workers"]

#: History events put on the broker at most (Kafka ingest and the derive pass cost setup time).
CAP = 200_000
#: Repartition partitions: more than the workers, so a share is several whole partitions.
PARTITIONS = 8
_READY = "READY"


def kafka_workers(genesis: dict[str, Any], history_path: str, work: str, *, events: int | None = None,
                  reference_digest: str | None = None) -> dict[str, Any]:
    """The figures; ``{"error": ...}`` (never an exception) when the broker or a step fails."""
    from ledgerlog.ops.devtools.tansu import broker_binary, tansu

    try:
        broker_binary()
    except LedgerError as exc:
        return {"error": f"no Kafka broker (Tansu): {exc}"}
    try:
        with tansu(os.path.join(work, "tansu-workers.log")) as bootstrap:
            return _run(bootstrap, genesis, history_path, work, events, reference_digest)
    except Exception as exc:  # noqa: BLE001 - a broken step is reported, the bench goes on
        return {"error": f"{type(exc).__name__}: {exc}"}


def _config(work: str, bootstrap: str) -> Any:
    from ledgerlog.engine.config import Config

    return Config(data_dir=os.path.join(work, "kw-data"), log_url=f"kafka://{bootstrap}", sync=False,
                  kafka={"ledgerlog.topic_prefix": "kw."})


def _broker_cpu() -> float:
    """CPU seconds used so far by this process's child brokers (Tansu)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)
            name = fields[0].split("(", 1)[1]
            rest = fields[1].split()
        except (OSError, IndexError):
            continue
        if name.startswith("tansu") and int(rest[1]) == os.getpid():
            total += (int(rest[11]) + int(rest[12])) / tick
    return total


def _run(bootstrap: str, genesis: dict[str, Any], history_path: str, work: str, events: int | None,
         reference_digest: str | None) -> dict[str, Any]:
    from ledgerlog.engine.chain import init_chain, open_chain
    from ledgerlog.streams.shards.deriver import Deriver
    from ledgerlog.streams.shards.repartition import LeaseLayout, Names, source_partitions
    from ledgerlog.streams.shards.topics import ensure_topics

    cfg = _config(work, bootstrap)
    init_chain(cfg, genesis)
    cap = min(events or CAP, CAP)
    with open(history_path, "rb") as f:
        lines = [ln for _, ln in zip(range(cap), f)]
        whole = not f.readline()  # the whole history is on the broker: the embedded digest applies
    out: dict[str, Any] = {"broker": "tansu", "partitions": PARTITIONS, "history_lines": len(lines),
                           "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with open_chain(cfg) as chain:
        t = time.perf_counter()
        chain.admitter.admit(lines)
        out["ingest_seconds"] = round(time.perf_counter() - t, 2)
        kafka = cfg.kafka_connection()
        sources = source_partitions(chain.log)
        source_ends = [chain.log.end_offsets(t)[p] for t, p in sources]
        out["sources"] = len(sources)
        names = Names("kwf.", chain.genesis.hash)
        n = ensure_topics(kafka, names, PARTITIONS, len(sources))
        deriver = Deriver(chain.log, chain.codec, chain.genesis, kafka, names, n)
        try:
            deriver.wait_writable()  # setup, as the workers' readiness: the producer's id
            t, cpu = time.perf_counter(), time.process_time()
            derived = deriver.run(until_idle=True)
            secs, cpu = time.perf_counter() - t, time.process_time() - cpu
            ends = [max(lz.now.ends[k] for lz in deriver.leases.values()) for k in range(n)]
            out["derive"] = {"events": derived, "records": sum(ends), "seconds": round(secs, 3),
                             "events_per_s": rate(derived, secs), "cpu_seconds": round(cpu, 2),
                             "note": "one process deriving every source partition"}
        finally:
            deriver.close()
        total = derived  # the chain's balances events: what each pass derives and folds
        out["balances_events"] = total
        passes = [0]

        def fresh_names() -> str:  # end to end: new repartition topics each pass
            passes[0] += 1
            prefix = f"kw{passes[0]}."
            ensure_topics(kafka, Names(prefix, chain.genesis.hash), n, len(sources))
            return prefix

        base = {"data_dir": cfg.data_dir, "bootstrap": bootstrap, "source_ends": source_ends}
        digests: list[str] = []
        cpu_of: dict[tuple[str, int], list[tuple[float, float, float]]] = {}

        # each worker holds what the group's assignor deals a new group of this size
        layout = LeaseLayout(n, sources)
        dealt = {w: layout.dealt(w) for w in (1, 2)}

        def one_pass(mode: str, workers: int) -> tuple[float, float]:
            held = dealt[workers]
            shards = [sorted(sh) for sh, _ in held]
            if mode == "e2e":
                args = {**base, "prefix": fresh_names(), "ends": None}
                derive = [sorted(de) for _, de in held]
            else:
                args = {**base, "prefix": "kwf.", "ends": ends}
                derive = [[] for _ in range(workers)]
            secs, got, cpu, broker = _pass(args, list(zip(shards, derive)), work)
            digests.append(got)
            cpu_of.setdefault((mode, workers), []).append((secs, cpu, broker))
            return total, secs

        figs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for _ in range(3):  # alternate, so each figure sees the same load
            for mode in ("e2e", "fold"):
                for w in dealt:
                    figs.setdefault((mode, w), []).append(steady(partial(one_pass, mode, w), runs=1))
    fold_only: dict[str, Any] = {}
    for (mode, w), got in figs.items():
        fig = _median(got)
        runs = cpu_of[(mode, w)]
        wall = sum(r[0] for r in runs)
        fig.update(events=total, workers=w, cores_busy=round(sum(r[1] for r in runs) / wall, 2),
                   broker_cores_busy=round(sum(r[2] for r in runs) / wall, 2),
                   cpu_us_per_event=round(1e6 * sum(r[1] for r in runs) / (total * len(runs)), 1),
                   broker_cpu_us_per_event=round(1e6 * sum(r[2] for r in runs) / (total * len(runs)), 1))
        key = "one_worker" if w == 1 else "two_workers"
        if mode == "e2e":
            out[key] = fig
        else:
            fold_only[key] = fig
    fold_only["ratio_2_vs_1"] = round(fold_only["two_workers"]["events_per_s"] / fold_only["one_worker"]["events_per_s"], 3)
    out["fold_only"] = fold_only
    out["figure"] = ("one_worker / two_workers: end to end (derive + fold) of the chain's balances events; "
                     "fold_only: folding an already derived repartition topic")
    out["digests_equal"] = len(set(digests)) == 1  # every pass, 1 or 2 workers, the same state
    out["digest"] = digests[0]
    out["digest_equals_embedded"] = (digests[0] == reference_digest) if reference_digest and whole else None
    out["cpus"] = os.cpu_count()
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _median(figs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = sorted(f["per_s"] for f in figs)
    mid = rates[len(rates) // 2]
    return {"events_per_s": mid, "runs_per_s": [f["per_s"] for f in figs],
            "spread": round((rates[-1] - rates[0]) / mid, 3) if mid else None,
            "seconds": next(f["seconds"] for f in figs if f["per_s"] == mid)}


def _pass(args: dict[str, Any], shares: list[tuple[list[int], list[int]]],
          work: str) -> tuple[float, str, float, float]:
    """Start one worker process per share (shards, source partitions to derive), wait until all
    are ready, let them go; the seconds until the last is done, the combined digest, the CPU
    seconds the workers used until then, and the broker's CPU seconds from the go until the last
    worker's result came."""
    from ledgerlog.streams.shards.repartition import combine_digests

    procs = []
    for shards, derive in shares:
        wdir = tempfile.mkdtemp(prefix="kw-", dir=work)
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.kafka_workers", "--child",
                                       json.dumps({**args, "shards": shards, "derive": derive, "dir": wdir})],
                                      cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != _READY:
                raise RuntimeError(f"worker not ready: {line!r}")
        broker, t = _broker_cpu(), time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        results = []
        for p in procs:  # each prints its result when done, then shuts down
            assert p.stdout is not None
            line = ""
            while not line.startswith(MARK):
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError(f"worker failed (exit {p.wait(timeout=600)})")
            results.append(json.loads(line[len(MARK):]))
        broker = _broker_cpu() - broker  # while they worked: their start-up and shutdown are not the work's
        for p in procs:
            assert p.stdout is not None
            p.stdout.read()
            if p.wait(timeout=600) != 0:
                raise RuntimeError(f"worker failed (exit {p.returncode})")
        # the work's time: from GO until the last worker was done, as the workers timed it (their
        # shutdown after it, a few hundred ms of joining threads, is not the work's)
        secs = max(r["seconds"] for r in results)
        assert secs <= time.perf_counter() - t
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return secs, combine_digests(d for r in results for d in r["digests"]), sum(r["cpu_seconds"] for r in results), broker


def _child(args: dict[str, Any]) -> None:
    """One worker: the shard engine over the given shards and source partitions, told to go on
    stdin; done when every source partition is derived and its shards have folded all of it."""
    from ledgerlog.engine.codec import Codec, Registry
    from ledgerlog.engine.genesis import Genesis
    from ledgerlog.engine.log import open_log
    from ledgerlog.streams.shards.engine import ShardEngine
    from ledgerlog.streams.shards.repartition import Names

    cfg = _config(os.path.dirname(args["data_dir"]), args["bootstrap"])
    kafka = cfg.kafka_connection()
    genesis = Genesis.load(cfg.genesis_path)
    log = open_log(cfg.resolved_log_url, read_only=True, sync=False, kafka=kafka.replace(state_dir=None))
    source_ends, shards = args["source_ends"], args["shards"]
    engine = ShardEngine(log, Codec(Registry(log)), genesis, kafka, Names(args["prefix"], genesis.hash),
                         PARTITIONS, args["dir"], batch=args.get("batch", 5000), progress_every=0.1)
    try:
        engine.start()
        print(_READY, flush=True)
        sys.stdin.readline()
        cpu, t0 = time.process_time(), time.perf_counter()
        engine.assign(shards, args["derive"])
        derived_s = None
        while True:
            progress = engine.progress
            derived = all(j in progress and progress[j].position >= end for j, end in enumerate(source_ends))
            if derived:
                if derived_s is None:
                    derived_s = time.perf_counter() - t0
                ends = [max(r.ends[k] for r in progress.values()) for k in range(PARTITIONS)]
                got = engine.status()["shards"]
                if len(got) == len(shards) and all(s["position"] >= ends[int(k)] and not s["rows_held"]
                                                   for k, s in got.items()):
                    break
            if engine.error:
                raise RuntimeError(engine.error)
            time.sleep(0.01)
        print(MARK + json.dumps({"digests": [s["digest"] for s in got.values()], "derived_s": derived_s,
                                 "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu}),
              flush=True)
    finally:
        engine.stop()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kafka_workers", description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--work", help="work in this directory (default: a temp dir, removed)")
    a = ap.parse_args()
    if a.child:
        _child(json.loads(a.child))
        return
    from ledgerlog.ops.devtools.histgen import make_genesis, write_history

    work = a.work or tempfile.mkdtemp(prefix="ll-kw-")
    os.makedirs(work, exist_ok=True)
    try:
        genesis, keys = make_genesis(11, wallets=64)
        path = os.path.join(work, "history.jsonl")
        write_history(path, genesis, keys, events=a.events, seed=11)
        print(json.dumps(kafka_workers(genesis, path, work, events=a.events), indent=2))
    finally:
        if a.work is None:  # a run leaves ~200 MB of chain, stores and broker log otherwise
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
