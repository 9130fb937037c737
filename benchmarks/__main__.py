"""``python -m benchmarks --size tiny|small|full|N``: one run, on one generated history, of
ledgerlog's ingest (signed, and unsigned shares), rebuild (first fold, reproject all and
balances alone), balances sharded over 1 and 2 Kafka worker processes (on Tansu) and HTTP
queries; the framework-free ceilings on the same bytes; and the peers
(naive SQLite, eventsourcing, quixstreams, faust-streaming) folding the same transfer events.
Prints one table and writes ``<out>/results.json``. Timings are for reading, never asserted."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.tansu import version as tansu_version

from . import ceiling, history, report
from .common import MIN_SECONDS_ENV, machine, plan_for, versions
from .ingest import ingest
from .kafka_workers import kafka_workers
from .peers import PEERS, run_peers
from .query import query
from .rebuild import rebuild
from .trees import trees


def _peer_names(spec: str) -> list[str]:
    if spec in ("", "none"):
        return []
    if spec == "all":
        return list(PEERS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; have {', '.join(PEERS)}")
    return names


def _step(res: dict[str, Any], label: str) -> None:
    print(f"[bench {time.monotonic() - res['_t0']:7.1f}s] {label}", file=sys.stderr, flush=True)


def run(size: str, out: str, peers: list[str], keep: str | None, query_rate: float | None = None) -> dict[str, Any]:
    plan = plan_for(size)
    if query_rate:
        plan = replace(plan, query_rate=query_rate)
    os.environ[MIN_SECONDS_ENV] = str(plan.min_seconds)  # steady() here and in child processes
    work = keep or tempfile.mkdtemp(prefix="ll-bench-")
    os.makedirs(work, exist_ok=True)
    res: dict[str, Any] = {"_t0": time.monotonic(), "size": plan.name, "plan": plan.to_dict(),
                           "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "machine": machine(), "versions": {**versions(), "tansu": tansu_version()}}
    try:
        _step(res, f"generating {plan.events:,} events (signed) and {plan.unsigned_events:,} shares")
        inputs = history.make_inputs(work, plan.events)
        shares_path, shares_stats = history.write_shares_history(work, plan.unsigned_events)
        res["history"] = {"signed": {**inputs["stats"], "generate_seconds": inputs["seconds"],
                                     "bytes": inputs["bytes"]}, "shares": shares_stats}
        data = os.path.join(work, "data")
        _step(res, "ingest: signed history")
        res["ingest"] = {"signed": ingest(data, inputs["genesis"], inputs["path"], inputs["stats"])}
        _step(res, "ingest: shares")
        res["ingest"]["unsigned"] = ingest(os.path.join(work, "shares-data"), inputs["genesis"], shares_path,
                                           shares_stats)
        shutil.rmtree(os.path.join(work, "shares-data"), ignore_errors=True)
        _step(res, "verifiable log: ingest with and without trees, proofs, tree storage")
        res["trees"] = trees(work, inputs["genesis"], shares_path, shares_stats, signed_data=data,
                             proofs=plan.query_count, seconds=plan.query_seconds)
        _step(res, "rebuild: first fold, reproject all, reproject balances")
        rb = rebuild(data)
        res["rebuild"] = {"first_fold": rb["first_fold"], "all": rb["rebuild_all"], "balances": rb["rebuild_balances"]}

        cfg = Config(data_dir=data)
        _step(res, "kafka workers: balances sharded by account, 1 vs 2 worker processes (Tansu)")
        res["kafka_workers"] = kafka_workers(inputs["genesis"], inputs["path"], work,
                                             reference_digest=_balances_digest(cfg))
        transfers = os.path.join(work, "transfers.jsonl")
        with open_chain(cfg, read_only=True) as chain:
            n_transfers = history.export_transfers(chain.log, chain.codec, transfers)
        reference = history.checksum(history.fold(history.load_events(transfers)))
        res["history"]["transfer_events"] = n_transfers
        res["checks"] = {"reference_checksum": reference}

        _step(res, "ceiling: fold, append, Ed25519")
        res["ceiling"] = {"fold": ceiling.fold_ceiling(cfg.log_path, work),
                          "append": ceiling.append_ceiling(cfg.log_path, work), "ed25519": ceiling.ed25519()}
        res["checks"]["ceiling_checksum_ok"] = res["ceiling"]["fold"]["checksum"] == reference

        _step(res, "query: node + load process")
        addresses = [w.address for w in inputs["keys"].wallets]
        try:
            res["query"] = query(data, addresses, count=plan.query_count, seconds=plan.query_seconds,
                                 rate=plan.query_rate)
        except Exception as exc:  # noqa: BLE001 - a node that will not start is reported, not fatal
            res["query"] = {"error": f"{type(exc).__name__}: {exc}"}

        res["peers"] = {}
        for name in peers:
            _step(res, f"peer: {name}")
            res["peers"].update(run_peers([name], transfers, n_transfers, plan, work))
        res["checks"]["peers_checksum_ok"] = {n: p.get("checksum_ok") for n, p in res["peers"].items()}
        res["ratios"] = report.ratios(res)
        res["goals"] = report.goals(res)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    res["seconds_total"] = round(time.monotonic() - res.pop("_t0"), 1)
    res["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = report.write(res, out)
    print(report.table(res))
    print(f"results: {path} ({res['seconds_total']} s)")
    return res


def _balances_digest(cfg: Config) -> str | None:
    """The embedded balances digest the rebuild step left (what the Kafka shards must sum to)."""
    from ledgerlog.streams.runner import Runner

    with open_chain(cfg, read_only=True) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, names=["balances"], read_only=True)
        try:
            return runner.digests().get("balances")
        finally:
            runner.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="small", help="tiny, small, full (1M events) or a number of events")
    ap.add_argument("--out", default="bench-out", help="where results.json goes")
    ap.add_argument("--peers", default="all", help=f"all, none, or a comma list of: {', '.join(PEERS)}")
    ap.add_argument("--query-rate", type=float, help="the fixed offered query rate, requests/s (default per size)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir, removed)")
    args = ap.parse_args()
    run(args.size, args.out, _peer_names(args.peers), args.keep, args.query_rate)


if __name__ == "__main__":
    main()
