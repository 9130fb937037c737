"""The faucet's key (ops/api/faucet_keys.py) through a node's admin API: an operator's key
imported (malformed ones refused and nothing changed), a rotation whose transfer moves the
spendable balance on the log, the faucet signing with the new key without a restart, a crash
between any two steps of a rotation leaving a usable faucet, and the audit record of
faucet-import-key carrying no seed (nor anything else on the log or in the node's log)."""
from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Keys, Lines, admit_ok, load_signer, signer_from_byte
from fastapi.testclient import TestClient

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import BadKeyError, RotationRefusedError
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.engine.signing import Signer
from ledgerlog.ops.api import faucet_keys
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.faucet import Faucet, FaucetSettings
from ledgerlog.ops.api.limits import HttpLimits
from ledgerlog.ops.node.lifecycle import Node

TOKEN = "k" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GENEROUS = FaucetSettings(ip_burst=100, address_burst=100)


def _config(tmp_path: Any) -> Config:
    return Config(data_dir=str(tmp_path / "data"), sync=False, admin_token=TOKEN)


@pytest.fixture
def node(tmp_path) -> Iterator[Node]:
    cfg = _config(tmp_path)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg)
    n.start()
    yield n
    n.stop()


def client(node: Node) -> TestClient:
    return TestClient(create_app(node, limits=HttpLimits(), faucet=GENEROUS), raise_server_exceptions=False,
                      client=("10.0.0.9", 50000))


def key_file(node: Node) -> str:
    return os.path.join(node.config.keys_dir, "faucet.key")


def keys_of(node: Node) -> Keys:
    return Keys(*(load_signer(node.config, n) for n in ("producer", "oracle", "treasury", "faucet")))


def confirm_mempool(node: Node) -> None:
    """Produce the next block over every committed mempool transaction, by (sender, nonce)."""
    txs = sorted(node.chain.write_state().mempool(), key=lambda t: (t["body"]["sender"], t["body"]["nonce"]))
    admit_ok(node.chain, Lines(node.chain, keys_of(node)).block(txs))


def log_bytes(node: Node) -> bytes:
    """Every record's key and value on every topic, concatenated."""
    log = node.chain.log
    return b"".join(rec.key + rec.value for t, n in log.topics().items() for p in range(n)
                    for rec in log.scan(t, p))


def admin_events(node: Node, action: str) -> list[dict[str, Any]]:
    log = node.chain.log
    out = [node.chain.codec.decode(T.ADMIN, rec.value) for p in range(log.topics()[T.ADMIN])
           for rec in log.scan(T.ADMIN, p)]
    return [e for e in out if e["action"] == action]


def signer_of_tx(node: Node, txid: str) -> str:
    """The pubkey that signed ``txid``, from its TransactionSubmitted event on ledger.mempool."""
    log = node.chain.log
    for p in range(log.topics()[T.MEMPOOL]):
        for rec in log.scan(T.MEMPOOL, p):
            ev = node.chain.codec.decode(T.MEMPOOL, rec.value)
            if ev["txid"] == txid:
                return str(ev["pubkey"])
    raise AssertionError(f"{txid} is not on {T.MEMPOOL}")


def grant(c: TestClient, to: Signer) -> dict[str, Any]:
    r = c.post("/v1/faucet", json={"address": to.address})
    assert r.status_code == 200, r.text
    return r.json()


