"""The faucet (ops/faucet.py) and the ingest switches (ops/limits.py) through the HTTP API: a grant
is a transaction admitted through admission that a block confirms; per-IP and per-address rate
limits; an empty faucet; admin pause/resume/top-up, and the admin API refusing (401/403/404,
nothing changed) tokens in the URL, wrong tokens and path tricks on a real uvicorn server."""
from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Keys, Lines, admit_ok, encode, load_signer, signer_from_byte
from fastapi.testclient import TestClient
from servers import serve_app

from ledgerlog.engine import avro
from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.crypto import H
from ledgerlog.engine.errors import ConfigError
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.faucet import FaucetSettings
from ledgerlog.ops.api.limits import HttpLimits
from ledgerlog.ops.node.lifecycle import Node

NDJSON = {"Content-Type": "application/x-ndjson"}  # POST /v1/ingest takes this type only

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AMOUNT = 10_000_000
GENEROUS = FaucetSettings(ip_burst=100, address_burst=100)


def _node(tmp_path: Any, tweak: Callable[[dict[str, Any], Config], None] | None = None, **settings: Any) -> Node:
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token=TOKEN, **settings)
    g = dev_genesis(cfg.keys_dir)
    if tweak:
        tweak(g, cfg)
    init_chain(cfg, g)
    n = Node(cfg)
    n.start()
    return n


@pytest.fixture
def node(tmp_path) -> Iterator[Node]:
    n = _node(tmp_path)
    yield n
    n.stop()


def client_for(node: Node, settings: FaucetSettings = GENEROUS, ip: str = "10.0.0.1") -> TestClient:
    """A TestClient whose requests come from ``ip`` (nothing is sent on a network)."""
    return TestClient(create_app(node, limits=HttpLimits(), faucet=settings), raise_server_exceptions=False,
                      client=(ip, 50000))


def keys_of(node: Node) -> Keys:
    return Keys(*(load_signer(node.config, n) for n in ("producer", "oracle", "treasury", "faucet")))


def confirm_mempool(node: Node) -> None:
    """Produce the next block over every committed mempool transaction, by (sender, nonce)."""
    lines = Lines(node.chain, keys_of(node))
    txs = sorted(node.chain.write_state().mempool(), key=lambda t: (t["body"]["sender"], t["body"]["nonce"]))
    admit_ok(node.chain, lines.block(txs))


def end_offsets(node: Node) -> dict[str, list[int]]:
    log = node.chain.log
    return {t: log.end_offsets(t) for t in sorted(log.topics())}


# -- granting -----------------------------------------------------------------------------------
def test_grant_is_an_admitted_transaction_and_arrives_with_a_block(node):
    alice = signer_from_byte(11).address
    with client_for(node) as c:
        before = c.get("/v1/faucet").json()
        assert before["enabled"] and before["amount"] == AMOUNT and not before["paused"]
        r = c.post("/v1/faucet", json={"address": alice})
        assert r.status_code == 200, r.text
        g = r.json()
        assert g["recipient"] == alice and g["amount"] == AMOUNT and g["status"] == "pending"
        assert g["sender"] == keys_of(node).faucet.address and g["nonce"] == 1
        tx = c.get(f"/v1/tx/{g['txid']}").json()
        assert tx["status"] == "pending" and tx["sender"] == g["sender"]
        assert c.get(f"/v1/accounts/{alice}").json()["balance"] == 0
        assert c.post("/rpc", json={"jsonrpc": "2.0", "method": "getrawmempool", "id": 1}).json()["result"] == [g["txid"]]
        after = c.get("/v1/faucet").json()
        assert after["spendable"] == before["spendable"] - AMOUNT - node.genesis.min_fee

        confirm_mempool(node)
        assert c.get(f"/v1/accounts/{alice}").json()["balance"] == AMOUNT
        tx = c.get(f"/v1/tx/{g['txid']}").json()
        assert tx["status"] == "confirmed" and tx["height"] == 1 and tx["body"]["memo"] == "faucet"
        assert H(avro.encode("TransactionBody", tx["body"])) == g["txid"]
        # the next grant takes the next nonce
        g2 = c.post("/v1/faucet", json={"address": signer_from_byte(12).address}).json()
        assert g2["nonce"] == 2


