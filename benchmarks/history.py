"""The inputs of one run: a signed history (ops.histgen's default mix: transfers in blocks,
mempool submissions, shares, providers, readings, settlements, payouts), a shares-only history
for the unsigned ingest figure, and the transfer events exported once from ledgerlog's own log
into a neutral JSONL file so that every peer folds identical input.

Neutral events, one JSON array a line, in block order (a block's transactions by index, then
its credit): ``["t", sender, recipient, amount, fee]`` and ``["b", producer, reward + fees]``.
The fold every peer does: sender -= amount + fee, recipient += amount, producer += credit."""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ledgerlog.engine import topics as T
from ledgerlog.engine.codec import Codec
from ledgerlog.engine.log.base import Log
from ledgerlog.ops.devtools.histgen import make_genesis, write_history

__all__ = [
    "SEED",
    "checksum",
    "export_transfers",
    "fold",
    "load_events",
    "make_inputs",
    "write_shares_history",
]

SEED = 11
WALLETS = 64
#: Shares-only: the generator needs a trickle of transfers to seal blocks from.
SHARES_MIX = {"share": 1.0, "transaction": 0.01}


def make_inputs(work: str, events: int) -> dict[str, Any]:
    """Genesis, keys and the signed history file; what it holds and how long it took."""
    genesis, keys = make_genesis(SEED, wallets=WALLETS)
    path = os.path.join(work, "history.jsonl")
    t = time.perf_counter()
    stats = write_history(path, genesis, keys, events=events, seed=SEED)
    return {"genesis": genesis, "keys": keys, "path": path, "stats": stats.to_dict(),
            "seconds": round(time.perf_counter() - t, 2), "bytes": os.path.getsize(path)}


def write_shares_history(work: str, events: int) -> tuple[str, dict[str, Any]]:
    """A history of (unsigned) pool shares, with the few signed blocks that carry the height."""
    genesis, keys = make_genesis(SEED, wallets=WALLETS)
    path = os.path.join(work, "shares.jsonl")
    stats = write_history(path, genesis, keys, events=events, seed=SEED + 1, mix=SHARES_MIX)
    return path, stats.to_dict()


def export_transfers(log: Log, codec: Codec, out: str) -> int:
    """Write the neutral transfer events of ``log`` to ``out``; returns how many."""
    by_height: dict[int, list[tuple[int, list[Any]]]] = {}
    for p in range(log.partition_count(T.TRANSACTIONS)):
        for rec in log.scan(T.TRANSACTIONS, p):
            ev = codec.decode(T.TRANSACTIONS, rec.value)
            b = ev["body"]
            by_height.setdefault(ev["height"], []).append(
                (ev["index"], ["t", b["sender"], b["recipient"], b["amount"], b["fee"]]))
    n = 0
    with open(out, "wb") as f:
        for rec in log.scan(T.BLOCKS, 0):
            blk = codec.decode(T.BLOCKS, rec.value)
            rows = [e for _, e in sorted(by_height.pop(blk["header"]["height"], []), key=lambda x: x[0])]
            rows.append(["b", blk["header"]["producer"], blk["reward"] + blk["fees"]])
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
            n += len(rows)
    if by_height:
        raise RuntimeError(f"transactions of {len(by_height)} heights have no block on the log")
    return n


def load_events(path: str, limit: int | None = None) -> list[list[Any]]:
    """The first ``limit`` (default all) neutral events of ``path``."""
    out: list[list[Any]] = []
    with open(path, "rb") as f:
        for line in f:
            if limit is not None and len(out) >= limit:
                break
            out.append(orjson.loads(line))
    return out


def fold(events: Iterable[Sequence[Any]], bal: dict[str, int] | None = None) -> dict[str, int]:
    """The reference balance fold (from zero) every peer must reproduce."""
    bal = {} if bal is None else bal
    get = bal.get
    for e in events:
        if e[0] == "t":
            bal[e[1]] = get(e[1], 0) - e[3] - e[4]
            bal[e[2]] = get(e[2], 0) + e[3]
        else:
            bal[e[1]] = get(e[1], 0) + e[2]
    return bal


def checksum(balances: dict[str, int]) -> str:
    """A digest of final balances (zero balances left out), to check a peer folded the same."""
    items = sorted((a, b) for a, b in balances.items() if b)
    return hashlib.sha256(orjson.dumps(items)).hexdigest()[:16]
