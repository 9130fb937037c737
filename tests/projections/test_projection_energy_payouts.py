"""The energy and payouts projections: PROTOCOL.md §6 semantics against a plain reference
computation, and commutativity (any interleaving, any batching gives byte-identical state).

Folds run directly over a tiny dict-backed Txn; events are round-tripped through their Avro
schemas so they carry exactly the fields the runtime decodes."""
from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right, insort
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerlog import projections
from ledgerlog.engine import avro, governance
from ledgerlog.engine import topics as T
from ledgerlog.engine.crypto import H, canonical_json
from ledgerlog.engine.genesis import Genesis
from ledgerlog.projections import energy, payouts

POOL = "a0" * 20
OTHER = "b0" * 20
TREASURY = "c0" * 20
ADDRS = ["1" * 40, "2" * 40, "3" * 40, "4" * 40]
RIGS = ["rig1", "rig-2", "x_3"]
PIDS = ["solar-1", "wind-2", "hydro-3", "geo-4"]
REWARD = 5000


class MemTxn:
    """A dict with sorted-key iteration: the View/Txn a fold sees."""

    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self.d.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        assert isinstance(key, bytes) and isinstance(value, bytes)
        if key not in self.d:
            insort(self.keys, key)
        self.d[key] = value

    def delete(self, key: bytes) -> None:
        if key in self.d:
            del self.d[key]
            self.keys.pop(bisect_left(self.keys, key))

    def items(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        i = bisect_left(self.keys, max(prefix, start) if start is not None else prefix)
        for key in list(self.keys[i:]):
            if not key.startswith(prefix):
                break
            yield key, self.d[key]

    def last_at_or_before(self, prefix: bytes, key: bytes) -> tuple[bytes, bytes] | None:
        i = bisect_right(self.keys, key)
        if i and self.keys[i - 1].startswith(prefix):
            return self.keys[i - 1], self.d[self.keys[i - 1]]
        return None


def genesis(window: int = 3, fee_bps: int = 100) -> Genesis:
    return Genesis.from_dict({
        "chain_id": "test", "timestamp": 1, "block_reward": REWARD, "min_fee": 1,
        "producers": ["11" * 32], "oracles": ["22" * 32],
        "pool": {"address": POOL, "fee_bps": fee_bps, "window_blocks": window,
                 "payout_threshold": 1},
        "energy": {"treasury": TREASURY, "min_stake": 1}, "allocations": {},
    })


# -- events, exactly as the schemas (and engine/admission/rules.py) shape them ------------------
def _ev(topic: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = T.EVENT_SCHEMA[topic]
    decoded = avro.decode(name, avro.encode(name, record))
    assert decoded == record, f"{name}: fields do not match the schema"
    return topic, decoded


def block(height: int, producer: str, fees: int = 0) -> tuple[str, dict[str, Any]]:
    hdr = {"chain_id": "test", "height": height, "prev_hash": "0" * 64, "timestamp": 1000 + height,
           "producer": producer, "tx_root": "0" * 64, "tx_count": 0}
    return _ev(T.BLOCKS, {"header": hdr, "hash": H(canonical_json(hdr)), "pubkey": "11" * 32,
                          "signature": "00" * 64, "txids": [], "fees": fees, "reward": REWARD,
                          "evicted": []})


def share(addr: str, rig: str, height: int, difficulty: int, accepted: bool = True,
          stamp: int = 0, ts: int = 7) -> tuple[str, dict[str, Any]]:
    line = {"type": "share", "worker": f"{addr}.{rig}", "job_id": f"j{height}", "height": height,
            "difficulty": difficulty, "accepted": accepted, "timestamp": ts}
    return _ev(T.SHARES, {"share_id": H(canonical_json(line)), "worker": line["worker"],
                          "address": addr, "job_id": line["job_id"], "height": height,
                          "difficulty": difficulty, "accepted": accepted, "timestamp": ts,
                          "stamp_height": stamp})


def payout(payout_id: str, addr: str, amount: int, round_height: int,
           stamp: int = 0) -> tuple[str, dict[str, Any]]:
    body = {"chain_id": "test", "payout_id": payout_id, "address": addr, "amount": amount,
            "round_height": round_height, "timestamp": 9}
    return _ev(T.PAYOUTS, {"body": body, "pubkey": "33" * 32, "signature": "00" * 64,
                           "stamp_height": stamp})


def provider(pid: str, owner: str, stake: int, price: int,
             stamp: int = 0) -> tuple[str, dict[str, Any]]:
    body = {"chain_id": "test", "provider_id": pid, "owner": owner, "meter_id": "m-" + pid,
            "stake": stake, "price_per_kwh": price, "timestamp": 9}
    return _ev(T.PROVIDERS, {"body": body, "pubkey": "44" * 32, "signature": "00" * 64,
                             "stamp_height": stamp})


def reading(pid: str, milli_kwh: int, ts: int, stamp: int = 0) -> tuple[str, dict[str, Any]]:
    body = {"chain_id": "test", "meter_id": "m-" + pid, "provider_id": pid,
            "milli_kwh": milli_kwh, "timestamp": ts}
    return _ev(T.READINGS, {"body": body, "reading_id": H(canonical_json(body)),
                            "pubkey": "22" * 32, "signature": "00" * 64, "stamp_height": stamp})


def settlement(sid: str, pid: str, milli_kwh: int, amount: int, owner: str,
               stamp: int = 0) -> tuple[str, dict[str, Any]]:
    body = {"chain_id": "test", "settlement_id": sid, "provider_id": pid, "milli_kwh": milli_kwh,
            "amount": amount, "timestamp": 9}
    return _ev(T.SETTLEMENTS, {"body": body, "owner": owner, "pubkey": "55" * 32,
                               "signature": "00" * 64, "stamp_height": stamp})


def change(parameter: str, value: int, seq: int, stamp: int) -> tuple[str, dict[str, Any]]:
    body = {"chain_id": "test", "parameter": parameter, "value": value, "timestamp": 9}
    return _ev(T.GOVERNANCE, {"body": body, "change_id": H(canonical_json(body)), "pubkey": "55" * 32,
                              "signature": "00" * 64, "previous": 0, "seq": seq, "stamp_height": stamp})


def run(module: Any, g: Genesis, batches: list[list[tuple[str, dict[str, Any]]]]) -> MemTxn:
    """Initialise, then fold each batch (only the module's topics, as the runtime would)."""
    txn = MemTxn()
    module.initial(g, txn)
    for batch in batches:
        module.fold(g, [e for e in batch if e[0] in module.TOPICS], txn)
    return txn


# -- plain reference computations of PROTOCOL §6 ------------------------------------------------
def ref_payouts(g: Genesis, events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    win, fee_bps = g.pool.window_blocks, g.pool.fee_bps
    rounds = {ev["header"]["height"]: ev["reward"] + ev["fees"] for topic, ev in events
              if topic == T.BLOCKS and ev["header"]["producer"] == g.pool.address}
    shares = [ev for topic, ev in events if topic == T.SHARES]
    good = [s for s in shares if s["accepted"]]
    workers: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "credited": 0, "paid": 0, "shares": 0, "rejected_shares": 0, "difficulty": 0,
        "rigs": set(), "rounds": 0, "payouts": 0})
    round_credits = {}
    for h, r in rounds.items():
        d = r - (r * fee_bps // 10000)
        w: dict[str, int] = defaultdict(int)
        for s in good:
            if h - win + 1 <= s["height"] <= h:
                w[s["address"]] += s["difficulty"]
        total = sum(w.values())
        credits = {a: d * x // total for a, x in w.items()} if total else {}
        credits = {a: c for a, c in credits.items() if c > 0}
        round_credits[h] = {"reward": r, "distributable": d, "weight": total, "credits": credits}
        for a, c in credits.items():
            workers[a]["credited"] += c
            workers[a]["rounds"] += 1
    for s in shares:
        wk = workers[s["address"]]
        wk["rigs"].add(s["worker"].split(".", 1)[1])
        if s["accepted"]:
            wk["shares"] += 1
            wk["difficulty"] += s["difficulty"]
        else:
            wk["rejected_shares"] += 1
    round_paid: dict[int, int] = defaultdict(int)
    for topic, ev in events:
        if topic == T.PAYOUTS:
            workers[ev["body"]["address"]]["paid"] += ev["body"]["amount"]
            workers[ev["body"]["address"]]["payouts"] += 1
            round_paid[ev["body"]["round_height"]] += ev["body"]["amount"]
    for h, rc in round_credits.items():
        rc["paid"] = round_paid[h]
    credited = sum(w["credited"] for w in workers.values())
    paid = sum(w["paid"] for w in workers.values())
    return {
        "workers": {a: {**w, "address": a, "rigs": sorted(w["rigs"]),
                        "pending": w["credited"] - w["paid"]}
                    for a, w in workers.items()},
        "rounds": round_credits,
        "pool": {"credited": credited, "paid": paid, "pending": credited - paid,
                 "workers": len({s["address"] for s in shares}), "shares": len(good),
                 "rejected_shares": len(shares) - len(good),
                 "difficulty": sum(s["difficulty"] for s in good), "rounds": len(rounds),
                 "rewards": sum(rounds.values()),
                 "distributable": sum(rc["distributable"] for rc in round_credits.values())},
    }


def check_payouts(g: Genesis, txn: MemTxn, events: list[tuple[str, dict[str, Any]]]) -> None:
    ref = ref_payouts(g, events)
    assert payouts.pool(txn) == ref["pool"]
    for addr, want in ref["workers"].items():
        assert payouts.worker(txn, addr) == want
    for h, want in ref["rounds"].items():
        got = payouts.round_info(txn, h)
        assert got is not None
        assert got["credits"] == want["credits"] and got["weight"] == want["weight"]
        assert got["distributable"] == want["distributable"] and got["paid"] == want["paid"]
        assert got["credited"] <= got["distributable"]
    listed = payouts.workers(txn, limit=100)
    assert {w["address"] for w in listed} == set(ref["workers"])
    assert [w["pending"] for w in listed] == sorted((w["pending"] for w in listed), reverse=True)


def ref_energy(events: list[tuple[str, dict[str, Any]]], height: int | None = None) -> dict[str, Any]:
    """Providers and market of PROTOCOL §6 (and the average price of docs/PROTOCOL.md §8.5) from
    the events stamped ``height`` or lower (all of them without a height)."""
    mine = [(t, ev) for t, ev in events if t in (T.PROVIDERS, T.READINGS, T.SETTLEMENTS)
            and (height is None or ev["stamp_height"] <= height)]
    provs: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "registered": False, "owner": None, "meter_id": None, "stake": None, "price_per_kwh": None,
        "registered_height": None, "credited_milli_kwh": 0, "settled_milli_kwh": 0,
        "settled_amount": 0, "readings": 0, "settlements": 0})
    credits: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for topic, ev in mine:
        b = ev["body"]
        p = provs[b["provider_id"]]
        if topic == T.PROVIDERS:  # registered twice (admission refuses it): the lesser one holds
            key = (ev["stamp_height"], b["owner"], b["meter_id"], b["stake"], b["price_per_kwh"])
            if p["registered"] and key >= (p["registered_height"], p["owner"], p["meter_id"], p["stake"],
                                           p["price_per_kwh"]):
                continue
            p.update(registered=True, owner=b["owner"], meter_id=b["meter_id"], stake=b["stake"],
                     price_per_kwh=b["price_per_kwh"], registered_height=ev["stamp_height"])
        elif topic == T.READINGS:
            p["credited_milli_kwh"] += b["milli_kwh"]
            p["readings"] += 1
            credits[b["provider_id"]].append((ev["stamp_height"], b["milli_kwh"]))
        elif topic == T.SETTLEMENTS:
            p["settled_milli_kwh"] += b["milli_kwh"]
            p["settled_amount"] += b["amount"]
            p["settlements"] += 1

    def since(pid: str, settled: int) -> int | None:  # FIFO: the oldest credit not settled
        total = 0
        for h, mkwh in sorted(credits[pid]):
            total += mkwh
            if total > settled:
                return h
        return None

    out = {pid: {**p, "provider_id": pid,
                 "unsettled_milli_kwh": p["credited_milli_kwh"] - p["settled_milli_kwh"],
                 "unsettled_since_height": since(pid, p["settled_milli_kwh"])}
           for pid, p in provs.items()}
    reg = [p for p in out.values() if p["registered"]]
    credited = sum(p["credited_milli_kwh"] for p in out.values())
    settled = sum(p["settled_milli_kwh"] for p in out.values())
    reg_credited = sum(p["credited_milli_kwh"] for p in reg)
    mean = sum(p["price_per_kwh"] for p in reg) // len(reg) if reg else 0
    average = (sum(p["price_per_kwh"] * p["credited_milli_kwh"] for p in reg) // reg_credited
               if reg_credited else mean)
    market = {"providers": len(reg), "credited_milli_kwh": credited, "traded_milli_kwh": settled,
              "settled_milli_kwh": settled, "unsettled_milli_kwh": credited - settled,
              "settled_amount": sum(p["settled_amount"] for p in out.values()),
              "average_price_per_kwh": average, "mean_price_per_kwh": mean,
              "total_stake": sum(p["stake"] for p in reg),
              "readings": sum(p["readings"] for p in out.values()),
              "settlements": sum(p["settlements"] for p in out.values())}
    return {"providers": out, "market": market}


def ref_parameters(g: Genesis, events: list[tuple[str, dict[str, Any]]], height: int) -> dict[str, int]:
    values = governance.genesis_values(g)
    changes = sorted((ev["seq"], ev) for t, ev in events if t == T.GOVERNANCE and ev["stamp_height"] <= height)
    for _, ev in changes:
        values[ev["body"]["parameter"]] = ev["body"]["value"]
    return values


def check_energy(txn: MemTxn, events: list[tuple[str, dict[str, Any]]], g: Genesis | None = None) -> None:
    """Now and as of every height: each provider, the market, every page and the parameters
    equal the reference computed from the events."""
    ref = ref_energy(events)
    assert energy.market(txn) == ref["market"]
    for pid, want in ref["providers"].items():
        assert energy.provider(txn, pid) == want
    ranked = sorted(ref["providers"].values(), key=lambda p: (-p["credited_milli_kwh"], p["provider_id"]))
    for limit in (1, 3, 100):  # most credited energy first, ties by id
        assert energy.providers(txn, limit=limit) == ranked[:limit]
        assert energy.settlement_counts(txn, limit) == [(p["provider_id"], p["settlements"]) for p in ranked[:limit]]
    top = max((ev.get("stamp_height", 0) for _, ev in events), default=0)
    for h in range(top + 2):
        at = ref_energy(events, h)
        assert energy.market(txn, h) == at["market"], h
        for pid in PIDS:
            assert energy.provider(txn, pid, h) == at["providers"].get(pid), (pid, h)
        for limit in (1, 2, 100):  # every page, each provider exactly once, in id order
            seen, after = [], None
            for _ in range(len(PIDS) + 1):
                rows = energy.page(txn, limit, after, h)
                seen += rows
                if len(rows) < limit:
                    break
                after = rows[-1]["provider_id"]
            assert seen == [at["providers"][pid] for pid in sorted(at["providers"])]
        if g is not None:
            params = energy.parameters(txn, g, h)
            assert {n: v["value"] for n, v in params.items()} == ref_parameters(g, events, h)
    assert energy.market(txn, top + 1) == ref["market"]  # the history ends where "now" is


# -- the module contract ------------------------------------------------------------------------
def test_registered_in_all_in_order() -> None:
    assert list(projections.ALL) == ["chainstate", "balances", "energy", "payouts"]
    assert energy.NAME == "energy" and energy.VERSION == 3
    assert set(energy.TOPICS) == {T.PROVIDERS, T.READINGS, T.SETTLEMENTS, T.GOVERNANCE}
    assert payouts.NAME == "payouts" and payouts.VERSION == 1
    assert set(payouts.TOPICS) == {T.SHARES, T.PAYOUTS, T.BLOCKS}


# -- payouts: hand-made scenarios ---------------------------------------------------------------
A, B, C = ADDRS[0], ADDRS[1], ADDRS[2]


def test_pplns_round_by_hand() -> None:
    g = genesis(window=3, fee_bps=100)
    events = [
        share(A, "rig1", 1, 100), share(B, "rig1", 1, 300),
        share(C, "rig1", 1, 1000, accepted=False),  # rejected: no weight
        block(1, POOL, fees=10),                    # R = 5010, D = 5010 - 50 = 4960
        block(2, OTHER, fees=99),                   # not the pool's: no round
        share(A, "rig-2", 3, 400),
        block(3, POOL),                             # R = 5000, D = 4950, window heights 1..3
        share(B, "rig1", 7, 5),                     # above every block: no round yet
    ]
    txn = run(payouts, g, [events])
    r1, r3 = payouts.round_info(txn, 1), payouts.round_info(txn, 3)
    assert r1 is not None and r3 is not None and payouts.round_info(txn, 2) is None
    assert r1["distributable"] == 4960 and r1["credits"] == {A: 1240, B: 3720}
    # round 3: A 500, B 300 of W = 800
    assert r3["distributable"] == 4950
    assert r3["credits"] == {A: 4950 * 500 // 800, B: 4950 * 300 // 800}
    a = payouts.worker(txn, A)
    assert a["credited"] == 1240 + 3093 and a["rigs"] == ["rig-2", "rig1"] and a["rounds"] == 2
    c = payouts.worker(txn, C)
    assert c["credited"] == 0 and c["rejected_shares"] == 1 and c["shares"] == 0
    assert payouts.pool(txn)["workers"] == 3 and payouts.pool(txn)["rounds"] == 2
    check_payouts(g, txn, events)


def test_late_share_recomputes_its_rounds() -> None:
    g = genesis(window=2, fee_bps=0)
    first = [share(A, "rig1", 1, 100), block(1, POOL), block(2, POOL), block(3, POOL)]
    txn = run(payouts, g, [first])
    assert payouts.worker(txn, A)["credited"] == 2 * REWARD  # rounds 1 and 2 (3 has W = 0)
    late = [share(B, "rig1", 2, 100)]  # after its rounds 2 and 3: both change, round 1 does not
    payouts.fold(g, late, txn)
    assert payouts.round_info(txn, 2)["credits"] == {A: REWARD // 2, B: REWARD // 2}
    assert payouts.round_info(txn, 3)["credits"] == {B: REWARD}
    assert payouts.worker(txn, A)["credited"] == REWARD + REWARD // 2
    assert payouts.worker(txn, A)["rounds"] == 2
    assert payouts.worker(txn, B)["credited"] == REWARD // 2 + REWARD
    check_payouts(g, txn, first + late)


def test_credit_that_rounds_to_zero_is_dropped() -> None:
    g = genesis(window=1, fee_bps=0)
    events = [share(A, "rig1", 1, 1), block(1, POOL)]
    txn = run(payouts, g, [events])
    assert payouts.round_info(txn, 1)["credits"] == {A: REWARD}
    more = [share(B, "rig1", 1, 10**6)]  # A's credit becomes 5000 * 1 // 1000001 = 0
    payouts.fold(g, more, txn)
    assert payouts.round_info(txn, 1)["credits"] == {B: REWARD * 10**6 // (10**6 + 1)}
    assert payouts.worker(txn, A)["credited"] == 0 and payouts.worker(txn, A)["rounds"] == 0
    check_payouts(g, txn, events + more)


def test_shares_below_height_one_count_in_early_windows() -> None:
    g = genesis(window=4, fee_bps=250)
    events = [share(A, "rig1", -2, 10), share(B, "rig1", 0, 30), share(C, "rig1", -5, 99),
              block(1, POOL)]  # window [-2, 1]: A and B only
    txn = run(payouts, g, [events])
    d = REWARD - REWARD * 250 // 10000
    assert payouts.round_info(txn, 1)["credits"] == {A: d * 10 // 40, B: d * 30 // 40}
    check_payouts(g, txn, events)


def test_payouts_pending_and_dashboard() -> None:
    g = genesis(window=3, fee_bps=100)
    events = [share(A, "rig1", 1, 1), share(B, "rig1", 1, 3), block(1, POOL),
              payout("p1", A, 1000, 1), payout("p2", B, 3000, 1), payout("p3", B, 500, 1),
              payout("p4", C, 7, 1)]  # C never mined: pending goes negative, still reported
    txn = run(payouts, g, [events])
    a = payouts.worker(txn, A)
    assert (a["address"], a["credited"], a["paid"], a["pending"]) == (A, 1237, 1000, 237)
    assert payouts.worker(txn, B)["pending"] == 3712 - 3500
    assert payouts.worker(txn, C)["pending"] == -7
    nobody = payouts.worker(txn, "9" * 40)
    assert (nobody["credited"], nobody["paid"], nobody["pending"]) == (0, 0, 0)
    pool = payouts.pool(txn)
    assert pool["credited"] == 4949 and pool["paid"] == 4507 and pool["pending"] == 442
    assert pool["workers"] == 2 and pool["shares"] == 2 and pool["rounds"] == 1
    assert [w["address"] for w in payouts.workers(txn, 2)] == [A, B]
    assert payouts.round_info(txn, 1)["paid"] == 4507
    check_payouts(g, txn, events)


# -- energy: hand-made scenarios ----------------------------------------------------------------
def test_energy_by_hand_readings_before_registration() -> None:
    early = [reading("solar-1", 1500, 1), reading("solar-1", 500, 2)]
    txn = run(energy, genesis(), [early])
    p = energy.provider(txn, "solar-1")
    assert p is not None and not p["registered"] and p["owner"] is None
    assert p["credited_milli_kwh"] == 2000 and energy.market(txn)["providers"] == 0
    assert energy.market(txn)["average_price_per_kwh"] == 0
    rest = [provider("solar-1", A, 10**6, 120, stamp=4), provider("wind-2", B, 2 * 10**6, 91),
            settlement("s1", "solar-1", 1200, 144, A, stamp=5), reading("wind-2", 10, 3)]
    energy.fold(genesis(), rest, txn)
    p = energy.provider(txn, "solar-1")
    assert p == {"provider_id": "solar-1", "registered": True, "owner": A, "meter_id": "m-solar-1",
                 "stake": 10**6, "price_per_kwh": 120, "registered_height": 4,
                 "credited_milli_kwh": 2000, "settled_milli_kwh": 1200, "unsettled_milli_kwh": 800,
                 "settled_amount": 144, "readings": 2, "settlements": 1, "unsettled_since_height": 0}
    m = energy.market(txn)
    # weighted by credited energy: (120 * 2000 + 91 * 10) // 2010; the plain mean beside it
    assert m["providers"] == 2 and m["average_price_per_kwh"] == 240910 // 2010 == 119
    assert m["mean_price_per_kwh"] == (120 + 91) // 2
    assert m["traded_milli_kwh"] == 1200 and m["credited_milli_kwh"] == 2010
    assert m["settled_amount"] == 144 and m["total_stake"] == 3 * 10**6
    assert energy.provider(txn, "nobody") is None
    assert [p["provider_id"] for p in energy.providers(txn, 1)] == ["solar-1"]
    check_energy(txn, early + rest)


def test_energy_history_fifo_and_average_by_hand() -> None:
    g = genesis()
    events = [provider("solar-1", A, 10**6, 100, stamp=1), provider("wind-2", B, 10**6, 300, stamp=1),
              reading("solar-1", 1000, 1, stamp=2), reading("solar-1", 500, 2, stamp=4),
              reading("wind-2", 3000, 3, stamp=4), settlement("s1", "solar-1", 1200, 120, A, stamp=6)]
    txn = run(energy, g, [events])
    assert energy.market(txn, 0) == {**energy.market(txn, 0), "providers": 0, "average_price_per_kwh": 0}
    at1 = energy.market(txn, 1)
    assert at1["providers"] == 2 and at1["average_price_per_kwh"] == 200  # nothing credited: the mean
    assert energy.market(txn, 2)["average_price_per_kwh"] == 100  # only solar-1 has energy
    assert energy.market(txn, 4)["average_price_per_kwh"] == (100 * 1500 + 300 * 3000) // 4500 == 233
    solar = energy.provider(txn, "solar-1", 5)
    assert solar is not None and solar["unsettled_milli_kwh"] == 1500 and solar["unsettled_since_height"] == 2
    solar = energy.provider(txn, "solar-1")  # 1200 settled: the first reading (height 2) is paid
    assert solar is not None and solar["unsettled_milli_kwh"] == 300 and solar["unsettled_since_height"] == 4
    assert energy.provider(txn, "solar-1", 0) is None  # nothing of it by height 0
    assert energy.last_settlement_height(txn) == 6
    check_energy(txn, events, g)


def test_market_totals_beyond_64_bits_are_exact() -> None:
    big = (1 << 63) - 1
    events = [provider("solar-1", A, 10**6, big, stamp=1), provider("wind-2", B, 10**6, big - 1, stamp=1)]
    events += [reading(pid, big, ts, stamp=2) for ts, pid in enumerate(("solar-1", "wind-2", "solar-1"))]
    txn = run(energy, genesis(), [events])
    m = energy.market(txn)
    assert m["credited_milli_kwh"] == 3 * big
    assert m["average_price_per_kwh"] == (big * 2 * big + (big - 1) * big) // (3 * big)
    assert energy.market(txn, 2) == m
    check_energy(txn, events)


def test_governance_values_by_height() -> None:
    g = genesis()
    events = [change("min_stake", 500, 1, 3), change("min_stake", 700, 2, 3),
              change("max_price_per_kwh", 90, 3, 5)]
    txn = MemTxn()
    energy.initial(g, txn)
    for ev in reversed(events):  # any order: the seq decides within a height
        energy.fold(g, [ev], txn)
    before = energy.parameters(txn, g, 2)
    assert before["min_stake"] == {"value": 1, "since_height": 0, "change_id": None, "seq": None}
    assert before["max_price_per_kwh"]["value"] == governance.I64_MAX
    at3 = energy.parameters(txn, g, 3)["min_stake"]
    assert (at3["value"], at3["since_height"], at3["seq"]) == (700, 3, 2)
    assert energy.parameters(txn, g, 4)["max_price_per_kwh"]["value"] == governance.I64_MAX
    assert energy.parameters(txn, g)["max_price_per_kwh"]["value"] == 90
    check_energy(txn, events, g)


# -- commutativity: any interleaving and any batching gives the same bytes -----------------------
@st.composite
def scenarios(draw: Any) -> tuple[Genesis, list[tuple[str, dict[str, Any]]]]:
    g = genesis(window=draw(st.integers(1, 5)),
                fee_bps=draw(st.sampled_from([0, 1, 100, 333, 9999, 10000])))
    n = draw(st.integers(0, 10))
    events = [block(h, draw(st.sampled_from([POOL, POOL, OTHER])), draw(st.integers(0, 50)))
              for h in range(1, n + 1)]
    for i in range(draw(st.integers(0, 30))):
        events.append(share(draw(st.sampled_from(ADDRS)), draw(st.sampled_from(RIGS)),
                            draw(st.integers(-2, n + 3)), draw(st.integers(1, 10**6)),
                            draw(st.booleans()), stamp=draw(st.integers(0, n)), ts=i))
    for i in range(draw(st.integers(0, 5))):
        events.append(payout(f"p{i}", draw(st.sampled_from(ADDRS)), draw(st.integers(1, 2000)),
                             draw(st.integers(1, max(n, 1)))))
    registered = draw(st.lists(st.sampled_from(PIDS), unique=True))
    for i, pid in enumerate(registered):
        events.append(provider(pid, ADDRS[i], draw(st.integers(1, 10**7)),
                               draw(st.integers(1, 500)), stamp=draw(st.integers(0, n))))
    for pid in draw(st.lists(st.sampled_from(registered), max_size=2) if registered else st.just([])):
        events.append(provider(pid, draw(st.sampled_from(ADDRS)), draw(st.integers(1, 10**7)),
                               draw(st.integers(1, 500)), stamp=draw(st.integers(0, n))))
    for i in range(draw(st.integers(0, 12))):
        pid = draw(st.sampled_from(PIDS))
        stamp = draw(st.integers(0, n))
        if draw(st.booleans()):
            events.append(reading(pid, draw(st.integers(1, 10**5)), ts=i, stamp=stamp))
        else:
            mkwh = draw(st.integers(1, 10**4))
            events.append(settlement(f"s{i}", pid, mkwh, mkwh * 7 // 1000, ADDRS[0], stamp=stamp))
    stamps = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    for seq, stamp in enumerate(stamps, 1):  # seqs follow stamps, as admission makes them
        events.append(change(draw(st.sampled_from(sorted(governance.PARAMETERS))),
                             draw(st.integers(1, 10**6)), seq, stamp))
    return g, events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_any_order_and_batching_gives_identical_state(scn: Any, data: Any) -> None:
    g, events = scn
    shuffled = data.draw(st.permutations(events))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=8)))
    bounds = [0, *cuts, len(events)]
    batches = [shuffled[a:b] for a, b in itertools.pairwise(bounds)]
    states = {}
    for module in (energy, payouts):
        want = run(module, g, [events])
        got = run(module, g, batches)
        assert got.d == want.d, module.NAME
        singles = run(module, g, [[e] for e in reversed(events)])
        assert singles.d == want.d, module.NAME
        states[module.NAME] = got
    check_energy(states["energy"], events, g)
    check_payouts(g, states["payouts"], events)
    for key, _ in states["payouts"].items(b"r/"):
        entry = payouts.round_info(states["payouts"], int.from_bytes(key[2:], "big"))
        assert entry is not None and entry["credited"] <= entry["distributable"]
