"""A deterministic generator of valid ledgerlog histories (PROTOCOL.md §2-§6).

Independent of any simulator: a seed gives a genesis and its keys (``make_genesis``, from
``ops.histkeys``), and ``generate`` streams JSONL ingest lines (orjson bytes, no newline) in
admission order that the admission rules accept: blocks carrying signed transfers (some first
submitted to the mempool, later included verbatim), pool shares (some arriving late, mined
below the tip), provider registrations, oracle readings, treasury settlements and pool payouts.

The generator keeps a plain model of the write side (balances, nonces, mempool, providers, pool
rounds), O(accounts + providers + window) in size; lines are streamed, never collected. With
``invalid_every=N`` every Nth line (line numbers N, 2N, ... counted from 1) is invalid instead
(MALFORMED, BAD_SIGNATURE, BAD_NONCE, or a byte-identical repeat of an earlier line, which is a
DUPLICATE); the valid lines are the same kind of stream and the model never sees the invalid ones.

Same arguments -> byte-identical output. Signing dominates the cost; bodies are encoded by
``engine.avro.encode`` (exported here as ``encode_body``, the canonical bytes of a body).

Used by tests, the crash test and the benchmarks; the CLI wires it as ``ledgerlog generate``.
"""
from __future__ import annotations

import os
import random
from bisect import bisect
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import IO, Any

import orjson

from ledgerlog.engine.avro import encode as encode_body
from ledgerlog.engine.crypto import H, h_bytes, tx_root
from ledgerlog.engine.signing import Signer
from ledgerlog.ops.devtools.histkeys import (
    Keys,
    derive_signer,
    genesis_hash,
    make_genesis,
    write_genesis,
)

__all__ = [
    "DEFAULT_MIX",
    "INVALID_KINDS",
    "HistoryGenerator",
    "HistoryStats",
    "Keys",
    "derive_signer",
    "encode_body",
    "generate",
    "genesis_hash",
    "make_genesis",
    "write_genesis",
    "write_history",
]

#: Relative weights of what each step of the generator produces. Blocks are not in the mix: one is
#: sealed whenever enough transactions wait for it (about ``block_txs`` on average).
DEFAULT_MIX: dict[str, float] = {
    "transaction": 70.0,  # a transfer signed now, confirmed in the next block
    "mempool": 10.0,      # a transfer submitted as a `transaction` line, confirmed in a later block
    "share": 12.0,        # a pool share (some late: mined height below the tip)
    "provider": 0.6,      # an energy provider registration (stake from a funded wallet)
    "reading": 4.0,       # an oracle reading for a registered provider
    "settlement": 1.6,    # a treasury settlement of unsettled energy
    "payout": 2.0,        # a pool payout for a matured pool round
}
INVALID_KINDS = ("malformed", "bad_signature", "bad_nonce", "duplicate")

#: What a step returns when it cannot make its kind of line in the current state (a step that
#: made no line yet, e.g. a transfer waiting for its block, returns None).
NOT_NOW: Any = object()
_DIFFICULTIES = (256, 512, 1024, 2048, 4096, 8192)
_MAX_BLOCK_TXS = 10_000
_I64 = (1 << 63) - 1


# -- the generator ----------------------------------------------------------------------------
@dataclass
class HistoryStats:
    """What a generated history holds. ``events`` counts log events of the valid lines (a block
    with k transactions is k + 1; a mempool submission is one, its confirmation another)."""

    lines: int = 0
    valid_lines: int = 0
    invalid_lines: int = 0
    events: int = 0
    blocks: int = 0
    pool_blocks: int = 0
    confirmed_txs: int = 0
    mempool_txs: int = 0
    shares: int = 0
    late_shares: int = 0
    providers: int = 0
    readings: int = 0
    settlements: int = 0
    payouts: int = 0
    invalid: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "invalid"}
        d["invalid"] = dict(sorted(self.invalid.items()))
        return d


