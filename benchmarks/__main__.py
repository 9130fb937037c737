"""ledgerlog's own figures on one generated history, measured in one run: signed ingest through
admission (durable), full rebuild of all projections and of balances alone, HTTP account lookups
from a separate load process, and the Ed25519 verify ceiling. Peers are not measured yet."""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import orjson
from nacl.signing import SigningKey

from engine.chain import init_chain, open_chain
from engine.config import Config
from ops.histgen import make_genesis, write_history
from streams.runner import Runner

SIZES = {"tiny": 3_000, "small": 100_000, "full": 1_000_000}


def verify_ceiling(n: int = 3000) -> float:
    key = SigningKey.generate()
    msg = b"x" * 90
    sig = key.sign(msg).signature
    vk = key.verify_key
    t = time.perf_counter()
    for _ in range(n):
        vk.verify(msg, sig)
    return n / (time.perf_counter() - t)


def rebuild(chain, names=None) -> tuple[int, float]:  # noqa: ANN001
    d = tempfile.mkdtemp(prefix="ll-rebuild-")
    try:
        r = Runner(chain.log, chain.codec, chain.genesis, d, names=names)
        t = time.perf_counter()
        n = r.catch_up()
        secs = time.perf_counter() - t
        r.close()
        return n, secs
    finally:
        shutil.rmtree(d, ignore_errors=True)


def query(data_dir: str, addresses: list[str], rate: float, count: int) -> dict:
    exe = os.path.join(os.path.dirname(sys.executable), "ledgerlog")
    node = subprocess.Popen([exe, "--data-dir", data_dir, "run", "--port", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                url = json.load(open(os.path.join(data_dir, "node.json")))["url"]
                break
            except (OSError, ValueError, KeyError):
                time.sleep(0.2)
        args = json.dumps({"url": url, "addresses": addresses, "rate": rate, "count": count, "max_seconds": 30})
        out = subprocess.run([sys.executable, "-m", "benchmarks.load", args], capture_output=True, check=True)
        return json.loads(out.stdout)
    finally:
        node.terminate()
        node.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(prog="benchmarks")
    ap.add_argument("--size", default="small", help="tiny, small, full or a number of events")
    ap.add_argument("--out", default="bench-out")
    args = ap.parse_args()
    events = SIZES.get(args.size) or int(args.size)
    work = tempfile.mkdtemp(prefix="ll-bench-")
    res: dict = {"size_events": events, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                    "platform": platform.platform()}}
    try:
        genesis, keys = make_genesis(11, wallets=64)
        hist = os.path.join(work, "history.jsonl")
        t = time.perf_counter()
        stats = write_history(hist, genesis, keys, events=events, seed=11)
        res["generate_seconds"] = round(time.perf_counter() - t, 2)
        res["history"] = stats.to_dict()
        cfg = Config(data_dir=os.path.join(work, "data"))
        init_chain(cfg, genesis)
        chain = open_chain(cfg)
        with open(hist, "rb") as f:
            t = time.perf_counter()
            summary = chain.admitter.admit(line.rstrip(b"\n") for line in f)
            secs = time.perf_counter() - t
        assert summary.rejected == 0, summary.rejections[:3]
        res["ingest"] = {"lines": summary.accepted, "seconds": round(secs, 2),
                         "lines_per_s": round(summary.accepted / secs), "events_per_s": round(stats.events / secs),
                         "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
        n, secs = rebuild(chain)
        res["rebuild_all"] = {"events": n, "seconds": round(secs, 2), "events_per_s": round(n / secs)}
        n, secs = rebuild(chain, ["balances"])
        res["rebuild_balances"] = {"events": n, "seconds": round(secs, 2), "events_per_s": round(n / secs)}
        r = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        r.catch_up()
        r.close()
        chain.close()
        addresses = [w.address for w in keys.wallets]
        res["query_max"] = query(cfg.data_dir, addresses, 0, 5000)
        res["query_at_1000"] = query(cfg.data_dir, addresses, 1000, 5000)
        res["ceiling"] = {"ed25519_verify_per_s_one_core": round(verify_ceiling())}
        res["ratios"] = {"signed_ingest_vs_2core_verify": round(res["ingest"]["lines_per_s"] /
                                                                 (2 * res["ceiling"]["ed25519_verify_per_s_one_core"]), 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "wb") as f:
        f.write(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    for k in ("ingest", "rebuild_all", "rebuild_balances", "query_max", "query_at_1000", "ceiling", "ratios"):
        print(f"{k:18} {json.dumps(res[k])}")


if __name__ == "__main__":
    main()
