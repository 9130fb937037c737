"""The verifiable log over HTTP (PROTOCOL.md §9): the newest signed head of a partition, inclusion
and consistency proofs that verify (engine.merkle) against that head's root and against roots
recomputed here from the records' stored bytes, 400 BAD_REQUEST (never 500) for every argument
outside the log, and the three endpoints described in /openapi.json."""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from nodetools import ingest_all, observed_node

from ledgerlog.engine import merkle
from ledgerlog.engine.treehead import check_head_signature

PARTITIONS = [("ledger.blocks", 0), ("ledger.transactions", 0), ("ledger.transactions", 3), ("pool.shares", 0),
              ("energy.settlements", 3)]


def leaf(rec: Any) -> bytes:
    """PROTOCOL.md §9, written out: SHA-256(0x00 ‖ u32be(len key) ‖ key ‖ u64be(ts) ‖ value)."""
    return hashlib.sha256(b"\x00" + struct.pack(">I", len(rec.key)) + rec.key + struct.pack(">Q", rec.timestamp)
                          + rec.value).digest()


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A node holding a generated history, every partition's head published (the heads loop idle)."""
    with observed_node(tmp_path_factory.mktemp("proofs"), head_interval=3600.0) as w:
        ingest_all(w["client"], w["lines"])
        w["node"].chain.heads.publish()
        log = w["node"].chain.log
        w["leaves"] = {(t, p): [leaf(r) for r in log.read(t, p, 0, 1 << 20)] for t, p in PARTITIONS}
        w["pubkey"] = w["client"].get("/v1/status").json()["log_pubkey"]
        yield w


def get(node: dict[str, Any], path: str, **params: Any) -> Any:
    r = node["client"].get(path, params=params)
    assert r.status_code == 200, (path, params, r.text)
    return r.json()


@pytest.mark.parametrize("topic,partition", PARTITIONS)
def test_proofs_verify_against_the_signed_head(node, topic, partition) -> None:
    leaves = node["leaves"][(topic, partition)]
    n = len(leaves)
    assert n > 3, "the history should give every partition of this test a few records"
    signed = get(node, "/v1/tree-heads", topic=topic, partition=partition)
    check_head_signature(signed, [node["pubkey"]])
    head = signed["head"]
    root = bytes.fromhex(head["root_hash"])
    assert (head["topic"], head["partition"], head["tree_size"]) == (topic, partition, n)
    assert root == merkle.root_of(leaves)  # the head is the records' tree, recomputed here

    for i in sorted({0, 1, n // 2, n - 2, n - 1}):
        by_index = get(node, "/v1/proofs/inclusion", topic=topic, partition=partition, index=i, tree_size=n)
        by_offset = get(node, "/v1/proofs/inclusion", topic=topic, partition=partition, offset=i)  # embedded: = index
        assert by_index == by_offset
        assert (by_index["index"], by_index["offset"], by_index["tree_size"]) == (i, i, n)
        assert by_index["leaf_hash"] == leaves[i].hex()
        merkle.verify_inclusion(i, n, leaves[i], [bytes.fromhex(h) for h in by_index["audit_path"]], root)
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(i, n, leaves[i - 1] if i else leaves[1],
                                    [bytes.fromhex(h) for h in by_index["audit_path"]], root)
        size = i + 1 + (n - i - 1) // 2  # an older tree that holds leaf i
        older = get(node, "/v1/proofs/inclusion", topic=topic, partition=partition, index=i, tree_size=size)
        merkle.verify_inclusion(i, size, leaves[i], [bytes.fromhex(h) for h in older["audit_path"]],
                                merkle.root_of(leaves[:size]))

    for size in (15, 16, 17, 32, 33, 64, 256, 257):  # around the stored subtrees of 16+ leaves
        if size < n:
            for i in (0, size - 1):
                got = get(node, "/v1/proofs/inclusion", topic=topic, partition=partition, index=i, tree_size=size)
                merkle.verify_inclusion(i, size, leaves[i], [bytes.fromhex(h) for h in got["audit_path"]],
                                        merkle.root_of(leaves[:size]))
            got = get(node, "/v1/proofs/consistency", topic=topic, partition=partition, first=size)
            merkle.verify_consistency(size, n, [bytes.fromhex(h) for h in got["proof"]],
                                      merkle.root_of(leaves[:size]), root)

    for first in sorted({1, 2, n // 3, n - 1, n}):
        whole = get(node, "/v1/proofs/consistency", topic=topic, partition=partition, first=first)
        assert (whole["first"], whole["second"]) == (first, n)
        merkle.verify_consistency(first, n, [bytes.fromhex(h) for h in whole["proof"]],
                                  merkle.root_of(leaves[:first]), root)
        second = first + (n - first) // 2
        part = get(node, "/v1/proofs/consistency", topic=topic, partition=partition, first=first, second=second)
        merkle.verify_consistency(first, second, [bytes.fromhex(h) for h in part["proof"]],
                                  merkle.root_of(leaves[:first]), merkle.root_of(leaves[:second]))


def test_a_partition_without_records_has_no_head_yet(node) -> None:
    r = node["client"].get("/v1/tree-heads", params={"topic": "ledger.admin", "partition": 0})
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND", r.text


HUGE = "9" * 40
BAD = [
    # beyond the log
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": "{n}"}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": 0, "tree_size": "{n+1}"}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": 3, "tree_size": 3}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": 0, "tree_size": 0}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "offset": "{n}"}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "partition": 0, "first": "{n+1}"}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "partition": 0, "first": 1, "second": "{n+1}"}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "partition": 0, "first": 5, "second": 4}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "partition": 0, "first": 0}),
    # partitions and topics that are not verifiable partitions of this log
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 1, "index": 0}),
    ("/v1/proofs/inclusion", {"topic": "ledger.transactions", "partition": 4, "index": 0}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "partition": -1, "first": 1}),
    ("/v1/tree-heads", {"topic": "ledger.blocks", "partition": 7}),
    ("/v1/tree-heads", {"topic": "no.such.topic", "partition": 0}),
    ("/v1/proofs/inclusion", {"topic": "no.such.topic", "partition": 0, "index": 0}),
    ("/v1/proofs/inclusion", {"topic": "_checkpoints", "partition": 0, "index": 0}),
    ("/v1/proofs/consistency", {"topic": "_schemas", "partition": 0, "first": 1}),
    ("/v1/tree-heads", {"topic": "_checkpoints", "partition": 0}),
    ("/v1/tree-heads", {"topic": "_schemas", "partition": 0}),
    ("/v1/tree-heads", {"topic": "x" * 300, "partition": 0}),
    # missing, both, huge, negative and non-numeric parameters
    ("/v1/tree-heads", {}),
    ("/v1/tree-heads", {"topic": "ledger.blocks"}),
    ("/v1/tree-heads", {"partition": 0}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": 0, "offset": 0}),
    ("/v1/proofs/inclusion", {"partition": 0, "index": 0}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "partition": 0}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "first": 1}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": HUGE}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": 0, "tree_size": HUGE}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "offset": HUGE}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": str(2**63 - 1)}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "partition": 0, "first": HUGE}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "partition": 0, "first": 1, "second": str(2**63)}),
    ("/v1/tree-heads", {"topic": "ledger.blocks", "partition": HUGE}),
    ("/v1/tree-heads", {"topic": "ledger.blocks", "partition": str(2**31)}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": -1}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": "abc"}),
    ("/v1/proofs/inclusion", {"topic": "ledger.blocks", "partition": 0, "index": "1.5"}),
    ("/v1/proofs/consistency", {"topic": "ledger.blocks", "partition": 0, "first": "1e3"}),
    ("/v1/tree-heads", {"topic": "ledger.blocks", "partition": "zero"}),
]


