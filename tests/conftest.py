"""Shared fixtures: a dev chain on a real temporary RocksDB, its keys, and builders of valid
ingest lines (PROTOCOL.md §4). Tests mutate what the builders return to make invalid lines."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from nacl.signing import SigningKey

from ledgerlog.engine.admission import Summary
from ledgerlog.engine.chain import Chain, init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.engine.signing import Signer, block_line, share_line, signed_line

# -- chains -------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(data_dir=str(tmp_path / "data"), sync=False)


@pytest.fixture
def chain_factory(config) -> Iterator[Callable[..., Chain]]:
    """``make(tweak=None)``: init a dev chain (``tweak`` may edit the genesis dict first) and
    open it. One chain per test; closed at teardown."""
    opened: list[Chain] = []

    def make(tweak: Callable[[dict[str, Any]], None] | None = None) -> Chain:
        genesis = dev_genesis(config.keys_dir)
        if tweak is not None:
            tweak(genesis)
        init_chain(config, genesis)
        ch = open_chain(config)
        opened.append(ch)
        return ch

    yield make
    for ch in opened:
        ch.close()


@pytest.fixture
def chain(chain_factory) -> Chain:
    return chain_factory()


def folded_digests(cfg: Config) -> dict[str, str]:
    """The live projections' digests once folded to the end of the data dir's log."""
    from ledgerlog.streams.runner import Runner
    with open_chain(cfg) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            return runner.digests()
        finally:
            runner.close()


def load_signer(config: Config, name: str) -> Signer:
    """A dev key written by ``init``: ``<data_dir>/keys/<name>.key`` (JSON with "seed")."""
    with open(os.path.join(config.keys_dir, f"{name}.key"), encoding="utf-8") as f:
        return Signer.from_seed(json.load(f)["seed"])


def signer_from_byte(b: int) -> Signer:
    """A deterministic throwaway key (no funds, in no genesis role)."""
    return Signer(SigningKey(bytes([b]) * 32))


@dataclass(frozen=True)
class Keys:
    producer: Signer   # the only producer, and the pool address
    oracle: Signer
    treasury: Signer
    faucet: Signer     # holds a large allocation


@pytest.fixture
def keys(chain) -> Keys:
    return Keys(*(load_signer(chain.config, n) for n in ("producer", "oracle", "treasury", "faucet")))


# -- lines --------------------------------------------------------------------------------


def encode(line: dict[str, Any] | str | bytes) -> bytes:
    """One JSONL line; the stdlib encoder so integers beyond 64 bits survive."""
    if isinstance(line, (str, bytes)):
        return line.encode() if isinstance(line, str) else line
    return json.dumps(line, separators=(",", ":")).encode()


def admit(chain: Chain, *lines: dict[str, Any] | str | bytes) -> Summary:
    return chain.admitter.admit([encode(ln) for ln in lines])


def admit_ok(chain: Chain, *lines: dict[str, Any] | str | bytes) -> Summary:
    """Admit lines that must all be accepted (test setup)."""
    s = admit(chain, *lines)
    assert s.rejected == 0 and s.duplicates == 0 and s.accepted == len(lines), s.to_dict()
    return s


_SCHEMA = {"transaction": "TransactionBody", "reading": "ReadingBody", "provider": "ProviderBody",
           "settlement": "SettlementBody", "payout": "PayoutBody"}


def resign(line: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """Sign the (edited) body or header of a line again, with ``signer``'s key."""
    if line["type"] == "block":
        _, line["signature"] = signer.sign_body("BlockHeader", line["header"])
    else:
        _, line["signature"] = signer.sign_body(_SCHEMA[line["type"]], line["body"])
    line["pubkey"] = signer.pubkey
    return line


def snapshot(chain: Chain) -> tuple[dict[str, list[int]], list[tuple[bytes, bytes]]]:
    """Every topic's end offsets and all write-side state: equal before and after means the
    admission changed nothing."""
    log = chain.log  # the first log key ("lk") is each data dir's own, not admission's doing
    return ({t: log.end_offsets(t) for t in sorted(log.topics())},
            [(k, v) for k, v in log.state_items(b"") if k != b"lk"])


def supply(chain: Chain) -> tuple[int, int]:
    """(sum of balance + staked over write-side accounts, allocations + reward × height)."""
    total = sum(bal + staked for _, (bal, staked, _n) in
                ((k, orjson.loads(v)) for k, v in chain.log.state_items(b"a/")))
    g = chain.genesis
    return total, sum(g.allocations.values()) + g.block_reward * chain.write_state().tip().height


