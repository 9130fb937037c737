"""End to end through the real `ledgerlog` console script (PROTOCOL.md §4-§7), no node running:
init from a generated genesis, ingest a generated history, the ingest summary and exit codes,
and every query command checked against a plain reference fold computed here from the history
lines themselves (not from the engine)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from clitools import cli, ok_json

from ledgerlog.ops.devtools.histgen import (
    encode_body,
    genesis_hash,
    make_genesis,
    write_genesis,
    write_history,
)

EVENTS = 3000
SEED = 11


def cli_all(data_dir: Any, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Independent query commands, a few at a time (concurrent CLI processes on one data dir
    must not trip over each other's locks either)."""
    with ThreadPoolExecutor(3) as pool:
        return list(pool.map(lambda args: cli(data_dir, *args), commands))


def H(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


# -- a reference fold over ingest lines (PROTOCOL.md §6), independent of the engine -------------


class Reference:
    def __init__(self, genesis: dict[str, Any], lines: list[bytes]) -> None:
        g = genesis
        self.g = g
        reward, pool, treasury = g["block_reward"], g["pool"]["address"], g["energy"]["treasury"]
        self.moves: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)  # addr -> (h, dbal, dstk, nonce)
        self.blocks: dict[int, dict[str, Any]] = {}
        self.block_hash: dict[int, str] = {}
        self.txs: dict[str, tuple[int, int, dict[str, Any]]] = {}
        self.providers: dict[str, dict[str, Any]] = {}
        self.paid: Counter[str] = Counter()
        shares: list[tuple[int, str, int]] = []
        pool_blocks: list[tuple[int, int]] = []
        tip = 0

        def move(h: int, addr: str, dbal: int, dstk: int = 0, nonce: int = 0) -> None:
            self.moves[addr].append((h, dbal, dstk, nonce))

        for raw in lines:
            o = json.loads(raw)
            t = o["type"]
            if t == "block":
                hdr = o["header"]
                h = hdr["height"]
                assert h == tip + 1
                tip = h
                fees = 0
                for i, tx in enumerate(o["transactions"]):
                    b = tx["body"]
                    move(h, b["sender"], -(b["amount"] + b["fee"]), 0, b["nonce"])
                    move(h, b["recipient"], b["amount"])
                    fees += b["fee"]
                    self.txs[H(encode_body("TransactionBody", b))] = (h, i, b)
                move(h, hdr["producer"], reward + fees)
                if hdr["producer"] == pool:
                    pool_blocks.append((h, reward + fees))
                self.blocks[h] = o
                self.block_hash[h] = H(encode_body("BlockHeader", hdr))
            elif t == "provider":
                b = o["body"]
                move(tip, b["owner"], -b["stake"], b["stake"])
                self.providers[b["provider_id"]] = {
                    "provider_id": b["provider_id"], "owner": b["owner"], "stake": b["stake"],
                    "price_per_kwh": b["price_per_kwh"], "credited_milli_kwh": 0,
                    "settled_milli_kwh": 0, "settled_amount": 0}
            elif t == "reading":
                self.providers[o["body"]["provider_id"]]["credited_milli_kwh"] += o["body"]["milli_kwh"]
            elif t == "settlement":
                b = o["body"]
                p = self.providers[b["provider_id"]]
                move(tip, treasury, -b["amount"])
                move(tip, p["owner"], b["amount"])
                p["settled_milli_kwh"] += b["milli_kwh"]
                p["settled_amount"] += b["amount"]
            elif t == "payout":
                b = o["body"]
                move(tip, pool, -b["amount"])
                move(tip, b["address"], b["amount"])
                self.paid[b["address"]] += b["amount"]
            elif t == "share":
                if o["accepted"]:
                    shares.append((o["height"], o["worker"].split(".", 1)[0], o["difficulty"]))
            else:
                assert t == "transaction"  # a mempool submission moves nothing
        self.tip = tip
        for p in self.providers.values():
            p["unsettled_milli_kwh"] = p["credited_milli_kwh"] - p["settled_milli_kwh"]
        # PPLNS credits: a function of the set of accepted shares and the pool blocks
        win, fee_bps = g["pool"]["window_blocks"], g["pool"]["fee_bps"]
        self.credited: Counter[str] = Counter()
        for h, r in pool_blocks:
            d = r - r * fee_bps // 10000
            w: Counter[str] = Counter()
            for sh, addr, diff in shares:
                if h - win + 1 <= sh <= h:
                    w[addr] += diff
            total = sum(w.values())
            for addr, x in w.items():
                self.credited[addr] += d * x // total
        self.miners = sorted({a for _, a, _ in shares})

    def account(self, addr: str, height: int | None = None) -> dict[str, int]:
        bal, staked, nonce = self.g["allocations"].get(addr, 0), 0, 0
        for h, db, ds, n in self.moves.get(addr, ()):
            if height is None or h <= height:
                bal, staked, nonce = bal + db, staked + ds, max(nonce, n)
        return {"address": addr, "balance": bal, "staked": staked, "nonce": nonce}

    def addresses(self) -> list[str]:
        return sorted({*self.moves, *self.g["allocations"]})


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    """A generated genesis + history, a data dir initialised from it, and its first ingest."""
    root = tmp_path_factory.mktemp("cli")
    genesis, keys = make_genesis(SEED, wallets=12)
    gpath, hpath, data = root / "genesis.json", root / "history.jsonl", root / "data"
    write_genesis(gpath, genesis)
    stats = write_history(hpath, genesis, keys, events=EVENTS, seed=SEED)
    lines = hpath.read_bytes().splitlines()
    assert len(lines) == stats.valid_lines == stats.lines and stats.blocks > 10
    init = cli(data, "init", "--genesis", str(gpath))
    first = cli(data, "ingest", str(hpath))
    # read-your-writes with no node: the very next command answers for everything just admitted
    status = cli(data, "status")
    return {"root": root, "genesis": genesis, "keys": keys, "gpath": gpath, "hpath": hpath, "data": data,
            "lines": lines, "stats": stats, "init": init, "first": first, "status": status,
            "ref": Reference(genesis, lines)}


