"""ops.histgen: generated histories are admitted cleanly, invalid lines are refused without
disturbing the rest, output is deterministic, and the write side ends where the model does."""
from __future__ import annotations

import hashlib
import io

import orjson
import pytest
from fastavro import schemaless_writer

from ledgerlog.engine import avro
from ledgerlog.engine.admission.lines import SIGNED_KINDS
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.genesis import Genesis
from ledgerlog.ops.devtools.histgen import (
    INVALID_KINDS,
    encode_body,
    generate,
    genesis_hash,
    make_genesis,
    write_history,
)

EVENTS = 2000
SEED = 7


def _admit(tmp_path, genesis, lines):
    cfg = Config(data_dir=str(tmp_path / "chain"), sync=False)
    init_chain(cfg, genesis)
    chain = open_chain(cfg)
    summary = chain.admitter.admit(lines)
    return chain, summary


def _write_accounts(chain):
    out = {}
    for key, raw in chain.log.state_items(b"a/"):
        out[key[2:].decode()] = tuple(orjson.loads(raw))
    return out


def _check_supply(genesis, accounts, height):
    total = sum(bal + staked for bal, staked, _ in accounts.values())
    assert total == sum(genesis["allocations"].values()) + genesis["block_reward"] * height


@pytest.fixture(scope="module")
def chain_keys():
    return make_genesis(SEED, wallets=24)


def test_genesis_and_keys(chain_keys):
    genesis, keys = chain_keys
    g = Genesis.from_dict(genesis)
    assert g.hash == genesis_hash(genesis)
    assert g.pool.address == keys.producer.address == keys.pool.address
    assert keys.producer.pubkey in g.producers and keys.oracle.pubkey in g.oracles
    assert g.energy.treasury == keys.treasury.address
    assert all(g.allocations[w.address] > 0 for w in keys.wallets) and len(keys.wallets) == 24
    again, keys2 = make_genesis(SEED, wallets=24)
    assert again == genesis and keys2.seeds() == keys.seeds()
    assert make_genesis(SEED + 1, wallets=24)[0] != genesis


def _fastavro(name: str, body: dict) -> bytes:
    """The canonical bytes as PROTOCOL.md §1 defines them: fastavro's schemaless writer."""
    buf = io.BytesIO()
    schemaless_writer(buf, avro.parsed(name), body)
    return buf.getvalue()


def test_encoding_matches_engine_avro(chain_keys):
    genesis, keys = chain_keys
    seen = set()
    for line in generate(genesis, keys, events=600, seed=SEED):
        obj = orjson.loads(line)
        if obj["type"] == "block":
            pairs = [("BlockHeader", obj["header"])] + [("TransactionBody", t["body"]) for t in obj["transactions"]]
        elif obj["type"] in SIGNED_KINDS:
            pairs = [(SIGNED_KINDS[obj["type"]], obj["body"])]
        else:
            continue
        for name, body in pairs:
            seen.add(name)
            assert encode_body(name, body) == _fastavro(name, body)
    # every signed kind but governance changes (docs/PROTOCOL.md §8.5), which histories do not make
    assert seen == {"BlockHeader", *SIGNED_KINDS.values()} - {"GovernanceBody"}
    extremes = {"chain_id": "é" * 200, "sender": "a" * 40, "recipient": "b" * 40, "amount": (1 << 63) - 1,
                "fee": -(1 << 63), "nonce": 0, "timestamp": -1, "memo": "x" * 20000}
    assert encode_body("TransactionBody", extremes) == _fastavro("TransactionBody", extremes)


