"""Building signed ingest lines (PROTOCOL.md §4): what wallets, pools, oracles and block producers
do. Used by the CLI helpers, the simulator, the history generator and tests."""
from __future__ import annotations

import json
from typing import Any

from nacl.signing import SigningKey

from . import avro
from .crypto import H, address_of, pubkey_hex, sign, tx_root

__all__ = ["Signer", "signed_line", "block_line", "share_line", "rotation_line", "governance_line"]


class Signer:
    """A key with its hex pubkey and the address it signs as cached: its own address, or, for a
    key that took over a role by a key rotation, the role identity (docs/PROTOCOL.md §8)."""

    def __init__(self, key: SigningKey, identity: str | None = None) -> None:
        self.key = key
        self.pubkey = pubkey_hex(key)
        self.address = identity or address_of(bytes(key.verify_key))

    @classmethod
    def load(cls, path: str) -> Signer:
        """A key file as ``init`` and key rotation write it: JSON with "seed" (and "identity")."""
        with open(path, encoding="utf-8") as f:
            return cls.from_doc(json.load(f))

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Signer:
        """A key file's parsed JSON as a Signer."""
        return cls(SigningKey(bytes.fromhex(doc["seed"])), doc.get("identity"))

    def to_json(self, name: str) -> str:
        own = address_of(bytes(self.key.verify_key))
        doc = {"name": name, "seed": self.seed, "pubkey": self.pubkey, "address": own}
        if self.address != own:
            doc["identity"] = self.address
        return json.dumps(doc) + "\n"

    @classmethod
    def generate(cls) -> Signer:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed_hex: str) -> Signer:
        return cls(SigningKey(bytes.fromhex(seed_hex)))

    @property
    def seed(self) -> str:
        return bytes(self.key).hex()

    def sign_body(self, schema: str, body: dict[str, Any]) -> tuple[str, str]:
        """(id, signature) of a body: id = H(canonical bytes)."""
        data = avro.encode(schema, body)
        return H(data), sign(self.key, data)


_SCHEMA = {"transaction": "TransactionBody", "reading": "ReadingBody", "provider": "ProviderBody",
           "settlement": "SettlementBody", "payout": "PayoutBody", "rotation": "KeyRotationBody",
           "governance": "GovernanceBody"}


def signed_line(kind: str, signer: Signer, body: dict[str, Any]) -> dict[str, Any]:
    """A ``transaction``/``reading``/``provider``/``settlement``/``payout``/``governance`` line."""
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


def rotation_line(old: Signer, new: Signer, *, chain_id: str, role: str, timestamp: int) -> dict[str, Any]:
    """A ``rotation`` line moving ``role`` from ``old`` to ``new``, signed by both keys."""
    body = {"chain_id": chain_id, "role": role, "old_pubkey": old.pubkey, "new_pubkey": new.pubkey,
            "timestamp": timestamp}
    line = signed_line("rotation", old, body)
    line["new_signature"] = new.sign_body("KeyRotationBody", body)[1]
    return line


def governance_line(treasury: Signer, *, chain_id: str, parameter: str, value: int, timestamp: int) -> dict[str, Any]:
    """A ``governance`` line (docs/PROTOCOL.md §8.5) setting ``parameter`` to ``value``, signed by
    the treasury's current key."""
    body = {"chain_id": chain_id, "parameter": parameter, "value": value, "timestamp": timestamp}
    return signed_line("governance", treasury, body)
