"""The verifiable log's cost and speed (PROTOCOL.md §9): unsigned ingest with and without tree
upkeep on the same bytes in the same run (the write path's price for the Merkle trees), inclusion
and consistency proofs per second with their latency, and the tree store's bytes per million
records. ``python -m benchmarks.trees --events N`` runs it alone."""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ledgerlog.engine import logtree
from ledgerlog.engine import storekeys as K
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.log import embedded
from ledgerlog.engine.logtree import has_tree

from . import history
from .common import rate
from .ingest import ingest

__all__ = ["trees"]

_TREE_PREFIXES = (K.TREE_STATE_PREFIX, K.TREE_NODE_PREFIX, K.TREE_CHUNK_PREFIX)


@contextmanager
def _timed_upkeep(spent: list[float]) -> Iterator[None]:
    """Add the seconds spent folding records into the trees to ``spent[0]``: the direct measure of
    the upkeep's cost, steadier on a shared machine than the difference of two ingest runs."""
    extend = logtree.TreeFold.extend

    def timed(self: logtree.TreeFold, records: Any) -> None:
        t = time.perf_counter()
        extend(self, records)
        spent[0] += time.perf_counter() - t
    logtree.TreeFold.extend = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        logtree.TreeFold.extend = extend  # type: ignore[method-assign]


@contextmanager
def _no_trees() -> Iterator[None]:
    """The embedded log without tree upkeep: the baseline the trees' cost is measured against."""
    embedded.has_tree = lambda topic: False  # type: ignore[assignment]
    try:
        yield
    finally:
        embedded.has_tree = has_tree  # type: ignore[assignment]


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 3)


def _proofs(data: str, count: int, seconds: float) -> dict[str, Any]:
    """Random inclusion and consistency proofs over every tree of the chain at ``data``."""
    with open_chain(Config(data_dir=data), read_only=True) as chain:
        trees = chain.log.trees
        assert trees is not None
        parts = [(tp, st.size) for tp, st in trees.states().items() if st.size > 1]
        rng = random.Random(7)
        out: dict[str, Any] = {}
        for kind in ("inclusion", "consistency"):
            lat: list[float] = []
            start = time.perf_counter()
            while len(lat) < count and time.perf_counter() - start < seconds:
                (topic, p), n = rng.choice(parts)
                t = time.perf_counter()
                if kind == "inclusion":
                    trees.inclusion(topic, p, rng.randrange(n), n)
                else:
                    trees.consistency(topic, p, rng.randrange(1, n), n)
                lat.append(time.perf_counter() - t)
            secs = time.perf_counter() - start
            out[kind] = {"proofs": len(lat), "seconds": round(secs, 3), "per_s": rate(len(lat), secs),
                         "p50_ms": _percentile(lat, 0.5), "p99_ms": _percentile(lat, 0.99)}
        return out


def _storage(data: str) -> dict[str, Any]:
    """Bytes (keys + values, before compression) of the records and of the tree store."""
    with open_chain(Config(data_dir=data), read_only=True) as chain:
        db = chain.log.raw()
        assert db is not None
        records = record_bytes = tree_bytes = 0
        for key, value in db.items():
            if key.startswith(K.RECORD_PREFIX):
                records += 1
                record_bytes += len(key) + len(value)
            elif key.startswith(_TREE_PREFIXES):
                tree_bytes += len(key) + len(value)
    per_m = tree_bytes * 1_000_000 / records if records else None
    return {"records": records, "record_bytes": record_bytes, "tree_bytes": tree_bytes,
            "tree_bytes_per_million_records": round(per_m) if per_m is not None else None,
            "tree_vs_records": round(tree_bytes / record_bytes, 4) if record_bytes else None}


def trees(work: str, genesis: dict[str, Any], shares_path: str, shares_stats: dict[str, Any],
          signed_data: str | None = None, proofs: int = 20_000, seconds: float = 20.0) -> dict[str, Any]:
    """Unsigned ingest with and without trees (same history, alternated to share the machine's
    state), then proofs and storage on ``signed_data`` (default: the unsigned chain)."""
    runs: dict[str, list[float]] = {"with_trees": [], "without_trees": []}
    shares: list[float] = []  # per run with trees: upkeep seconds / ingest seconds
    keep = os.path.join(work, "trees-data")
    for i in range(2):
        for label in ("without_trees", "with_trees"):
            data = os.path.join(work, f"trees-{label}-{i}")
            if label == "with_trees":
                spent = [0.0]
                with _timed_upkeep(spent):  # one run (its passes): upkeep / the run's seconds
                    got = ingest(data, genesis, shares_path, shares_stats, runs=1)
                shares.append(spent[0] / got["seconds"])
            else:
                with _no_trees():
                    got = ingest(data, genesis, shares_path, shares_stats, runs=1)
            runs[label].append(got["events_per_s"])
            if label == "with_trees" and i == 1 and signed_data is None:
                os.replace(data, keep)
            else:
                shutil.rmtree(data, ignore_errors=True)
    best = {k: max(v) for k, v in runs.items()}
    target = signed_data or keep
    out = {"ingest_unsigned_events_per_s": best, "runs": runs,
           "ingest_cost": round(1 - best["with_trees"] / best["without_trees"], 4),
           "upkeep_share": round(sorted(shares)[len(shares) // 2], 4),
           # what upkeep_share times: folding into the trees in the appending process; a share's
           # leaf hash is made beside its record by the verify workers (engine/admission/prepare.py)
           "upkeep_measures": "tree folding in the appending process; shares' leaf hashes come from the workers",
           "proofs": _proofs(target, proofs, seconds), "storage": _storage(target)}
    shutil.rmtree(keep, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.trees", description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="shares in the unsigned history")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ll-bench-trees-")
    try:
        inputs = history.make_inputs(work, 2000)
        path, stats = history.write_shares_history(work, args.events)
        print(json.dumps(trees(work, inputs["genesis"], path, stats), indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
