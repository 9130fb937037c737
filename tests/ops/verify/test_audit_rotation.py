"""A retired log key (leaked: that is why one rotates) against the audit and the node: it may
not mint a new accepted key by a second rotation, nor pass by claiming another _checkpoints
partition; a reader does not serve its heads; and a head larger than the log's tree, signed by a
leaked key, no longer stops the heads of its partition (AUDIT.md)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json

from ledgerlog.engine import avro
from ledgerlog.engine import topics as T
from ledgerlog.engine.crypto import H
from ledgerlog.engine.log.base import Record
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.engine.signing import Signer
from ledgerlog.engine.treehead import head_key, sign_head


def _run(*args):
    return subprocess.run([LEDGERLOG, *args], capture_output=True, timeout=300, env=cli_env(),
                          stdin=subprocess.DEVNULL, check=False)


def _raw(data):
    out = []
    for topic in sorted(T.DEFAULT_PARTITIONS):
        res = cli(data, "tail", topic, "--raw")
        assert res.returncode == 0, res.stderr[-2000:]
        out += [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    return out


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    d = tmp_path_factory.mktemp("rot")
    h, g = d / "h.jsonl", d / "g.json"
    ok_json(_run("generate", "--events", "200", "--seed", "7", "--out", str(h), "--genesis-out", str(g)))
    data = str(d / "data")
    first = ok_json(cli(data, "init", "--genesis", str(g)))["log_pubkey"]
    lines = h.read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    (d / "a.jsonl").write_bytes(b"".join(lines[:half]))
    (d / "b.jsonl").write_bytes(b"".join(lines[half:]))
    ok_json(cli(data, "ingest", str(d / "a.jsonl")))
    ok_json(cli(data, "keys", "rotate", "log"))
    ok_json(cli(data, "ingest", str(d / "b.jsonl")))
    (retired_file,) = glob.glob(os.path.join(data, "keys", "retired", "log-*.key"))
    return {"data": data, "first": first, "retired": Signer.load(retired_file), "lines": _raw(data), "dir": d}


def _audit(lines, path, pubkey):
    path.write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    res = _run("audit", "--log-pubkey", pubkey, "--records", str(path))
    assert res.returncode in (0, 1), res.stderr[-2000:]
    return res.returncode, json.loads(res.stdout)


def _forged_rotation(lines, old: Signer, new: Signer):
    """A KeyRotated record old -> new appended to ledger.keys (signed by both keys, as §8.1 says)."""
    keys = [x for x in lines if x["topic"] == T.KEYS]
    rot = next(x for x in keys if avro.decode("KeyRotated", bytes.fromhex(x["value_hex"])[5:])["body"]["role"] == "log")
    ev = avro.decode("KeyRotated", bytes.fromhex(rot["value_hex"])[5:])
    body = {**ev["body"], "old_pubkey": old.pubkey, "new_pubkey": new.pubkey, "timestamp": ev["body"]["timestamp"] + 1}
    canon = avro.encode("KeyRotationBody", body)
    ev = {**ev, "body": body, "rotation_id": H(canon), "pubkey": old.pubkey,
          "signature": old.key.sign(canon).signature.hex(), "new_signature": new.key.sign(canon).signature.hex()}
    value = bytes.fromhex(rot["value_hex"])[:5] + avro.encode("KeyRotated", ev)
    return {**keys[-1], "offset": keys[-1]["offset"] + 1, "value_hex": value.hex()}


def _head_line(lines, signed):
    cp = [x for x in lines if x["topic"] == T.CHECKPOINTS]
    value = bytes.fromhex(cp[-1]["value_hex"])[:5] + avro.encode("SignedTreeHead", signed)
    h = signed["head"]
    return {**cp[-1], "offset": cp[-1]["offset"] + 1, "key_hex": head_key(h["topic"], h["partition"]).hex(),
            "value_hex": value.hex()}


def test_retired_key_signing_directly_is_refused(rotated, tmp_path):
    """The baseline the docs promise (and the suite tests): RETIRED_KEY."""
    lines = list(rotated["lines"])
    cp = [x for x in lines if x["topic"] == T.CHECKPOINTS]
    newest = avro.decode("SignedTreeHead", bytes.fromhex(cp[-1]["value_hex"])[5:])
    assert newest["pubkey"] != rotated["first"]
    lines.append(_head_line(lines, sign_head(rotated["retired"], newest["head"])))
    rc, report = _audit(lines, tmp_path / "r.jsonl", rotated["first"])
    assert rc == 1 and report["failure"]["code"] == "RETIRED_KEY"


def test_retired_key_minting_a_new_key_by_a_second_rotation_is_refused(rotated, tmp_path):
    """Same leaked retired key, one indirection: it signs a rotation retired -> attacker's key (the
    node would refuse it: the old key must hold the role *now*, PROTOCOL §8.1), then the attacker's
    key signs the head. The audit accepted the attacker's key and passed."""
    lines = list(rotated["lines"])
    attacker = Signer.generate()
    lines.append(_forged_rotation(lines, rotated["retired"], attacker))
    cp = [x for x in lines if x["topic"] == T.CHECKPOINTS]
    newest = avro.decode("SignedTreeHead", bytes.fromhex(cp[-1]["value_hex"])[5:])
    lines.append(_head_line(lines, sign_head(attacker, newest["head"])))
    rc, report = _audit(lines, tmp_path / "r.jsonl", rotated["first"])
    assert rc == 1, ("audit passed; accepted keys:", report["keys"])
    assert attacker.pubkey not in report["keys"]["accepted"]
    assert report["keys"]["rejected_rotations"][-1]["reason"] == "signed by a retired log key"


