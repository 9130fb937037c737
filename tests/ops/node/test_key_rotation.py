"""Key rotation (docs/PROTOCOL.md §8): a rotation line moves a role identity to a new key, the old
key stops signing for it, nothing else changes; bad rotations are typed rejections that change
nothing; the write-side fold and `verify` agree with admission; the node's admin API and the
CLI rotate the node's own key files, and the simulator keeps producing with the new key."""
from __future__ import annotations

import json
import os
import time
from typing import Any

import orjson
import pytest
from clitools import LEDGERLOG
from conftest import Keys, Lines, admit, admit_ok, signer_from_byte, snapshot
from fastapi.testclient import TestClient

from ledgerlog.engine import topics as T
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.admission.state_fold import apply_event, seed_genesis
from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import Code
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.engine.log.memory import MemoryLog
from ledgerlog.engine.signing import Signer, rotation_line
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.node.lifecycle import Node
from ledgerlog.ops.verify.checks import verify

OUTSIDER = signer_from_byte(0x33)
TOKEN = "r" * 32


def successor(old: Signer) -> Signer:
    """A fresh key that signs for ``old``'s identity."""
    return Signer(Signer.generate().key, old.address)


def rotate(ln: Lines, old: Signer, role: str, new: Signer | None = None) -> tuple[dict, Signer]:
    new = new or successor(old)
    return rotation_line(old, new, chain_id=ln.chain_id, role=role, timestamp=ln.now()), new


def codes(s) -> list[str]:
    return [r["code"] for r in s.rejections]


def test_producer_rotation_moves_blocks_and_pool_rounds_to_the_new_key(chain, keys: Keys, lines: Lines):
    admit_ok(chain, lines.block())
    line, new = rotate(lines, keys.producer, "producer")
    pool_line, _ = rotate(lines, keys.producer, "pool", new)
    admit_ok(chain, line, pool_line)

    assert codes(admit(chain, lines.block())) == [Code.UNKNOWN_PRODUCER.value]
    admit_ok(chain, lines.block(producer=new))  # same producer address: still a pool round
    tip = chain.write_state().tip()
    assert tip.height == 2
    assert chain.write_state().pool_round(2) is not None

    assert codes(admit(chain, lines.payout("p-old", round_height=2))) == [Code.BAD_SIGNATURE.value]
    admit_ok(chain, lines.payout("p-new", round_height=2, signer=new))

    (ev,) = [chain.codec.decode(T.KEYS, r.value) for r in chain.log.scan(T.KEYS, 0, 0, 1)]
    assert ev["body"]["role"] == "producer" and ev["identity"] == keys.producer.address
    assert ev["pubkey"] == keys.producer.pubkey and ev["body"]["new_pubkey"] == new.pubkey
    assert ev["stamp_height"] == 1


def test_oracle_and_treasury_rotations(chain, keys: Keys, lines: Lines):
    admit_ok(chain, lines.provider(keys.faucet))
    oracle_line, oracle = rotate(lines, keys.oracle, "oracle")
    treasury_line, treasury = rotate(lines, keys.treasury, "treasury")
    admit_ok(chain, oracle_line, treasury_line)
    assert codes(admit(chain, lines.reading())) == [Code.UNKNOWN_ORACLE.value]
    admit_ok(chain, lines.reading(signer=oracle))
    assert codes(admit(chain, lines.settlement())) == [Code.BAD_SIGNATURE.value]
    admit_ok(chain, lines.settlement(signer=treasury))


def _bad_old_signature(ln, k):
    line, _ = rotate(ln, k.producer, "producer")
    line["signature"] = ("1" if line["signature"][0] == "0" else "0") + line["signature"][1:]
    return line


def _bad_new_signature(ln, k):
    line, _ = rotate(ln, k.producer, "producer")
    line["new_signature"] = line["signature"]
    return line


def _pubkey_not_old(ln, k):
    line, _ = rotate(ln, k.producer, "producer")
    line["pubkey"] = k.oracle.pubkey
    return line


def _rotate_back(ln, k):
    line, new = rotate(ln, k.producer, "producer")
    admit_ok(ln.chain, line)
    back, _ = rotate(ln, new, "producer", Signer(k.producer.key, k.producer.address))
    return back


