"""Topic names, the event schema of each, the key each is partitioned by, and default sizes."""
from __future__ import annotations

from typing import Final

__all__ = ["BLOCKS", "TRANSACTIONS", "MEMPOOL", "SHARES", "PROVIDERS", "READINGS", "SETTLEMENTS",
           "PAYOUTS", "KEYS", "ADMIN", "GOVERNANCE", "SCHEMAS", "CHECKPOINTS", "GENESIS", "EVENT_TOPICS", "EVENT_SCHEMA", "RECORD_SCHEMA", "DEFAULT_PARTITIONS",
           "subject_of"]

BLOCKS: Final = "ledger.blocks"
TRANSACTIONS: Final = "ledger.transactions"
MEMPOOL: Final = "ledger.mempool"
SHARES: Final = "pool.shares"
PROVIDERS: Final = "energy.providers"
READINGS: Final = "energy.readings"
SETTLEMENTS: Final = "energy.settlements"
PAYOUTS: Final = "pool.payouts"
#: Extensions to protocol v1 (docs/PROTOCOL.md §8): role key rotations and the admin audit trail.
KEYS: Final = "ledger.keys"
ADMIN: Final = "ledger.admin"
#: Extension (docs/PROTOCOL.md §8.5): energy market parameters changed by the treasury.
GOVERNANCE: Final = "ledger.governance"
SCHEMAS: Final = "_schemas"
CHECKPOINTS: Final = "_checkpoints"
#: the genesis the log was started with, one record (engine/genesis_record.py)
GENESIS: Final = "_genesis"

#: Event topic -> the Avro record written on it (subject "<topic>-value").
EVENT_SCHEMA: Final[dict[str, str]] = {
    BLOCKS: "BlockAdmitted",
    TRANSACTIONS: "TransactionConfirmed",
    MEMPOOL: "TransactionSubmitted",
    SHARES: "ShareSubmitted",
    PROVIDERS: "ProviderRegistered",
    READINGS: "ReadingRecorded",
    SETTLEMENTS: "SettlementRecorded",
    PAYOUTS: "PayoutRecorded",
    KEYS: "KeyRotated",
    ADMIN: "AdminActionRecorded",
    GOVERNANCE: "GovernanceChanged",
}
EVENT_TOPICS: Final = tuple(EVENT_SCHEMA)
#: Every topic whose values are Avro records of ours: the events and the signed tree heads (§9).
RECORD_SCHEMA: Final[dict[str, str]] = {**EVENT_SCHEMA, CHECKPOINTS: "SignedTreeHead"}

#: Partitions per topic unless the config says otherwise; ledger.blocks is always 1 (total order).
DEFAULT_PARTITIONS: Final[dict[str, int]] = {
    BLOCKS: 1, TRANSACTIONS: 4, MEMPOOL: 4, SHARES: 4, PROVIDERS: 2, READINGS: 2, SETTLEMENTS: 2,
    PAYOUTS: 2, KEYS: 1, ADMIN: 1, GOVERNANCE: 1, SCHEMAS: 1, CHECKPOINTS: 1, GENESIS: 1,
}


def subject_of(topic: str) -> str:
    return f"{topic}-value"
