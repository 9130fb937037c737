"""Our partitioner against a real Kafka-protocol broker and librdkafka's ``murmur2_random``: a
keyed record lands in the partition engine.partitioner.partition_for says, so the embedded log
and Kafka place records identically; and our Confluent wire-format values survive the round
trip byte for byte."""
from __future__ import annotations

import random
import time
import uuid
from collections import Counter

import pytest
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine.partitioner import partition_for

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

pytestmark = pytest.mark.kafka

PARTITIONS = 7


def _create_topic(bootstrap: str, partitions: int) -> str:
    topic = f"ledgerlog-test-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=30)
    futures[topic].result(timeout=30)
    # wait (bounded) until the metadata shows every partition
    deadline = time.monotonic() + 30
    for _ in range(300):
        md = admin.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return topic
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    pytest.fail(f"topic {topic} did not show {partitions} partitions")


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> list[int]:
    """Produce keyed records with Kafka's default (Java) partitioner; the partition each record
    was delivered to, in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                         "linger.ms": 5, "acks": "all", "enable.idempotence": False,
                         "max.in.flight.requests.per.connection": 1})
    delivered: dict[int, int] = {}
    errors: list[str] = []

    def report(i: int):
        def on_delivery(err, msg) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                delivered[i] = msg.partition()
        return on_delivery

    for i, (key, value) in enumerate(records):
        producer.produce(topic, key=key, value=value, on_delivery=report(i))
        producer.poll(0)
    assert producer.flush(30) == 0, "records still undelivered after 30 s"
    assert not errors, errors[:5]
    assert len(delivered) == len(records)
    return [delivered[i] for i in range(len(records))]


def _consume_each_partition(bootstrap: str, topic: str, counts: Counter[int]) -> dict[int, list[tuple[bytes, bytes]]]:
    """Every record of every partition, read by assign() (no consumer group, nothing committed),
    from the beginning. ``counts``: how many records each partition must hold (the delivery
    reports'; a broker's high watermark is not relied on)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"unused-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "enable.partition.eof": False, "fetch.wait.max.ms": 50})
    out: dict[int, list[tuple[bytes, bytes]]] = {}
    try:
        for p in range(PARTITIONS):
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
            got: list[tuple[bytes, bytes]] = []
            deadline = time.monotonic() + 30
            for _ in range(10_000):
                if len(got) >= counts[p] or time.monotonic() > deadline:
                    break
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    raise KafkaException(msg.error())
                assert msg.partition() == p and msg.topic() == topic
                got.append((msg.key(), msg.value()))
            assert len(got) == counts[p], (p, len(got), counts[p])
            extra = consumer.poll(0.1)
            assert extra is None or extra.error() is not None, (p, extra.key(), extra.offset())
            out[p] = got
            consumer.unassign()
    finally:
        consumer.close()
    return out


def _keys() -> list[bytes]:
    """300 distinct keys: what ledgerlog keys by (hex ids, addresses, worker names) plus random
    bytes of every length mod 4, high bytes included (murmur2 must treat them as unsigned)."""
    rng = random.Random(42)
    keys = [bytes.fromhex(f"{rng.getrandbits(160):040x}").hex().encode() for _ in range(100)]  # addresses
    keys += [f"{rng.getrandbits(256):064x}".encode() for _ in range(60)]                        # txids
    keys += [f"{rng.getrandbits(160):040x}.rig-{i}".encode() for i in range(40)]                 # workers
    keys = list(dict.fromkeys(keys))
    for i in range(10_000):                                                                     # raw bytes
        if len(keys) >= 300:
            break
        raw = bytes(rng.getrandbits(8) for _ in range(1 + i % 13))
        if raw not in keys:
            keys.append(raw)
    assert len(keys) == 300
    return keys


def test_murmur2_partitions_match_kafka(kafka_bootstrap) -> None:  # noqa: F811
    topic = _create_topic(kafka_bootstrap, PARTITIONS)
    keys = _keys()
    delivered = _produce(kafka_bootstrap, topic, [(k, b"value-" + k) for k in keys])
    expected = [partition_for(k, PARTITIONS) for k in keys]
    assert len(set(expected)) == PARTITIONS  # the keys exercise every partition
    wrong = [(k, d, e) for k, d, e in zip(keys, delivered, expected) if d != e]
    assert not wrong, wrong[:5]

    read = _consume_each_partition(kafka_bootstrap, topic, Counter(delivered))
    seen = [k for recs in read.values() for k, _ in recs]
    assert sorted(seen) == sorted(keys)  # each key exactly once
    for p, recs in read.items():
        for k, v in recs:
            assert partition_for(k, PARTITIONS) == p, (k, p)
            assert v == b"value-" + k


def test_codec_wire_format_round_trip(kafka_bootstrap, tmp_path) -> None:  # noqa: F811
    """Real admitted events (Confluent wire format: magic 0, schema id, Avro) through Kafka."""
    from ledgerlog.engine import topics as T
    from ledgerlog.engine.chain import init_chain, open_chain
    from ledgerlog.engine.config import Config
    from ledgerlog.ops.devtools.histgen import make_genesis, write_history

    genesis, hkeys = make_genesis(3, wallets=4)
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False)
    init_chain(cfg, genesis)
    hist = tmp_path / "h.jsonl"
    write_history(hist, genesis, hkeys, events=300, seed=3)
    with open_chain(cfg) as chain:
        s = chain.admitter.admit(hist.read_bytes().splitlines())
        assert s.rejected == 0 and s.accepted > 0
        originals = [(r.topic, r.key, r.value) for t in (T.BLOCKS, T.TRANSACTIONS, T.SHARES, T.READINGS)
                     for p in range(len(chain.log.end_offsets(t))) for r in chain.log.scan(t, p)]
        assert {t for t, _, _ in originals} == {T.BLOCKS, T.TRANSACTIONS, T.SHARES, T.READINGS}
        codec = chain.codec
        topic = _create_topic(kafka_bootstrap, PARTITIONS)
        # the embedded topic name travels in the key prefix so the read side knows the subject
        records = [(t.encode() + b"|" + k, v) for t, k, v in originals]
        delivered = _produce(kafka_bootstrap, topic, records)
        assert delivered == [partition_for(k, PARTITIONS) for k, _ in records]
        consumed = _consume_each_partition(kafka_bootstrap, topic, Counter(delivered))
        read: dict[bytes, list[bytes]] = {}
        for recs in consumed.values():
            for k, v in recs:
                read.setdefault(k, []).append(v)
        sent: dict[bytes, list[bytes]] = {}
        for k, v in records:
            sent.setdefault(k, []).append(v)
        assert read == sent  # byte-identical, in order per key
        for t, _k, v in originals:
            assert v[0] == 0 and int.from_bytes(v[1:5], "big") == codec.schema_id(t)
        for (t, _k, _v), (wire_key, _) in zip(originals, records):
            for back in read[wire_key]:
                codec.decode(t, back)  # decodes with the registered schema
