"""Building signed ingest lines (PROTOCOL.md §4): what wallets, pools, oracles and block producers
do. Used by the CLI helpers, the simulator, the history generator and tests."""
from __future__ import annotations

from typing import Any

from nacl.signing import SigningKey

from . import avro
from .crypto import H, address_of, pubkey_hex, sign, tx_root

__all__ = ["Signer", "signed_line", "block_line", "share_line"]


class Signer:
    """A key with its hex pubkey and address cached."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.pubkey = pubkey_hex(key)
        self.address = address_of(bytes(key.verify_key))

    @classmethod
    def generate(cls) -> "Signer":
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed_hex: str) -> "Signer":
        return cls(SigningKey(bytes.fromhex(seed_hex)))

    @property
    def seed(self) -> str:
        return bytes(self.key).hex()

    def sign_body(self, schema: str, body: dict[str, Any]) -> tuple[str, str]:
        """(id, signature) of a body: id = H(canonical bytes)."""
        data = avro.encode(schema, body)
        return H(data), sign(self.key, data)


_SCHEMA = {"transaction": "TransactionBody", "reading": "ReadingBody", "provider": "ProviderBody",
           "settlement": "SettlementBody", "payout": "PayoutBody"}


def signed_line(kind: str, signer: Signer, body: dict[str, Any]) -> dict[str, Any]:
    """A ``transaction``/``reading``/``provider``/``settlement``/``payout`` line."""
    _, sig = signer.sign_body(_SCHEMA[kind], body)
    return {"type": kind, "body": body, "pubkey": signer.pubkey, "signature": sig}


def block_line(producer: Signer, *, chain_id: str, height: int, prev_hash: str, timestamp: int,
               transactions: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """A block line over signed transaction lines (their ``type`` is dropped); returns (line, hash)."""
    txs = [{k: t[k] for k in ("body", "pubkey", "signature")} for t in transactions]
    txids = [H(avro.encode("TransactionBody", t["body"])) for t in txs]
    header = {"chain_id": chain_id, "height": height, "prev_hash": prev_hash, "timestamp": timestamp,
              "producer": producer.address, "tx_root": tx_root(txids), "tx_count": len(txs)}
    block_hash, sig = producer.sign_body("BlockHeader", header)
    return {"type": "block", "header": header, "pubkey": producer.pubkey, "signature": sig,
            "transactions": txs}, block_hash


def share_line(address: str, rig: str, *, job_id: str, height: int, difficulty: int,
               accepted: bool = True, timestamp: int) -> dict[str, Any]:
    return {"type": "share", "worker": f"{address}.{rig}", "job_id": job_id, "height": height,
            "difficulty": difficulty, "accepted": accepted, "timestamp": timestamp}
