"""Kafka mode, one projection over many workers: the balances projection sharded by account
(ledgerlog/streams/shards) folded on a Tansu broker by one worker process, then by two, over the
same repartition topic; ``ratios.kafka_workers_2_vs_1`` is the second rate over the first.

Setup (not timed in the ratio): a Tansu broker, a Kafka chain holding the history (at most
``CAP`` events of it), and the deriver's pass that writes the repartition topic (its own rate is
reported as ``derive``). Each pass then starts fresh worker processes with empty stores, waits
until every one is ready (imports, broker connection, stores opened: excluded), tells them to go,
and times until the last has folded its partitions to the end: each worker is the shard engine of
`ledgerlog stream-worker --shard balances`, with its partitions given by ``assign`` (the group's
join delays are not the fold's cost). One and two workers alternate, each figure by ``steady``.
The combined digest of every pass is checked against the embedded fold's.

Run alone: ``python -m benchmarks.kafka_workers --events N`` (prints JSON)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
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
    """The figure; ``{"error": ...}`` (never an exception) when the broker or a step fails."""
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


def _run(bootstrap: str, genesis: dict[str, Any], history_path: str, work: str, events: int | None,
         reference_digest: str | None) -> dict[str, Any]:
    from ledgerlog.engine.chain import init_chain, open_chain
    from ledgerlog.streams.shards.deriver import Deriver
    from ledgerlog.streams.shards.repartition import Names
    from ledgerlog.streams.shards.topics import ensure_topics

    cfg = _config(work, bootstrap)
    init_chain(cfg, genesis)
    cap = min(events or CAP, CAP)
    with open(history_path, "rb") as f:
        lines = [ln for _, ln in zip(range(cap), f)]
        whole = not f.readline()  # the whole history is on the broker: the embedded digest applies
    out: dict[str, Any] = {"broker": "tansu", "partitions": PARTITIONS, "history_lines": len(lines)}
    with open_chain(cfg) as chain:
        t = time.perf_counter()
        chain.admitter.admit(lines)
        out["ingest_seconds"] = round(time.perf_counter() - t, 2)
        kafka = cfg.kafka_connection()
        names = Names(kafka.topic_prefix, chain.genesis.hash)
        n = ensure_topics(kafka, names, PARTITIONS)
        deriver = Deriver(chain.log, chain.codec, chain.genesis, kafka, names, n)
        try:
            t = time.perf_counter()
            derived = deriver.run(until_idle=True)
            secs = time.perf_counter() - t
            ends = list(deriver.progress.ends)
            out["derive"] = {"events": derived, "rows": sum(ends), "seconds": round(secs, 3),
                             "events_per_s": rate(derived, secs)}
        finally:
            deriver.close()
    args = {"data_dir": cfg.data_dir, "bootstrap": bootstrap, "ends": ends}
    digests: list[str] = []
    busy: dict[int, list[float]] = {1: [], 2: []}  # workers' CPU seconds / wall seconds, per pass

    def one_pass(workers: int) -> tuple[float, float]:
        shares = [list(range(w, n, workers)) for w in range(workers)]
        secs, got, cpu = _fold_pass(args, shares, work)
        digests.append(got)
        busy[workers].append(cpu / secs)
        return derived, secs

    one: list[dict[str, Any]] = []
    two: list[dict[str, Any]] = []
    for _ in range(3):  # alternate, so both see the same load
        one.append(steady(lambda: one_pass(1), runs=1))
        two.append(steady(lambda: one_pass(2), runs=1))
    out["one_worker"], out["two_workers"] = _median(one), _median(two)
    for key, w in (("one_worker", 1), ("two_workers", 2)):  # cores the workers kept busy (of ``w``)
        out[key]["cores_busy"] = round(sorted(busy[w])[len(busy[w]) // 2], 2)
    for key in ("one_worker", "two_workers"):
        out[key]["events"] = derived
    out["digests_equal"] = len(set(digests)) == 1  # every pass, 1 or 2 workers, the same state
    out["digest"] = digests[0]
    out["digest_equals_embedded"] = (digests[0] == reference_digest) if reference_digest and whole else None
    out["cpus"] = os.cpu_count()
    return out


def _median(figs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = sorted(f["per_s"] for f in figs)
    mid = rates[len(rates) // 2]
    return {"events_per_s": mid, "runs_per_s": [f["per_s"] for f in figs],
            "spread": round((rates[-1] - rates[0]) / mid, 3) if mid else None,
            "seconds": next(f["seconds"] for f in figs if f["per_s"] == mid)}


def _fold_pass(args: dict[str, Any], shares: list[list[int]], work: str) -> tuple[float, str, float]:
    """Start one worker process per share, wait until all are ready, let them go; the seconds
    until the last is done, the combined digest, and the CPU seconds the workers used."""
    from ledgerlog.streams.shards.repartition import combine_digests

    procs = []
    for share in shares:
        wdir = tempfile.mkdtemp(prefix="kw-", dir=work)
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.kafka_workers", "--child",
                                       json.dumps({**args, "partitions": share, "dir": wdir})],
                                      cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != _READY:
                raise RuntimeError(f"worker not ready: {line!r}")
        t = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            lines = [ln for ln in p.stdout.read().splitlines() if ln.startswith(MARK)]
            if p.wait(timeout=600) != 0 or not lines:
                raise RuntimeError(f"worker failed (exit {p.returncode})")
            results.append(json.loads(lines[-1][len(MARK):]))
        secs = time.perf_counter() - t
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return secs, combine_digests(d for r in results for d in r["digests"]), sum(r["cpu_seconds"] for r in results)


def _child(args: dict[str, Any]) -> None:
    """One worker: the shard engine over the given partitions, told to go on stdin."""
    from ledgerlog.engine.codec import Codec, Registry
    from ledgerlog.engine.genesis import Genesis
    from ledgerlog.engine.log import open_log
    from ledgerlog.streams.shards.engine import ShardEngine
    from ledgerlog.streams.shards.repartition import Names

    cfg = _config(os.path.dirname(args["data_dir"]), args["bootstrap"])
    kafka = cfg.kafka_connection()
    genesis = Genesis.load(cfg.genesis_path)
    log = open_log(cfg.resolved_log_url, read_only=True, sync=False, kafka=kafka.replace(state_dir=None))
    ends, parts = args["ends"], args["partitions"]
    engine = ShardEngine(log, Codec(Registry(log)), genesis, kafka, Names(kafka.topic_prefix, genesis.hash),
                         len(ends), args["dir"], batch=args.get("batch", 5000))
    try:
        engine.start()
        print(_READY, flush=True)
        sys.stdin.readline()
        cpu = time.process_time()
        engine.assign(parts)
        while True:
            shards = engine.status()["shards"]
            if len(shards) == len(parts) and all(s["position"] >= ends[int(k)] for k, s in shards.items()):
                break
            if engine.error:
                raise RuntimeError(engine.error)
            time.sleep(0.01)
        print(MARK + json.dumps({"digests": [s["digest"] for s in shards.values()],
                                 "cpu_seconds": time.process_time() - cpu}), flush=True)
    finally:
        engine.stop()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kafka_workers", description=__doc__.split("\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, default=20_000)
    a = ap.parse_args()
    if a.child:
        _child(json.loads(a.child))
        return
    from ledgerlog.ops.devtools.histgen import make_genesis, write_history

    work = tempfile.mkdtemp(prefix="ll-kw-")
    genesis, keys = make_genesis(11, wallets=64)
    path = os.path.join(work, "history.jsonl")
    write_history(path, genesis, keys, events=a.events, seed=11)
    print(json.dumps(kafka_workers(genesis, path, work, events=a.events), indent=2))


if __name__ == "__main__":
    main()
