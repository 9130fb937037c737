"""The genesis file (PROTOCOL.md §3): loading, validation, its hash, and dev chains."""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from .crypto import H, address_of, canonical_json, new_key, pubkey_hex
from .errors import ConfigError

__all__ = ["Genesis", "PoolParams", "EnergyParams", "dev_genesis", "ADDRESS_RE", "HEX64_RE"]

#: ``\Z``, not ``$``: ``$`` also matches before a final newline
ADDRESS_RE = re.compile(r"^[0-9a-f]{40}\Z")
HEX64_RE = re.compile(r"^[0-9a-f]{64}\Z")
I64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class PoolParams:
    address: str
    fee_bps: int
    window_blocks: int
    payout_threshold: int


@dataclass(frozen=True)
class EnergyParams:
    treasury: str
    min_stake: int


@dataclass(frozen=True)
class Genesis:
    raw: dict[str, Any]
    chain_id: str
    timestamp: int
    block_reward: int
    min_fee: int
    producers: frozenset[str]
    oracles: frozenset[str]
    pool: PoolParams
    energy: EnergyParams
    allocations: dict[str, int]
    hash: str

    @classmethod
    def from_dict(cls, g: dict[str, Any]) -> Genesis:
        def need(obj: dict[str, Any], key: str, typ: type, where: str = "") -> Any:
            v = obj.get(key)
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise ConfigError(f"genesis: {where}{key} must be a {typ.__name__}")
            if typ is int and not (isinstance(v, int) and 0 <= v <= I64_MAX):
                raise ConfigError(f"genesis: {where}{key} must be between 0 and 2^63-1")
            return v

        if not isinstance(g, dict):
            raise ConfigError("genesis must be a JSON object")
        for key in ("producers", "oracles"):
            keys = need(g, key, list)
            if not all(isinstance(k, str) and HEX64_RE.match(k) for k in keys):
                raise ConfigError(f"genesis: {key} must be lowercase hex Ed25519 public keys")
        pool, energy, alloc = need(g, "pool", dict), need(g, "energy", dict), need(g, "allocations", dict)
        for where, obj, key in (("pool.", pool, "address"), ("energy.", energy, "treasury")):
            if not ADDRESS_RE.match(need(obj, key, str, where)):
                raise ConfigError(f"genesis: {where}{key} must be a 40-hex address")
        for addr, amount in alloc.items():
            if not ADDRESS_RE.match(addr) or not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
                raise ConfigError(f"genesis: allocation {addr!r} must map an address to a non-negative int")
        pool_params = PoolParams(pool["address"], need(pool, "fee_bps", int, "pool."),
                                 need(pool, "window_blocks", int, "pool."),
                                 need(pool, "payout_threshold", int, "pool."))
        if pool_params.window_blocks < 1 or pool_params.fee_bps > 10000:
            raise ConfigError("genesis: pool.window_blocks must be >= 1 and fee_bps <= 10000")
        return cls(
            raw=g, chain_id=need(g, "chain_id", str), timestamp=need(g, "timestamp", int),
            block_reward=need(g, "block_reward", int), min_fee=need(g, "min_fee", int),
            producers=frozenset(g["producers"]), oracles=frozenset(g["oracles"]), pool=pool_params,
            energy=EnergyParams(energy["treasury"], need(energy, "min_stake", int, "energy.")),
            allocations=dict(alloc), hash=H(canonical_json(g)),
        )

    @classmethod
    def load(cls, path: str) -> Genesis:
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read genesis {path}: {exc}") from exc


def dev_genesis(keys_dir: str, chain_id: str = "ledgerlog-dev") -> dict[str, Any]:
    """A development chain: fresh producer (= pool), oracle, treasury and faucet keys, written
    0600 under ``keys_dir``; generous allocations so simulated wallets can trade at once."""
    os.makedirs(keys_dir, mode=0o700, exist_ok=True)
    names = ("producer", "oracle", "treasury", "faucet")
    keys = {n: new_key() for n in names}
    for name, key in keys.items():
        path = os.path.join(keys_dir, f"{name}.key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"name": name, "seed": bytes(key).hex(), "pubkey": pubkey_hex(key),
                       "address": address_of(bytes(key.verify_key))}, f)
            f.write("\n")
    addr = {n: address_of(bytes(k.verify_key)) for n, k in keys.items()}
    return {
        "chain_id": chain_id,
        "timestamp": int(time.time() * 1000),
        "block_reward": 5_000_000_000,
        "min_fee": 1000,
        "producers": [pubkey_hex(keys["producer"])],
        "oracles": [pubkey_hex(keys["oracle"])],
        "pool": {"address": addr["producer"], "fee_bps": 100, "window_blocks": 10,
                 "payout_threshold": 100_000_000},
        "energy": {"treasury": addr["treasury"], "min_stake": 1_000_000},
        "allocations": {addr["treasury"]: 10**15, addr["faucet"]: 10**15},
    }
