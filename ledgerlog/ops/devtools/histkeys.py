"""The chain a generated history runs on: keys derived from a seed, and the genesis they sign
for (PROTOCOL.md §3). ``ops.histgen`` generates the history itself."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from nacl.signing import SigningKey

from ledgerlog.engine.crypto import H, canonical_json, h_bytes
from ledgerlog.engine.signing import Signer

__all__ = ["Keys", "derive_signer", "genesis_hash", "make_genesis", "write_genesis"]


def derive_signer(seed: int, name: str) -> Signer:
    """The key named ``name`` of history ``seed``: Ed25519 seed = blake2b-256(f"{seed}/{name}")."""
    return Signer(SigningKey(h_bytes(f"{seed}/{name}".encode())))


@dataclass(frozen=True)
class Keys:
    """The signers of a generated chain. ``producers[0]`` is ``producer``, the pool's key."""

    producer: Signer
    oracle: Signer
    treasury: Signer
    wallets: tuple[Signer, ...]
    producers: tuple[Signer, ...]

    @property
    def pool(self) -> Signer:
        return self.producer

    def by_address(self) -> dict[str, Signer]:
        out = {s.address: s for s in (*self.producers, self.oracle, self.treasury, *self.wallets)}
        return out

    def seeds(self) -> dict[str, str]:
        """name -> Ed25519 seed hex, e.g. to write key files."""
        out = {"producer": self.producer.seed, "oracle": self.oracle.seed, "treasury": self.treasury.seed}
        out.update({f"producer{i}": s.seed for i, s in enumerate(self.producers[1:], 1)})
        out.update({f"wallet{i}": s.seed for i, s in enumerate(self.wallets)})
        return out


def make_genesis(seed: int, *, wallets: int = 32, chain_id: str = "ledgerlog-hist",
                 timestamp: int = 1_700_000_000_000, block_reward: int = 5_000_000_000,
                 min_fee: int = 1000, fee_bps: int = 100, window_blocks: int = 5,
                 payout_threshold: int = 100_000_000, min_stake: int = 1_000_000,
                 wallet_balance: int = 1_000_000_000_000, treasury_balance: int = 10**15,
                 extra_producers: int = 0) -> tuple[dict[str, Any], Keys]:
    """A genesis dict (PROTOCOL.md §3) and its keys, all derived from ``seed``.

    The producer's address is the pool address; ``extra_producers`` adds producer keys that are
    not the pool (their blocks are not pool rounds). Each of the ``wallets`` wallets and the
    treasury get an allocation."""
    if wallets < 2:
        raise ValueError("wallets must be at least 2")
    producer = derive_signer(seed, "producer")
    extra = tuple(derive_signer(seed, f"producer{i}") for i in range(1, extra_producers + 1))
    keys = Keys(producer=producer, oracle=derive_signer(seed, "oracle"),
                treasury=derive_signer(seed, "treasury"),
                wallets=tuple(derive_signer(seed, f"wallet{i}") for i in range(wallets)),
                producers=(producer, *extra))
    allocations = {keys.treasury.address: treasury_balance}
    for w in keys.wallets:
        allocations[w.address] = wallet_balance
    genesis = {
        "chain_id": chain_id,
        "timestamp": timestamp,
        "block_reward": block_reward,
        "min_fee": min_fee,
        "producers": [p.pubkey for p in keys.producers],
        "oracles": [keys.oracle.pubkey],
        "pool": {"address": producer.address, "fee_bps": fee_bps, "window_blocks": window_blocks,
                 "payout_threshold": payout_threshold},
        "energy": {"treasury": keys.treasury.address, "min_stake": min_stake},
        "allocations": allocations,
    }
    return genesis, keys


def genesis_hash(genesis: Mapping[str, Any]) -> str:
    return H(canonical_json(genesis))



def write_genesis(path: str | os.PathLike[str], genesis: Mapping[str, Any]) -> None:
    """The genesis as a JSON file (keys sorted, the form ``ledgerlog init --genesis`` reads)."""
    with open(path, "wb") as f:
        f.write(orjson.dumps(genesis, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