def _role_field(ln, k):
    line, _ = rotate(ln, k.producer, "producer")
    line["body"]["role"] = "mayor"
    return line


def _wrong_chain(ln, k):
    return rotation_line(k.producer, successor(k.producer), chain_id="other", role="producer", timestamp=ln.now())


BAD = {
    "old signature": (_bad_old_signature, Code.BAD_SIGNATURE),
    "new signature": (_bad_new_signature, Code.BAD_SIGNATURE),
    "pubkey is not old_pubkey": (_pubkey_not_old, Code.BAD_SIGNATURE),
    "not a producer": (lambda ln, k: rotate(ln, OUTSIDER, "producer")[0], Code.UNKNOWN_PRODUCER),
    "not an oracle": (lambda ln, k: rotate(ln, OUTSIDER, "oracle")[0], Code.UNKNOWN_ORACLE),
    "not the treasury": (lambda ln, k: rotate(ln, k.oracle, "treasury")[0], Code.BAD_SIGNATURE),
    "new key held the role": (_rotate_back, Code.BAD_ROTATION),
    "new key is the old key": (lambda ln, k: rotate(ln, k.oracle, "oracle", k.oracle)[0], Code.BAD_ROTATION),
    "unknown role": (_role_field, Code.MALFORMED),
    "other chain": (_wrong_chain, Code.WRONG_CHAIN),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_rotations_are_typed_and_change_nothing(chain, keys, lines, name):
    build, code = BAD[name]
    line = build(lines, keys)
    before = snapshot(chain)
    s = admit(chain, line)
    assert codes(s) == [code.value], s.rejections
    assert snapshot(chain) == before


def test_a_repeated_rotation_is_a_duplicate(chain, keys, lines):
    line, _ = rotate(lines, keys.oracle, "oracle")
    admit_ok(chain, line)
    s = admit(chain, line)
    assert s.duplicates == 1 and s.rejected == 0


def test_write_side_fold_and_verify_agree_with_admission(chain, keys, lines):
    admit_ok(chain, lines.block())
    line, new = rotate(lines, keys.producer, "producer")
    pool_line, _ = rotate(lines, keys.producer, "pool", new)
    oracle_line, oracle = rotate(lines, keys.oracle, "oracle")
    admit_ok(chain, line, pool_line, oracle_line, lines.provider(keys.faucet))
    admit_ok(chain, lines.reading(signer=oracle), lines.block(producer=new))
    admit_ok(chain, lines.payout("p1", round_height=2, signer=new))

    # the fold over the log reproduces admission's state, rotations included
    folded = WriteState(MemoryLog())
    seed_genesis(folded, chain.genesis)
    events = []
    for topic in T.EVENT_TOPICS:
        for p, end in enumerate(chain.log.end_offsets(topic)):
            events += [(topic, chain.codec.decode(topic, r.value)) for r in chain.log.scan(topic, p, 0, end)]
    from ledgerlog.engine.admission.state_fold import order_key
    for topic, ev in sorted(events, key=lambda te: order_key(*te)):
        apply_event(folded, topic, ev, chain.genesis)
    batch = folded.take_batch()
    stored = dict(chain.log.state_items(b"rk/"))
    assert {k: v for k, v in batch.items() if k.startswith(b"rk/")} == stored and len(stored) == 6

    chain.close()  # verify opens the chain itself
    report = verify(chain.config)
    assert report["ok"] and report["log"]["problems"] == [], report


def test_verify_flags_a_block_by_a_retired_key(chain, keys, lines):
    """Records written around admission (a tampered log): verify names the retired key."""
    line, new = rotate(lines, keys.producer, "producer")
    admit_ok(chain, line)
    admit_ok(chain, lines.block(producer=new))
    forged = lines.block()  # by the retired key: admission refuses it...
    assert codes(admit(chain, forged)) == [Code.UNKNOWN_PRODUCER.value]
    from ledgerlog.engine.admission.lines import parse_line
    from ledgerlog.engine.log.base import Record
    item = parse_line(orjson.dumps(forged))
    hdr = item.header.body
    ev = {"header": hdr, "hash": item.header.id, "pubkey": item.header.pubkey,
          "signature": item.header.signature, "txids": [], "fees": 0, "reward": chain.genesis.block_reward,
          "evicted": []}
    # ...so write it straight to the log, as a faulty writer could
    chain.log.append([Record(T.BLOCKS, chain.genesis.chain_id.encode(), chain.codec.encode(T.BLOCKS, ev),
                             hdr["timestamp"])], {})
    chain.close()
    report = verify(chain.config, signatures=False)
    assert not report["ok"]
    found = {p["code"] for p in report["log"]["problems"]}  # the write-side tip also lags the forged block
    assert "UNKNOWN_PRODUCER" in found and found <= {"UNKNOWN_PRODUCER", "WRITE_STATE_MISMATCH"}, found


# -- the node's own keys ----------------------------------------------------------------------

@pytest.fixture
def node(tmp_path):
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token=TOKEN)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg, simulate=True, seed=7)
    n.start()
    yield n
    n.stop()