# -- tests ----------------------------------------------------------------------------------------


def test_init_and_ingest_summary(world) -> None:
    doc = ok_json(world["init"])
    assert doc["chain_id"] == world["genesis"]["chain_id"]
    assert doc["genesis_hash"] == genesis_hash(world["genesis"])
    summary = ok_json(world["first"])
    assert summary == {"accepted": len(world["lines"]), "duplicates": 0, "rejected": 0, "rejections": []}
    # init again with the same genesis is idempotent; with another one it is refused
    assert ok_json(cli(world["data"], "init", "--genesis", str(world["gpath"])))["genesis_hash"] == doc["genesis_hash"]
    other = world["root"] / "other-genesis.json"
    write_genesis(other, make_genesis(SEED + 1, wallets=3)[0])
    assert cli(world["data"], "init", "--genesis", str(other)).returncode != 0


def test_ingest_again_is_all_duplicates(world) -> None:
    again = ok_json(cli(world["data"], "ingest", str(world["hpath"])))
    assert again == {"accepted": 0, "duplicates": len(world["lines"]), "rejected": 0, "rejections": []}


def test_ingest_with_invalid_lines(world) -> None:
    data, keys = world["data"], world["keys"]
    key_file = world["root"] / "wallet3.key"
    if not key_file.exists():
        key_file.write_text(json.dumps({"seed": keys.wallets[3].seed}))
    good = ok_json(cli(data, "sign-tx", "--key", str(key_file), "--to", keys.wallets[4].address,
                       "--amount", "12345", "--memo", "invalid-lines-test"))
    forged = json.loads(json.dumps(good))
    forged["body"]["amount"] += 1  # the signature no longer covers the body
    body = b"\n".join([
        world["lines"][0],                       # 1: already admitted -> duplicate, not a rejection
        b"",                                     # 2: blank: skipped, but counted in line numbers
        b'{"type":"transaction","body":',        # 3: not JSON
        json.dumps(forged).encode(),             # 4: bad signature
        json.dumps(good).encode(),               # 5: valid mempool submission
        b'{"type":"bogus"}',                     # 6: unknown type
    ]) + b"\n"
    path = world["root"] / "invalid.jsonl"
    path.write_bytes(body)
    proc = cli(data, "ingest", str(path))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    s = json.loads(proc.stdout)
    assert (s["accepted"], s["duplicates"], s["rejected"]) == (1, 1, 3), s
    assert [(r["line"], r["code"]) for r in s["rejections"]] == [(3, "MALFORMED"), (4, "BAD_SIGNATURE"),
                                                                 (6, "MALFORMED")], s
    assert all(isinstance(r["message"], str) and r["message"] for r in s["rejections"])
    # the valid line got in despite its neighbours; the rejected ones changed nothing
    pending, absent = cli_all(data, ("tx", H(encode_body("TransactionBody", good["body"]))),
                              ("tx", H(encode_body("TransactionBody", forged["body"]))))
    assert ok_json(pending)["status"] == "pending"
    assert absent.returncode == 1


