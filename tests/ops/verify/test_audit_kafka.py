"""`ledgerlog audit --kafka`: records written to a Kafka cluster with the backend (each append a
transaction, so offsets have gaps) and tree heads signed over them audit clean under the topic
prefix; a later head whose root the records do not give fails, named by partition and index."""
from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest
from clitools import LEDGERLOG, cli_env
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine import avro
from ledgerlog.engine import topics as T
from ledgerlog.engine.log.base import Log, Record
from ledgerlog.engine.logtree import leaf_of
from ledgerlog.engine.merkle import MemoryTree
from ledgerlog.engine.signing import Signer
from ledgerlog.engine.treehead import head_key, sign_head

pytestmark = pytest.mark.kafka

TOPIC = T.TRANSACTIONS
PARTS = 2


def _append(log: Log, start: int, batches: int, per: int = 7) -> None:
    """``batches`` appends (transactions) of ``per`` records over both partitions."""
    for b in range(batches):
        log.append([Record(TOPIC, f"k{start + b}-{i}".encode(), f"v{start + b}-{i}".encode() * 3,
                           1_700_000_000_000 + 1000 * (start + b) + i, i % PARTS) for i in range(per)])


def _publish(log: Log, signer: Signer, sizes: dict[int, int], wrong: bool = False) -> None:
    """Sign and append the head of each partition at its tree size (a wrong root if ``wrong``)."""
    recs = []
    for p, size in sizes.items():
        tree = MemoryTree(leaf_of(r.key, r.timestamp, r.value) for r in log.scan(TOPIC, p))
        root = ("ff" * 32) if wrong else tree.root(size).hex()
        head = {"chain_id": "kafka-audit", "topic": TOPIC, "partition": p, "tree_size": size,
                "root_hash": root, "timestamp": 1_700_000_000_000}
        value = b"\x00" + (7).to_bytes(4, "big") + avro.encode("SignedTreeHead", sign_head(signer, head))
        recs.append(Record(T.CHECKPOINTS, head_key(TOPIC, p), value, 1_700_000_000_000, 0))
    log.append(recs)


def _audit(bootstrap: str, prefix: str, pubkey: str) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([LEDGERLOG, "audit", "--kafka", bootstrap, "--topic-prefix", prefix, "--log-pubkey", pubkey],
                         capture_output=True, timeout=180, env=cli_env(), stdin=subprocess.DEVNULL, check=False)
    assert res.returncode in (0, 1) and res.stderr == b"", (res.returncode, res.stderr[-3000:])
    return res.returncode, json.loads(res.stdout)


def test_audit_over_kafka(kafka_bootstrap):  # noqa: F811
    from ledgerlog.engine.log.kafka import KafkaLog
    prefix = f"audit-{uuid.uuid4().hex[:8]}."
    signer = Signer.generate()
    log = KafkaLog(kafka_bootstrap, sync=False, **{"ledgerlog.topic_prefix": prefix})
    try:
        log.create_topics({TOPIC: PARTS, T.CHECKPOINTS: 1, T.SCHEMAS: 1})
        _append(log, 0, 3)
        counts = {p: sum(1 for _ in log.scan(TOPIC, p)) for p in range(PARTS)}
        _publish(log, signer, {p: n - 1 for p, n in counts.items()})  # a head below the end, then one at it
        _publish(log, signer, counts)
        offsets = [r.offset for r in log.scan(TOPIC, 0)]
        assert offsets != list(range(len(offsets)))  # transaction markers take offsets
        rc, report = _audit(kafka_bootstrap, prefix, signer.pubkey)
        assert rc == 0, report.get("failure")
        assert report["contiguous_offsets"] is False and report["heads"]["checked"] == 2 * PARTS
        for p, n in counts.items():
            assert report["partitions"][f"{TOPIC}/{p}"] == {**report["partitions"][f"{TOPIC}/{p}"],
                                                            "leaves": n, "verified_size": n, "unanchored": 0}
        _append(log, 3, 2)
        more = {p: sum(1 for _ in log.scan(TOPIC, p)) for p in range(PARTS)}
        _publish(log, signer, {1: more[1]}, wrong=True)
        rc, report = _audit(kafka_bootstrap, prefix, signer.pubkey)
        f = report["failure"]
        assert rc == 1 and (f["code"], f["topic"], f["partition"], f["index"], f["tree_size"]) == (
            "ROOT_MISMATCH", TOPIC, 1, counts[1], more[1])
        assert report["partitions"][f"{TOPIC}/0"]["unanchored"] == more[0] - counts[0]
        rc, report = _audit(kafka_bootstrap, prefix, Signer.generate().pubkey)
        assert rc == 1 and report["failure"]["code"] == "UNKNOWN_KEY"
    finally:
        log.close()
