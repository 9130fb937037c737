"""An observed node for tests: an in-process node on a generated chain with a faucet key and a
FastAPI TestClient over its HTTP app, and the /metrics parsing the metrics tests share."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import make_genesis, write_history

NDJSON = {"Content-Type": "application/x-ndjson"}  # POST /v1/ingest takes this type only

SEED = 41
EVENTS = 1500


# -- an observed node ---------------------------------------------------------------------------
def history(root: Path, events: int = EVENTS, seed: int = SEED, wallets: int = 8) -> tuple[dict[str, Any], Any, list[bytes]]:
    genesis, keys = make_genesis(seed, wallets=wallets)
    path = root / f"history-{seed}.jsonl"
    write_history(path, genesis, keys, events=events, seed=seed)
    return genesis, keys, path.read_bytes().splitlines()


def write_faucet_key(data_dir: Path, signer: Any) -> None:
    keys_dir = data_dir / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    (keys_dir / "faucet.key").write_text(json.dumps({"name": "faucet", "seed": signer.seed,
                                                     "address": signer.address}))


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)]"""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


@contextlib.contextmanager
def observed_node(root: Path, *, start: bool = True, **config: Any) -> Iterator[dict[str, Any]]:
    """A node on a generated chain with a faucet key, a TestClient over its HTTP app, and the
    history lines (not yet ingested); ``config`` overrides Config fields (e.g. head_interval)."""
    from ledgerlog.ops.api.app import create_app
    from ledgerlog.ops.node.lifecycle import Node

    genesis, keys, lines = history(root)
    data = root / "data"
    cfg = Config(data_dir=str(data), sync=False, **config)
    init_chain(cfg, genesis)
    write_faucet_key(data, keys.wallets[0])
    node = Node(cfg)
    client = None
    try:
        if start:
            node.start()
            client = TestClient(create_app(node))
        yield {"node": node, "client": client, "genesis": genesis, "keys": keys, "lines": lines,
               "config": cfg}
    finally:
        if client is not None:
            client.close()
        node.stop()


def ingest_all(client: TestClient, lines: list[bytes]) -> None:
    """The history in two posts, then a duplicate and a malformed line (so those series exist)."""
    half = len(lines) // 2
    for part in (lines[:half], lines[half:]):
        r = client.post("/v1/ingest", content=b"\n".join(part) + b"\n", headers=NDJSON)
        assert r.status_code == 200, r.text
    r = client.post("/v1/ingest", content=lines[0] + b"\n{not json\n", headers=NDJSON)
    assert r.status_code == 422 and r.json()["duplicates"] == 1 and r.json()["rejected"] == 1, r.text


#: The user projection of docs/PROJECTIONS.md, as a data team writes it: confirmed transactions per sender.
TX_COUNT = """# tx_count.py: confirmed transactions per sender
NAME, VERSION, TOPICS = "tx_count", 1, ("ledger.transactions",)

def fold(genesis, events, txn):
    for _topic, e in events:
        key = e["body"]["sender"].encode()
        txn.put(key, str(int(txn.get(key) or b"0") + 1).encode())
"""