def test_offline_proof_head_does_not_serve_a_retired_key_head(rotated, tmp_path):
    """A head the retired log key signs after its successor's first head: the writer ignores it and
    `ledgerlog audit` fails it with RETIRED_KEY, but `ledgerlog proof head` (read-only open, no
    signer) served it as the partition's newest signed head."""
    data = tmp_path / "data"
    shutil.copytree(rotated["data"], data)
    cp = [x for x in rotated["lines"] if x["topic"] == T.CHECKPOINTS]
    newest = avro.decode("SignedTreeHead", bytes.fromhex(cp[-1]["value_hex"])[5:])
    h = newest["head"]
    forged = sign_head(rotated["retired"], {**h, "tree_size": h["tree_size"] + 1000, "root_hash": "ab" * 32})
    value = bytes.fromhex(cp[-1]["value_hex"])[:5] + avro.encode("SignedTreeHead", forged)
    log = EmbeddedLog(str(data / "log"))
    try:
        log.append([Record(T.CHECKPOINTS, head_key(h["topic"], h["partition"]), value, h["timestamp"] + 1, 0)])
    finally:
        log.close()
    res = _run("--data-dir", str(data), "audit", "--log-pubkey", rotated["first"])
    assert res.returncode == 1 and json.loads(res.stdout)["failure"]["code"] == "RETIRED_KEY"
    got = ok_json(cli(data, "proof", "head", "--topic", h["topic"], "--partition", str(h["partition"])))
    assert got["pubkey"] != rotated["retired"].pubkey, got


def test_retired_key_head_on_another_checkpoints_partition_is_refused(rotated, tmp_path):
    """The baseline RETIRED_KEY case, but the forged head's line says partition 1 of _checkpoints
    (a topic of one partition): RETIRED_KEY and HEAD_DECREASED were judged per _checkpoints
    partition, so the retired key's head passed."""
    lines = list(rotated["lines"])
    cp = [x for x in lines if x["topic"] == T.CHECKPOINTS]
    newest = avro.decode("SignedTreeHead", bytes.fromhex(cp[-1]["value_hex"])[5:])
    forged = _head_line(lines, sign_head(rotated["retired"], newest["head"]))
    lines.append({**forged, "partition": 1, "offset": 0})
    rc, report = _audit(lines, tmp_path / "r.jsonl", rotated["first"])
    assert rc == 1, ("audit passed", report["keys"]["used"])


def _heads(data):
    res = cli(data, "tail", T.CHECKPOINTS, "--raw")
    assert res.returncode == 0, res.stderr[-2000:]
    out = []
    for x in res.stdout.splitlines():
        if x.strip():
            r = json.loads(x)
            out.append(avro.decode("SignedTreeHead", bytes.fromhex(r["value_hex"])[5:]))
    return out


def test_a_forged_head_beyond_the_tree_does_not_stop_the_heads_of_its_partition(tmp_path):
    """A head the leaked log key signed at a tree size far beyond the log's: the writer took it as
    the partition's newest, and none was due again until the tree outgrew it (never), rotation
    or not. A head beyond the log's own tree is now ignored."""
    h, g = tmp_path / "h.jsonl", tmp_path / "g.json"
    ok_json(_run("generate", "--events", "200", "--seed", "7", "--out", str(h), "--genesis-out", str(g)))
    data = str(tmp_path / "data")
    ok_json(cli(data, "init", "--genesis", str(g)))
    lines = h.read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    (tmp_path / "a.jsonl").write_bytes(b"".join(lines[:half]))
    (tmp_path / "b.jsonl").write_bytes(b"".join(lines[half:]))
    ok_json(cli(data, "ingest", str(tmp_path / "a.jsonl")))
    heads = _heads(data)
    blocks = [s for s in heads if (s["head"]["topic"], s["head"]["partition"]) == ("ledger.blocks", 0)]
    good = blocks[-1]["head"]
    # the log key leaks; the thief publishes an oversized head of ledger.blocks/0
    leaked = Signer.load(os.path.join(data, "keys", "log.key"))
    forged = sign_head(leaked, {**good, "tree_size": good["tree_size"] + 10**9, "root_hash": "ab" * 32,
                                "timestamp": good["timestamp"] + 1})
    res = cli(data, "tail", T.CHECKPOINTS, "--raw")
    wire = bytes.fromhex(json.loads(res.stdout.splitlines()[-1])["value_hex"])[:5]
    log = EmbeddedLog(os.path.join(data, "log"))
    try:
        log.append([Record(T.CHECKPOINTS, head_key("ledger.blocks", 0), wire + avro.encode("SignedTreeHead", forged),
                           good["timestamp"] + 1, 0)])
    finally:
        log.close()
    # the operator does what AUDIT.md says: rotate the log key; then the chain grows
    ok_json(cli(data, "keys", "rotate", "log"))
    ok_json(cli(data, "ingest", str(tmp_path / "b.jsonl")))
    size = ok_json(cli(data, "proof", "inclusion", "--topic", "ledger.blocks", "--partition", "0", "--index", "0"))["tree_size"]
    assert size > good["tree_size"]
    new_key = ok_json(cli(data, "status"))["log_pubkey"]
    after = [s for s in _heads(data) if (s["head"]["topic"], s["head"]["partition"]) == ("ledger.blocks", 0)
             and s["pubkey"] == new_key]
    assert after and after[-1]["head"]["tree_size"] == size, "no head of ledger.blocks/0 by the new key"
