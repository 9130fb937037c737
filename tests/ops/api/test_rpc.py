"""JSON-RPC 2.0 at POST /rpc (ops/rpc.py): every method, batches, notifications and each error
code, against an in-process node (FastAPI TestClient, background folding)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Keys, Lines, admit_ok, load_signer, signer_from_byte
from fastapi.testclient import TestClient

from ledgerlog.engine import avro
from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.crypto import H, canonical_json
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api import rpc
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.limits import HttpLimits
from ledgerlog.ops.node.lifecycle import Node

TOKEN = "t" * 32


@pytest.fixture
def node(tmp_path) -> Iterator[Node]:
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token=TOKEN)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg)
    n.start()
    yield n
    n.stop()


@pytest.fixture
def client(node) -> Iterator[TestClient]:
    with TestClient(create_app(node, limits=HttpLimits()), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def lines(node) -> Lines:
    keys = Keys(*(load_signer(node.config, n) for n in ("producer", "oracle", "treasury", "faucet")))
    return Lines(node.chain, keys)


@pytest.fixture
def chain2(node, lines) -> dict[str, Any]:
    """Two blocks (block 1 carries a transfer) and one pending transaction."""
    bob = signer_from_byte(7)
    t1 = lines.tx(lines.keys.faucet, bob, 5000)
    admit_ok(node.chain, lines.block([t1]))
    admit_ok(node.chain, lines.block([]))
    pending = lines.tx(lines.keys.faucet, bob, 700)
    admit_ok(node.chain, pending)
    tip = node.chain.write_state().tip()
    return {"bob": bob, "t1": t1, "pending": pending, "tip": tip}


def call(client: TestClient, method: str, params: Any = None, rid: Any = 1) -> dict[str, Any]:
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
    if params is not None:
        req["params"] = params
    r = client.post("/rpc", json=req)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["jsonrpc"] == "2.0" and doc["id"] == rid
    return doc


def result(client: TestClient, method: str, params: Any = None) -> Any:
    doc = call(client, method, params)
    assert "error" not in doc, doc
    return doc["result"]


def err(client: TestClient, method: str, params: Any = None) -> int:
    doc = call(client, method, params)
    assert "result" not in doc, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return int(doc["error"]["code"])


def txid_of(line: dict[str, Any]) -> str:
    return H(avro.encode("TransactionBody", line["body"]))


# -- methods ------------------------------------------------------------------------------------
def test_getblockchaininfo(client, node, chain2):
    info = result(client, "getblockchaininfo")
    tip = chain2["tip"]
    assert info["chain"] == node.genesis.chain_id == info["chain_id"]
    assert info["blocks"] == info["headers"] == tip.height == 2
    assert info["bestblockhash"] == tip.hash
    assert info["time"] == tip.timestamp // 1000 and info["time_ms"] == tip.timestamp
    assert info["mediantime"] <= info["time"] and info["mediantime_ms"] <= info["time_ms"]
    assert info["genesis_hash"] == node.genesis.hash
    assert info["total_txs"] == 1 and info["mempool"] == 1
    assert info["initialblockdownload"] is False and info["pruned"] is False
    assert set(info["lag"]) == {"chainstate", "balances", "energy", "payouts"}
    assert info["provenance"]["projection"] == "chainstate"
    assert result(client, "getblockcount") == 2
    assert result(client, "getbestblockhash") == tip.hash


def test_getblockhash(client, node, chain2):
    assert result(client, "getblockhash", [0]) == node.genesis.hash
    h1 = result(client, "getblockhash", [1])
    h2 = result(client, "getblockhash", {"height": 2})
    assert h2 == chain2["tip"].hash and h1 != h2
    assert err(client, "getblockhash", [3]) == rpc.OUT_OF_RANGE
    assert err(client, "getblockhash", [-1]) == rpc.OUT_OF_RANGE
    assert err(client, "getblockhash", ["1"]) == rpc.INVALID_PARAMS
    assert err(client, "getblockhash", [True]) == rpc.INVALID_PARAMS
    assert err(client, "getblockhash", []) == rpc.INVALID_PARAMS
    assert err(client, "getblockhash", [1, 2]) == rpc.INVALID_PARAMS
    assert err(client, "getblockhash", {"heigth": 1}) == rpc.INVALID_PARAMS
    assert err(client, "getblockhash", [10**30]) == rpc.OUT_OF_RANGE


def test_getblock_verbosities(client, node, chain2):
    h1 = result(client, "getblockhash", [1])
    b = result(client, "getblock", [h1])
    assert b["hash"] == h1 and b["height"] == 1 and b["confirmations"] == 2
    assert b["tx"] == [txid_of(chain2["t1"])] and b["nTx"] == 1
    assert b["previousblockhash"] == node.genesis.hash and b["nextblockhash"] == chain2["tip"].hash
    assert b["fees"] == node.genesis.min_fee and b["reward"] == node.genesis.block_reward
    assert result(client, "getblock", [1]) == b           # by height (integer)
    assert result(client, "getblock", ["1", 1]) == b      # by height (digit string)
    raw = result(client, "getblock", {"blockhash": h1, "verbosity": 0})
    assert H(bytes.fromhex(raw)) == h1                    # the header's canonical bytes
    full = result(client, "getblock", [h1, 2])
    assert full["tx"][0]["txid"] == txid_of(chain2["t1"])
    assert full["tx"][0]["body"] == chain2["t1"]["body"]
    assert result(client, "getblock", [h1, False]) == raw  # bitcoind's boolean verbosity
    last = result(client, "getblock", [2])
    assert "nextblockhash" not in last and last["confirmations"] == 1 and last["tx"] == []


def test_getblock_genesis_and_errors(client, node, chain2):
    g = result(client, "getblock", [node.genesis.hash])
    assert g["height"] == 0 and g["tx"] == [] and g["nextblockhash"] == result(client, "getblockhash", [1])
    assert result(client, "getblock", [0]) == g
    assert H(bytes.fromhex(result(client, "getblock", [0, 0]))) == node.genesis.hash
    assert bytes.fromhex(result(client, "getblock", [0, 0])) == canonical_json(node.genesis.raw)
    assert err(client, "getblock", ["ab" * 32]) == rpc.NOT_FOUND
    assert err(client, "getblock", [3]) == rpc.OUT_OF_RANGE
    assert err(client, "getblock", [-1]) == rpc.OUT_OF_RANGE
    assert err(client, "getblock", ["nothex"]) == rpc.OUT_OF_RANGE
    assert err(client, "getblock", [1, 3]) == rpc.OUT_OF_RANGE
    assert err(client, "getblock", [1, "1"]) == rpc.INVALID_PARAMS
    assert err(client, "getblock", [None]) == rpc.INVALID_PARAMS
    assert err(client, "getblock") == rpc.INVALID_PARAMS


def test_getbalance(client, node, chain2, lines):
    bob = chain2["bob"].address
    now = result(client, "getbalance", [bob])
    assert now["address"] == bob and now["balance"] == 5000 and now["nonce"] == 0
    assert now["provenance"]["projection"] == "balances"
    assert result(client, "getbalance", {"address": bob, "height": 0})["balance"] == 0
    assert result(client, "getbalance", [bob, 1])["balance"] == 5000
    faucet = lines.keys.faucet.address
    assert result(client, "getbalance", [faucet])["nonce"] == 1
    assert err(client, "getbalance", ["zz"]) == rpc.NOT_FOUND
    assert err(client, "getbalance", [bob.upper()]) == rpc.NOT_FOUND
    assert err(client, "getbalance", [bob, 3]) == rpc.OUT_OF_RANGE
    assert err(client, "getbalance", [bob, -1]) == rpc.OUT_OF_RANGE
    assert err(client, "getbalance", [bob, "1"]) == rpc.INVALID_PARAMS
    assert err(client, "getbalance", [7]) == rpc.INVALID_PARAMS
    assert err(client, "getbalance") == rpc.INVALID_PARAMS


def test_getrawmempool(client, chain2, lines):
    txid = txid_of(chain2["pending"])
    assert result(client, "getrawmempool") == [txid]
    verbose = result(client, "getrawmempool", [True])
    assert verbose == {txid: {"sender": lines.keys.faucet.address, "nonce": 2, "stamp_height": 2}}
    assert err(client, "getrawmempool", ["yes"]) == rpc.INVALID_PARAMS


def test_gettimesyncinfo(client, chain2):
    t = result(client, "gettimesyncinfo")
    tip = chain2["tip"]
    assert t["tip_height"] == 2 and t["tip_time_ms"] == tip.timestamp and t["tip_time"] == tip.timestamp // 1000
    assert t["offset_ms"] == t["time_ms"] - t["tip_time_ms"]
    assert t["tip_in_future"] == (t["offset_ms"] < 0)
    assert t["time"] == t["time_ms"] // 1000


def test_getnetworkinfo(client):
    n = result(client, "getnetworkinfo")
    assert isinstance(n["version"], int) and n["subversion"].startswith("/ledgerlog:") and n["subversion"].endswith("/")
    assert n["connections"] == 0 and n["protocolversion"] == 1
    assert n["localaddresses"] and {"address", "port", "score"} <= set(n["localaddresses"][0])
    assert err(client, "getnetworkinfo", [1]) == rpc.INVALID_PARAMS


# -- the envelope -------------------------------------------------------------------------------
def test_batch_mixes_results_errors_and_notifications(client, chain2):
    batch = [
        {"jsonrpc": "2.0", "method": "getblockcount", "id": "a"},
        {"jsonrpc": "2.0", "method": "getblockcount"},                  # notification: no entry
        {"jsonrpc": "2.0", "method": "nosuchmethod", "id": 2},
        {"jsonrpc": "2.0", "method": "nosuchmethod"},                   # notification: no entry either
        1,                                                              # invalid request
        {"jsonrpc": "2.0", "method": "getblockhash", "params": [99], "id": None},
    ]
    r = client.post("/rpc", json=batch)
    assert r.status_code == 200
    out = r.json()
    assert [o["id"] for o in out] == ["a", 2, None, None]
    assert out[0]["result"] == 2
    assert out[1]["error"]["code"] == rpc.METHOD_NOT_FOUND
    assert out[2]["error"]["code"] == rpc.INVALID_REQUEST
    assert out[3]["error"]["code"] == rpc.OUT_OF_RANGE


def test_notifications_get_no_response(client):
    r = client.post("/rpc", json={"jsonrpc": "2.0", "method": "getblockcount"})
    assert r.status_code == 204 and r.content == b""
    r = client.post("/rpc", json={"jsonrpc": "2.0", "method": "nosuchmethod", "params": [1]})
    assert r.status_code == 204 and r.content == b""
    r = client.post("/rpc", json=[{"jsonrpc": "2.0", "method": "getblockcount"},
                                  {"jsonrpc": "2.0", "method": "getblock", "params": ["x"]}])
    assert r.status_code == 204 and r.content == b""


def _one(client: TestClient, content: bytes) -> dict[str, Any]:
    r = client.post("/rpc", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["jsonrpc"] == "2.0" and "result" not in doc
    return doc


@pytest.mark.parametrize("body", [b"{", b"", b"not json", b"\xff\xfe", b'{"jsonrpc":"2.0","method":NaN}',
                                  b'[{"jsonrpc":"2.0","method":"getblockcount","id":1}'])
def test_parse_error(client, body):
    doc = _one(client, body)
    assert doc["error"]["code"] == rpc.PARSE_ERROR and doc["id"] is None


@pytest.mark.parametrize("req", [
    1, "x", None, [],                                            # not an object / empty batch
    {"method": "getblockcount", "id": 1},                        # no jsonrpc
    {"jsonrpc": "1.0", "method": "getblockcount", "id": 1},      # wrong version
    {"jsonrpc": "2.0", "id": 1},                                 # no method
    {"jsonrpc": "2.0", "method": 5, "id": 1},                    # method not a string
    {"jsonrpc": "2.0", "method": "getblockcount", "params": 3, "id": 1},   # params not structured
    {"jsonrpc": "2.0", "method": "getblockcount", "id": {"x": 1}},         # id not a scalar
    {"jsonrpc": "2.0", "method": "getblockcount", "id": True},
])
def test_invalid_request(client, req):
    doc = _one(client, json.dumps(req).encode())
    assert doc["error"]["code"] == rpc.INVALID_REQUEST


def test_invalid_request_keeps_a_usable_id(client):
    doc = _one(client, json.dumps({"jsonrpc": "1.0", "method": "getblockcount", "id": 9}).encode())
    assert doc["id"] == 9


def test_oversized_batch_is_one_invalid_request(client):
    batch = [{"jsonrpc": "2.0", "method": "getblockcount", "id": i} for i in range(rpc.MAX_BATCH + 1)]
    doc = _one(client, json.dumps(batch).encode())
    assert doc["error"]["code"] == rpc.INVALID_REQUEST


def test_method_not_found(client):
    assert err(client, "nosuchmethod") == rpc.METHOD_NOT_FOUND
    assert err(client, "__init__") == rpc.METHOD_NOT_FOUND
    assert err(client, "GETBLOCKCOUNT") == rpc.METHOD_NOT_FOUND


def test_internal_error_has_no_details(client, node, monkeypatch):
    def boom(*_a: Any) -> Any:
        raise RuntimeError("secret internals /etc/passwd")
    monkeypatch.setattr(node.queries, "account", boom)
    doc = call(client, "getbalance", ["00" * 20])
    assert doc["error"]["code"] == rpc.INTERNAL_ERROR
    assert "secret" not in json.dumps(doc)
    # the other calls of a batch still answer
    r = client.post("/rpc", json=[{"jsonrpc": "2.0", "method": "getbalance", "params": ["00" * 20], "id": 1},
                                  {"jsonrpc": "2.0", "method": "getblockcount", "id": 2}])
    assert [("error" in o, o["id"]) for o in r.json()] == [(True, 1), (False, 2)]


def test_ids_are_echoed(client):
    for rid in ("abc", 7, 2.5, None, -1):
        assert call(client, "getblockcount", rid=rid)["result"] == 0


def test_rpc_is_in_openapi(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/rpc"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(rpc.METHODS) <= set(body["oneOf"][0]["properties"]["method"]["enum"])


@pytest.mark.parametrize("body", [
    b'{"jsonrpc":"2.0","method":"getblockcount","id":"\\ud800"}',  # a lone surrogate, echoed as the id
    b'{"jsonrpc":"2.0","method":"nope\\udc00","id":1}',  # ... in the method named by "Method not found"
    b'[{"jsonrpc":"2.0","method":"getblockcount","id":1e999},'
    b'{"jsonrpc":"2.0","method":"getblockcount","id":100000000000000000000}]',  # inf, and beyond 64 bits
    b'{"jsonrpc":"2.0","method":"getblock","params":[1e999],"id":2}',
])
def test_odd_ids_and_names_get_json_rpc_answers_not_500(client, node, body):
    r = client.post("/rpc", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    docs = r.json() if isinstance(r.json(), list) else [r.json()]
    assert docs and all(d["jsonrpc"] == "2.0" and ("result" in d or "error" in d) for d in docs)
    assert not any(d.get("error", {}).get("code") == rpc.INTERNAL_ERROR for d in docs), docs


def test_block_ids_are_ascii_digits_or_hashes(client, node, chain2):
    """"²" is a digit to str.isdigit() but not to int(); "١" is read by int() as 1: both are
    neither a height nor a hash (the REST route answers 400 for them too)."""
    assert err(client, "getblock", ["\u00b2"]) == rpc.OUT_OF_RANGE
    assert err(client, "getblock", ["\u0661"]) == rpc.OUT_OF_RANGE
    assert result(client, "getblock", ["1"])["height"] == 1
    assert client.get("/v1/blocks/%D9%A1").status_code == 400


def test_a_batch_returning_too_many_rows_in_all_is_cut_with_an_error(client, node, chain2, monkeypatch):
    """Each call's transactions (getblock) and mempool entries (getrawmempool) count against one
    budget per request: past it, the calls get an error instead of an answer of any size."""
    monkeypatch.setattr(rpc, "MAX_ROWS", 3)  # block 1 carries one transaction, the mempool one
    batch = [{"jsonrpc": "2.0", "method": "getblock", "params": [1, 2], "id": i} for i in range(3)]
    batch.append({"jsonrpc": "2.0", "method": "getrawmempool", "params": [True], "id": 3})
    answers = {a["id"]: a for a in client.post("/rpc", json=batch).json()}
    assert all("result" in answers[i] for i in range(3))
    assert answers[3]["error"]["code"] == rpc.TOO_LARGE and "fewer" in answers[3]["error"]["message"]
    one = client.post("/rpc", json=batch[3]).json()  # a new request: a new budget
    assert len(one["result"]) == 1


@pytest.fixture
def mempool_reads(node, chain2, lines, monkeypatch) -> list:
    """Four transactions pending, and the rows the calls read of the view from now on (it reads
    pages of 256 rows under them)."""
    from ledgerlog.streams import store

    for amount in (701, 702, 703):
        admit_ok(node.chain, lines.tx(lines.keys.faucet, chain2["bob"], amount))
    assert node.queries.sync()
    read: list = []
    real = store._LiveView.items

    def counting(self, prefix, start=None):
        for kv in real(self, prefix, start):
            read.append(kv)
            yield kv
    monkeypatch.setattr(store._LiveView, "items", counting)
    return read


def test_getrawmempool_walks_no_further_than_the_row_budget(client, mempool_reads, monkeypatch):
    """It read the whole mempool (unbounded: every pending transaction) before counting it
    against the budget, so each unauthenticated call could cost a walk of all of it."""
    monkeypatch.setattr(rpc, "MAX_ROWS", 0)
    answer = client.post("/rpc", json={"jsonrpc": "2.0", "method": "getrawmempool", "id": 1}).json()
    assert answer["error"]["code"] == rpc.TOO_LARGE
    assert len(mempool_reads) <= 1


def test_calls_past_a_spent_row_budget_walk_nothing(client, mempool_reads, monkeypatch):
    """Once a call was refused, each later getrawmempool of the batch walked the whole budget again
    (1,000 calls: 1,000 walks of 100,000 keys from a 1.4 KB request)."""
    monkeypatch.setattr(rpc, "MAX_ROWS", 2)
    batch = [{"jsonrpc": "2.0", "method": "getrawmempool", "id": i} for i in range(50)]
    answers = client.post("/rpc", json=batch).json()
    assert {a["error"]["code"] for a in answers} == {rpc.TOO_LARGE}
    assert len(mempool_reads) == 3, len(mempool_reads)  # the first call's budget + 1; the others none


def test_a_batch_answering_too_many_bytes_in_all_is_cut_with_an_error(client, node, chain2, lines, monkeypatch):
    """The row budget never counted bytes: a 1.4 KB batch of getblock calls on a block whose one
    transaction carries a 1 MiB memo answered 21 MB (16 MiB memos: gigabytes built in memory)."""
    memo = "é" * 100_000
    big = lines.tx(lines.keys.faucet, chain2["bob"], 11, memo=memo)
    admit_ok(node.chain, lines.block([chain2["pending"], big]))
    height = node.chain.write_state().tip().height
    monkeypatch.setattr(rpc, "MAX_ANSWER_BYTES", 1_000_000)
    batch = [{"jsonrpc": "2.0", "method": "getblock", "params": [height, 2], "id": i} for i in range(20)]
    r = client.post("/rpc", json=batch)
    assert r.status_code == 200 and len(r.content) < 1_300_000
    answers = r.json()
    cut = [a for a in answers if "error" in a]
    assert 0 < len(answers) - len(cut) <= 5 and len(answers) == 20
    assert all(a["result"]["tx"][1]["body"]["memo"] == memo for a in answers if "result" in a)
    assert {a["error"]["code"] for a in cut} == {rpc.TOO_LARGE}
    assert "fewer" in cut[0]["error"]["message"]
    # the budget counts answers as written: an id orjson cannot write makes the stdlib write its
    # answer (non-ASCII escaped, 6 bytes a character), which the budget counts as such
    wide = [{**c, "id": 2**70 + c["id"]} for c in batch]
    r = client.post("/rpc", json=wide)
    assert r.status_code == 200 and len(r.content) < 1_300_000


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:9"])
def test_a_web_page_of_another_origin_cannot_call_rpc(client, origin):
    """A page on any site could make a visitor's browser post text/plain batches to a node on
    127.0.0.1 (no preflight), each building answers of hundreds of MB."""
    body = b'{"jsonrpc":"2.0","method":"getblockcount","id":1}'
    r = client.post("/rpc", content=body, headers={"Content-Type": "text/plain", "Origin": origin})
    assert r.status_code == 403 and r.json()["code"] == "ORIGIN_NOT_ALLOWED"


def test_rpc_from_the_nodes_own_pages_and_from_tools_is_served(client):
    body = b'{"jsonrpc":"2.0","method":"getblockcount","id":1}'
    for headers in ({"Content-Type": "text/plain"},  # bitcoind's curl example; no Origin
                    {"Content-Type": "application/json", "Origin": "http://testserver"}):  # /docs "try it out"
        r = client.post("/rpc", content=body, headers=headers)
        assert r.status_code == 200 and "result" in r.json(), (headers, r.text)
