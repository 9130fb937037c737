"""Every error ledgerlog raises on purpose derives from LedgerError.

    LedgerError
    ├── ConfigError            bad config file, flag or genesis
    │   └── PortInUseError     the HTTP port is taken by another process (code PORT_IN_USE)
    ├── StorageError           a store cannot be used
    │   ├── StoreLockedError   another process holds the write lock
    │   ├── CorruptStoreError  checksums or structure do not hold; never served
    │   ├── FormatVersionError the store was written by an unknown format version
    │   └── ReprojectRunningError  a reproject of this data dir is running (code REPROJECT_RUNNING)
    ├── LogError               the log backend failed (I/O, broker unreachable, unknown topic)
    ├── SchemaError            unknown schema id, or an incompatible schema change
    ├── NotFoundError          a queried block, tx, account, ... does not exist
    └── Rejection              an input line was refused; carries a protocol code (PROTOCOL.md §5)

Third-party errors are mapped at the boundary with ``raise ... from exc``. A class may name its
``code`` (what the CLI's one-line error carries); otherwise the class name is used.
"""
from __future__ import annotations

from enum import Enum

__all__ = [
    "LedgerError", "ConfigError", "StorageError", "StoreLockedError", "CorruptStoreError",
    "FormatVersionError", "ReprojectRunningError", "PortInUseError", "LogError", "SchemaError",
    "NotFoundError", "Rejection", "Code",
]


class LedgerError(Exception):
    """Root of every ledgerlog error."""


class ConfigError(LedgerError):
    pass


class StorageError(LedgerError):
    pass


class StoreLockedError(StorageError):
    pass


class CorruptStoreError(StorageError):
    pass


class FormatVersionError(StorageError):
    pass


class ReprojectRunningError(StorageError):
    """Another reproject of the same projections is running (in a node or another process)."""
    code = "REPROJECT_RUNNING"


class PortInUseError(ConfigError):
    """The address the node should listen on is taken."""
    code = "PORT_IN_USE"


class LogError(LedgerError):
    pass


class SchemaError(LedgerError):
    pass


class NotFoundError(LedgerError):
    pass


class Code(str, Enum):
    """Rejection codes of PROTOCOL.md §5 (plus DUPLICATE, which is counted apart)."""

    MALFORMED = "MALFORMED"
    WRONG_CHAIN = "WRONG_CHAIN"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_PRODUCER = "UNKNOWN_PRODUCER"
    UNKNOWN_ORACLE = "UNKNOWN_ORACLE"
    BAD_HEIGHT = "BAD_HEIGHT"
    BAD_PREV_HASH = "BAD_PREV_HASH"
    BAD_TIMESTAMP = "BAD_TIMESTAMP"
    BAD_TX_ROOT = "BAD_TX_ROOT"
    BAD_NONCE = "BAD_NONCE"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    FEE_TOO_LOW = "FEE_TOO_LOW"
    BAD_AMOUNT = "BAD_AMOUNT"
    UNKNOWN_PROVIDER = "UNKNOWN_PROVIDER"
    STAKE_TOO_LOW = "STAKE_TOO_LOW"
    OVER_SETTLEMENT = "OVER_SETTLEMENT"
    BAD_ROUND = "BAD_ROUND"
    DUPLICATE = "DUPLICATE"
    CONFLICT = "CONFLICT"
    BAD_ROTATION = "BAD_ROTATION"  # extension (docs/PROTOCOL.md §8): a key rotation's new key is not fresh


class Rejection(LedgerError):
    """An input line was refused. Nothing of it reached the log."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