def test_ingest_usage_and_io_errors(world) -> None:
    missing, noarg = cli_all(world["data"], ("ingest", str(world["root"] / "no-such-file.jsonl")), ("ingest",))
    assert missing.returncode == 2, (missing.stdout, missing.stderr)
    assert missing.stdout == b""
    assert noarg.returncode == 2  # no FILE argument
    nochain = cli(world["root"] / "no-chain-here", "ingest", str(world["hpath"]))
    assert nochain.returncode == 2, (nochain.stdout, nochain.stderr)


def test_status_is_the_last_block(world) -> None:
    st = ok_json(world["status"])  # taken right after the first ingest
    ref = world["ref"]
    last = ref.blocks[ref.tip]
    assert st["chain_id"] == world["genesis"]["chain_id"]
    assert st["height"] == ref.tip == last["header"]["height"]
    assert st["tip_hash"] == ref.block_hash[ref.tip]
    assert st["provenance"]["lag"] == 0


def test_accounts_match_reference_fold(world) -> None:
    ref, data = world["ref"], world["data"]
    addrs = ref.addresses()
    # supply invariant of the reference itself
    total = sum(ref.account(a)["balance"] + ref.account(a)["staked"] for a in addrs)
    assert total == sum(world["genesis"]["allocations"].values()) + world["genesis"]["block_reward"] * ref.tip
    mid = ref.tip // 2
    owner = next(iter(ref.providers.values()))["owner"]
    w0 = world["keys"].wallets[0].address
    cases = [(world["keys"].producer.address, None), (world["keys"].treasury.address, None),
             (world["keys"].producer.address, mid), (w0, 0), (owner, mid)]
    fresh = "ab" * 20
    procs = cli_all(data, *[("account", a) if h is None else ("account", a, "--height", str(h)) for a, h in cases],
                    ("account", fresh), ("account", "not-an-address"))
    for (addr, h), proc in zip(cases, procs):
        got = ok_json(proc)
        assert {k: got[k] for k in ("address", "balance", "staked", "nonce")} == ref.account(addr, h), (addr, h)
    # an address never seen: zeros, not an error; a malformed one is a usage error
    got = ok_json(procs[-2])
    assert (got["balance"], got["staked"], got["nonce"]) == (0, 0, 0)
    assert procs[-1].returncode == 2