class Lines:
    """Valid lines against the chain's current write-side state; keyword overrides go into the
    body (or header) unsigned-checked, and the body is signed after them, so an override makes a
    *validly signed* line with that value."""

    def __init__(self, chain: Chain, keys: Keys) -> None:
        self.chain = chain
        self.keys = keys
        self.chain_id = chain.genesis.chain_id
        self.min_fee = chain.genesis.min_fee
        self._clock = chain.genesis.timestamp

    def now(self) -> int:
        """A fresh, strictly increasing timestamp after genesis and every block made here."""
        self._clock = max(self._clock, self.chain.write_state().tip().timestamp) + 1000
        return self._clock

    def next_nonce(self, signer: Signer) -> int:
        st = self.chain.write_state()
        return st.account(signer.address).nonce + len(st.pending(signer.address)) + 1

    def tx(self, sender: Signer, recipient: str | Signer, amount: int, *, nonce: int | None = None,
           signer: Signer | None = None, **over: Any) -> dict[str, Any]:
        to = recipient.address if isinstance(recipient, Signer) else recipient
        body = {"chain_id": self.chain_id, "sender": sender.address, "recipient": to,
                "amount": amount, "fee": self.min_fee,
                "nonce": self.next_nonce(sender) if nonce is None else nonce,
                "timestamp": self.now(), "memo": ""}
        body.update(over)
        return signed_line("transaction", signer or sender, body)

    def block(self, txs: list[dict[str, Any]] = (), *, producer: Signer | None = None,
              signer: Signer | None = None, **over: Any) -> dict[str, Any]:
        """The next block over ``txs``; header overrides (height, prev_hash, tx_root, ...) are
        applied before signing."""
        tip = self.chain.write_state().tip()
        producer = producer or self.keys.producer
        line, _ = block_line(producer, chain_id=self.chain_id, height=tip.height + 1,
                             prev_hash=tip.hash, timestamp=self.now(), transactions=list(txs))
        line["header"].update(over)
        return resign(line, signer or producer)

    def provider(self, owner: Signer, provider_id: str = "prov-1", *, meter_id: str = "meter-1",
                 stake: int = 1_000_000, price_per_kwh: int = 250, signer: Signer | None = None,
                 **over: Any) -> dict[str, Any]:
        body = {"chain_id": self.chain_id, "provider_id": provider_id, "owner": owner.address,
                "meter_id": meter_id, "stake": stake, "price_per_kwh": price_per_kwh,
                "timestamp": self.now()}
        body.update(over)
        return signed_line("provider", signer or owner, body)

    def reading(self, provider_id: str = "prov-1", milli_kwh: int = 4000, *,
                meter_id: str = "meter-1", signer: Signer | None = None, **over: Any) -> dict[str, Any]:
        body = {"chain_id": self.chain_id, "meter_id": meter_id, "provider_id": provider_id,
                "milli_kwh": milli_kwh, "timestamp": self.now()}
        body.update(over)
        return signed_line("reading", signer or self.keys.oracle, body)

    def settlement(self, settlement_id: str = "set-1", provider_id: str = "prov-1",
                   milli_kwh: int = 4000, amount: int = 1000, *, signer: Signer | None = None,
                   **over: Any) -> dict[str, Any]:
        body = {"chain_id": self.chain_id, "settlement_id": settlement_id, "provider_id": provider_id,
                "milli_kwh": milli_kwh, "amount": amount, "timestamp": self.now()}
        body.update(over)
        return signed_line("settlement", signer or self.keys.treasury, body)

    def payout(self, payout_id: str = "pay-1", address: str | Signer | None = None,
               amount: int = 1_000_000, round_height: int = 1, *, signer: Signer | None = None,
               **over: Any) -> dict[str, Any]:
        to = address.address if isinstance(address, Signer) else (address or self.keys.faucet.address)
        body = {"chain_id": self.chain_id, "payout_id": payout_id, "address": to, "amount": amount,
                "round_height": round_height, "timestamp": self.now()}
        body.update(over)
        return signed_line("payout", signer or self.keys.producer, body)

    def governance(self, parameter: str = "min_stake", value: int = 2_000_000, *, signer: Signer | None = None,
                   **over: Any) -> dict[str, Any]:
        """A parameter change (docs/PROTOCOL.md §8.5), by the treasury unless ``signer``."""
        body = {"chain_id": self.chain_id, "parameter": parameter, "value": value, "timestamp": self.now()}
        body.update(over)
        return signed_line("governance", signer or self.keys.treasury, body)

    def share(self, address: str | Signer | None = None, rig: str = "rig1", *, job_id: str = "job-1",
              height: int = 1, difficulty: int = 1024, **over: Any) -> dict[str, Any]:
        addr = address.address if isinstance(address, Signer) else (address or self.keys.faucet.address)
        line = share_line(addr, rig, job_id=job_id, height=height, difficulty=difficulty,
                          timestamp=self.now())
        line.update(over)
        return line

    def fund(self, *signers: Signer, amount: int = 10**9) -> None:
        """Give each signer ``amount`` from the faucet in one new block."""
        nonce = self.next_nonce(self.keys.faucet)
        txs = [self.tx(self.keys.faucet, s, amount, nonce=nonce + i) for i, s in enumerate(signers)]
        admit_ok(self.chain, self.block(txs))


@pytest.fixture
def lines(chain, keys) -> Lines:
    return Lines(chain, keys)