def _blocks_by(node: Node, pubkey: str, timeout: float = 30.0) -> int:
    """Wait for the simulator to admit a block signed by ``pubkey``; its height."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p, end in enumerate(node.chain.log.end_offsets(T.BLOCKS)):
            for r in node.chain.log.scan(T.BLOCKS, p, max(0, end - 5), end):
                ev = node.chain.codec.decode(T.BLOCKS, r.value)
                if ev["pubkey"] == pubkey:
                    return ev["header"]["height"]
        time.sleep(0.2)
    raise AssertionError(f"no block by {pubkey[:16]} within {timeout}s")


def test_admin_rotate_key_switches_the_simulator_and_is_audited(node):
    keys_dir = node.config.keys_dir
    old = Signer.load(os.path.join(keys_dir, "producer.key"))
    _blocks_by(node, old.pubkey)
    client = TestClient(create_app(node), raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    refused = client.post("/v1/admin/rotate-key", json={"key": "producer"})
    assert refused.status_code == 401
    assert Signer.load(os.path.join(keys_dir, "producer.key")).pubkey == old.pubkey
    assert node.chain.log.end_offsets(T.KEYS) == [0] and node.chain.log.end_offsets(T.ADMIN) == [0]

    r = client.post("/v1/admin/rotate-key", json={"key": "producer"}, headers=auth)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["old_pubkey"] == old.pubkey and sorted(out["roles"]) == ["pool", "producer"]
    new = Signer.load(os.path.join(keys_dir, "producer.key"))
    assert new.pubkey == out["new_pubkey"] and new.address == old.address  # same identity
    assert os.path.exists(os.path.join(keys_dir, "retired", f"producer-{old.pubkey[:16]}.key"))
    assert not os.path.exists(os.path.join(keys_dir, "producer.key.next"))

    _blocks_by(node, new.pubkey)  # the simulator produces with the new key
    assert node.chain.log.end_offsets(T.KEYS) == [2]
    (audit,) = [node.chain.codec.decode(T.ADMIN, rec.value) for rec in node.chain.log.scan(T.ADMIN, 0, 0, 1)]
    assert audit["action"] == "rotate-key" and audit["outcome"] == "ok"
    assert json.loads(audit["params"]) == {"key": "producer"} and new.pubkey in audit["detail"]

    bad = client.post("/v1/admin/rotate-key", json={"key": "faucet"}, headers=auth)  # holds no role
    assert bad.status_code == 409 and bad.json()["code"] == "ROTATION_REFUSED"
    assert node.chain.log.end_offsets(T.KEYS) == [2]
    (_, second) = [node.chain.codec.decode(T.ADMIN, rec.value) for rec in node.chain.log.scan(T.ADMIN, 0, 0, 2)]
    assert second["action"] == "rotate-key" and second["outcome"] == "error"


def test_cli_rotates_a_key_offline(tmp_path):
    import subprocess
    data = str(tmp_path / "data")
    subprocess.run([LEDGERLOG, "--data-dir", data, "init"], check=True, capture_output=True)
    old = Signer.load(os.path.join(data, "keys", "oracle.key"))
    out = subprocess.run([LEDGERLOG, "--data-dir", data, "keys", "rotate", "oracle"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["via"] == "local" and doc["roles"] == ["oracle"] and doc["old_pubkey"] == old.pubkey
    again = subprocess.run([LEDGERLOG, "--data-dir", data, "keys", "rotate", "faucet"], capture_output=True, text=True)
    assert again.returncode == 1 and "holds no role" in again.stderr
    tail = subprocess.run([LEDGERLOG, "--data-dir", data, "tail", T.KEYS], capture_output=True, text=True)
    assert tail.returncode == 0 and doc["new_pubkey"] in tail.stdout


def test_rotating_the_log_key_signs_new_heads_with_it_and_old_heads_stay_verifiable(node):
    from ledgerlog.engine.treehead import check_head_signature

    keys_dir = node.config.keys_dir
    old = Signer.load(os.path.join(keys_dir, "log.key"))
    assert node.queries.status()["log_pubkey"] == old.pubkey
    _blocks_by(node, Signer.load(os.path.join(keys_dir, "producer.key")).pubkey)
    assert node.chain.heads.publish() >= 1 or node.chain.heads.latest  # the heads loop may have beaten us
    before = dict(node.chain.heads.latest)

    client = TestClient(create_app(node), raise_server_exceptions=False)
    r = client.post("/v1/admin/rotate-key", json={"key": "log"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.json()["roles"] == ["log"] and r.json()["identity"] == "log"
    new = Signer.load(os.path.join(keys_dir, "log.key"))
    assert r.json()["new_pubkey"] == new.pubkey != old.pubkey
    assert client.get("/v1/status").json()["log_pubkey"] == new.pubkey

    (ev,) = [node.chain.codec.decode(T.KEYS, rec.value) for rec in node.chain.log.scan(T.KEYS, 0)]
    assert (ev["body"]["role"], ev["body"]["old_pubkey"], ev["body"]["new_pubkey"]) == ("log", old.pubkey, new.pubkey)
    node.chain.heads.publish()  # ledger.keys grew: its head is due, signed by the new key
    after = node.chain.heads.latest[(T.KEYS, 0)]
    assert after["pubkey"] == new.pubkey
    check_head_signature(after, [old.pubkey, new.pubkey])
    for signed in before.values():
        assert signed["pubkey"] == old.pubkey
        check_head_signature(signed, [old.pubkey])

    again = client.post("/v1/admin/rotate-key", json={"key": "log"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.status_code == 200  # the new key holds the role now, so it can be rotated in turn
    node.stop()
    report = verify(node.config, signatures=True)  # verify replays both log rotations from the first key
    assert report["ok"] and report["log"]["problems"] == [], report["log"]["problems"]


def test_concurrent_rotations_of_one_key_leave_the_file_holding_the_key_that_signs(node):
    """Two rotate-key requests at once (a client retrying on a timeout) both wrote the same
    producer.key.next: the chain rotated to a key whose seed was then overwritten or unlinked,
    and the producer and pool roles were lost for good. One rotation runs at a time; another
    meanwhile is refused (ROTATION_REFUSED, 409), so the file always holds the key that signs."""
    import threading

    from ledgerlog.engine.admission.roles import identity_of
    from ledgerlog.ops.node.keyrotation import rotate_key_action

    keys_dir = node.config.keys_dir
    _blocks_by(node, Signer.load(os.path.join(keys_dir, "producer.key")).pubkey)
    results: list[Any] = []

    def rotate() -> None:
        try:
            results.append(rotate_key_action(node, {"key": "producer"}))
        except Exception as exc:  # collected: a refusal is allowed, a lost key is not
            results.append(exc)
    threads = [threading.Thread(target=rotate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, dict) or type(r).__name__ == "RotationRefusedError" for r in results), results
    results = [r for r in results if isinstance(r, dict)]
    assert results
    held = Signer.load(os.path.join(keys_dir, "producer.key"))
    assert held.pubkey in {r["new_pubkey"] for r in results}
    state = WriteState(node.chain.log)
    assert identity_of(state, node.genesis, "producer", held.pubkey) is not None
    assert not os.path.exists(os.path.join(keys_dir, "producer.key.next"))
    _blocks_by(node, held.pubkey)


def test_a_head_the_retired_log_key_signs_after_the_new_key_s_first_is_ignored(node):
    """A leaked, rotated-out log key could still sign a head (of any size) that the node took as a
    partition's newest: served, and its publishing stopped for that partition."""
    from ledgerlog.engine.log.base import Record
    from ledgerlog.engine.treehead import head_key, sign_head

    keys_dir = node.config.keys_dir
    old = Signer.load(os.path.join(keys_dir, "log.key"))
    _blocks_by(node, Signer.load(os.path.join(keys_dir, "producer.key")).pubkey)
    client = TestClient(create_app(node), raise_server_exceptions=False)
    r = client.post("/v1/admin/rotate-key", json={"key": "log"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    node.chain.heads.publish()
    honest = node.chain.heads.latest[(T.KEYS, 0)]
    assert honest["pubkey"] == r.json()["new_pubkey"]
    forged = sign_head(old, {**honest["head"], "tree_size": 2**62, "timestamp": honest["head"]["timestamp"] + 1})
    node.chain.log.append([Record(T.CHECKPOINTS, head_key(T.KEYS, 0), node.chain.codec.encode(T.CHECKPOINTS, forged),
                                  honest["head"]["timestamp"] + 1, 0)])
    node.chain.heads.refresh()
    assert node.chain.heads.latest[(T.KEYS, 0)] == honest


_KILLED_AT = """
import os, signal, sys
from ledgerlog.ops.cli import main
step = sys.argv.pop(1)
real_replace = os.replace
def replace(src, dst, *a, **k):  # killed where the file would be renamed (after admission)
    if str(src).endswith(".key.next"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)
if step == "renamed":
    os.replace = replace
else:  # killed before admission: the .next file written, nothing on the log
    import ledgerlog.ops.node.keyrotation as kr
    kr.rotation_line = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
sys.argv[0] = "ledgerlog"
sys.exit(main())
"""


@pytest.mark.parametrize("step", ["renamed", "admitted"])
@pytest.mark.parametrize("name", ["log", "producer"])
def test_a_rotation_killed_before_its_file_was_renamed_is_settled_at_the_next_open(tmp_path, step, name):
    """Killed after the rotation was admitted but before NAME.key.next replaced NAME.key, the node
    signed with the retired key (log) or found no producer key and stopped making blocks, and a
    new rotation was refused (the old key holds no role). The next open finishes it; killed
    before admission, it is undone."""
    import subprocess
    import sys

    from ledgerlog.engine.admission.roles import identity_of
    from ledgerlog.engine.chain import open_chain
    data = str(tmp_path / "data")
    subprocess.run([LEDGERLOG, "--data-dir", data, "init"], check=True, capture_output=True)
    path = os.path.join(data, "keys", f"{name}.key")
    old = Signer.load(path)
    proc = subprocess.run([sys.executable, "-c", _KILLED_AT, step, "--data-dir", data, "keys", "rotate", name],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert os.path.exists(path + ".next")
    pending = Signer.load(path + ".next")
    status = json.loads(subprocess.run([LEDGERLOG, "--data-dir", data, "status"], capture_output=True,
                                       text=True, check=True).stdout)
    cfg = Config(data_dir=data)
    with open_chain(cfg) as chain:
        state = WriteState(chain.log)
        held = Signer.load(path)
        assert not os.path.exists(path + ".next")
        if step == "renamed":
            assert held.pubkey == pending.pubkey != old.pubkey
            assert os.path.exists(os.path.join(data, "keys", "retired", f"{name}-{old.pubkey[:16]}.key"))
        else:
            assert held.pubkey == old.pubkey
        assert identity_of(state, chain.genesis, name, held.pubkey) is not None
        if name == "log":
            assert chain.heads.signer is not None and chain.heads.signer.pubkey == held.pubkey
    if name == "log" and step == "renamed":
        assert status["log_pubkey"] in (old.pubkey, held.pubkey)  # (a read-only status settles nothing)
    again = subprocess.run([LEDGERLOG, "--data-dir", data, "keys", "rotate", name], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
