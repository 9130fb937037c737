"""The auditor's script of docs/AUDIT.md (docs/auditor_check.py, embedded in the page verbatim):
its RFC 9162 verifiers agree with engine.merkle on every small tree and refuse altered proofs, and,
run as an auditor would against a live node, it exits 0 on an honest log and 1 on a wrong pinned
key, a tampered record, a forged or rolled-back earlier head, and a record beyond the newest head."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import REPO, cli, cli_env, ok_json, running_node
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)
from nodetools import history

from ledgerlog.engine import merkle
from ledgerlog.engine.logtree import leaf_of
from ledgerlog.engine.signing import Signer
from ledgerlog.engine.treehead import sign_head
from ledgerlog.ops.devtools.histgen import write_genesis

SCRIPT = REPO / "docs" / "auditor_check.py"
PAGE = REPO / "docs" / "AUDIT.md"


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("auditor_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_embeds_the_script_verbatim() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)
    assert SCRIPT.read_text(encoding="utf-8") in blocks


def test_the_script_imports_only_what_an_auditor_has() -> None:
    tops = {m.split(".")[0] for m in re.findall(r"^\s*(?:from|import) ([\w.]+)", SCRIPT.read_text(), re.MULTILINE)}
    assert tops <= {"argparse", "hashlib", "io", "json", "os", "struct", "sys", "urllib", "fastavro", "nacl",
                    "confluent_kafka"}, tops


def test_verifiers_agree_with_the_engine_and_refuse_altered_proofs() -> None:
    s = load_script()
    leaves = [leaf_of(b"k%d" % i, 1_700_000_000_000 + i, b"v%d" % i) for i in range(33)]
    assert leaves[5] == s.leaf_hash(b"k5", 1_700_000_000_005, b"v5")
    for ts in (-1, -(1 << 63), (1 << 63) - 1):  # a share's own timestamp is its record's: any signed 64-bit value
        assert s.leaf_hash(b"k", ts, b"v") == leaf_of(b"k", ts, b"v")
    sub = lambda a, b: merkle.root_of(leaves[a:b])  # noqa: E731
    bogus = hashlib.sha256(b"bogus").digest()
    for n in range(1, len(leaves) + 1):
        root = merkle.root_of(leaves[:n])
        for i in range(n):
            path = merkle.inclusion_proof(i, n, sub)
            assert s.verify_inclusion(i, n, leaves[i], path, root)
            assert not s.verify_inclusion(i, n, bogus, path, root)
            assert not s.verify_inclusion(i, n, leaves[i], path, bogus)
            assert n == 1 or not s.verify_inclusion(i ^ 1 if i ^ 1 < n else i - 1, n, leaves[i], path, root)
            assert not s.verify_inclusion(i, n, leaves[i], [*path, bogus], root)
            if path:
                assert not s.verify_inclusion(i, n, leaves[i], [bogus, *path[1:]], root)
                assert not s.verify_inclusion(i, n, leaves[i], path[:-1], root)
        for m in range(1, n + 1):
            old = merkle.root_of(leaves[:m])
            proof = merkle.consistency_proof(m, n, sub)
            assert s.verify_consistency(m, n, old, root, proof), (m, n)
            assert not s.verify_consistency(m, n, bogus, root, proof)
            assert not s.verify_consistency(m, n, old, bogus, proof)
            if proof:
                assert not s.verify_consistency(m, n, old, root, [*proof[:-1], bogus])
                assert not s.verify_consistency(m, n, old, root, proof[:-1])
            if m < n:
                assert not s.verify_consistency(m, n, old, root, [*proof, bogus])
                assert not s.verify_consistency(n, m, root, old, proof)  # a tree never shrinks


# -- against a live node --------------------------------------------------------------------------
def run_script(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--node", url, *args], capture_output=True, text=True,
                          timeout=120, check=False, env=cli_env())


def newest_head(url: str, topic: str, partition: int, size: int) -> dict[str, Any]:
    """The newest signed head once it covers ``size`` records (the node publishes every 0.2 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/tree-heads", params={"topic": topic, "partition": partition}, timeout=10)
        if r.status_code == 200 and r.json()["head"]["tree_size"] >= size:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"no head of {topic}[{partition}] covering {size} records")