def test_valid_history_is_admitted_whole(tmp_path, chain_keys):
    genesis, keys = chain_keys
    gen = generate(genesis, keys, events=EVENTS, seed=SEED)
    lines = list(gen)
    st = gen.stats
    assert st.invalid_lines == 0 and st.valid_lines == len(lines)
    assert EVENTS <= st.events < EVENTS + 2 * 20 * 2 + 10  # "roughly": at most one extra block
    # the mix holds every kind of line, mempool txs are confirmed later, some shares arrive late
    kinds = {}
    mempool_txids, block_txids = set(), set()
    tip, late = 0, 0
    for line in lines:
        obj = orjson.loads(line)
        kinds[obj["type"]] = kinds.get(obj["type"], 0) + 1
        if obj["type"] == "block":
            assert obj["header"]["height"] == tip + 1
            tip += 1
            block_txids.update(hashlib.blake2b(avro.encode("TransactionBody", t["body"]), digest_size=32).hexdigest()
                               for t in obj["transactions"])
        elif obj["type"] == "transaction":
            mempool_txids.add(hashlib.blake2b(avro.encode("TransactionBody", obj["body"]), digest_size=32).hexdigest())
        elif obj["type"] == "share":
            late += obj["height"] < tip
    assert set(kinds) == {"block", "transaction", "share", "provider", "reading", "settlement", "payout"}
    assert kinds["transaction"] == st.mempool_txs > 0 and kinds["block"] == st.blocks == tip
    assert len(mempool_txids & block_txids) > 0.8 * len(mempool_txids)
    assert late > 0 and st.late_shares >= late
    assert st.payouts > 0 and st.settlements > 0 and st.providers > 0 and st.readings > 0

    chain, summary = _admit(tmp_path, genesis, lines)
    try:
        assert summary.rejected == 0, summary.rejections[:5]
        assert summary.duplicates == 0
        assert summary.accepted == len(lines)
        assert chain.status()["height"] == st.blocks
        accounts = _write_accounts(chain)
        _check_supply(genesis, accounts, st.blocks)
        assert accounts == gen.accounts()  # the generator's model is the write side's state
    finally:
        chain.close()


def test_invalid_lines_are_refused_and_change_nothing(tmp_path, chain_keys):
    genesis, keys = chain_keys
    every = 10
    gen = generate(genesis, keys, events=EVENTS, seed=SEED, invalid_every=every)
    lines = list(gen)
    st = gen.stats
    invalid_numbers = {n for n in range(1, len(lines) + 1) if n % every == 0}
    assert st.invalid_lines == len(invalid_numbers) and st.valid_lines == len(lines) - len(invalid_numbers)
    assert set(st.invalid) == set(INVALID_KINDS)

    chain, summary = _admit(tmp_path, genesis, lines)
    try:
        assert summary.accepted == st.valid_lines, summary.rejections[:5]
        assert summary.rejected + summary.duplicates == st.invalid_lines
        assert summary.duplicates == st.invalid["duplicate"]
        assert {r["line"] for r in summary.rejections} <= invalid_numbers
        assert {r["code"] for r in summary.rejections} == {"MALFORMED", "BAD_SIGNATURE", "BAD_NONCE"}
        assert chain.status()["height"] == st.blocks
        accounts = _write_accounts(chain)
        _check_supply(genesis, accounts, st.blocks)
        assert accounts == gen.accounts()
    finally:
        chain.close()


def test_deterministic(tmp_path, chain_keys):
    genesis, keys = chain_keys

    def digest(**kw):
        h = hashlib.sha256()
        for line in generate(genesis, keys, events=EVENTS, seed=SEED, **kw):
            h.update(line + b"\n")
        return h.hexdigest()

    assert digest() == digest()
    assert digest(invalid_every=10) == digest(invalid_every=10)
    assert digest() != digest(invalid_every=10)
    other = hashlib.sha256(b"".join(line + b"\n" for line in generate(genesis, keys, events=EVENTS, seed=SEED + 1)))
    assert other.hexdigest() != digest()

    path = tmp_path / "history.jsonl"
    stats = write_history(path, genesis, keys, events=EVENTS, seed=SEED)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest()
    assert stats.lines == path.read_bytes().count(b"\n")
    buf = io.BytesIO()
    write_history(buf, genesis, keys, events=EVENTS, seed=SEED)
    assert buf.getvalue() == path.read_bytes()


def test_options(tmp_path):
    genesis, keys = make_genesis(3, wallets=4, extra_producers=1, window_blocks=3)
    gen = generate(genesis, keys, events=500, seed=3, mix={"transaction": 1, "share": 1, "payout": 1},
                   block_txs=5, invalid_every=4)
    lines = list(gen)
    kinds = {orjson.loads(line)["type"] for n, line in enumerate(lines, 1) if n % 4}
    assert kinds <= {"block", "share", "payout"} and "payout" in kinds
    assert 0 < gen.stats.pool_blocks < gen.stats.blocks  # the extra producer's blocks are no pool rounds
    chain, summary = _admit(tmp_path, genesis, lines)
    try:
        assert summary.accepted == gen.stats.valid_lines, summary.rejections[:5]
        assert chain.status()["height"] == gen.stats.blocks
        assert _write_accounts(chain) == gen.accounts()
    finally:
        chain.close()
    with pytest.raises(ValueError):
        generate(genesis, keys, events=10, seed=1, mix={"nonsense": 1})