@pytest.mark.parametrize("path,params", BAD, ids=[f"{p.rsplit('/', 1)[1]}-{i}" for i, (p, _) in enumerate(BAD)])
def test_arguments_outside_the_log_are_400(node, path, params) -> None:
    n = len(node["leaves"][("ledger.blocks", 0)])
    params = {k: str(v).replace("{n}", str(n)).replace("{n+1}", str(n + 1)) for k, v in params.items()}
    r = node["client"].get(path, params=params)
    assert r.status_code == 400, (params, r.status_code, r.text)
    assert r.json()["code"] == "BAD_REQUEST" and r.json()["message"], r.text


_AT = "topic=ledger.blocks&partition=0"
SPELT = [f"/v1/proofs/inclusion?{_AT}&index={v}" for v in ("1_0", "%201", "1.0", "%2B1", "-0", "%EF%BC%91")] + [
    f"/v1/proofs/inclusion?{_AT}&index=1&index=2", f"/v1/proofs/inclusion?{_AT}&index=0&tree_size=",
    f"/v1/proofs/consistency?{_AT}&first=1_0&second=2", "/v1/tree-heads?topic=ledger.blocks&partition=0_0",
    "/v1/tree-heads?topic=ledger.blocks&topic=ledger.transactions&partition=0"]


@pytest.mark.parametrize("query", SPELT)
def test_integers_in_anything_but_plain_digits_or_given_twice_are_400(node, query) -> None:
    """AUDIT.md: a non-numeric parameter is 400. FastAPI's lax int took " 1", "+1", "1.0" and
    "1_0" for 1 (the fast lane refused them), and a repeated parameter silently took the last."""
    r = node["client"].get(query)
    assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST", (query, r.status_code, r.text)
    plain = node["client"].get(f"/v1/proofs/inclusion?{_AT}&index=1")
    assert plain.status_code == 200 and plain.json()["index"] == 1


def test_the_endpoints_are_in_openapi(node) -> None:
    spec = node["client"].get("/openapi.json").json()
    wanted = {"/v1/tree-heads": {"topic", "partition"},
              "/v1/proofs/inclusion": {"topic", "partition", "index", "offset", "tree_size"},
              "/v1/proofs/consistency": {"topic", "partition", "first", "second"},
              "/v1/tx/{txid}/proof": {"txid"}}
    for path, params in wanted.items():
        op = spec["paths"][path]["get"]
        assert {p["name"] for p in op["parameters"]} == params, path
        assert op["summary"] and "proofs" in op["tags"], path