@pytest.fixture
def chain(tmp_path) -> dict[str, Any]:
    """A data dir holding the first half of a generated history (ingested offline, so its heads are
    published at the ingest's clean close) and the second half as a file."""
    genesis, _, lines = history(tmp_path, events=800)
    half = len(lines) // 2
    write_genesis(tmp_path / "genesis.json", genesis)
    (tmp_path / "first.jsonl").write_bytes(b"\n".join(lines[:half]) + b"\n")
    (tmp_path / "second.jsonl").write_bytes(b"\n".join(lines[half:]) + b"\n")
    data = tmp_path / "data"
    ok_json(cli(data, "init", "--genesis", str(tmp_path / "genesis.json")))
    ok_json(cli(data, "ingest", str(tmp_path / "first.jsonl")))
    blocks = [sum(1 for ln in part if json.loads(ln)["type"] == "block") for part in (lines[:half], lines)]
    return {"data": data, "root": tmp_path, "blocks": blocks}


def test_the_script_against_a_live_node(chain) -> None:
    data, root = chain["data"], chain["root"]
    first_blocks, all_blocks = chain["blocks"]
    topic = ["--topic", "ledger.blocks", "--partition", "0"]
    state = root / "heads.json"
    with running_node(data, env=cli_env(LEDGERLOG_HEADS_INTERVAL="0.2")) as url:
        key = httpx.get(f"{url}/v1/status", timeout=10).json()["log_pubkey"]
        assert re.fullmatch(r"[0-9a-f]{64}", key)
        assert newest_head(url, "ledger.blocks", 0, first_blocks)["head"]["tree_size"] == first_blocks
        raw = root / "raw.jsonl"
        raw.write_bytes(cli(data, "tail", "ledger.blocks", "--raw").stdout)  # through the node's read-only open
        pinned = ["--log-pubkey", key]

        # an honest log, first look: the head verifies, the record is in it; the head is remembered
        p = run_script(url, *pinned, *topic, "--offset", "3", "--records", str(raw), "--state", str(state))
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert (out["tree_size"], out["index"], out["offset"], out["consistent_with"]) == (first_blocks, 3, 3, None)
        assert json.loads(state.read_text())["ledger.blocks/0"]["head"]["tree_size"] == first_blocks

        # the log grows; the next look proves the new head extends the remembered one
        ok_json(cli(data, "ingest", str(root / "second.jsonl")))  # through the node
        newest_head(url, "ledger.blocks", 0, all_blocks)
        raw.write_bytes(cli(data, "tail", "ledger.blocks", "--raw").stdout)
        remembered = state.read_text()
        p = run_script(url, *pinned, *topic, "--offset", str(all_blocks - 1), "--records", str(raw),
                       "--state", str(state))
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert (out["tree_size"], out["consistent_with"]) == (all_blocks, first_blocks)
        p = run_script(url, *pinned, *topic, "--records", str(raw), "--state", str(state))  # same head again
        assert p.returncode == 0 and json.loads(p.stdout)["consistent_with"] == all_blocks, p.stderr
        # any of several pinned keys will do (a rotated log key keeps the old heads verifiable)
        p = run_script(url, "--log-pubkey", "00" * 32, *pinned, *topic, "--records", str(raw))
        assert p.returncode == 0, p.stderr

        def fails(*args: str, records: Path = raw, state_text: str | None = None) -> str:
            if state_text is not None:
                state.write_text(state_text)
            p = run_script(url, *args, *topic, "--records", str(records), "--state", str(state))
            assert p.returncode == 1 and p.stderr.startswith("FAIL: "), (p.returncode, p.stdout, p.stderr)
            return p.stderr

        # a wrong pinned key
        other = Signer.generate().pubkey
        assert "not a pinned log key" in fails("--log-pubkey", other, "--offset", "3")
        # a tampered record: one byte of its stored value changed
        rows = [json.loads(ln) for ln in raw.read_text().splitlines()]
        value = bytearray.fromhex(rows[3]["value_hex"])
        value[-1] ^= 1
        rows[3]["value_hex"] = value.hex()
        tampered = root / "tampered.jsonl"
        tampered.write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert "is not in the signed tree" in fails(*pinned, "--offset", "3", records=tampered)
        # a record beyond the newest head (the node has none yet: it answers 400)
        beyond = root / "beyond.jsonl"
        beyond.write_text(raw.read_text() + json.dumps({**rows[-1], "offset": all_blocks + 5}) + "\n")
        assert "400" in fails(*pinned, "--offset", str(all_blocks + 5), records=beyond)

        # an earlier head the log does not extend: a history rewritten below it, signed by the
        # log key (what a dishonest operator would publish), and a signature that does not verify
        log_key = Signer.load(str(Path(data) / "keys" / "log.key"))
        old = json.loads(remembered)["ledger.blocks/0"]
        forged = sign_head(log_key, {**old["head"], "root_hash": hashlib.sha256(b"rewritten").hexdigest()})
        assert "does not extend" in fails(*pinned, "--offset", "3",
                                          state_text=json.dumps({"ledger.blocks/0": forged}))
        bad_sig = {**old, "signature": old["signature"][:-2] + ("00" if old["signature"][-2:] != "00" else "11")}
        assert "bad signature" in fails(*pinned, "--offset", "3", state_text=json.dumps({"ledger.blocks/0": bad_sig}))
        # a node serving an older head than one already seen (a rollback)
        ahead = sign_head(log_key, {**old["head"], "tree_size": all_blocks + 1})
        assert "does not extend" in fails(*pinned, "--offset", "3", state_text=json.dumps({"ledger.blocks/0": ahead}))

        # log key rotations: heads signed after a rotation need the new key; those signed before
        # stay verifiable with the key that signed them, so an auditor keeps every key pinned
        admin = ["--topic", "ledger.admin", "--partition", "0", "--offset", "0", "--records", str(root / "admin.jsonl")]
        rotated = root / "rotated.json"
        keys = [key]
        for n in (1, 2):
            keys.append(ok_json(cli(data, "keys", "rotate", "log"))["new_pubkey"])  # recorded on ledger.admin
            assert httpx.get(f"{url}/v1/status", timeout=10).json()["log_pubkey"] == keys[-1]
            assert newest_head(url, "ledger.admin", 0, n)["pubkey"] == keys[-1]
            (root / "admin.jsonl").write_bytes(cli(data, "tail", "ledger.admin", "--raw").stdout)
            if n == 1:
                p = run_script(url, "--log-pubkey", keys[1], *admin, "--state", str(rotated))
                assert p.returncode == 0, p.stderr
        p = run_script(url, "--log-pubkey", keys[2], *admin, "--state", str(rotated))
        assert p.returncode == 1 and "not a pinned log key" in p.stderr, p.stderr  # the remembered head: keys[1]
        p = run_script(url, "--log-pubkey", keys[1], "--log-pubkey", keys[2], *admin, "--state", str(rotated))
        assert p.returncode == 0 and json.loads(p.stdout)["consistent_with"] == 1, p.stderr
        p = run_script(url, *pinned, *topic, "--records", str(raw))  # ledger.blocks did not grow: still keys[0]'s
        assert p.returncode == 0, p.stderr


@pytest.mark.kafka
def test_the_script_reads_a_record_straight_from_kafka(kafka_bootstrap) -> None:  # noqa: F811
    """--kafka: the record's stored key, timestamp and value, read with confluent-kafka; a
    transaction marker's offset holds no data record."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    s = load_script()
    topic = f"auditor-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=60)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": topic, "enable.idempotence": True})
    producer.init_transactions(60)
    sent = [(b"k0", 1_700_000_000_000, b"\x00\x00\x00\x00\x01v0"), (b"k1", 1_700_000_000_001, b"v1"),
            (b"", 1_700_000_000_002, b"v2")]
    for batch in (sent[:2], sent[2:]):
        producer.begin_transaction()
        for key, ts, value in batch:
            producer.produce(topic, value, key, partition=0, timestamp=ts)
        producer.commit_transaction(60)
    got = [s.record_from_kafka(kafka_bootstrap, topic, 0, offset) for offset in (0, 1, 3)]  # 2: the first marker
    assert got == sent
    assert [s.leaf_hash(*r) for r in got] == [leaf_of(*r) for r in sent]
    with pytest.raises(SystemExit, match="holds no data record"):
        s.record_from_kafka(kafka_bootstrap, topic, 0, 2)