def test_grant_nonce_follows_pending_transactions_of_other_writers(node):
    """Another writer (the simulator, the CLI) spends from the faucet key: grants take the next nonce."""
    lines = Lines(node.chain, keys_of(node))
    admit_ok(node.chain, lines.tx(lines.keys.faucet, signer_from_byte(3), 1))
    with client_for(node) as c:
        r = c.post("/v1/faucet", json={"address": signer_from_byte(4).address.upper()})
        assert r.status_code == 200 and r.json()["nonce"] == 2 and r.json()["recipient"] == signer_from_byte(4).address


@pytest.mark.parametrize("body", [{"address": "zz"}, {"address": "00" * 19}, {}, {"address": 5}, [], "x"])
def test_bad_requests(node, body):
    with client_for(node) as c:
        r = c.post("/v1/faucet", json=body)
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST", r.text
        r = c.post("/v1/faucet", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"
        r = c.post("/v1/faucet", json={"address": keys_of(node).faucet.address})
        assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST"   # does not pay itself
    assert node.chain.write_state().pending(keys_of(node).faucet.address) == ()


def test_rate_limit_per_ip(node):
    settings = FaucetSettings(ip_burst=2, ip_interval=600, address_burst=10)
    app = create_app(node, limits=HttpLimits(), faucet=settings)
    with TestClient(app, client=("10.0.0.1", 1)) as one, TestClient(app, client=("10.0.0.2", 1)) as two:
        for b in (21, 22):
            assert one.post("/v1/faucet", json={"address": signer_from_byte(b).address}).status_code == 200
        r = one.post("/v1/faucet", json={"address": signer_from_byte(23).address})
        assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED"
        assert int(r.headers["Retry-After"]) >= 1
        # another client is not limited by the first one's use
        assert two.post("/v1/faucet", json={"address": signer_from_byte(23).address}).status_code == 200
    pending = node.chain.write_state().pending(keys_of(node).faucet.address)
    assert len(pending) == 3  # the refused request admitted nothing


def test_the_ip_limit_holds_an_ipv6_client_by_its_64(node):
    """Keyed by the full address, one /64 (every home line and host gets one) was a new client at
    each of its 2^64 addresses: the faucet drained as fast as the request loop. An IPv6 client
    is its /64; another /64, and an IPv4-mapped address's IPv4 client, are their own."""
    settings = FaucetSettings(ip_burst=2, ip_interval=3600, address_burst=10)
    app = create_app(node, limits=HttpLimits(), faucet=settings)
    codes = []
    for i in range(4):
        with TestClient(app, client=(f"2001:db8:1:2::{i + 1:x}", 1)) as c:
            codes.append(c.post("/v1/faucet", json={"address": signer_from_byte(30 + i).address}).status_code)
    assert codes == [200, 200, 429, 429]
    with TestClient(app, client=("2001:db8:1:3::1", 1)) as other, \
            TestClient(app, client=("::ffff:10.9.9.9", 1)) as mapped, TestClient(app, client=("10.9.9.9", 1)) as v4:
        assert other.post("/v1/faucet", json={"address": signer_from_byte(40).address}).status_code == 200
        for b in (41, 42):
            assert mapped.post("/v1/faucet", json={"address": signer_from_byte(b).address}).status_code == 200
        assert v4.post("/v1/faucet", json={"address": signer_from_byte(43).address}).status_code == 429


def test_rate_limit_per_address(node):
    settings = FaucetSettings(ip_burst=10, address_burst=1, address_interval=3600)
    app = create_app(node, limits=HttpLimits(), faucet=settings)
    alice = signer_from_byte(31).address
    with TestClient(app, client=("10.0.0.1", 1)) as one, TestClient(app, client=("10.0.0.2", 1)) as two:
        assert one.post("/v1/faucet", json={"address": alice}).status_code == 200
        for c in (one, two):  # whoever asks
            r = c.post("/v1/faucet", json={"address": alice})
            assert r.status_code == 429 and r.json()["code"] == "RATE_LIMITED"
            assert int(r.headers["Retry-After"]) >= 1
        r = two.post("/v1/faucet", json={"address": alice.upper()})  # same address, other spelling
        assert r.status_code == 429
        assert one.post("/v1/faucet", json={"address": signer_from_byte(32).address}).status_code == 200
    assert len(node.chain.write_state().pending(keys_of(node).faucet.address)) == 2


def test_empty_faucet_then_top_up(tmp_path):
    def tiny(g: dict[str, Any], cfg: Config) -> None:
        g["allocations"][load_signer(cfg, "faucet").address] = 5000
    node = _node(tmp_path, tiny)
    try:
        keys = keys_of(node)
        alice = signer_from_byte(41).address
        with client_for(node) as c:
            r = c.post("/v1/faucet", json={"address": alice})
            assert r.status_code == 503 and r.json()["code"] == "INSUFFICIENT_BALANCE", r.text
            assert c.get("/v1/faucet").json()["spendable"] == 5000
            assert node.chain.write_state().pending(keys.faucet.address) == ()

            for bad in ({}, {"amount": 0}, {"amount": -5}, {"amount": "100"}, {"amount": 1.5}, {"amount": True},
                        {"amount": 2**63}):
                r = c.post("/v1/admin/faucet-topup", json=bad, headers=AUTH)
                assert r.status_code == 400 and r.json()["code"] == "BAD_REQUEST", (bad, r.text)
            r = c.post("/v1/admin/faucet-topup", json={"amount": 10**20 // 10**3}, headers=AUTH)
            assert r.status_code == 409 and r.json()["code"] == "INSUFFICIENT_FUNDS"

            r = c.post("/v1/admin/faucet-topup", json={"amount": 5 * AMOUNT}, headers=AUTH)
            assert r.status_code == 200, r.text
            top = r.json()
            assert top["sender"] == keys.treasury.address and top["recipient"] == keys.faucet.address
            assert top["status"] == "pending"
            # pending: the faucet cannot spend it yet
            assert c.post("/v1/faucet", json={"address": alice}).json()["code"] == "INSUFFICIENT_BALANCE"
            confirm_mempool(node)
            assert c.get("/v1/faucet").json()["spendable"] == 5000 + 5 * AMOUNT
            r = c.post("/v1/faucet", json={"address": alice})
            assert r.status_code == 200, r.text
            confirm_mempool(node)
            assert c.get(f"/v1/accounts/{alice}").json()["balance"] == AMOUNT
    finally:
        node.stop()


def test_missing_key_disables_the_faucet(node):
    os.unlink(os.path.join(node.config.keys_dir, "faucet.key"))
    with client_for(node) as c:
        r = c.post("/v1/faucet", json={"address": signer_from_byte(5).address})
        assert r.status_code == 503 and r.json()["code"] == "FAUCET_DISABLED"
        assert c.get("/v1/faucet").json()["enabled"] is False
        r = c.post("/v1/admin/faucet-topup", json={"amount": 100}, headers=AUTH)
        assert r.status_code == 503 and r.json()["code"] == "FAUCET_DISABLED"
    with client_for(node, FaucetSettings(enabled=False)) as c:
        assert c.post("/v1/faucet", json={"address": signer_from_byte(5).address}).json()["code"] == "FAUCET_DISABLED"


# -- admin switches -----------------------------------------------------------------------------
def test_faucet_pause_and_resume(node):
    alice = signer_from_byte(51).address
    with client_for(node) as c:
        r = c.post("/v1/admin/faucet-pause", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"faucet": {"paused": True, "was_paused": False}}
        r = c.post("/v1/faucet", json={"address": alice})
        assert r.status_code == 503 and r.json()["code"] == "FAUCET_PAUSED"
        assert c.get("/v1/faucet").json()["paused"] is True
        assert c.post("/v1/ingest", content=b"", headers=NDJSON).status_code == 200  # ingest is not paused
        assert c.post("/v1/admin/faucet-resume", headers=AUTH).json()["faucet"]["paused"] is False
        assert c.post("/v1/faucet", json={"address": alice}).status_code == 200


def test_ingest_pause_and_resume(node):
    lines = Lines(node.chain, keys_of(node))
    with client_for(node) as c:
        assert c.post("/v1/admin/pause", headers=AUTH).json() == {"ingest": {"paused": True, "was_paused": False}}
        before = end_offsets(node)
        r = c.post("/v1/ingest", content=encode(lines.block([])) + b"\n", headers=NDJSON)
        assert r.status_code == 503 and r.json()["code"] == "PAUSED"
        r = c.post("/v1/faucet", json={"address": signer_from_byte(52).address})
        assert r.status_code == 503 and r.json()["code"] == "PAUSED"
        assert end_offsets(node) == before
        ready = c.get("/v1/ready")
        assert ready.status_code == 200 and ready.json()["ingest_paused"] is True  # queries still served
        assert c.get("/v1/status").status_code == 200
        # the operator's top-up still goes through admission while paused
        assert c.post("/v1/admin/faucet-topup", json={"amount": 1000}, headers=AUTH).status_code == 200
        assert c.post("/v1/admin/pause", headers=AUTH).json()["ingest"]["was_paused"] is True
        assert c.post("/v1/admin/resume", headers=AUTH).json() == {"ingest": {"paused": False, "was_paused": True}}
        r = c.post("/v1/ingest", content=encode(lines.block([])) + b"\n", headers=NDJSON)
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


# -- the admin API refuses, and nothing changes ---------------------------------------------------
@pytest.fixture
def server(node) -> Iterator[str]:
    """The node's app on a real uvicorn server at 127.0.0.1:<free port>, in a thread."""
    with serve_app(create_app(node, limits=HttpLimits(), faucet=GENEROUS)) as (host, port):
        yield f"{host}:{port}"


def raw(hostport: str, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes = b"{}") -> tuple[int, Any]:
    """A request with ``path`` sent byte for byte (no client-side normalisation)."""
    host, port = hostport.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def state_of(node: Node) -> tuple[Any, ...]:
    return (dict(node.controls.to_dict()), end_offsets(node))


REFUSALS = [
    # (method, path, headers) -> expected status
    ("POST", "/v1/admin/pause", {}, 401),
    ("POST", "/v1/admin/pause", {"Authorization": "Bearer wrong-token"}, 403),
    ("POST", "/v1/admin/pause", {"Authorization": f"Basic {TOKEN}"}, 401),
    ("POST", "/v1/admin/pause", {"Authorization": "Bearer "}, 401),
    ("POST", f"/v1/admin/pause?token={TOKEN}", {}, 401),
    ("POST", f"/v1/admin/pause?access_token={TOKEN}", {}, 401),
    ("POST", f"/v1/admin/pause?token={TOKEN}", AUTH, 401),          # a token in the URL is refused even with the header
    ("POST", f"/v1/admin/faucet-topup?admin_token={TOKEN}", {}, 401),
    ("POST", "/v1/admin/faucet-pause", {"Authorization": "Bearer " + TOKEN[:-1]}, 403),
    ("POST", "/v1/admin/faucet-topup", {"Authorization": "bearer x" + TOKEN}, 403),
    ("POST", "/v1/admin%2Fpause", {}, 401),                         # decodes to the real path: still needs the token
    ("POST", "/v1/admin/../admin/pause", AUTH, 404),
    ("POST", "/v1/admin/..%2Fadmin%2Fpause", AUTH, 404),
    ("POST", "/v1/admin/%2e%2e/pause", AUTH, 404),
    ("POST", "/v1/admin/pause%2F", AUTH, 404),
    ("POST", "/v1/admin/pause/", AUTH, 404),
    ("POST", "/v1/admin/pause/..", AUTH, 404),
    ("POST", "//v1/admin/pause", AUTH, 404),
    ("POST", "/v1/ADMIN/pause", AUTH, 404),
    ("POST", "/v1/admin/PAUSE", AUTH, 404),
    ("POST", "/v1/admin/pause%00", AUTH, 404),
    ("POST", "/v1/admin/faucet-pause/x", AUTH, 404),
    ("POST", "/v1/admin/", AUTH, 404),
    ("GET", "/v1/admin/pause", AUTH, 405),
]


def test_admin_refusals_change_nothing(node, server):
    before = state_of(node)
    for method, path, headers, expected in REFUSALS:
        status, body = raw(server, method, path, headers)
        assert status == expected, (method, path, status, body)
        assert isinstance(body, dict) and isinstance(body.get("code"), str), (path, body)
        assert state_of(node) == before, (method, path)
    for name, body in (("faucet-topup", b'{"amount": 1000}'), ("resume", b"{}"), ("faucet-resume", b"{}")):
        for headers in ({}, {"Authorization": "Bearer nope"}):
            status, _ = raw(server, "POST", f"/v1/admin/{name}", headers, body)
            assert status in (401, 403)
    assert state_of(node) == before
    # and the real thing works on the same server
    assert raw(server, "POST", "/v1/admin/pause", AUTH)[0] == 200
    assert node.controls.ingest_paused is True
    assert raw(server, "POST", "/v1/admin/resume", AUTH)[0] == 200


def test_admin_disabled_without_a_token(tmp_path):
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token="")
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg)
    n.start()
    try:
        with TestClient(create_app(n, limits=HttpLimits(), faucet=GENEROUS)) as c:
            for name in ("pause", "faucet-pause", "faucet-topup"):
                r = c.post(f"/v1/admin/{name}", json={"amount": 1}, headers={"Authorization": "Bearer "})
                assert r.status_code == 403 and r.json()["code"] == "ADMIN_DISABLED"
        assert n.controls.to_dict() == {"ingest_paused": False, "faucet_paused": False}
    finally:
        n.stop()


def test_admin_allowlist(tmp_path):
    """admin.allow: the right token from outside the listed networks is refused and changes nothing."""
    n = _node(tmp_path, admin_allow="10.1.0.0/16, 192.168.7.7")
    try:
        before = state_of(n)
        outside = TestClient(create_app(n, limits=HttpLimits(), faucet=GENEROUS), client=("10.2.0.1", 5000))
        r = outside.post("/v1/admin/pause", headers=AUTH)
        assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"
        assert state_of(n) == before and n.controls.ingest_paused is False
        mapped = TestClient(create_app(n, limits=HttpLimits(), faucet=GENEROUS), client=("::ffff:10.2.0.1", 5000))
        assert mapped.post("/v1/admin/pause", headers=AUTH).status_code == 403  # an IPv4 peer on a dual-stack bind
        for ip in ("10.1.200.3", "192.168.7.7", "::ffff:10.1.0.9"):
            inside = TestClient(create_app(n, limits=HttpLimits(), faucet=GENEROUS), client=(ip, 5000))
            assert inside.post("/v1/admin/pause", headers=AUTH).status_code == 200
        assert n.controls.ingest_paused is True
    finally:
        n.stop()
    with pytest.raises(ConfigError, match=r"admin\.allow"):
        _node(tmp_path / "typo", admin_allow="10.1.0.0/33")


def test_the_faucet_lives_on_its_node(node) -> None:
    """One faucet per node, held by the node (no module-level registry); an app built with other
    settings gives the node a faucet with those, which the admin actions then use too."""
    import weakref

    from ledgerlog.ops.api import faucet as faucet_module

    assert not [k for k, v in vars(faucet_module).items() if isinstance(v, weakref.WeakKeyDictionary)]
    assert node.faucet.settings == FaucetSettings.from_config(node.config)
    custom = FaucetSettings(amount=AMOUNT + 1, ip_burst=7)
    create_app(node, limits=HttpLimits(), faucet=custom)
    assert node.faucet.settings == custom and node.faucet.node is node


def test_pause_refuses_an_ingest_body_that_arrives_after_it_and_waits_for_one_being_admitted(node):
    """pause answered "paused" while an ingest whose head came before it was still sending its body:
    the lines went in afterwards, up to http.body_timeout (60 s) after the operator's pause."""
    import threading

    from ledgerlog.engine.errors import PausedError
    from ledgerlog.ops.api.limits import pause_action, resume_action

    lines = Lines(node.chain, keys_of(node))
    pause_action(node, {})
    before = end_offsets(node)
    with pytest.raises(PausedError):  # the body arrived after the pause: refused, nothing admitted
        node.admit_numbered([(1, encode(lines.block([])))])
    assert end_offsets(node) == before
    resume_action(node, {})

    halfway, go_on = threading.Event(), threading.Event()

    def body():  # an admission under way when the pause comes
        yield 1, encode(lines.block([]))
        halfway.set()
        go_on.wait(10)

    admitted: list[dict] = []
    admitting = threading.Thread(target=lambda: admitted.append(node.admit_numbered(body())))
    admitting.start()
    assert halfway.wait(10)
    answered: list[dict] = []
    pausing = threading.Thread(target=lambda: answered.append(pause_action(node, {})))
    pausing.start()
    pausing.join(0.5)
    assert pausing.is_alive() and not answered  # "paused" only once nothing external is admitting
    go_on.set()
    admitting.join(10)
    pausing.join(10)
    assert admitted[0]["accepted"] == 1 and answered[0]["ingest"]["paused"] is True
