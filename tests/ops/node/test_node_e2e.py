"""The node end to end (PROTOCOL.md §7): `ledgerlog run --port 0` as a real process on 127.0.0.1,
its HTTP API, CLI commands on the same data dir while it runs (through the node, never failing
on a lock), a clean SIGTERM shutdown and a restart that comes back with the same state."""
from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json
from fastavro import parse_schema, schemaless_reader

from ledgerlog.ops.devtools.histgen import encode_body, make_genesis, write_genesis, write_history

NDJSON = {"Content-Type": "application/x-ndjson"}  # POST /v1/ingest takes this type only

EVENTS = 2500
SEED = 23

#: The HTTP paths of PROTOCOL.md §7 (path parameters normalised to "{}").
PROTOCOL_PATHS = {("get", "/v1/health"), ("get", "/v1/status"), ("get", "/v1/accounts/{}"),
                  ("get", "/v1/blocks/{}"), ("get", "/v1/tx/{}"), ("get", "/v1/pool/workers/{}"),
                  ("get", "/v1/energy/providers/{}"), ("post", "/v1/ingest"), ("get", "/metrics")}


def cli_all(data_dir: Any, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda args: cli(data_dir, *args), commands))


def H(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


class NodeProc:
    """A `ledgerlog run --port 0` process; ``url`` once it answers /v1/health."""

    def __init__(self, data: Path, log_path: Path) -> None:
        self.data = data
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "run", "--port", "0"],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=cli_env())
        self.url = self._wait_ready()
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def _wait_ready(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        for _ in range(2000):
            if self.proc.poll() is not None:
                pytest.fail(f"node exited with {self.proc.returncode}: {self.output()}")
            try:
                info = json.loads((self.data / "node.json").read_text())
            except (OSError, ValueError):
                info = None
            if info and info.get("pid") == self.proc.pid:
                assert re.fullmatch(r"http://127\.0\.0\.1:\d+", info["url"]), info
                assert not info["url"].endswith(":0")
                try:
                    if httpx.get(info["url"] + "/v1/health", timeout=2).status_code == 200:
                        return info["url"]
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"node not ready within {timeout}s: {self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, content: bytes) -> httpx.Response:
        return self.http.post(path, content=content, timeout=120, headers=NDJSON)

    def terminate(self, timeout: float = 60) -> int:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if hasattr(self, "http"):
            self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Any:
    root = tmp_path_factory.mktemp("node")
    genesis, keys = make_genesis(SEED, wallets=10)
    gpath, hpath, data = root / "genesis.json", root / "history.jsonl", root / "data"
    write_genesis(gpath, genesis)
    write_history(hpath, genesis, keys, events=EVENTS, seed=SEED)
    lines = hpath.read_bytes().splitlines()
    ok_json(cli(data, "init", "--genesis", str(gpath)))
    split = len(lines) * 2 // 3
    rest = root / "rest.jsonl"
    rest.write_bytes(b"\n".join(lines[split:]) + b"\n")
    node = NodeProc(data, root / "node.log")
    w = {"root": root, "genesis": genesis, "keys": keys, "data": data, "lines": lines, "split": split,
         "rest": rest, "node": node}
    try:
        yield w
    finally:
        w["node"].kill()


def _blocks(lines: list[bytes]) -> list[dict[str, Any]]:
    return [o for o in map(json.loads, lines) if o["type"] == "block"]


def test_ingest_over_http_then_cli_through_the_node(world) -> None:
    node, lines, split, data = world["node"], world["lines"], world["split"], world["data"]
    r = node.post("/v1/ingest", b"\n".join(lines[:split]) + b"\n")
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": split, "duplicates": 0, "rejected": 0, "rejections": []}
    last = _blocks(lines[:split])[-1]["header"]
    st = node.get("/v1/status").json()  # read-your-writes
    assert (st["height"], st["tip_hash"]) == (last["height"], H(encode_body("BlockHeader", last)))

    # a body with a bad line: 422, the good lines still count
    bad = node.post("/v1/ingest", lines[0] + b"\n\n{oops\n")
    assert bad.status_code == 422, bad.text
    s = bad.json()
    assert (s["accepted"], s["duplicates"], s["rejected"]) == (0, 1, 1)
    assert [(x["line"], x["code"]) for x in s["rejections"]] == [(3, "MALFORMED")]

    # `ledgerlog ingest FILE` while the node holds the data dir goes through the node
    proc = cli(data, "ingest", str(world["rest"]))
    summary = ok_json(proc)
    assert summary == {"accepted": len(lines) - split, "duplicates": 0, "rejected": 0, "rejections": []}
    again = cli(data, "ingest", str(world["rest"]))
    assert ok_json(again)["duplicates"] == len(lines) - split
    badfile = world["root"] / "bad.jsonl"
    badfile.write_bytes(b'{"type":"nope"}\n')
    proc = cli(data, "ingest", str(badfile))
    assert proc.returncode == 1, proc.stderr
    assert [x["code"] for x in json.loads(proc.stdout)["rejections"]] == ["MALFORMED"]
    last = _blocks(lines)[-1]["header"]
    st = node.get("/v1/status").json()
    assert (st["height"], st["tip_hash"]) == (last["height"], H(encode_body("BlockHeader", last)))
    assert st["chain_id"] == world["genesis"]["chain_id"]


def test_queries_over_http(world) -> None:
    from ledgerlog.engine.chain import open_chain
    from ledgerlog.engine.config import load_config

    node, lines, keys = world["node"], world["lines"], world["keys"]
    blocks = _blocks(lines)
    tip = blocks[-1]["header"]["height"]
    st = node.get("/v1/status").json()
    assert st["height"] == tip and st["provenance"]["lag"] == 0

    # accounts equal the write side (read-only open while the node runs) and genesis at height 0
    addrs = [keys.producer.address, keys.treasury.address, *(w.address for w in keys.wallets)]
    with open_chain(load_config(str(world["data"]), {}), read_only=True) as chain:
        ws = chain.write_state()
        expect = {a: ws.account(a) for a in addrs}
    for a in addrs:
        got = node.get(f"/v1/accounts/{a}").json()
        e = expect[a]
        assert (got["address"], got["balance"], got["staked"], got["nonce"]) == (a, e.balance, e.staked, e.nonce)
        at_tip = node.get(f"/v1/accounts/{a}", params={"height": tip}).json()
        assert (at_tip["balance"], at_tip["staked"], at_tip["nonce"]) == (e.balance, e.staked, e.nonce)
    # every funded address is one of these: the supply invariant holds at every height
    g = world["genesis"]
    for h in (0, 1, tip // 2, tip):
        supply = 0
        for a in addrs:
            got = node.get(f"/v1/accounts/{a}", params={"height": h}).json()
            assert got["height"] == h
            supply += got["balance"] + got["staked"]
        assert supply == sum(g["allocations"].values()) + g["block_reward"] * h, h
    assert node.get("/v1/accounts/zz").status_code == 400
    assert node.get("/v1/accounts/zz").json()["code"] == "BAD_REQUEST"
    assert 400 <= node.get(f"/v1/accounts/{addrs[0]}", params={"height": -1}).status_code < 500

    # blocks by height and by hash
    h1 = H(encode_body("BlockHeader", blocks[0]["header"]))
    b1 = node.get("/v1/blocks/1").json()
    assert b1["hash"] == h1 and b1["header"] == blocks[0]["header"]
    assert node.get(f"/v1/blocks/{h1}").json()["header"] == blocks[0]["header"]
    for path in (f"/v1/blocks/{tip + 1}", "/v1/blocks/" + "e" * 64, "/v1/tx/" + "0" * 64,
                 "/v1/energy/providers/no-such-provider"):
        r = node.get(path)
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND", (path, r.text)

    # a confirmed transaction
    blk = next(b for b in blocks if b["transactions"])
    body = blk["transactions"][0]["body"]
    txid = H(encode_body("TransactionBody", body))
    t = node.get(f"/v1/tx/{txid}").json()
    assert (t["status"], t["height"], t["index"], t["body"]) == ("confirmed", blk["header"]["height"], 0, body)

    # a pool worker and an energy provider
    miner = next(json.loads(x)["worker"].split(".")[0] for x in lines if b'"type":"share"' in x)
    w = node.get(f"/v1/pool/workers/{miner}").json()
    assert w["address"] == miner and w["pending"] == w["credited"] - w["paid"] and w["credited"] > 0
    assert node.get("/v1/pool/workers/zz").status_code == 400
    prov = next(json.loads(x)["body"] for x in lines if b'"type":"provider"' in x)
    p = node.get(f"/v1/energy/providers/{prov['provider_id']}").json()
    assert {k: p[k] for k in ("provider_id", "owner", "stake", "price_per_kwh")} == \
        {k: prov[k] for k in ("provider_id", "owner", "stake", "price_per_kwh")}
    assert p["unsettled_milli_kwh"] == p["credited_milli_kwh"] - p["settled_milli_kwh"]
    assert {"settled_amount"} <= set(p)


def test_metrics_openapi_and_schema_registry(world) -> None:
    node = world["node"]
    tip = _blocks(world["lines"])[-1]["header"]["height"]
    text = node.get("/metrics").text
    m = re.search(r"^ledgerlog_chain_height(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    assert m and float(m.group(1)) == tip, text[:2000]
    admitted = re.findall(r'^ledgerlog_events_admitted_total\{[^}]*kind="(\w+)"[^}]*\} ([0-9.e+]+)$', text, re.M)
    kinds = {k: float(v) for k, v in admitted}
    assert kinds.get("block") == tip and sum(kinds.values()) >= len(world["lines"]), admitted

    spec = node.get("/openapi.json").json()
    have = {(method, re.sub(r"\{[^}]*\}", "{}", path)) for path, ops in spec["paths"].items() for method in ops}
    assert have >= PROTOCOL_PATHS, PROTOCOL_PATHS - have

    subjects = node.get("/subjects").json()
    for topic in ("ledger.blocks", "ledger.transactions", "ledger.mempool", "pool.shares", "pool.payouts",
                  "energy.providers", "energy.readings", "energy.settlements"):
        assert f"{topic}-value" in subjects
    first = node.get("/schemas/ids/1")
    assert first.status_code == 200 and json.loads(first.json()["schema"])["type"] == "record"
    assert node.get("/schemas/ids/999999").status_code == 404
    latest = node.get("/subjects/ledger.blocks-value/versions/latest").json()
    assert latest["subject"] == "ledger.blocks-value" and latest["version"] in node.get(
        "/subjects/ledger.blocks-value/versions").json()

    # a stock Avro reader decodes a raw log record with the schema the registry serves for its id
    from ledgerlog.engine.chain import open_chain
    from ledgerlog.engine.config import load_config
    with open_chain(load_config(str(world["data"]), {}), read_only=True) as chain:
        rec = chain.log.read("ledger.blocks", 0, 0, 1)[0]
    assert rec.value[0] == 0
    sid = int.from_bytes(rec.value[1:5], "big")
    assert sid == latest["id"]
    schema = parse_schema(json.loads(node.get(f"/schemas/ids/{sid}").json()["schema"]))
    ev = schemaless_reader(io.BytesIO(rec.value[5:]), schema)
    assert ev["header"] == _blocks(world["lines"])[0]["header"]


def test_tx_inclusion_proofs_over_http_and_cli(world) -> None:
    """`GET /v1/tx/{txid}/proof` and `ledgerlog proof tx`: the branch rebuilds the tx_root of the
    block header, whose hash is the block's (PROTOCOL.md §2, §9)."""
    from ledgerlog.engine.crypto import tx_root_from

    node = world["node"]
    block = next(b for b in _blocks(world["lines"]) if len(b["transactions"]) >= 3)
    txids = [H(encode_body("TransactionBody", t["body"])) for t in block["transactions"]]
    for i, txid in enumerate(txids):
        proof = node.get(f"/v1/tx/{txid}/proof").json()
        assert (proof["height"], proof["index"], proof["tx_root"]) == (
            block["header"]["height"], i, block["header"]["tx_root"])
        assert tx_root_from(txid, i, proof["branch"]) == block["header"]["tx_root"]
    via_cli = ok_json(cli(world["data"], "proof", "tx", txids[0]))  # through the running node
    assert via_cli["branch"] == node.get(f"/v1/tx/{txids[0]}/proof").json()["branch"]
    missing = node.get(f"/v1/tx/{'0' * 64}/proof")
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"


def test_cli_commands_while_the_node_runs(world) -> None:
    node, data, keys, lines = world["node"], world["data"], world["keys"], world["lines"]
    blk = next(b for b in _blocks(lines) if b["transactions"])
    txid = H(encode_body("TransactionBody", blk["transactions"][0]["body"]))
    miner = keys.wallets[0].address
    prov = next(json.loads(x)["body"]["provider_id"] for x in lines if b'"type":"provider"' in x)
    key_file = world["root"] / "w2.key"
    key_file.write_text(json.dumps({"seed": keys.wallets[2].seed}))
    procs = cli_all(data, ("status",), ("account", miner), ("account", miner, "--height", "3"), ("block", "2"),
                    ("tx", txid), ("worker", miner), ("provider", prov), ("tail", "ledger.blocks", "--limit", "1"),
                    ("block", "999999"), ("account", "zz"),
                    ("sign-tx", "--key", str(key_file), "--to", keys.wallets[3].address, "--amount", "5000"))
    for p in procs:
        assert b"LOCKED" not in p.stderr and b"Traceback" not in p.stderr, p.stderr
    status, acct, acct3, blk2, tx, worker, provider, tail, noblock, badaddr, signed = procs
    http = node.get("/v1/status").json()
    got = ok_json(status)
    assert (got["chain_id"], got["height"], got["tip_hash"]) == (http["chain_id"], http["height"], http["tip_hash"])
    assert got["provenance"]["digest"] == http["provenance"]["digest"]
    for proc, path in ((acct, f"/v1/accounts/{miner}"), (acct3, f"/v1/accounts/{miner}?height=3"),
                       (blk2, "/v1/blocks/2"), (tx, f"/v1/tx/{txid}"), (worker, f"/v1/pool/workers/{miner}"),
                       (provider, f"/v1/energy/providers/{prov}")):
        a, b = ok_json(proc), node.get(path).json()
        a.pop("provenance", None), b.pop("provenance", None)
        assert a == b, path
    assert json.loads(tail.stdout.splitlines()[0])["value"]["header"]["height"] == 1
    assert noblock.returncode == 1 and json.loads(noblock.stderr)["code"] == "NOT_FOUND"
    assert badaddr.returncode == 2

    # sign-tx (read-only nonce lookup) | ingest - (through the node) | query (read-your-writes)
    line = ok_json(signed)
    out = ok_json(cli(data, "ingest", "-", stdin=signed.stdout))
    assert out == {"accepted": 1, "duplicates": 0, "rejected": 0, "rejections": []}
    t = node.get(f"/v1/tx/{H(encode_body('TransactionBody', line['body']))}").json()
    assert t["status"] == "pending"
    assert node.get("/v1/status").json()["mempool"] >= 1


def test_admin_actions_are_audited_with_the_real_client_address(world) -> None:
    """On the real server: X-Forwarded-For is not trusted (per-IP limits cannot be dodged), and
    the action is on ledger.admin with the socket's address."""
    import tomllib
    node, data = world["node"], world["data"]
    token = tomllib.loads((data / "config.toml").read_text())["admin"]["token"]
    r = node.http.post("/v1/admin/resume", headers={"Authorization": f"Bearer {token}",
                                                    "X-Forwarded-For": "6.6.6.6"})
    assert r.status_code == 200, r.text
    events = [json.loads(x)["value"] for x in cli(data, "tail", "ledger.admin").stdout.splitlines()]
    assert events and events[-1]["action"] == "resume" and events[-1]["outcome"] == "ok"
    assert events[-1]["client"] == "127.0.0.1"


def _digests(node: NodeProc, keys: Any, prov: str) -> dict[str, Any]:
    a = keys.wallets[0].address
    st = node.get("/v1/status").json()
    return {"height": st["height"], "tip_hash": st["tip_hash"], "mempool": st["mempool"],
            "chainstate": st["provenance"]["digest"],
            "balances": node.get(f"/v1/accounts/{a}").json()["provenance"]["digest"],
            "payouts": node.get(f"/v1/pool/workers/{a}").json()["provenance"]["digest"],
            "energy": node.get(f"/v1/energy/providers/{prov}").json()["provenance"]["digest"]}


def test_sigterm_then_restart_keeps_state(world) -> None:
    node, data, keys = world["node"], world["data"], world["keys"]
    prov = next(json.loads(x)["body"]["provider_id"] for x in world["lines"] if b'"type":"provider"' in x)
    before = _digests(node, keys, prov)
    assert before["height"] == _blocks(world["lines"])[-1]["header"]["height"]
    code = node.terminate()
    assert code == 0, node.output()
    assert not (data / "node.json").exists()

    # with no node: the CLI opens the data dir itself and sees the same state
    st = ok_json(cli(data, "status"))
    assert (st["height"], st["tip_hash"], st["provenance"]["digest"]) == (
        before["height"], before["tip_hash"], before["chainstate"])

    world["node"] = again = NodeProc(data, world["root"] / "node2.log")
    assert _digests(again, keys, prov) == before
    assert again.terminate() == 0, again.output()
    assert not (data / "node.json").exists()