# -- import -----------------------------------------------------------------------------------------
def test_import_through_the_admin_api_is_used_at_once_and_audited_without_the_seed(node, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    old, new = keys_of(node).faucet, Signer.generate()
    before = open(key_file(node), "rb").read()
    with client(node) as c:
        # fund the operator's key first (as an operator would), then import it
        admit_ok(node.chain, Lines(node.chain, keys_of(node)).tx(old, new, 50_000_000))
        confirm_mempool(node)
        r = c.post("/v1/admin/faucet-import-key", json={"seed": new.seed.upper()}, headers=AUTH)
        assert r.status_code == 200, r.text
        out = r.json()
        assert (out["address"], out["previous_address"], out["spendable"]) == (new.address, old.address, 50_000_000)
        assert c.get("/v1/faucet").json()["address"] == new.address          # no restart
        g = grant(c, signer_from_byte(61))
        assert g["sender"] == new.address and g["nonce"] == 1
        assert signer_of_tx(node, g["txid"]) == new.pubkey
        # the same key again changes nothing
        again = c.post("/v1/admin/faucet-import-key", json={"seed": new.seed}, headers=AUTH).json()
        assert again["unchanged"] is True
    assert stat.S_IMODE(os.stat(key_file(node)).st_mode) == 0o600
    assert json.loads(open(key_file(node)).read())["seed"] == new.seed
    retired = os.path.join(node.config.keys_dir, "retired", f"faucet-{old.pubkey[:16]}.key")
    assert open(retired, "rb").read() == before and stat.S_IMODE(os.stat(retired).st_mode) == 0o600

    events = admin_events(node, "faucet-import-key")
    assert [e["outcome"] for e in events] == ["ok", "ok"]
    assert all(json.loads(e["params"]) == {"seed": "<redacted>"} for e in events)
    everything = log_bytes(node)
    for form in (new.seed, new.seed.upper()):
        assert form.encode() not in everything
        assert form not in caplog.text
    assert bytes(new.key) not in everything


@pytest.mark.parametrize("body, code", [
    ({"seed": "zz" * 32}, "BAD_KEY"), ({"seed": "00" * 31}, "BAD_KEY"), ({"seed": "00" * 33}, "BAD_KEY"),
    ({"seed": " "}, "BAD_KEY"), ({"seed": 5}, "BAD_REQUEST"), ({}, "BAD_REQUEST"), ({"key": "x"}, "BAD_REQUEST"),
])
def test_import_refuses_a_malformed_seed_and_changes_nothing(node, body, code) -> None:
    before = open(key_file(node), "rb").read()
    with client(node) as c:
        r = c.post("/v1/admin/faucet-import-key", json=body, headers=AUTH)
        assert r.status_code == 400 and r.json()["code"] == code, r.text
        if isinstance(body.get("seed"), str) and body["seed"].strip():
            assert body["seed"] not in r.text
        assert c.get("/v1/faucet").json()["address"] == keys_of(node).faucet.address
    assert open(key_file(node), "rb").read() == before
    assert not os.path.exists(os.path.join(node.config.keys_dir, "retired"))
    for e in admin_events(node, "faucet-import-key"):  # a refused seed is not recorded either
        assert "seed" not in json.loads(e["params"]) or json.loads(e["params"])["seed"] == "<redacted>"


def test_parse_key_takes_key_files_and_seeds_and_refuses_the_rest() -> None:
    s = Signer.generate()
    doc = {"seed": s.seed, "pubkey": s.pubkey, "address": s.address}
    for text in (json.dumps(doc), json.dumps({"seed": s.seed}), f"  {s.seed}\n", s.to_json("faucet")):
        assert faucet_keys.parse_key(text).pubkey == s.pubkey
    other = Signer.generate()
    for bad in ("", "{", "[]", json.dumps({"pubkey": s.pubkey}), json.dumps({**doc, "pubkey": other.pubkey}),
                json.dumps({**doc, "address": other.address}), json.dumps({**doc, "seed": s.seed[:-2]}),
                json.dumps({"seed": 12}), "g" * 64):
        with pytest.raises(BadKeyError) as err:
            faucet_keys.parse_key(bad)
        assert s.seed not in str(err.value) and err.value.code == "BAD_KEY"


# -- rotation ---------------------------------------------------------------------------------------
def test_rotation_moves_the_balance_on_the_log_and_grants_use_the_new_key(node) -> None:
    old = keys_of(node).faucet
    with client(node) as c:
        early = grant(c, signer_from_byte(71))  # pending from the old key: it confirms as usual
        spendable = c.get("/v1/faucet").json()["spendable"]
        r = c.post("/v1/admin/faucet-rotate-key", headers=AUTH)
        assert r.status_code == 200, r.text
        rot = r.json()
        assert rot["old_address"] == old.address and rot["new_address"] != old.address
        assert rot["amount"] == spendable - node.genesis.min_fee
        tx = c.get(f"/v1/tx/{rot['txid']}").json()
        assert (tx["status"], tx["sender"]) == ("pending", old.address)
        assert signer_of_tx(node, rot["txid"]) == old.pubkey
        new = keys_of(node).faucet
        assert new.address == rot["new_address"] and c.get("/v1/faucet").json()["address"] == new.address
        # a second rotation before the transfer is confirmed would strand it on the retired key
        r = c.post("/v1/admin/faucet-rotate-key", headers=AUTH)
        assert r.status_code == 409 and r.json()["code"] == "ROTATION_REFUSED"
        # until a block confirms the transfer the new key has nothing to spend
        assert c.post("/v1/faucet", json={"address": signer_from_byte(72).address}).json()["code"] == \
            "INSUFFICIENT_BALANCE"
        confirm_mempool(node)
        assert c.get(f"/v1/tx/{early['txid']}").json()["status"] == "confirmed"
        tx = c.get(f"/v1/tx/{rot['txid']}").json()
        assert (tx["status"], tx["pubkey"], tx["body"]["sender"], tx["body"]["recipient"], tx["body"]["amount"]) == (
            "confirmed", old.pubkey, old.address, rot["new_address"], rot["amount"])
        assert c.get(f"/v1/accounts/{old.address}").json()["balance"] == 0
        assert c.get("/v1/faucet").json()["spendable"] == rot["amount"]
        g = grant(c, signer_from_byte(72))
        assert g["sender"] == new.address and signer_of_tx(node, g["txid"]) == new.pubkey
    retired = os.path.join(node.config.keys_dir, "retired", f"faucet-{old.pubkey[:16]}.key")
    assert json.loads(open(retired).read())["seed"] == old.seed
    assert stat.S_IMODE(os.stat(key_file(node)).st_mode) == 0o600
    assert not os.path.exists(key_file(node) + ".next")
    events = admin_events(node, "faucet-rotate-key")
    assert [e["outcome"] for e in events] == ["ok", "error"] and rot["txid"] in events[0]["detail"]
    assert new.seed.encode() not in log_bytes(node)


def _crash_before_admission(monkeypatch: pytest.MonkeyPatch, node: Node) -> None:
    def boom(lines: list[bytes]) -> Any:
        raise RuntimeError("crash before the transfer is admitted")
    monkeypatch.setattr(node.admitter, "admit", boom)


def _crash_before_retiring(monkeypatch: pytest.MonkeyPatch, node: Node) -> None:
    def boom(path: str, old: Any) -> Any:
        raise RuntimeError("crash after admission")
    monkeypatch.setattr(faucet_keys, "_retire", boom)


def _crash_before_rename(monkeypatch: pytest.MonkeyPatch, node: Node) -> None:
    real = faucet_keys._retire

    def retire_then_crash(path: str, old: Any) -> Any:
        real(path, old)
        raise RuntimeError("crash after retiring, before the rename")
    monkeypatch.setattr(faucet_keys, "_retire", retire_then_crash)


@pytest.mark.parametrize("crash, moved", [(_crash_before_admission, False), (_crash_before_retiring, True),
                                          (_crash_before_rename, True)])
def test_a_crash_between_rotation_steps_leaves_a_usable_faucet(tmp_path, monkeypatch, crash: Callable[..., None],
                                                               moved: bool) -> None:
    cfg = _config(tmp_path)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    node = Node(cfg)
    node.start()
    old = keys_of(node).faucet
    spendable = node.chain.write_state().spendable(old.address)
    try:
        with monkeypatch.context() as m:
            crash(m, node)
            with pytest.raises(RuntimeError):
                node.faucet.rotate_key()
        pending = json.loads(open(key_file(node) + ".next").read())
        assert open(key_file(node)).read().count(old.seed) == 1  # the old key still in place
    finally:
        node.stop()
    node = Node(cfg)  # the restart
    node.start()
    try:
        with client(node) as c:
            status = c.get("/v1/faucet").json()
            assert not os.path.exists(key_file(node) + ".next")
            if moved:
                assert status["address"] == Signer.from_seed(pending["seed"]).address
                assert c.get(f"/v1/tx/{pending['rotation_txid']}").json()["status"] == "pending"
                confirm_mempool(node)
                assert c.get("/v1/faucet").json()["spendable"] == spendable - node.genesis.min_fee
                assert os.path.exists(os.path.join(cfg.keys_dir, "retired", f"faucet-{old.pubkey[:16]}.key"))
            else:
                assert status["address"] == old.address and status["spendable"] == spendable
                assert c.get(f"/v1/tx/{pending['rotation_txid']}").status_code == 404
            g = grant(c, signer_from_byte(81))
            assert g["sender"] == status["address"]
            # and the next rotation works from there
            confirm_mempool(node)
            r = c.post("/v1/admin/faucet-rotate-key", headers=AUTH)
            assert r.status_code == 200 and r.json()["old_address"] == status["address"], r.text
    finally:
        node.stop()


def test_rotation_with_nothing_to_move_and_without_a_key(node) -> None:
    """An empty faucet rotates with no transfer; a missing key is refused."""
    with client(node) as c:
        old = keys_of(node).faucet
        bal = node.chain.write_state().spendable(old.address)
        admit_ok(node.chain, Lines(node.chain, keys_of(node)).tx(old, signer_from_byte(90), bal - node.genesis.min_fee))
        confirm_mempool(node)
        rot = c.post("/v1/admin/faucet-rotate-key", headers=AUTH).json()
        assert rot["txid"] is None and rot["amount"] == 0 and rot["old_address"] == old.address
    os.unlink(key_file(node))
    with pytest.raises(RotationRefusedError):
        node.faucet.rotate_key()


def test_the_faucet_reads_a_replaced_key_file_without_a_restart(node) -> None:
    """A key file replaced by hand (or by the CLI while the node runs elsewhere) is read at the next use."""
    f = Faucet(node, GENEROUS)
    assert f.signer() is not None and f.signer().address == keys_of(node).faucet.address
    new = Signer.generate()
    faucet_keys.install(key_file(node), new, node.chain.write_state())
    assert f.signer().address == new.address
    os.unlink(key_file(node))
    assert f.signer() is None
    f.close()
