"""Projections over a generated history: equal to a plain reference computation, replays give
identical digests, and any interleaving/batching of partitions gives identical state."""
from __future__ import annotations

import random
from collections import defaultdict

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlog import projections
from ledgerlog.engine import avro
from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.crypto import H, canonical_json
from ledgerlog.ops.devtools.histgen import generate, make_genesis
from ledgerlog.projections import balances, chainstate
from ledgerlog.streams.runner import Runner
from ledgerlog.streams.store import ProjectionStore


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A chain with ~4k generated events ingested, and the lines themselves."""
    genesis, keys = make_genesis(7, wallets=16)
    lines = list(generate(genesis, keys, events=2500, seed=7))
    d = tmp_path_factory.mktemp("hist")
    cfg = Config(data_dir=str(d), sync=False)
    init_chain(cfg, genesis)
    chain = open_chain(cfg)
    summary = chain.admitter.admit(lines)
    assert summary.rejected == 0 and summary.duplicates == 0
    yield cfg, chain, genesis, [orjson.loads(x) for x in lines]
    chain.close()


def _runner(chain, d: str, **kw) -> Runner:
    r = Runner(chain.log, chain.codec, chain.genesis, d, **kw)
    r.catch_up()
    return r


def reference_balances(genesis: dict, lines: list[dict]) -> dict[int, dict[str, list[int]]]:
    """PROTOCOL §6 balances, computed plainly from the admitted lines: {height: {addr: [bal, staked, nonce]}}."""
    acct: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for addr, amount in genesis["allocations"].items():
        acct[addr][0] += amount
    owners, height, snapshots = {}, 0, {0: {}}
    treasury, pool = genesis["energy"]["treasury"], genesis["pool"]["address"]

    def snap() -> None:
        snapshots[height] = {a: list(v) for a, v in acct.items()}

    snap()
    for line in lines:
        kind = line["type"]
        if kind == "block":
            height = line["header"]["height"]
            fees = 0
            for tx in line["transactions"]:
                b = tx["body"]
                acct[b["sender"]][0] -= b["amount"] + b["fee"]
                acct[b["recipient"]][0] += b["amount"]
                acct[b["sender"]][2] = max(acct[b["sender"]][2], b["nonce"])
                fees += b["fee"]
            acct[line["header"]["producer"]][0] += genesis["block_reward"] + fees
        elif kind == "provider":
            b = line["body"]
            owners[b["provider_id"]] = b["owner"]
            acct[b["owner"]][0] -= b["stake"]
            acct[b["owner"]][1] += b["stake"]
        elif kind == "settlement":
            b = line["body"]
            acct[treasury][0] -= b["amount"]
            acct[owners[b["provider_id"]]][0] += b["amount"]
        elif kind == "payout":
            b = line["body"]
            acct[pool][0] -= b["amount"]
            acct[b["address"]][0] += b["amount"]
        snap()
    return snapshots


def test_balances_equal_reference_now_and_at_every_height(history, tmp_path):
    _cfg, chain, genesis, lines = history
    r = _runner(chain, str(tmp_path))
    view = r.handles["balances"].store.view()
    ref = reference_balances(genesis, lines)
    final = ref[max(ref)]
    for addr, (bal, staked, nonce) in final.items():
        got = balances.account(view, addr)
        assert (got["balance"], got["staked"], got["nonce"]) == (bal, staked, nonce), addr
    rng = random.Random(1)
    for h in rng.sample(sorted(ref), min(25, len(ref))):
        for addr in rng.sample(sorted(final), 5):
            want = ref[h].get(addr, [0, 0, 0])
            got = balances.account(view, addr, h)
            assert [got["balance"], got["staked"], got["nonce"]] == want, (addr, h)
    height = max(ref)
    total = sum(b + s for b, s, _ in final.values())
    assert total == sum(genesis["allocations"].values()) + genesis["block_reward"] * height
    r.close()


def test_chainstate_equals_reference(history, tmp_path):
    _cfg, chain, _genesis, lines = history
    r = _runner(chain, str(tmp_path))
    view = r.handles["chainstate"].store.view()
    blocks = [x for x in lines if x["type"] == "block"]
    tip = chainstate.tip(view)
    last_hash = H(avro.encode("BlockHeader", blocks[-1]["header"]))
    assert (tip["height"], tip["tip_hash"]) == (len(blocks), last_hash)
    assert tip["total_txs"] == sum(len(b["transactions"]) for b in blocks)
    b = blocks[len(blocks) // 2]
    got = chainstate.block(view, b["header"]["height"])
    assert got["header"] == b["header"]
    assert chainstate.block(view, got["hash"])["height"] == b["header"]["height"]
    tx = b["transactions"][0] if b["transactions"] else None
    if tx:
        txid = H(avro.encode("TransactionBody", tx["body"]))
        found = chainstate.tx(view, txid)
        assert found["status"] == "confirmed" and found["height"] == b["header"]["height"]
        assert found["body"] == tx["body"]
    submitted = {H(avro.encode("TransactionBody", x["body"]))
                 for x in lines if x["type"] == "transaction"}
    confirmed = {H(avro.encode("TransactionBody", t["body"]))
                 for bl in blocks for t in bl["transactions"]}
    assert chainstate.mempool_size(view) == len(submitted - confirmed)
    r.close()


def test_two_replays_give_identical_digests(history, tmp_path):
    _, chain, _, _ = history
    a = _runner(chain, str(tmp_path / "a"), batch=997)
    b = _runner(chain, str(tmp_path / "b"), batch=50_000)
    assert a.digests() == b.digests()
    assert set(a.digests()) == set(projections.ALL)
    a.close()
    b.close()


def _all_records(chain, module):
    out = []
    for topic in module.TOPICS:
        for p, _end in enumerate(chain.log.end_offsets(topic)):
            out.append([(topic, chain.codec.decode(topic, r.value)) for r in chain.log.scan(topic, p)])
    return out


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_any_interleaving_of_partitions_gives_identical_state(history, tmp_path_factory, seed):
    """Fold each projection's partitions interleaved at random, in random batch sizes (each
    partition stays in offset order, as a consumer sees it): same digest as the runner."""
    _, chain, _, _ = history
    genesis = chain.genesis
    rng = random.Random(seed)
    ref = _reference_runner(chain, tmp_path_factory)
    for name, module in projections.ALL.items():
        queues = [list(q) for q in _all_records(chain, module) if q]
        store = ProjectionStore(str(tmp_path_factory.mktemp(name) / "s"))
        txn = store.begin()
        module.initial(genesis, txn)
        store.commit(txn, {}, initialised=True)
        while queues:
            batch = []
            for _ in range(rng.randint(1, 400)):
                live = [q for q in queues if q]
                if not live:
                    break
                batch.append(rng.choice(live).pop(0))
            queues = [q for q in queues if q]
            txn = store.begin()
            module.fold(genesis, batch, txn)
            store.commit(txn, {})
        assert store.digest_hex() == ref[name], name
        store.close()


_REF: dict[int, dict[str, str]] = {}


def _reference_runner(chain, tmp_path_factory) -> dict[str, str]:
    if id(chain) not in _REF:
        r = _runner(chain, str(tmp_path_factory.mktemp("ref")))
        _REF[id(chain)] = r.digests()
        r.close()
    return _REF[id(chain)]


def test_share_ids_are_canonical_json_hashes(history):
    _, chain, _, lines = history
    shares = [x for x in lines if x["type"] == "share"]
    ids = {chain.codec.decode(T.SHARES, r.value)["share_id"]
           for p in range(len(chain.log.end_offsets(T.SHARES))) for r in chain.log.scan(T.SHARES, p)}
    assert ids == {H(canonical_json(s)) for s in shares}