class _Tx:
    __slots__ = ("amount", "cost", "fee", "nonce", "rec", "recipient", "sender", "txid")

    def __init__(self, sender: str, recipient: str, amount: int, fee: int, nonce: int, txid: str,
                 rec: dict[str, Any]) -> None:
        self.sender, self.recipient, self.amount, self.fee = sender, recipient, amount, fee
        self.cost, self.nonce, self.txid, self.rec = amount + fee, nonce, txid, rec


class HistoryGenerator:
    """Iterator over the ingest lines of one history; ``stats`` fills in as lines are produced.

    Options (all keyword): ``mix`` (weights, see DEFAULT_MIX; missing kinds weigh 0),
    ``block_txs`` (mean transactions per block), ``max_late`` (how many blocks below the next
    height a late share may be mined; shares are otherwise mined at tip + 1), ``rigs`` (per
    miner), ``miners`` (how many wallets also mine), ``late_share_ratio``, ``rejected_share_ratio``
    (shares with accepted=false), ``mempool_carry`` (chance a mempool tx waits past the next
    block), ``non_pool_block_ratio`` (only with extra producers), ``dup_window`` (how many recent
    lines a duplicate may repeat), ``step_ms`` (max clock advance per line)."""

    def __init__(self, genesis: Mapping[str, Any], keys: Keys, *, events: int, seed: int,
                 invalid_every: int = 0, mix: Mapping[str, float] | None = None, block_txs: int = 20,
                 max_late: int = 3, rigs: int = 3, miners: int = 6, late_share_ratio: float = 0.2,
                 rejected_share_ratio: float = 0.05, mempool_carry: float = 0.3,
                 non_pool_block_ratio: float = 0.25, dup_window: int = 64, step_ms: int = 2000) -> None:
        if events < 0 or invalid_every < 0 or block_txs < 1 or max_late < 0 or step_ms < 1:
            raise ValueError("events, invalid_every, max_late >= 0; block_txs, step_ms >= 1")
        self.g = genesis
        self.keys = keys
        self.target_events = events
        self.invalid_every = invalid_every
        self.rng = random.Random(f"ledgerlog-histgen/{seed}")
        self._rand = self.rng.random
        self.block_txs = block_txs
        self.max_late = max_late
        self.late_share_ratio = late_share_ratio
        self.rejected_share_ratio = rejected_share_ratio
        self.mempool_carry = mempool_carry
        self.non_pool_block_ratio = non_pool_block_ratio if len(keys.producers) > 1 else 0.0
        self.step_ms = step_ms
        self.stats = HistoryStats()

        weights = dict(DEFAULT_MIX if mix is None else {k: 0.0 for k in DEFAULT_MIX})
        if mix is not None:
            unknown = set(mix) - set(DEFAULT_MIX)
            if unknown:
                raise ValueError(f"unknown mix kinds: {sorted(unknown)}")
            weights.update(mix)
        if weights["transaction"] + weights["mempool"] <= 0:
            raise ValueError("the mix needs transactions (blocks are sealed from them)")
        self._kinds = [k for k, w in weights.items() if w > 0]
        self._cum = list(accumulate(weights[k] for k in self._kinds))

        self.chain_id: str = genesis["chain_id"]
        self.reward: int = genesis["block_reward"]
        self.min_fee: int = genesis["min_fee"]
        self.fee_bps: int = genesis["pool"]["fee_bps"]
        self.window: int = genesis["pool"]["window_blocks"]
        self.pool: str = genesis["pool"]["address"]
        self.treasury: str = genesis["energy"]["treasury"]
        self.min_stake: int = genesis["energy"]["min_stake"]
        if keys.pool.address != self.pool or keys.treasury.address != self.treasury:
            raise ValueError("keys do not match the genesis")

        # model of the write side
        self.bal: dict[str, int] = {}
        self.staked: dict[str, int] = {}
        self.nonce: dict[str, int] = {}
        for addr, amount in genesis["allocations"].items():
            self.bal[addr] = amount
        self.reserved: dict[str, int] = {}   # costs of mempool + this block's fresh txs, by sender
        self.queued: Counter[str] = Counter()  # mempool txs not yet confirmed, by sender
        self.fresh_n: Counter[str] = Counter()  # fresh txs in the block being built, by sender
        self.mempool: deque[_Tx] = deque()
        self.fresh: list[_Tx] = []
        self.height = 0
        self.tip_hash = genesis_hash(genesis)
        self.clock: int = genesis["timestamp"]
        self.block_target = self._next_block_target()
        # [id, meter, owner, price, credited, settled, listed in self.unsettled]
        self.providers: list[list[Any]] = []
        self.unsettled: list[int] = []  # indexes into providers that may have energy to settle
        self.n_settlement = self.n_payout = self.n_share = 0
        # pool: accepted share weight by mined height, rounds awaiting maturity, payouts to make
        self.weights: dict[int, dict[str, int]] = {}
        self.rounds: deque[tuple[int, int]] = deque()  # (height, reward + fees) of pool blocks
        self.round_paid: dict[int, int] = {}
        self.payouts: deque[tuple[int, str, int, int]] = deque()  # (round, address, amount, cap)
        self.max_payout_queue = 4096

        self.wallets = keys.wallets
        self.n_wallets = len(keys.wallets)
        self.miners = [w.address for w in keys.wallets[:max(1, min(miners, self.n_wallets))]]
        self.rigs = [f"rig-{i}" for i in range(max(1, rigs))]
        self.recent: deque[bytes] = deque(maxlen=max(1, dup_window))
        self._it = self._run()

    # -- iterator protocol ------------------------------------------------------------------
    def __iter__(self) -> HistoryGenerator:
        return self

    def __next__(self) -> bytes:
        return next(self._it)

    def accounts(self) -> dict[str, tuple[int, int, int]]:
        """The model's confirmed accounts: address -> (balance, staked, nonce), as the write side
        stores them (valid after the iterator is exhausted, or at any line boundary)."""
        addrs = {*self.bal, *self.staked, *self.nonce}
        return {a: (self.bal.get(a, 0), self.staked.get(a, 0), self.nonce.get(a, 0)) for a in sorted(addrs)}

    # -- main loop ----------------------------------------------------------------------------
    def _run(self) -> Iterator[bytes]:
        rng = self.rng
        kinds, cum, total = self._kinds, self._cum, self._cum[-1]
        handlers = {k: getattr(self, f"_step_{k}") for k in DEFAULT_MIX}
        st = self.stats
        every = self.invalid_every
        while st.events < self.target_events or self.fresh:
            if every and (st.lines + 1) % every == 0:
                # built from the model as it stands: every valid line so far has been yielded
                st.lines += 1
                st.invalid_lines += 1
                yield self._invalid()
            if len(self.fresh) + len(self.mempool) >= self.block_target or st.events >= self.target_events:
                line: bytes | None = self._block()  # the last block seals the remaining fresh txs
            else:
                kind = kinds[bisect(cum, rng.random() * total)]
                line = handlers[kind]()
                if line is NOT_NOW:  # no funds, no provider, nothing to pay, ...: a transfer instead
                    line = self._step_transaction()
                    if line is NOT_NOW:
                        line = self._step_mempool()
                        if line is NOT_NOW:
                            line = self._block()
            if line is not None:
                st.lines += 1
                st.valid_lines += 1
                self.recent.append(line)
                yield line

    # random draws: from Random.random() only (deterministic, and much cheaper than randrange)
    def _below(self, n: int) -> int:
        """Uniform in [0, n)."""
        return min(int(self._rand() * n), n - 1)

    def _int(self, a: int, b: int) -> int:
        """Uniform in [a, b]."""
        return a + min(int(self._rand() * (b - a + 1)), b - a)

    def _tick(self) -> int:
        self.clock += 1 + int(self._rand() * self.step_ms)
        return self.clock

    def _next_block_target(self) -> int:
        return self._int(0, 2 * self.block_txs)

    # -- transfers --------------------------------------------------------------------------
    def _sign(self, name: str, signer: Signer, body: dict[str, Any]) -> tuple[bytes, str]:
        data = encode_body(name, body)
        return h_bytes(data), signer.key.sign(data).signature.hex()

    def _pick_sender(self, *, for_mempool: bool) -> Signer | None:
        rand, wallets, n = self._rand, self.wallets, self.n_wallets
        busy = self.fresh_n if for_mempool else self.queued  # a sender is in one or the other
        least = 2 * self.min_fee + 80
        for _ in range(8):
            w = wallets[int(rand() * n)]
            a = w.address
            if busy[a]:
                continue
            if self.bal.get(a, 0) - self.reserved.get(a, 0) >= least:
                return w
        return None

    def _new_tx(self, sender: Signer, nonce: int) -> _Tx:
        rand = self._rand
        a = sender.address
        spendable = self.bal.get(a, 0) - self.reserved.get(a, 0)
        fee = self.min_fee + (int(rand() * self.min_fee) if rand() < 0.3 else 0)
        amount = self._int(1, max(1, (spendable - fee) // 40))
        recipient = self.wallets[int(rand() * self.n_wallets)].address
        ts = self._tick()
        memo = "" if rand() < 0.7 else f"m{self.stats.lines}"
        body = {"chain_id": self.chain_id, "sender": a, "recipient": recipient, "amount": amount,
                "fee": fee, "nonce": nonce, "timestamp": ts, "memo": memo}
        data = encode_body("TransactionBody", body)
        sig = sender.key.sign(data).signature.hex()
        self.reserved[a] = self.reserved.get(a, 0) + amount + fee
        return _Tx(a, recipient, amount, fee, nonce, H(data),
                   {"body": body, "pubkey": sender.pubkey, "signature": sig})

    def _step_transaction(self) -> Any:
        if len(self.fresh) + len(self.mempool) >= _MAX_BLOCK_TXS:
            return NOT_NOW
        sender = self._pick_sender(for_mempool=False)
        if sender is None:
            return NOT_NOW
        a = sender.address
        tx = self._new_tx(sender, self.nonce.get(a, 0) + self.fresh_n[a] + 1)
        self.fresh_n[a] += 1
        self.fresh.append(tx)
        self.stats.events += 1  # its confirmation, emitted with the block
        return None  # the block is sealed by the main loop

    def _step_mempool(self) -> Any:
        sender = self._pick_sender(for_mempool=True)
        if sender is None:
            return NOT_NOW
        a = sender.address
        tx = self._new_tx(sender, self.nonce.get(a, 0) + self.queued[a] + 1)
        self.queued[a] += 1
        self.mempool.append(tx)
        self.stats.mempool_txs += 1
        self.stats.events += 1  # the submission; its confirmation counts with its block
        return orjson.dumps({"type": "transaction", **tx.rec})

    # -- blocks -----------------------------------------------------------------------------
    def _block(self) -> bytes:
        rng = self.rng
        # mempool txs first (a FIFO prefix: per sender a nonce-ordered prefix), then fresh ones
        take = len(self.mempool)
        if take and rng.random() < self.mempool_carry:
            take = self._int(0, take)
        take = min(take, _MAX_BLOCK_TXS - len(self.fresh))
        txs = [self.mempool.popleft() for _ in range(take)]
        txs.extend(self.fresh)
        self.fresh = []
        self.fresh_n.clear()

        if self.non_pool_block_ratio and rng.random() < self.non_pool_block_ratio:
            producer = self.keys.producers[1 + self._below(len(self.keys.producers) - 1)]
        else:
            producer = self.keys.producer
        height = self.height + 1
        fees = 0
        bal, nonce, reserved, queued = self.bal, self.nonce, self.reserved, self.queued
        for i, tx in enumerate(txs):
            s = tx.sender
            bal[s] -= tx.cost
            if bal[s] < 0:
                raise AssertionError(f"histgen model: {s} overdrawn at height {height}")
            reserved[s] -= tx.cost
            bal[tx.recipient] = bal.get(tx.recipient, 0) + tx.amount
            nonce[s] = tx.nonce
            fees += tx.fee
            if i < take:
                queued[s] -= 1
        bal[producer.address] = bal.get(producer.address, 0) + self.reward + fees
        header = {"chain_id": self.chain_id, "height": height, "prev_hash": self.tip_hash,
                  "timestamp": self._tick(), "producer": producer.address,
                  "tx_root": tx_root([t.txid for t in txs]), "tx_count": len(txs)}
        block_hash, sig = self._sign("BlockHeader", producer, header)
        line = orjson.dumps({"type": "block", "header": header, "pubkey": producer.pubkey,
                             "signature": sig, "transactions": [t.rec for t in txs]})
        self.height = height
        self.tip_hash = block_hash.hex()
        st = self.stats
        st.blocks += 1
        st.confirmed_txs += len(txs)
        st.events += 1 + take  # fresh confirmations were counted when signed
        if producer.address == self.pool:
            st.pool_blocks += 1
            self.rounds.append((height, self.reward + fees))
        self._mature_rounds()
        self.block_target = self._next_block_target()
        return line

    # -- pool ---------------------------------------------------------------------------------
    def _step_share(self) -> Any:
        rng = self.rng
        next_h = self.height + 1
        late = self.max_late and self.height >= 1 and rng.random() < self.late_share_ratio
        h = max(1, next_h - self._int(1, self.max_late)) if late else next_h
        address = self.miners[self._below(len(self.miners))]
        difficulty = _DIFFICULTIES[self._below(len(_DIFFICULTIES))]
        accepted = rng.random() >= self.rejected_share_ratio
        self.n_share += 1
        obj = {"type": "share", "worker": f"{address}.{self.rigs[self._below(len(self.rigs))]}",
               "job_id": f"j{h}-{self.n_share}", "height": h, "difficulty": difficulty,
               "accepted": accepted, "timestamp": self._tick()}
        if accepted:
            w = self.weights.setdefault(h, {})
            w[address] = w.get(address, 0) + difficulty
        st = self.stats
        st.shares += 1
        st.late_shares += h <= self.height
        st.events += 1
        return orjson.dumps(obj)

    def _mature_rounds(self) -> None:
        """Rounds no future share can still change (every later share is mined above them) get
        their PPLNS credits queued as payouts; share weights below every open window are dropped."""
        lowest_future = self.height + 1 - self.max_late
        while self.rounds and self.rounds[0][0] < lowest_future:
            h, r = self.rounds.popleft()
            d = r - r * self.fee_bps // 10000
            window: dict[str, int] = {}
            for sh in range(max(1, h - self.window + 1), h + 1):
                for a, w in self.weights.get(sh, {}).items():
                    window[a] = window.get(a, 0) + w
            total = sum(window.values())
            if not total:
                continue
            for a, w in window.items():
                credit = d * w // total
                if credit > 0 and len(self.payouts) < self.max_payout_queue:
                    self.payouts.append((h, a, credit, r))
        keep_from = (self.rounds[0][0] if self.rounds else lowest_future) - self.window + 1
        for sh in [sh for sh in self.weights if sh < keep_from]:
            del self.weights[sh]

    def _step_payout(self) -> Any:
        if not self.payouts:
            return NOT_NOW
        h, address, amount, cap = self.payouts[0]
        if self.bal.get(self.pool, 0) < amount:  # cannot happen: a round's reward stays on the pool
            return NOT_NOW
        self.payouts.popleft()
        paid = self.round_paid.get(h, 0) + amount
        if paid > cap:  # cannot happen: credits of a round sum to at most D <= reward + fees
            raise AssertionError(f"histgen model: round {h} overpaid")
        self.round_paid[h] = paid
        self.n_payout += 1
        body = {"chain_id": self.chain_id, "payout_id": f"po-{self.n_payout:07d}", "address": address,
                "amount": amount, "round_height": h, "timestamp": self._tick()}
        _, sig = self._sign("PayoutBody", self.keys.pool, body)
        self.bal[self.pool] -= amount
        self.bal[address] = self.bal.get(address, 0) + amount
        self.stats.payouts += 1
        self.stats.events += 1
        if not self.payouts or self.payouts[0][0] != h:
            self.round_paid.pop(h, None)  # the round is paid out; keep the model small
        return orjson.dumps({"type": "payout", "body": body, "pubkey": self.keys.pool.pubkey,
                              "signature": sig})

    # -- energy -------------------------------------------------------------------------------
    def _step_provider(self) -> Any:
        stake = self.min_stake * self._int(1, 5)
        owner = None
        for _ in range(8):
            w = self.wallets[self._below(self.n_wallets)]
            if self.bal.get(w.address, 0) - self.reserved.get(w.address, 0) >= stake:
                owner = w
                break
        if owner is None:
            return NOT_NOW
        n = len(self.providers)
        pid, meter = f"prov-{n:06d}", f"meter-{n:06d}"
        price = self._int(50, 5000)
        body = {"chain_id": self.chain_id, "provider_id": pid, "owner": owner.address, "meter_id": meter,
                "stake": stake, "price_per_kwh": price, "timestamp": self._tick()}
        _, sig = self._sign("ProviderBody", owner, body)
        a = owner.address
        self.bal[a] -= stake
        self.staked[a] = self.staked.get(a, 0) + stake
        self.providers.append([pid, meter, a, price, 0, 0, False])
        self.stats.providers += 1
        self.stats.events += 1
        return orjson.dumps({"type": "provider", "body": body, "pubkey": owner.pubkey, "signature": sig})

    def _step_reading(self) -> Any:
        if not self.providers:
            return self._step_provider()
        i = self._below(len(self.providers))
        p = self.providers[i]
        kwh = self._int(1, 50_000)
        body = {"chain_id": self.chain_id, "meter_id": p[1], "provider_id": p[0], "milli_kwh": kwh,
                "timestamp": self._tick()}
        _, sig = self._sign("ReadingBody", self.keys.oracle, body)
        if not p[6]:
            p[6] = True
            self.unsettled.append(i)
        p[4] += kwh
        self.stats.readings += 1
        self.stats.events += 1
        return orjson.dumps({"type": "reading", "body": body, "pubkey": self.keys.oracle.pubkey,
                              "signature": sig})

    def _step_settlement(self) -> Any:
        rng = self.rng
        while self.unsettled:
            j = self._below(len(self.unsettled))
            p = self.providers[self.unsettled[j]]
            unsettled, price = p[4] - p[5], p[3]
            least = -(-1000 // price)  # smallest milli_kwh worth a positive amount
            if unsettled < least:  # back in the list with its next reading
                p[6] = False
                self.unsettled[j] = self.unsettled[-1]
                self.unsettled.pop()
                continue
            kwh = unsettled if rng.random() < 0.5 else self._int(least, unsettled)
            amount = kwh * price // 1000
            if self.bal.get(self.treasury, 0) < amount:
                return NOT_NOW
            self.n_settlement += 1
            body = {"chain_id": self.chain_id, "settlement_id": f"set-{self.n_settlement:07d}",
                    "provider_id": p[0], "milli_kwh": kwh, "amount": amount, "timestamp": self._tick()}
            _, sig = self._sign("SettlementBody", self.keys.treasury, body)
            p[5] += kwh
            self.bal[self.treasury] -= amount
            self.bal[p[2]] = self.bal.get(p[2], 0) + amount
            if p[4] == p[5]:
                p[6] = False
                self.unsettled[j] = self.unsettled[-1]
                self.unsettled.pop()
            self.stats.settlements += 1
            self.stats.events += 1
            return orjson.dumps({"type": "settlement", "body": body, "pubkey": self.keys.treasury.pubkey,
                                  "signature": sig})
        return self._step_reading()

    # -- invalid lines ------------------------------------------------------------------------
    def _invalid(self) -> bytes:
        """A line the rules refuse (or count as a duplicate); it changes nothing in the model."""
        rng = self.rng
        kind = INVALID_KINDS[self._below(len(INVALID_KINDS))]
        if kind == "duplicate" and not self.recent:
            kind = "malformed"
        self.stats.invalid[kind] += 1
        if kind == "duplicate":
            return self.recent[self._below(len(self.recent))]
        w = self.wallets[self._below(self.n_wallets)]
        a = w.address
        expected = self.nonce.get(a, 0) + self.queued[a] + 1  # what the write side expects
        body = {"chain_id": self.chain_id, "sender": a,
                "recipient": self.wallets[self._below(self.n_wallets)].address,
                "amount": self._int(1, 10**6), "fee": self.min_fee, "nonce": expected,
                "timestamp": self.clock, "memo": f"invalid-{kind}-{self.stats.lines}"}
        if kind == "malformed":
            variant = self._below(4)
            if variant == 0:  # truncated JSON
                full = orjson.dumps({"type": "transaction", "body": body, "pubkey": w.pubkey,
                                     "signature": "00" * 64})
                return full[:self._int(1, len(full) - 1)]
            if variant == 1:  # an unknown field
                return orjson.dumps({"type": "transaction", "body": {**body, "extra": 1},
                                     "pubkey": w.pubkey, "signature": "00" * 64})
            if variant == 2:  # a worker name that is not <address>.<rig>
                return orjson.dumps({"type": "share", "worker": f"{a}.bad rig!", "job_id": "x",
                                     "height": self.height + 1, "difficulty": 1024, "accepted": True,
                                     "timestamp": self.clock})
            return orjson.dumps({"type": "bogus", "body": body})  # unknown type
        if kind == "bad_signature":  # random bytes as the signature: verifies with no key
            sig = rng.getrandbits(512).to_bytes(64, "big").hex()
            return orjson.dumps({"type": "transaction", "body": body, "pubkey": w.pubkey, "signature": sig})
        body["nonce"] = expected + self._int(1, 3)  # bad_nonce: a gap
        _, sig = self._sign("TransactionBody", w, body)
        return orjson.dumps({"type": "transaction", "body": body, "pubkey": w.pubkey, "signature": sig})


# -- convenience ------------------------------------------------------------------------------
def generate(genesis: Mapping[str, Any], keys: Keys, *, events: int, seed: int, invalid_every: int = 0,
             **options: Any) -> HistoryGenerator:
    """Ingest lines (orjson bytes, no newline) of a valid history, in admission order.

    Returns a ``HistoryGenerator`` (an iterator of bytes) whose ``stats`` and ``accounts()``
    describe what was produced so far. See ``HistoryGenerator`` for ``options``."""
    return HistoryGenerator(genesis, keys, events=events, seed=seed, invalid_every=invalid_every, **options)


def write_history(path: str | os.PathLike[str] | IO[bytes], genesis: Mapping[str, Any], keys: Keys, *,
                  events: int, seed: int, invalid_every: int = 0,
                  progress: Callable[[int], None] | None = None, **options: Any) -> HistoryStats:
    """Write a generated history as JSONL to ``path`` (or a binary file object); returns its stats.
    ``progress`` is told of the events written, a batch of lines at a time."""
    gen = generate(genesis, keys, events=events, seed=seed, invalid_every=invalid_every, **options)
    told = [0]

    def write(f: IO[bytes], buf: list[bytes]) -> None:
        if buf:
            buf.append(b"")
            f.write(b"\n".join(buf))
            buf.clear()
        if progress is not None:
            progress(gen.stats.events - told[0])
            told[0] = gen.stats.events

    def dump(f: IO[bytes]) -> None:
        buf: list[bytes] = []
        for line in gen:
            buf.append(line)
            if len(buf) >= 1024:
                write(f, buf)
        write(f, buf)

    if hasattr(path, "write"):
        dump(path)  # type: ignore[arg-type]
    else:
        with open(path, "wb") as f:  # type: ignore[arg-type]
            dump(f)
    return gen.stats
