"""`ledgerlog proof head|inclusion|consistency` (PROTOCOL.md §9) with no node (read from the data
dir) and through a running node: the same answers, proofs that verify (engine.merkle) against the
signed head's root and roots recomputed from `tail --raw` bytes, and one-line BAD_REQUEST errors
(exit 2) for arguments outside the log, a missing --index/--offset, huge and negative numbers."""
from __future__ import annotations

import hashlib
import json
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from clitools import cli, ok_json, running_node
from nodetools import history, parse_metrics

from ledgerlog.engine import merkle
from ledgerlog.engine.treehead import check_head_signature
from ledgerlog.ops.devtools.histgen import write_genesis

TOPIC = ["--topic", "ledger.transactions", "--partition", "2"]


def leaf(row: dict[str, Any]) -> bytes:
    key, value = bytes.fromhex(row["key_hex"]), bytes.fromhex(row["value_hex"])
    return hashlib.sha256(b"\x00" + struct.pack(">I", len(key)) + key + struct.pack(">Q", row["timestamp"])
                          + value).digest()


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Any]:
    """A data dir holding a generated history (heads published by the ingest's clean close), and
    the leaves of ledger.transactions[2] from `tail --raw`."""
    root = tmp_path_factory.mktemp("proofcli")
    genesis, _, lines = history(root, events=600)
    write_genesis(root / "genesis.json", genesis)
    (root / "h.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    data = root / "data"
    ok_json(cli(data, "init", "--genesis", str(root / "genesis.json")))
    ok_json(cli(data, "ingest", str(root / "h.jsonl")))
    rows = [json.loads(ln) for ln in cli(data, "tail", "ledger.transactions", "--partition", "2", "--raw").stdout.splitlines()]
    return {"data": data, "leaves": [leaf(r) for r in rows], "log_pubkey": ok_json(cli(data, "status"))["log_pubkey"]}


def answers(data: Any, leaves: list[bytes], workers: int, usage: bool) -> dict[str, Any]:
    """Every command's answer by name, and each bad call's error code (checked to be one JSON
    line, exit 2), from ``workers`` CLI processes at a time; ``usage``: also the calls the
    command line itself refuses."""
    n = len(leaves)
    good = {
        "head": ("head", *TOPIC),
        "index": ("inclusion", *TOPIC, "--index", "5"),
        "offset": ("inclusion", *TOPIC, "--offset", "5"),
        "older": ("inclusion", *TOPIC, "--index", "5", "--tree-size", "17"),
        "consistency": ("consistency", *TOPIC, "--first", "17"),
        "between": ("consistency", *TOPIC, "--first", "6", "--second", "33"),
    }
    bad = {
        "index beyond": ("inclusion", *TOPIC, "--index", str(n)),
        "offset beyond": ("inclusion", *TOPIC, "--offset", str(n)),
        "tree size beyond": ("inclusion", *TOPIC, "--index", "0", "--tree-size", str(n + 1)),
        "no index or offset": ("inclusion", *TOPIC),
        "first beyond": ("consistency", *TOPIC, "--first", str(n + 1)),
        "second beyond": ("consistency", *TOPIC, "--first", "1", "--second", str(n + 1)),
        "first 0": ("consistency", *TOPIC, "--first", "0"),
        "partition beyond": ("head", "--topic", "ledger.transactions", "--partition", "4"),
        "negative partition": ("inclusion", "--topic", "ledger.blocks", "--partition", "-1", "--index", "0"),
        "unknown topic": ("head", "--topic", "no.such.topic", "--partition", "0"),
        "_checkpoints": ("inclusion", "--topic", "_checkpoints", "--partition", "0", "--index", "0"),
        "huge index": ("inclusion", *TOPIC, "--index", "9" * 30),
        "huge second": ("consistency", *TOPIC, "--first", "1", "--second", str(2**64)),
    }
    usage = {
        "non-numeric index": ("inclusion", *TOPIC, "--index", "five"),
        "no topic": ("head", "--partition", "0"),
        "no first": ("consistency", *TOPIC),
    } if usage else {}
    calls = {**good, **bad, **usage}
    with ThreadPoolExecutor(workers) as pool:
        done = dict(zip(calls, pool.map(lambda args: cli(data, "proof", *args), calls.values())))
    out = {name: ok_json(done[name]) for name in good}
    for name in (*bad, *usage):
        p = done[name]
        err = p.stderr.decode().strip()
        assert p.returncode == 2 and p.stdout == b"" and "\n" not in err, (name, p.returncode, p.stdout, err)
        assert json.loads(err)["code"] == ("BAD_REQUEST" if name in bad else "USAGE"), (name, err)
        out[name] = json.loads(err)["code"]
    return out


def check(out: dict[str, Any], leaves: list[bytes], log_pubkey: str) -> None:
    n = len(leaves)
    check_head_signature(out["head"], [log_pubkey])
    head = out["head"]["head"]
    root = bytes.fromhex(head["root_hash"])
    assert (head["topic"], head["partition"], head["tree_size"]) == ("ledger.transactions", 2, n)
    assert root == merkle.root_of(leaves)
    assert out["index"] == out["offset"] and (out["index"]["index"], out["index"]["tree_size"]) == (5, n)
    assert out["index"]["leaf_hash"] == leaves[5].hex()
    merkle.verify_inclusion(5, n, leaves[5], [bytes.fromhex(h) for h in out["index"]["audit_path"]], root)
    merkle.verify_inclusion(5, 17, leaves[5], [bytes.fromhex(h) for h in out["older"]["audit_path"]],
                            merkle.root_of(leaves[:17]))
    assert (out["consistency"]["first"], out["consistency"]["second"]) == (17, n)
    merkle.verify_consistency(17, n, [bytes.fromhex(h) for h in out["consistency"]["proof"]],
                              merkle.root_of(leaves[:17]), root)
    merkle.verify_consistency(6, 33, [bytes.fromhex(h) for h in out["between"]["proof"]],
                              merkle.root_of(leaves[:6]), merkle.root_of(leaves[:33]))


def test_proof_commands_offline_and_through_the_node(chain) -> None:
    data, leaves = chain["data"], chain["leaves"]
    assert len(leaves) > 40, "the history should give ledger.transactions[2] a few chunks of records"
    offline = answers(data, leaves, workers=1, usage=True)  # (concurrent offline reads would wait on the projections' lock)
    check(offline, leaves, chain["log_pubkey"])
    with running_node(data) as url:
        through = answers(data, leaves, workers=3, usage=False)
        served = parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)["ledgerlog_http_requests_total"]
    assert through == {k: v for k, v in offline.items() if v != "USAGE"}  # the node answers what the data dir does
    asked = {(labels["route"], labels["status"]): v for labels, v in served}
    assert asked[("/v1/tree-heads", "200")] == 1 and asked[("/v1/proofs/inclusion", "200")] == 3
    assert asked[("/v1/proofs/consistency", "200")] == 2 and asked[("/v1/proofs/inclusion", "400")] == 7
