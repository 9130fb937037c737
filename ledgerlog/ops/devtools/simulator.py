"""The live workload of ``ledgerlog run --simulate``: a block producer, wallets, a mining pool,
energy providers, an oracle and a treasury, all acting through admission like any other input.

Every tick reads the *committed* write-side state (``state()``), builds signed lines with
``engine.signing`` and hands them to ``submit`` (the admitter: returns once durable). Nothing is
trusted locally for long: nonces and spendable balances are tracked between blocks and re-read
from the state after every block and every rejection, so a rejected line costs one resync, never a
crash. Per-tick work and memory are bounded (wallet count, per-tick caps, a bounded mempool scan).

- **Blocks**: every ``block_interval`` the producer key packs committed mempool transactions,
  ordered by (sender, nonce), nonce-contiguous and affordable in sequence, at most 2,000.
- **Wallets**: derived from the seed; the faucet key funds (and tops up) them with transactions;
  they send transfers to each other as mempool ``transaction`` lines.
- **Mining pool**: some wallets are miners with 2-3 rigs; they send ``share`` lines mined at
  tip + 1. When ``pool_pending()`` shows an address at or over the payout threshold, the pool
  (producer key == pool address) pays it from pool rounds with cap left, payout_id =
  H(f"{round_height}/{address}"), so a retry can never pay twice.
- **Energy**: three providers are registered by wallets; the oracle key sends readings; the
  treasury key settles each provider's unsettled energy every ~5 s (settlement_id is derived
  from the provider and its settled total, so a retry cannot settle twice).
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import orjson
from nacl.signing import SigningKey

from ledgerlog.engine.admission import Summary
from ledgerlog.engine.admission.roles import identity_of
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.crypto import H
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.signing import Signer, block_line, share_line, signed_line

__all__ = ["Simulator", "wallet_signer", "load_key"]

log = logging.getLogger("ledgerlog.simulator")

#: (kind, line) pairs to submit, in admission order
Lines = list[tuple[str, dict[str, Any]]]

MAX_BLOCK_TXS = 2_000        # transactions per produced block
MAX_MEMPOOL_SCAN = 20_000    # mempool entries read per block
MAX_TX_PER_TICK = 2_000
MAX_SHARES_PER_TICK = 1_000
MAX_PAYOUTS_PER_TICK = 64
FUND_AMOUNT = 10**11         # what the faucet gives a wallet; topped up below a tenth of it
FUND_RETRY_BLOCKS = 5        # a funding tx not confirmed after this many blocks is sent again
PROVIDERS = 3
READING_INTERVAL = 1.0       # seconds between oracle readings (per provider)
SETTLEMENT_INTERVAL = 5.0    # seconds between treasury settlements
SHARES_PER_RIG_SECOND = 1.0
REJECTED_SHARE_RATE = 0.02   # shares marked accepted=false (admitted, never credited)
ROUND_SCAN = 256             # recent heights searched for pool rounds on start
DIFFICULTIES = (256, 512, 1024, 2048, 4096, 8192)
MAX_CATCH_UP = 5.0           # seconds of elapsed time one tick accounts for (after a stall)


def wallet_signer(seed: int, i: int) -> Signer:
    """Wallet ``i`` of simulation ``seed``: Ed25519 seed = blake2b-256(f"sim/{seed}/{i}")."""
    return Signer(SigningKey(hashlib.blake2b(f"sim/{seed}/{i}".encode(), digest_size=32).digest()))


def load_key(keys_dir: str, name: str) -> Signer | None:
    """``<keys_dir>/<name>.key`` (as ``init`` or a key rotation writes it), or None."""
    try:
        return Signer.load(os.path.join(keys_dir, f"{name}.key"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Simulator:
    """Drives a chain with simulated actors; ``tick`` is one bounded step, ``run`` loops."""

    def __init__(self, *, genesis: Genesis, keys_dir: str,
                 submit: Callable[[list[bytes]], Summary],
                 state: Callable[[], WriteState],
                 pool_pending: Callable[[], dict[str, int]],
                 seed: int | None = None, wallets: int = 24, block_interval: float = 1.0,
                 tx_per_second: float = 40.0, clock: Callable[[], float] = time.time) -> None:
        if wallets < 2:
            raise ValueError("the simulator needs at least 2 wallets")
        if block_interval <= 0:
            raise ValueError("block_interval must be positive")
        self.g = genesis
        self.submit, self.state, self.pool_pending, self.clock = submit, state, pool_pending, clock
        self.seed = secrets.randbits(32) if seed is None else seed
        self.block_interval = block_interval
        self.tx_per_second = tx_per_second
        self.tick_interval = min(0.25, block_interval / 2)
        self.payout_cooldown = 2 * block_interval  # lets the payouts projection fold a payout
        self.rng = random.Random(self.seed)
        self.stats: dict[str, int] = Counter()

        self.wallets = [wallet_signer(self.seed, i) for i in range(wallets)]
        n_miners = max(1, min(wallets - 1, wallets // 4))
        self.miners = [(w.address, [f"rig{r}" for r in range(self.rng.randint(2, 3))])
                       for w in self.wallets[:n_miners]]
        self.providers = [  # (provider_id, owner, meter_id, price_per_kwh)
            (f"sim-{self.seed}-provider-{i}", self.wallets[-1 - i % wallets],
             f"sim-{self.seed}-meter-{i}", self.rng.randint(100, 300)) for i in range(PROVIDERS)]

        self.keys_dir = keys_dir
        self.reload_keys()

        self._nonce: dict[str, int] = {}    # next nonce per sending address (wallets, faucet)
        self._spend: dict[str, int] = {}    # local spendable estimate per sending address
        self._funding: dict[str, int] = {}  # wallet -> tip height its funding tx was sent at
        self._paid_at: dict[str, float] = {}  # payee -> clock time of its last payout
        self._rounds: deque[int] = deque(maxlen=ROUND_SCAN)  # recent pool round heights
        self._ts = 0
        self._started = False
        self._last_tick = 0.0
        self._next_block = self._next_reading = self._next_settlement = 0.0
        self._tx_credit = self._share_credit = 0.0
        log.info("simulator seed %d: %d wallets, %d miners, producer=%s pool=%s oracle=%s "
                 "treasury=%s", self.seed, wallets, len(self.miners), bool(self.producer),
                 bool(self.pool), bool(self.oracle), bool(self.treasury))

    @property
    def miner_addresses(self) -> list[str]:
        return [addr for addr, _ in self.miners]

    def reload_keys(self) -> None:
        """(Re)load the role keys from ``keys_dir``, e.g. after a key rotation."""
        g, keys_dir = self.g, self.keys_dir
        self.producer = self._role("producer", "producer")
        self.pool = self.producer if self.producer and self.producer.address == g.pool.address \
            and identity_of(self.state(), g, "pool", self.producer.pubkey) else self._role("pool", "pool")
        self.oracle = self._role("oracle", "oracle")
        self.treasury = self._role("treasury", "treasury")
        self.faucet = load_key(keys_dir, "faucet")
        if self.faucet is None:
            log.warning("no faucet key in %s: wallets only spend what genesis gave them", keys_dir)

    def _role(self, name: str, role: str) -> Signer | None:
        """Key file ``name`` if its key holds ``role`` now (genesis, as rotated), else None."""
        key = load_key(self.keys_dir, name)
        if key is not None and identity_of(self.state(), self.g, role, key.pubkey) == key.address:
            return key
        log.warning("no %s key holding that role in %s: the simulator skips it", name, self.keys_dir)
        return None

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Tick every ``tick_interval`` until ``stop`` is set. Rejected lines are logged and
        resynced inside ``tick``; any other error is logged and retried after a pause."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:
                if stop.is_set():
                    return
                log.exception("simulator tick failed; retrying")
                self.stats["errors"] += 1
                self._started = False  # resync everything on the next tick
                stop.wait(1.0)
                continue
            stop.wait(max(0.0, self.tick_interval - (time.monotonic() - started)))

    def tick(self) -> None:
        """One step: maybe a block, then transfers, shares, energy lines and payouts."""
        now = self.clock()
        st = self.state()
        if not self._started:
            self._start(st, now)
        dt = min(max(0.0, now - self._last_tick), MAX_CATCH_UP)
        self._last_tick = now
        self.stats["ticks"] += 1
        if self.producer is not None and now >= self._next_block:
            self._produce(st, now)
            st = self.state()
        lines: Lines = []
        self._fund(st, lines, now)
        self._register(st, lines, now)
        self._transfers(lines, now, dt)
        self._shares(st, lines, now, dt)
        if now >= self._next_reading:
            self._next_reading = now + READING_INTERVAL
            self._readings(st, lines, now)
        if now >= self._next_settlement:
            self._next_settlement = now + SETTLEMENT_INTERVAL
            self._settlements(st, lines, now)
        self._payouts(st, lines, now)
        if lines:
            self._submit(lines)

    def _start(self, st: WriteState, now: float) -> None:
        self._resync(st)
        tip = st.tip().height
        self._rounds.clear()
        for h in range(max(1, tip - ROUND_SCAN + 1), tip + 1):
            if st.pool_round(h) is not None:
                self._rounds.append(h)
        self._last_tick = now
        self._next_block = now
        self._next_reading = now
        self._next_settlement = now + SETTLEMENT_INTERVAL
        self._started = True

    # -- submitting -------------------------------------------------------------------------
    def _stamp(self, now: float) -> int:
        """A strictly increasing millisecond timestamp near ``now``, so ids never repeat."""
        self._ts = max(self._ts + 1, int(now * 1000))
        return self._ts

    def _submit(self, lines: Lines) -> tuple[Summary, dict[int, str]]:
        """Admit lines; count them by kind; returns the summary and {index: code} of rejections."""
        summary = self.submit([orjson.dumps(line) for _, line in lines])
        rejected: dict[int, str] = {}
        for r in summary.rejections:
            i = r["line"] - 1
            kind = lines[i][0] if 0 <= i < len(lines) else "unknown"
            rejected[i] = r["code"]
            self.stats[f"{kind}.rejected"] += 1
            self.stats[f"rejected.{r['code']}"] += 1
            log.debug("simulator %s line rejected: %s %s", kind, r["code"], r["message"])
        for i, (kind, _) in enumerate(lines):
            self.stats[f"{kind}.submitted"] += 1
            if i not in rejected:
                self.stats[f"{kind}.accepted"] += 1  # admitted, or (not expected) a duplicate
        self.stats["duplicates"] += summary.duplicates
        if rejected:
            self._resync(self.state())
        return summary, rejected

    def _resync(self, st: WriteState) -> None:
        """Nonces and spendable balances of every sending address, from committed state."""
        senders = [w.address for w in self.wallets] + ([self.faucet.address] if self.faucet else [])
        for addr in senders:
            acct, pending = st.account(addr), st.pending(addr)
            self._nonce[addr] = acct.nonce + len(pending) + 1
            self._spend[addr] = acct.balance - sum(e[2] for e in pending)

    # -- blocks -----------------------------------------------------------------------------
    def _produce(self, st: WriteState, now: float) -> None:
        assert self.producer is not None
        self._next_block += self.block_interval
        if self._next_block <= now:  # fell behind: keep the cadence from now, no burst
            self._next_block = now + self.block_interval
        tip = st.tip()
        txs = self._select(st)
        line, _ = block_line(self.producer, chain_id=self.g.chain_id, height=tip.height + 1,
                             prev_hash=tip.hash, timestamp=max(int(now * 1000), tip.timestamp + 1),
                             transactions=txs)
        _, rejected = self._submit([("block", line)])
        if rejected:
            self._next_block = now  # try again next tick, from fresh state
            return
        self.stats["block.transactions"] += len(txs)
        if self.producer.address == self.g.pool.address:  # a pool round
            self._rounds.append(tip.height + 1)
        self._resync(self.state())

    def _select(self, st: WriteState) -> list[dict[str, Any]]:
        """Committed mempool txs by (sender, nonce): contiguous from the confirmed nonce and
        affordable in sequence against the confirmed balance, at most MAX_BLOCK_TXS."""
        by_sender: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for i, tx in enumerate(st.mempool()):
            if i >= MAX_MEMPOOL_SCAN:
                break
            body = tx["body"]
            by_sender.setdefault(body["sender"], []).append((body["nonce"], tx))
        out: list[dict[str, Any]] = []
        for sender in sorted(by_sender):
            acct = st.account(sender)
            expected, budget = acct.nonce + 1, acct.balance
            for nonce, tx in sorted(by_sender[sender], key=lambda e: e[0]):
                cost = tx["body"]["amount"] + tx["body"]["fee"]
                if nonce != expected or cost > budget:
                    break
                out.append(tx)
                if len(out) >= MAX_BLOCK_TXS:
                    return out
                expected, budget = expected + 1, budget - cost
        return out

    # -- wallets ----------------------------------------------------------------------------
    def _tx(self, sender: Signer, recipient: str, amount: int, now: float,
            memo: str = "") -> dict[str, Any]:
        fee = self.g.min_fee
        body = {"chain_id": self.g.chain_id, "sender": sender.address, "recipient": recipient,
                "amount": amount, "fee": fee, "nonce": self._nonce[sender.address],
                "timestamp": self._stamp(now), "memo": memo}
        self._nonce[sender.address] += 1
        self._spend[sender.address] -= amount + fee
        return signed_line("transaction", sender, body)

    def _fund(self, st: WriteState, lines: Lines, now: float) -> None:
        """The faucet funds wallets below a tenth of FUND_AMOUNT (once per FUND_RETRY_BLOCKS)."""
        if self.faucet is None:
            return
        height = st.tip().height
        for w in self.wallets:
            if self._spend[w.address] >= FUND_AMOUNT // 10:
                self._funding.pop(w.address, None)
                continue
            sent = self._funding.get(w.address)
            if sent is not None and height <= sent + FUND_RETRY_BLOCKS:
                continue
            if self._spend[self.faucet.address] < FUND_AMOUNT + self.g.min_fee:
                self.stats["faucet.empty"] += 1
                return
            tx = self._tx(self.faucet, w.address, FUND_AMOUNT, now, "faucet")
            lines.append(("transaction", tx))
            self._funding[w.address] = height

    def _transfers(self, lines: Lines, now: float, dt: float) -> None:
        self._tx_credit += self.tx_per_second * dt
        n = int(self._tx_credit)
        self._tx_credit -= n
        fee = self.g.min_fee
        for _ in range(min(n, MAX_TX_PER_TICK)):
            sender = self.rng.choice(self.wallets)
            room = self._spend[sender.address] - fee
            if room < 1:
                continue
            recipient = self.rng.choice(self.wallets)
            if recipient is sender:
                recipient = self.wallets[(self.wallets.index(sender) + 1) % len(self.wallets)]
            amount = self.rng.randint(1, max(1, min(10**8, room // 20)))
            lines.append(("transaction", self._tx(sender, recipient.address, amount, now)))

    # -- mining pool ------------------------------------------------------------------------
    def _shares(self, st: WriteState, lines: Lines, now: float, dt: float) -> None:
        rigs = [(addr, rig) for addr, rs in self.miners for rig in rs]
        self._share_credit += SHARES_PER_RIG_SECOND * len(rigs) * dt
        n = int(self._share_credit)
        self._share_credit -= n
        height = st.tip().height + 1
        for _ in range(min(n, MAX_SHARES_PER_TICK)):
            addr, rig = self.rng.choice(rigs)
            ts = self._stamp(now)
            lines.append(("share", share_line(
                addr, rig, job_id=f"sim-{self.seed}-{height}-{ts}", height=height,
                difficulty=self.rng.choice(DIFFICULTIES),
                accepted=self.rng.random() >= REJECTED_SHARE_RATE, timestamp=ts)))

    def _payouts(self, st: WriteState, lines: Lines, now: float) -> None:
        """Pay addresses whose pending crossed the threshold, from pool rounds with cap left."""
        if self.pool is None or not self._rounds:
            return
        for addr in [a for a, t in self._paid_at.items() if now - t >= self.payout_cooldown]:
            del self._paid_at[addr]
        threshold = max(1, self.g.pool.payout_threshold)
        due = sorted((a, p) for a, p in self.pool_pending().items()
                     if p >= threshold and a not in self._paid_at)
        if not due:
            return
        budget = st.spendable(self.pool.address)
        left: dict[int, int] = {}  # round -> cap left, as this tick's payouts use it
        count = 0
        for addr, pending in due:
            need = pending
            for h in self._rounds:
                if need <= 0 or count >= MAX_PAYOUTS_PER_TICK:
                    break
                if h not in left:
                    rnd = st.pool_round(h)
                    left[h] = 0 if rnd is None else rnd[0] - rnd[1]
                payout_id = H(f"{h}/{addr}".encode())
                amount = min(need, left[h], budget)
                if amount <= 0 or st.seen("p", payout_id) is not None:
                    continue
                body = {"chain_id": self.g.chain_id, "payout_id": payout_id, "address": addr,
                        "amount": amount, "round_height": h, "timestamp": self._stamp(now)}
                lines.append(("payout", signed_line("payout", self.pool, body)))
                left[h] -= amount
                budget -= amount
                need -= amount
                count += 1
                self._paid_at[addr] = now
            if budget <= 0 or count >= MAX_PAYOUTS_PER_TICK:
                break

    # -- energy -----------------------------------------------------------------------------
    def _register(self, st: WriteState, lines: Lines, now: float) -> None:
        stake = max(1, self.g.energy.min_stake)
        for pid, owner, meter, price in self.providers:
            if st.provider(pid) is not None or self._spend[owner.address] < stake:
                continue
            body = {"chain_id": self.g.chain_id, "provider_id": pid, "owner": owner.address,
                    "meter_id": meter, "stake": stake, "price_per_kwh": price,
                    "timestamp": self._stamp(now)}
            lines.append(("provider", signed_line("provider", owner, body)))
            self._spend[owner.address] -= stake

    def _readings(self, st: WriteState, lines: Lines, now: float) -> None:
        if self.oracle is None:
            return
        for pid, _, _, _ in self.providers:
            prov = st.provider(pid)
            if prov is None:
                continue
            body = {"chain_id": self.g.chain_id, "meter_id": prov["meter_id"], "provider_id": pid,
                    "milli_kwh": self.rng.randint(100, 3000), "timestamp": self._stamp(now)}
            lines.append(("reading", signed_line("reading", self.oracle, body)))

    def _settlements(self, st: WriteState, lines: Lines, now: float) -> None:
        if self.treasury is None:
            return
        budget = st.spendable(self.treasury.address)
        for pid, _, _, _ in self.providers:
            prov = st.provider(pid)
            if prov is None:
                continue
            milli = prov["credited"] - prov["settled"]
            amount = milli * prov["price_per_kwh"] // 1000
            settlement_id = H(f"sim/{pid}/{prov['settled']}".encode())
            if amount <= 0 or amount > budget or st.seen("t", settlement_id) is not None:
                continue
            body = {"chain_id": self.g.chain_id, "settlement_id": settlement_id, "provider_id": pid,
                    "milli_kwh": milli, "amount": amount, "timestamp": self._stamp(now)}
            lines.append(("settlement", signed_line("settlement", self.treasury, body)))
            budget -= amount
