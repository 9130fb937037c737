"""Check one partition of a ledgerlog node's verifiable log (PROTOCOL.md §9) with nothing of
ledgerlog: hashlib, PyNaCl, fastavro, the standard library, and confluent-kafka for --kafka.

  python auditor_check.py --node URL --log-pubkey HEX --topic T --partition P --offset O
      (--records TAIL_RAW_FILE | --kafka BOOTSTRAP) [--state heads.json]

Exit 0 when the newest head is signed by a pinned key, the record is in it and the head extends
the one remembered in --state; 1 (a message on stderr) when anything does not hold."""
import argparse
import hashlib
import io
import json
import os
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request

import fastavro
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

TREE_HEAD = fastavro.parse_schema({"type": "record", "name": "TreeHead", "namespace": "ledgerlog.v1", "fields": [
    {"name": "chain_id", "type": "string"}, {"name": "topic", "type": "string"},
    {"name": "partition", "type": "int"}, {"name": "tree_size", "type": "long"},
    {"name": "root_hash", "type": "string"}, {"name": "timestamp", "type": "long"}]})


def fail(message):
    sys.exit(f"FAIL: {message}")


def get(node, path, **params):
    url = f"{node.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        fail(f"GET {url}: {exc.code} {exc.read().decode(errors='replace')[:300]}")


def leaf_hash(key, timestamp, value):  # SHA-256(0x00 ‖ u32be(len key) ‖ key ‖ u64be(ts) ‖ value); ts < 0 wraps
    ts = struct.pack(">Q", timestamp & 0xFFFFFFFFFFFFFFFF)
    return hashlib.sha256(b"\0" + struct.pack(">I", len(key)) + key + ts + value).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\1" + left + right).digest()


def check_head(signed, pinned, topic, partition):
    """The (tree_size, root) of a SignedTreeHead, once a pinned key's signature verifies."""
    head, out = signed["head"], io.BytesIO()
    if signed["pubkey"] not in pinned:
        fail(f"head signed by {signed['pubkey']}, not a pinned log key")
    fastavro.schemaless_writer(out, TREE_HEAD, head)  # the canonical TreeHead bytes
    try:
        VerifyKey(bytes.fromhex(signed["pubkey"])).verify(out.getvalue(), bytes.fromhex(signed["signature"]))
    except BadSignatureError:
        fail(f"bad signature on the head of {topic}[{partition}] at size {head['tree_size']}")
    if (head["topic"], head["partition"]) != (topic, partition):
        fail(f"asked for the head of {topic}[{partition}], got {head['topic']}[{head['partition']}]")
    return head["tree_size"], bytes.fromhex(head["root_hash"])


def verify_inclusion(index, size, leaf, path, root):  # RFC 9162 §2.1.3.2
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_root, second_root, path):  # RFC 9162 §2.1.4.2
    if first == second:
        return not path and first_root == second_root
    if not 0 < first < second or not path:
        return False
    if first & (first - 1) == 0:  # an exact power of 2: the old tree is a subtree of the new
        path = [first_root, *path]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root


def record_from_file(path, topic, partition, offset):
    """(key, timestamp, value) of a record in lines printed by `ledgerlog tail TOPIC --raw`."""
    with sys.stdin if path == "-" else open(path, encoding="utf-8") as lines:
        for line in lines:
            r = json.loads(line)
            if (r["topic"], r["partition"], r["offset"]) == (topic, partition, offset):
                return bytes.fromhex(r["key_hex"]), r["timestamp"], bytes.fromhex(r["value_hex"])
    fail(f"no record {topic}[{partition}]@{offset} in {path}")


def record_from_kafka(bootstrap, topic, partition, offset):
    """(key, timestamp, value) of a record read straight from the Kafka cluster."""
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ledgerlog-auditor",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        for _ in range(30):
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                if msg.offset() != offset:
                    fail(f"{topic}[{partition}]@{offset} holds no data record (next: {msg.offset()})")
                return msg.key() or b"", msg.timestamp()[1], msg.value()
    finally:
        consumer.close()
    fail(f"no record {topic}[{partition}]@{offset} on {bootstrap}")


def main():
    ap = argparse.ArgumentParser(description="Check one partition of a ledgerlog node's verifiable log.")
    ap.add_argument("--node", default="http://127.0.0.1:8080")
    ap.add_argument("--log-pubkey", action="append", required=True, help="pinned log key (repeat after rotations)")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partition", type=int, required=True)
    ap.add_argument("--offset", type=int, default=0, help="the record to prove")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--records", help="`ledgerlog tail TOPIC --raw` output (- for stdin)")
    src.add_argument("--kafka", help="bootstrap servers: read the record from Kafka")
    ap.add_argument("--topic-prefix", default="", help="with --kafka: the chain's topic prefix")
    ap.add_argument("--state", help="JSON file of the newest heads checked (read, then updated)")
    a = ap.parse_args()
    t, p = a.topic, a.partition
    signed = get(a.node, "/v1/tree-heads", topic=t, partition=p)  # 1. the newest head, signed
    size, root = check_head(signed, a.log_pubkey, t, p)
    if a.kafka:  # 2. the record is in it, hashed from its stored bytes
        key, ts, value = record_from_kafka(a.kafka, a.topic_prefix + t, p, a.offset)
    else:
        key, ts, value = record_from_file(a.records, t, p, a.offset)
    proof = get(a.node, "/v1/proofs/inclusion", topic=t, partition=p, offset=a.offset, tree_size=size)
    path = [bytes.fromhex(h) for h in proof["audit_path"]]
    if proof["offset"] != a.offset or not verify_inclusion(proof["index"], size, leaf_hash(key, ts, value), path, root):
        fail(f"{t}[{p}]@{a.offset} is not in the signed tree of {size} records")
    state = {}
    if a.state and os.path.exists(a.state):
        with open(a.state, encoding="utf-8") as f:
            state = json.load(f)
    old_size = None
    if f"{t}/{p}" in state:  # 3. the newest head extends the one seen before
        old_size, old_root = check_head(state[f"{t}/{p}"], a.log_pubkey, t, p)
        hashes = [] if old_size >= size else get(a.node, "/v1/proofs/consistency", topic=t, partition=p,
                                                 first=old_size, second=size)["proof"]
        if not verify_consistency(old_size, size, old_root, root, [bytes.fromhex(h) for h in hashes]):
            fail(f"{t}[{p}]: the tree of {size} records does not extend the {old_size} seen before")
    if a.state:
        state[f"{t}/{p}"] = signed
        with open(a.state + ".tmp", "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(a.state + ".tmp", a.state)
    print(json.dumps({"ok": True, "topic": t, "partition": p, "tree_size": size, "root_hash": root.hex(),
                      "offset": a.offset, "index": proof["index"], "consistent_with": old_size}))


if __name__ == "__main__":
    main()
