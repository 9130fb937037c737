"""Every error ledgerlog raises on purpose derives from LedgerError.

    LedgerError
    ├── ConfigError            bad config file, flag or genesis
    │   ├── GenesisMismatchError genesis.json is not the genesis the log was started with
    │   └── PortInUseError     the HTTP port is taken by another process
    ├── StorageError           a store cannot be used
    │   ├── StorageUnavailableError  the disk refused a write (I/O error, full); clears by itself
    │   ├── StoreLockedError   another process holds the write lock
    │   ├── CorruptStoreError  checksums or structure do not hold; never served
    │   ├── FormatVersionError the store was written by an unknown format version
    │   └── AheadOfLogError    a store reflects records the log no longer holds; never served
    ├── LogError               the log backend failed (I/O, broker unreachable, unknown topic)
    ├── SchemaError            unknown schema id, or an incompatible schema change
    ├── NotFoundError          a queried block, tx, account, ... does not exist
    ├── ReprojectRunningError  a reproject of this data dir is running
    ├── ProjectionFailedError  a projection's fold raised on an event: it stopped, the rest go on
    └── Rejection              an input line was refused; carries a protocol code (PROTOCOL.md §5)

Third-party errors are mapped at the boundary with ``raise ... from exc``. Each class's ``code``
is what users see (HTTP ``code``, CLI ``code``; ``error_code``). Storage errors carry file paths
in their message (for the operator's log and CLI); ``public`` is what an HTTP answer says
instead, without any path.
"""
from __future__ import annotations

from enum import Enum

__all__ = [
    "LedgerError", "ConfigError", "GenesisMismatchError", "PortInUseError", "StorageError",
    "StorageUnavailableError", "StoreLockedError", "CorruptStoreError", "FormatVersionError",
    "AheadOfLogError", "LogError", "SchemaError", "NotFoundError", "ProjectionFailedError",
    "ReprojectRunningError", "Rejection", "Code", "error_code",
]


class LedgerError(Exception):
    """Root of every ledgerlog error."""

    #: the code users see; the class name where a class sets none
    code: "str | Code | None" = None


def error_code(exc: LedgerError) -> str:
    """The code an error is reported with (a Rejection's is its protocol code)."""
    code = exc.code
    if isinstance(code, Enum):
        return str(code.value)
    return code or type(exc).__name__


class ConfigError(LedgerError):
    code = "CONFIG"


class GenesisMismatchError(ConfigError):
    code = "GENESIS_MISMATCH"


class StorageError(LedgerError):
    code = "STORAGE_ERROR"
    public = "a store cannot be used; the node's log says which and why"


class StorageUnavailableError(StorageError):
    """The disk refused a write (EIO, ENOSPC, a read-only file system). Writes fail fast until a
    probe of the disk succeeds, then resume without a restart; reads go on meanwhile."""

    code = "STORAGE_UNAVAILABLE"
    public = ("storage is not writable (I/O error or disk full); reads still answer, "
              "and writes resume by themselves when the fault clears")


class StoreLockedError(StorageError):
    code = "LOCKED"
    public = "a store is in use by another process"


class CorruptStoreError(StorageError):
    code = "CORRUPT"
    public = "a store is corrupt; the node's log says which (restore a snapshot or reproject)"


class FormatVersionError(StorageError):
    code = "FORMAT_VERSION"
    public = "a store was written by an unknown format version"


class AheadOfLogError(StorageError):
    """A store's positions are past the log's end offsets: the log lost its tail (disk fault, a
    restore of the log alone). Serving the store would show state the log does not hold."""

    code = "AHEAD_OF_LOG"
    public = "a store reflects records the log does not hold; reproject or restore a snapshot"


class ReprojectRunningError(LedgerError):
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
    code = "NOT_FOUND"


class ProjectionFailedError(LedgerError):
    """A query needs a projection whose fold stopped on an event (it names where and the fix)."""

    code = "PROJECTION_FAILED"


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
