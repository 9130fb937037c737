"""The simulator end to end: a real dev chain on RocksDB, the real admitter and projection runner,
and a fake clock, so a minute of workload runs in seconds with no sleeping."""
from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest

from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.chain import Chain, init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.engine.signing import signed_line
from ledgerlog.ops.devtools.simulator import Simulator, wallet_signer
from ledgerlog.projections import balances, chainstate, energy, payouts
from ledgerlog.projections.base import jload
from ledgerlog.streams.runner import Runner

TICK = 0.5  # fake seconds per tick
THRESHOLD = 10**7


class Env:
    """A dev chain (small payout threshold), its runner and a fake clock."""

    def __init__(self, data_dir: str) -> None:
        self.cfg = Config(data_dir=data_dir, sync=False)
        g = dev_genesis(self.cfg.keys_dir)
        g["pool"]["payout_threshold"] = THRESHOLD
        init_chain(self.cfg, g)
        self.chain: Chain = open_chain(self.cfg)
        self.runner = Runner(self.chain.log, self.chain.codec, self.chain.genesis,
                             self.cfg.projections_dir)
        self.now = time.time()
        self.miners: list[str] = []

    def clock(self) -> float:
        return self.now

    def view(self, name: str) -> Any:
        return self.runner.handles[name].store.view()

    def pool_pending(self) -> dict[str, int]:
        self.runner.catch_up()
        view = self.view("payouts")
        return {a: payouts.worker(view, a)["pending"] for a in self.miners}

    def simulator(self, seed: int = 7, **kw: Any) -> Simulator:
        sim = Simulator(genesis=self.chain.genesis, keys_dir=self.cfg.keys_dir,
                        submit=self.chain.admitter.admit,
                        state=lambda: WriteState(self.chain.log),
                        pool_pending=self.pool_pending, seed=seed,
                        clock=kw.pop("clock", self.clock), **kw)
        self.miners = sim.miner_addresses
        return sim

    def drive(self, sim: Simulator, ticks: int) -> None:
        for _ in range(ticks):
            sim.tick()
            self.now += TICK

    def close(self) -> None:
        self.runner.close()
        self.chain.close()


@pytest.fixture
def env(tmp_path):
    e = Env(str(tmp_path))
    yield e
    e.close()


def rejections(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if k.startswith("rejected.") and v}


def test_sixty_ticks_of_workload(env):
    sim = env.simulator()
    env.drive(sim, 60)
    env.runner.catch_up()
    g = env.chain.genesis
    s = sim.stats
    print(dict(sorted(s.items())))

    # a block every block_interval (1 s) of fake time: ticks at 0, 0.5, ..., 29.5 s
    tip = chainstate.tip(env.view("chainstate"))
    assert tip["height"] == 30 == WriteState(env.chain.log).tip().height
    assert s["block.accepted"] == 30 and s["block.rejected"] == 0

    # transactions confirmed, wallet balances moved, supply holds on the balances projection
    assert tip["total_txs"] == s["block.transactions"] > 500
    bview = env.view("balances")
    wallet_accounts = [balances.account(bview, w.address) for w in sim.wallets]
    assert all(a["nonce"] > 0 for a in wallet_accounts)  # every wallet sent confirmed transfers
    assert len({a["balance"] for a in wallet_accounts}) > 1
    total = sum(v[0] + v[1] for v in (jload(raw) for _, raw in bview.items(b"a/")))
    assert total == sum(g.allocations.values()) + g.block_reward * tip["height"]

    # mining pool: shares admitted, payouts made, none rejected, paid shows in the projection
    assert s["share.accepted"] > 100
    assert s["payout.accepted"] >= 1 and s["payout.rejected"] == 0
    pview = env.view("payouts")
    paid = {a: payouts.worker(pview, a)["paid"] for a in sim.miner_addresses}
    assert sum(paid.values()) > 0 and payouts.pool(pview)["paid"] == sum(paid.values())
    for a in sim.miner_addresses:  # a payout never exceeded what was credited
        w = payouts.worker(pview, a)
        assert 0 <= w["paid"] <= w["credited"]

    # energy: three providers registered, readings credited, settlements paid
    assert s["provider.accepted"] == 3 and s["provider.rejected"] == 0
    assert s["reading.accepted"] > 30 and s["settlement.accepted"] >= 3
    eview = env.view("energy")
    for pid, owner, meter, price in sim.providers:
        p = energy.provider(eview, pid)
        assert p is not None and p["owner"] == owner.address and p["meter_id"] == meter
        assert p["credited_milli_kwh"] > 0 and p["settled_milli_kwh"] > 0
        assert p["settled_amount"] > 0
        assert p["stake"] >= g.energy.min_stake and p["price_per_kwh"] == price

    # nothing the simulator made was rejected
    assert s["transaction.rejected"] == 0
    assert rejections(s) == {}, rejections(s)


def test_restart_with_same_seed_resumes_from_state(env):
    """A second simulator (same seed, same wallets) picks nonces, providers and rounds up from
    the committed state: no duplicate registrations, no nonce clashes."""
    first = env.simulator(seed=11)
    env.drive(first, 12)
    second = env.simulator(seed=11)
    env.drive(second, 12)
    assert first.stats["provider.accepted"] == 3 and second.stats["provider.submitted"] == 0
    assert second.stats["transaction.accepted"] > 0 and second.stats["block.accepted"] > 0
    assert rejections(first.stats) == {} and rejections(second.stats) == {}, \
        (rejections(first.stats), rejections(second.stats))


def test_rejection_resyncs_instead_of_raising(env):
    """Someone else spends from a simulated wallet: the simulator's next transaction for it has
    a stale nonce, is rejected, and after the resync the wallet is back in step."""
    sim = env.simulator(seed=5)
    env.drive(sim, 7)  # funded and trading; the next tick (3.5 s) makes no block
    st = WriteState(env.chain.log)
    g = env.chain.genesis
    for w in sim.wallets:  # consume the next nonce of every wallet behind the simulator's back
        acct, pending = st.account(w.address), st.pending(w.address)
        body = {"chain_id": g.chain_id, "sender": w.address, "recipient": sim.wallets[0].address,
                "amount": 1, "fee": g.min_fee, "nonce": acct.nonce + len(pending) + 1,
                "timestamp": int(env.now * 1000), "memo": "outside"}
        summary = env.chain.admitter.admit([orjson.dumps(signed_line("transaction", w, body))])
        assert summary.accepted == 1, summary.to_dict()
    env.drive(sim, 1)  # lines built with stale nonces: BAD_NONCE, then a resync
    assert sim.stats["rejected.BAD_NONCE"] > 0
    before = dict(sim.stats)
    env.drive(sim, 10)
    assert sim.stats["rejected.BAD_NONCE"] == before["rejected.BAD_NONCE"]
    assert sim.stats["transaction.accepted"] > before["transaction.accepted"]
    assert wallet_signer(5, 0).address == sim.wallets[0].address


def test_run_loop_stops_on_event(env):
    """``run`` with the real clock: blocks appear, and setting the event ends the loop."""
    sim = env.simulator(seed=3, block_interval=0.1, clock=time.time)
    stop = threading.Event()
    t = threading.Thread(target=sim.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + 10
    while sim.stats["block.accepted"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(timeout=10)
    assert not t.is_alive()
    assert sim.stats["block.accepted"] >= 3 and sim.stats.get("errors", 0) == 0
