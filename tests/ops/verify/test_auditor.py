"""An auditor with stock Confluent tooling only: confluent_kafka's Consumer (assign(), all
partitions, read_committed), a SchemaRegistryClient pointed at a running node's read-only Schema
Registry API and the AvroDeserializer decode every event of ledger.transactions on a Kafka
chain, and the decoded values equal the events on the log."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, cli_env, terminate
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import generate, make_genesis

pytestmark = pytest.mark.kafka

EVENTS = 1500
SEED = 41


def _start_node(data: Any, log_path: Any, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "run", "--port", "0"],
                                stdout=log, stderr=subprocess.STDOUT, env=cli_env())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"node exited with {proc.returncode}: {Path(log_path).read_text(errors='replace')[-3000:]}")
        try:
            info = json.loads(Path(data, "node.json").read_text())
        except (OSError, ValueError):
            info = None
        if info and info.get("pid") == proc.pid:
            try:
                if httpx.get(info["url"] + "/v1/health", timeout=2).status_code == 200:
                    return proc, info["url"]
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    pytest.fail(f"node not ready within {timeout}s: {Path(log_path).read_text(errors='replace')[-3000:]}")
    raise AssertionError


def _audit(bootstrap: str, prefix: str, registry_url: str, partitions: int) -> list[tuple[int, int, Any]]:
    """(partition, offset, decoded value) of every record of ledger.transactions: stock tooling only."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic = prefix + T.TRANSACTIONS
    deser = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"auditor-{uuid.uuid4().hex[:8]}",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "enable.partition.eof": True, "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})
    out: list[tuple[int, int, Any]] = []
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        done: set[int] = set()
        deadline = time.monotonic() + 120
        while len(done) < partitions:
            assert time.monotonic() < deadline, f"auditor did not reach the end of {topic}: {done}"
            for m in c.consume(1000, 0.5):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    done.add(m.partition())
                    continue
                ctx = SerializationContext(topic, MessageField.VALUE)
                out.append((m.partition(), m.offset(), deser(m.value(), ctx)))
    finally:
        c.close()
    return out


def test_auditor_reads_the_chain_with_stock_confluent_tooling(tmp_path, kafka_bootstrap):  # noqa: F811
    genesis, keys = make_genesis(SEED, wallets=8)
    lines = list(generate(genesis, keys, events=EVENTS, seed=SEED))
    prefix = f"audit-{uuid.uuid4().hex[:8]}."
    data = tmp_path / "data"
    cfg = Config(data_dir=str(data), log_url=f"kafka://{kafka_bootstrap}", sync=False, ingest_chunk=200,
                 kafka={"ledgerlog.topic_prefix": prefix})
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        summary = chain.admitter.admit(lines).to_dict()
    assert summary["rejected"] == 0 and summary["accepted"] > 100

    proc, url = _start_node(data, tmp_path / "node.log")
    try:
        subjects = httpx.get(url + "/subjects", timeout=10).json()
        assert T.subject_of(T.TRANSACTIONS) in subjects
        got = _audit(kafka_bootstrap, prefix, url, cfg.partitions)
    finally:
        terminate(proc)

    with open_chain(cfg, read_only=True) as chain:
        expected = [(r.partition, r.offset, chain.codec.decode(T.TRANSACTIONS, r.value))
                    for p in range(cfg.partitions) for r in chain.log.scan(T.TRANSACTIONS, p)]
    assert len(expected) > 100
    assert sorted(got, key=lambda x: (x[0], x[1])) == expected