def test_every_account_at_several_heights_in_process(world) -> None:
    """The same comparison for every address and several heights, through the query layer the
    CLI uses (in-process: one open instead of hundreds of processes)."""
    from ledgerlog.engine.config import load_config
    from ledgerlog.ops.query.client import open_queries
    ref = world["ref"]
    heights = sorted({0, 1, ref.tip // 3, ref.tip // 2, ref.tip - 1, ref.tip, ref.tip + 5})
    with open_queries(load_config(str(world["data"]), {})) as q:
        for addr in ref.addresses():
            got = q.account(addr)
            assert {k: got[k] for k in ("address", "balance", "staked", "nonce")} == ref.account(addr)
            for h in heights:
                got = q.account(addr, h)
                assert {k: got[k] for k in ("address", "balance", "staked", "nonce")} == ref.account(addr, h), (addr, h)


def test_block_tx_worker_provider(world) -> None:
    ref, data = world["ref"], world["data"]
    txid, (h, i, body) = next((k, v) for k, v in ref.txs.items() if v[0] > 1)
    miner = max(ref.miners, key=lambda a: ref.paid[a])
    pid, p = max(ref.providers.items(), key=lambda kv: kv[1]["settled_amount"])
    (b1, by_hash, b_next, b_none, t, t_none, w, prov, prov_none) = cli_all(
        data, ("block", "1"), ("block", ref.block_hash[1]), ("block", str(ref.tip + 1)), ("block", "f" * 64),
        ("tx", txid), ("tx", "0" * 64), ("worker", miner), ("provider", pid), ("provider", "no-such-provider"))

    b1 = ok_json(b1)
    assert b1["height"] == 1 and b1["hash"] == ref.block_hash[1]
    assert b1["header"] == ref.blocks[1]["header"]
    by_hash = ok_json(by_hash)
    assert by_hash["hash"] == b1["hash"] and by_hash["header"] == b1["header"]
    assert b_next.returncode == 1 and b_none.returncode == 1

    t = ok_json(t)
    assert (t["txid"], t["status"], t["height"], t["index"], t["block_hash"]) == (txid, "confirmed", h, i, ref.block_hash[h])
    assert t["body"] == body
    assert t_none.returncode == 1 and json.loads(t_none.stderr)["code"] == "NOT_FOUND"

    w = ok_json(w)
    assert (w["address"], w["credited"], w["paid"], w["pending"]) == (
        miner, ref.credited[miner], ref.paid[miner], ref.credited[miner] - ref.paid[miner])
    assert w["credited"] > 0

    got = ok_json(prov)
    assert {k: got[k] for k in p} == p
    assert prov_none.returncode == 1


def test_tail_blocks(world) -> None:
    proc, unknown = cli_all(world["data"], ("tail", "ledger.blocks", "--limit", "2"), ("tail", "no.such.topic"))
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(recs) == 2
    ref = world["ref"]
    for i, r in enumerate(recs):
        assert {"partition", "offset", "key", "schema_id", "value"} <= set(r)
        assert (r["partition"], r["offset"]) == (0, i)
        assert isinstance(r["schema_id"], int) and r["schema_id"] >= 1
        assert r["value"]["header"] == ref.blocks[i + 1]["header"]
    assert recs[0]["schema_id"] == recs[1]["schema_id"]
    assert unknown.returncode == 2


def test_tail_raw_prints_the_stored_bytes(world) -> None:
    """`tail --raw` (PROTOCOL.md §9): the exact key and value bytes the log holds, any topic."""
    from ledgerlog.engine.chain import open_chain
    from ledgerlog.engine.config import load_config

    proc, schemas = cli_all(world["data"], ("tail", "ledger.transactions", "--raw", "--limit", "5"),
                            ("tail", "_schemas", "--raw", "--limit", "1"))
    recs = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(recs) == 5 and all(set(r) == {"topic", "partition", "offset", "timestamp", "key_hex", "value_hex"}
                                  for r in recs)
    with open_chain(load_config(str(world["data"]), {}), read_only=True) as chain:
        for r in recs:
            [stored] = chain.log.read(r["topic"], r["partition"], r["offset"], 1)
            assert (bytes.fromhex(r["key_hex"]), bytes.fromhex(r["value_hex"]), r["timestamp"]) == (
                stored.key, stored.value, stored.timestamp)
            assert bytes.fromhex(r["value_hex"])[0] == 0  # Confluent framing: magic byte 0
    assert json.loads(schemas.stdout)["topic"] == "_schemas"


def test_keys_sign_tx_and_ingest_from_stdin(world) -> None:
    data, keys, root = world["data"], world["keys"], world["root"]
    new_key = root / "new.key"
    made, plain = map(ok_json, cli_all(data, ("keys", "new", "--out", str(new_key)), ("keys", "new")))
    assert len(made["address"]) == 40 and len(made["pubkey"]) == 64
    assert (os.stat(new_key).st_mode & 0o777) == 0o600
    assert json.loads(new_key.read_text())["address"] == made["address"]
    assert len(plain["seed"]) == 64 and plain["address"] != made["address"]

    funder = root / "wallet5.key"
    funder.write_text(json.dumps({"seed": keys.wallets[5].seed}))
    signed = cli(data, "sign-tx", "--key", str(funder), "--to", made["address"], "--amount", "777000")
    line = ok_json(signed)
    assert line["type"] == "transaction" and line["body"]["recipient"] == made["address"]
    assert line["body"]["sender"] == keys.wallets[5].address
    assert line["body"]["fee"] == world["genesis"]["min_fee"]
    # the nonce comes from the chain: confirmed + pending + 1
    confirmed = world["ref"].account(keys.wallets[5].address)["nonce"]
    assert line["body"]["nonce"] >= confirmed + 1
    summary = ok_json(cli(data, "ingest", "-", stdin=signed.stdout))
    assert summary == {"accepted": 1, "duplicates": 0, "rejected": 0, "rejections": []}
    txid = H(encode_body("TransactionBody", line["body"]))
    t, broke = cli_all(data, ("tx", txid),  # read-your-writes
                       ("sign-tx", "--key", str(new_key), "--to", keys.wallets[0].address, "--amount", "1"))
    t, broke = ok_json(t), ok_json(broke)
    assert t["status"] == "pending" and t["sender"] == keys.wallets[5].address
    # the same line again is a duplicate; a key with no funds is refused
    assert ok_json(cli(data, "ingest", "-", stdin=signed.stdout))["duplicates"] == 1
    proc = cli(data, "ingest", "-", stdin=json.dumps(broke).encode())
    assert proc.returncode == 1
    assert [r["code"] for r in json.loads(proc.stdout)["rejections"]] == ["INSUFFICIENT_FUNDS"]
