"""Every error ledgerlog raises on purpose derives from LedgerError; this module is the one table
of them: each class says its ``code`` (what users see), ``http_status`` (what the API answers)
and ``exit_code`` (what the CLI exits with: 1 refused or verification failed, 2 usage, config,
I/O or storage). The tree (code, HTTP status, exit code):

    LedgerError                       LEDGER_ERROR 503 1  a ledger error no subclass names
    ├── UsageError                    USAGE 400 2         a command was used wrongly (arguments, flags)
    │   ├── ExportError               BAD_EXPORT 400 2    an export's topic, range or format does not fit the log
    │   ├── PruneHeightError          BAD_PRUNE_HEIGHT 400 2  a prune height above the tip, or not above the last prune
    │   ├── AuditInputError           BAD_AUDIT_INPUT 400 2  audit's records or state file cannot be read or parsed
    │   └── ProjectionInvalidError    BAD_PROJECTION 400 2  a user projection does not import or breaks the contract
    ├── BadRequest                    BAD_REQUEST 400 2   a query argument or request body is malformed
    │   ├── SnapshotDirRefusedError   SNAPSHOT_DIR_REFUSED 400 2  a node writes snapshots under snapshot.dir only
    │   └── BadKeyError               BAD_KEY 400 2       a key file or seed given to import is malformed
    ├── ConfigError                   CONFIG 400 2        bad config file, flag or genesis
    │   ├── GenesisMismatchError      GENESIS_MISMATCH 400 2  genesis.json is not the one the log started with
    │   └── PortInUseError            PORT_IN_USE 400 2   the HTTP port is taken by another process
    ├── StorageError                  STORAGE_ERROR 503 2 a store cannot be used
    │   ├── StorageUnavailableError   STORAGE_UNAVAILABLE 503 2  the disk refused a write; clears by itself
    │   ├── StoreLockedError          LOCKED 503 1        another process holds the write lock
    │   ├── CorruptStoreError         CORRUPT 503 1       checksums or structure do not hold; never served
    │   ├── FormatVersionError        FORMAT_VERSION 503 2  the store was written by an unknown format version
    │   └── AheadOfLogError           AHEAD_OF_LOG 503 2  a store reflects records the log no longer holds
    ├── LogError                      LOG_ERROR 503 1     the log backend failed or does not hold what was asked
    │   └── PruneUnsupportedError     PRUNE_UNSUPPORTED 501 2  this log backend (or broker) cannot delete records
    ├── PrunedError                   PRUNED 410 1        what was asked lies below the log's prune point (archived)
    ├── SchemaError                   SCHEMA_ERROR 503 1  unknown schema id, or a value not in the wire format
    │   └── UndecodableRecordError    SCHEMA_ERROR 503 1  a record on the log cannot be decoded (where it is)
    ├── NotFoundError                 NOT_FOUND 404 1     a queried block, tx, account, route ... does not exist
    │   └── UnknownProjectionError    UNKNOWN_PROJECTION 404 1  no built-in or registered projection has that name
    ├── InvalidSchemaError            INVALID_SCHEMA 422 1  a schema sent to the Schema Registry API is not Avro (42201)
    ├── InvalidVersionError           INVALID_VERSION 422 1  a Schema Registry version that is neither 1.. nor latest (42202)
    ├── RegistryReadOnlyError         REGISTRY_READ_ONLY 422 1  the Schema Registry API does not register, delete or configure (42205)
    ├── ReprojectRunningError         REPROJECT_RUNNING 409 1  a reproject of this data dir is running
    ├── PruneRunningError             PRUNE_RUNNING 409 1  a prune of this data dir is running
    ├── RotationRefusedError          ROTATION_REFUSED 409 1   a key rotation cannot be done
    ├── InsufficientFundsError        INSUFFICIENT_FUNDS 409 1  the sending key cannot pay (faucet top-up)
    ├── ProjectionFailedError         PROJECTION_FAILED 503 1  a projection's fold stopped on an event
    │   └── UserCodeError             PROJECTION_FAILED 503 1  a user fold exited, or raised what cannot be told
    │       └── UserCodeStuck         PROJECTION_FAILED 503 1  a user fold did not return in time
    ├── NondeterministicFoldError     NONDETERMINISTIC 409 1  two replays of a user projection's fold disagree
    ├── Rejection                     REJECTED 422 1      an input line was refused; its code is the protocol's (§5)
    ├── ProofError                    BAD_PROOF 422 1     a Merkle proof does not verify
    ├── RpcError                      RPC_ERROR 400 1     a JSON-RPC call failed; ``rpc_code`` is its JSON-RPC code
    ├── Unsupported                   UNSUPPORTED_SCHEMA 500 2  a schema the generated codecs do not take (fastavro then does)
    ├── NodeUnreachableError          NODE_UNREACHABLE 503 2  the running node did not answer
    ├── NodeRefusedError              NODE_REFUSED 502 1  the running node answered an error (``code`` is its code)
    ├── NodeRunningError              NODE_RUNNING 409 1  a node runs on the data dir and the command cannot go through it
    ├── UnauthorizedError             UNAUTHORIZED 401 1  no or a misplaced admin token
    ├── ForbiddenError                FORBIDDEN 403 1     a wrong token or a client outside admin.allow
    │   ├── AdminDisabledError        ADMIN_DISABLED 403 1  no admin.token is set
    │   └── OriginNotAllowedError     ORIGIN_NOT_ALLOWED 403 1  a web origin not in http.allowed_origins
    ├── MethodNotAllowedError         METHOD_NOT_ALLOWED 405 2  the route takes other methods
    ├── RequestTimeoutError           TIMEOUT 408 2       a request head or body not sent in time (closed)
    ├── TooLargeError                 TOO_LARGE 413 2     a request body over its cap
    ├── HeadTooLargeError             HEAD_TOO_LARGE 431 2  a request head (line and headers) over 64 KiB (closed)
    ├── UnsupportedMediaTypeError     UNSUPPORTED_MEDIA_TYPE 415 2  a body of a type the route does not take
    ├── HostNotAllowedError           HOST_NOT_ALLOWED 421 1  a Host header that is not the node's
    ├── RateLimitedError              RATE_LIMITED 429 1  too many requests; ``retry_after`` seconds
    ├── UnavailableError              UNAVAILABLE 503 1   the node cannot do that now
    │   ├── PausedError               PAUSED 503 1        external writes are paused by the operator
    │   ├── NotReadyError             NOT_READY 503 1     a projection lags too far behind the log
    │   ├── OverloadedError           OVERLOADED 503 1    every connection is busy in a request
    │   ├── FaucetDisabledError       FAUCET_DISABLED 503 1
    │   ├── FaucetPausedError         FAUCET_PAUSED 503 1
    │   ├── InsufficientBalanceError  INSUFFICIENT_BALANCE 503 1  the faucet cannot pay a grant
    │   ├── TopupKeyMissingError      TOPUP_KEY_MISSING 503 1
    │   └── FaucetRejectedError       FAUCET_REJECTED 503 1  admission refused the faucet's transaction
    └── InternalError                 INTERNAL 500 2      a bug: anything not raised on purpose

The Schema Registry API answers Confluent's numeric ``error_code`` beside ``code`` (its clients
read it): ``registry_error`` makes the error for one of ``REGISTRY_ERRORS``; any other error on
those routes carries its HTTP status as ``error_code``, as Confluent's server does (ops/api/guard.py).

Third-party errors are mapped at the boundary with ``raise ... from exc``. Where a message may
name files (storage errors), ``public`` is what an HTTP answer says instead; every other message
is answered through the API's path scrubber (ops/api/guard.py ``public``).
"""
from __future__ import annotations

import errno
from enum import Enum
from typing import ClassVar

__all__ = [
    "LedgerError", "UsageError", "ExportError", "PruneHeightError", "AuditInputError", "BadRequest",
    "SnapshotDirRefusedError", "BadKeyError", "ConfigError",
    "GenesisMismatchError", "PortInUseError", "StorageError", "StorageUnavailableError", "StoreLockedError",
    "CorruptStoreError", "FormatVersionError", "AheadOfLogError", "LogError", "PruneUnsupportedError", "PrunedError",
    "SchemaError", "UndecodableRecordError", "NotFoundError", "UnknownProjectionError", "ProjectionInvalidError", "NondeterministicFoldError",
    "InvalidSchemaError", "InvalidVersionError", "RegistryReadOnlyError", "REGISTRY_ERRORS", "registry_error",
    "ReprojectRunningError", "PruneRunningError", "RotationRefusedError", "InsufficientFundsError", "ProjectionFailedError",
    "UserCodeError", "UserCodeStuck",
    "Rejection", "ProofError", "RpcError", "Unsupported", "NodeUnreachableError", "NodeRefusedError", "NodeRunningError",
    "UnauthorizedError", "ForbiddenError", "AdminDisabledError", "OriginNotAllowedError",
    "MethodNotAllowedError", "RequestTimeoutError", "OverloadedError", "TooLargeError", "HeadTooLargeError", "UnsupportedMediaTypeError", "HostNotAllowedError",
    "RateLimitedError", "UnavailableError", "PausedError", "NotReadyError", "FaucetDisabledError",
    "FaucetPausedError", "InsufficientBalanceError", "TopupKeyMissingError", "FaucetRejectedError",
    "InternalError", "Code", "error_code", "storage_error", "public_message", "error_classes", "error_class_for",
]


class LedgerError(Exception):
    """Root of every ledgerlog error."""

    #: the code users see (HTTP ``code``, CLI ``code``); an instance may carry a finer one
    code: ClassVar[str] = "LEDGER_ERROR"
    #: the HTTP status the API answers it with
    http_status: ClassVar[int] = 503
    #: the CLI's exit status: 1 refused or verification failed, 2 usage, config, I/O or storage
    exit_code: ClassVar[int] = 1
    #: a path-free message an HTTP answer gives instead of ``str(exc)`` (None: the message, scrubbed)
    public: ClassVar[str | None] = None
    #: Confluent's ``error_code`` when the Schema Registry API raised it (``registry_error``)
    registry_code: int | None = None


def error_code(exc: BaseException) -> str:
    """The code an error is reported with (a Rejection's is its protocol code)."""
    code = getattr(exc, "code", None) if isinstance(exc, LedgerError) else InternalError.code
    if isinstance(code, Enum):
        return str(code.value)
    return str(code or LedgerError.code)


def public_message(exc: LedgerError) -> str:
    """What an answer may say about ``exc``: its class's ``public`` text, else its message."""
    return type(exc).public or str(exc)


def error_classes() -> list[type[LedgerError]]:
    """Every LedgerError class defined so far (this table and any subclass elsewhere)."""
    out: list[type[LedgerError]] = []
    todo: list[type[LedgerError]] = [LedgerError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def error_class_for(code: str) -> type[LedgerError] | None:
    """The class that owns ``code`` (defines it itself), if any."""
    for cls in error_classes():
        if cls.__dict__.get("code") == code:
            return cls
    return None


# -- usage and bad input --------------------------------------------------------------------------
class UsageError(LedgerError):
    """A command was used wrongly: arguments, flags, a missing file named on the command line."""

    code = "USAGE"
    http_status = 400
    exit_code = 2


class ExportError(UsageError):
    """An export's topic, partitions, range or format does not fit the log."""

    code = "BAD_EXPORT"


class PruneHeightError(UsageError):
    """`ledgerlog prune --before-height H`: H above the chain's tip, or not above the height an
    earlier prune already removed the log below."""

    code = "BAD_PRUNE_HEIGHT"


class AuditInputError(UsageError):
    """`ledgerlog audit`'s records (a file, stdin) or state file cannot be read, or a line of them
    is not a record as `tail --raw` prints it."""

    code = "BAD_AUDIT_INPUT"


class ProjectionInvalidError(UsageError):
    """A user projection module that does not import, breaks the contract (NAME, VERSION, TOPICS,
    fold), takes a built-in's name, or raises on the sample folded at ``projections add``."""

    code = "BAD_PROJECTION"


class BadRequest(LedgerError):
    """A query argument or request body is malformed."""

    code = "BAD_REQUEST"
    http_status = 400
    exit_code = 2


class SnapshotDirRefusedError(BadRequest):
    """A running node writes snapshots only under its snapshot.dir."""

    code = "SNAPSHOT_DIR_REFUSED"


class BadKeyError(BadRequest):
    """A key file or seed given to import (the faucet's) is malformed: not JSON with a 64-hex
    seed, or its pubkey/address are not the seed's. Its message never quotes the seed."""

    code = "BAD_KEY"


class ConfigError(LedgerError):
    code = "CONFIG"
    http_status = 400
    exit_code = 2


class GenesisMismatchError(ConfigError):
    code = "GENESIS_MISMATCH"


class PortInUseError(ConfigError):
    """The address the node should listen on is taken."""

    code = "PORT_IN_USE"


# -- storage ----------------------------------------------------------------------------------------
class StorageError(LedgerError):
    code = "STORAGE_ERROR"
    exit_code = 2
    public = "a store cannot be used; the node's log says which and why"


class StorageUnavailableError(StorageError):
    """The disk refused a write (EIO, ENOSPC, a read-only file system). Writes fail fast until a
    probe of the disk succeeds, then resume without a restart; reads go on meanwhile."""

    code = "STORAGE_UNAVAILABLE"
    public = ("storage is not writable (I/O error or disk full); reads still answer, "
              "and writes resume by themselves when the fault clears")


class StoreLockedError(StorageError):
    code = "LOCKED"
    exit_code = 1
    public = "a store is in use by another process"


class CorruptStoreError(StorageError):
    code = "CORRUPT"
    exit_code = 1
    public = "a store is corrupt; the node's log says which (restore a snapshot or reproject)"


class FormatVersionError(StorageError):
    code = "FORMAT_VERSION"
    public = "a store was written by an unknown format version"


class AheadOfLogError(StorageError):
    """A store's positions are past the log's end offsets: the log lost its tail (disk fault, a
    restore of the log alone). Serving the store would show state the log does not hold."""

    code = "AHEAD_OF_LOG"
    public = "a store reflects records the log does not hold; reproject or restore a snapshot"


_UNWRITABLE = frozenset({errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT})


def storage_error(exc: OSError, what: str) -> StorageError:
    """An OSError met while reading or writing files, as the StorageError it stands for (raise it
    ``from exc``): a disk that refuses writes is StorageUnavailableError."""
    if exc.errno in _UNWRITABLE:
        return StorageUnavailableError(f"{what}: the disk refused a write: {exc}")
    return StorageError(f"{what}: {exc}")


# -- the log, schemas, queries ------------------------------------------------------------------------
class LogError(LedgerError):
    code = "LOG_ERROR"


class PruneUnsupportedError(LogError):
    """The log cannot delete records below a height: a backend without the capability, or a Kafka
    cluster on which DeleteRecords is not enabled (the message says why)."""

    code = "PRUNE_UNSUPPORTED"
    http_status = 501
    exit_code = 2


class PrunedError(LedgerError):
    """What was asked (a height, block, transaction or offset) lies below the log's prune point:
    the log no longer holds it; the message names the prune height and where it was archived."""

    code = "PRUNED"
    http_status = 410


class SchemaError(LedgerError):
    code = "SCHEMA_ERROR"


class UndecodableRecordError(SchemaError):
    """A record on the log that cannot be decoded (written by something other than ledgerlog, or
    damaged), and where: the projections reading its topic stop there, the rest goes on."""

    topic: str = ""
    partition: int = 0
    offset: int = 0


class NotFoundError(LedgerError):
    code = "NOT_FOUND"
    http_status = 404


class UnknownProjectionError(NotFoundError):
    """No built-in or registered projection has the name asked for."""

    code = "UNKNOWN_PROJECTION"


# -- the Schema Registry API (ops/api/registry.py) -----------------------------------------------------
class InvalidSchemaError(LedgerError):
    """A schema sent to the Schema Registry API (lookup, compatibility) is not Avro, or not a
    request body the API takes."""

    code = "INVALID_SCHEMA"
    http_status = 422


class InvalidVersionError(LedgerError):
    """A Schema Registry version that is neither a number from 1 to 2**31-1 nor ``latest``."""

    code = "INVALID_VERSION"
    http_status = 422


class RegistryReadOnlyError(LedgerError):
    """The Schema Registry API is read-only: ledgerlog registers the schemas of its code itself
    (backward compatible with every earlier version), so registering, deleting and configuring
    through the API are refused, as Confluent refuses them in READONLY mode (422, 42205)."""

    code = "REGISTRY_READ_ONLY"
    http_status = 422


#: Confluent's ``error_code`` of each Schema Registry failure -> the class answering it
REGISTRY_ERRORS: dict[int, type[LedgerError]] = {
    40401: NotFoundError,          # subject not found
    40402: NotFoundError,          # version not found
    40403: NotFoundError,          # schema not found
    42201: InvalidSchemaError,     # invalid schema
    42202: InvalidVersionError,    # invalid version
    42205: RegistryReadOnlyError,  # operation not permitted
}


def registry_error(registry_code: int, message: str) -> LedgerError:
    """The error a Schema Registry request fails with, carrying Confluent's ``registry_code``."""
    exc = REGISTRY_ERRORS[registry_code](message)
    exc.registry_code = registry_code
    return exc


class ReprojectRunningError(LedgerError):
    """Another reproject of the same projections is running (in a node or another process)."""

    code = "REPROJECT_RUNNING"
    http_status = 409


class PruneRunningError(LedgerError):
    """Another prune of the same data dir is running (in a node or another process)."""

    code = "PRUNE_RUNNING"
    http_status = 409


class RotationRefusedError(LedgerError):
    """A role key cannot be rotated (no role, several identities, admission refused it)."""

    code = "ROTATION_REFUSED"
    http_status = 409


class InsufficientFundsError(LedgerError):
    """The sending key cannot pay (a faucet top-up from the treasury)."""

    code = "INSUFFICIENT_FUNDS"
    http_status = 409


class ProjectionFailedError(LedgerError):
    """A query needs a projection whose fold stopped on an event (it names where and the fix)."""

    code = "PROJECTION_FAILED"


class UserCodeError(ProjectionFailedError):
    """What a user projection's code raised that is not an ``Exception`` (``sys.exit()``), or
    whose text cannot be told: an ``Exception`` like any other, so it stops that projection alone."""


class UserCodeStuck(UserCodeError):
    """User projection code that did not return in time: left running on its own thread (Python
    cannot stop it), its projection stopped, so the other projections fold on."""


class NondeterministicFoldError(LedgerError):
    """Two replays of a user projection's fold over the same events disagree (a clock, randomness,
    iteration over a set, state kept between calls): refused at ``projections add``, and a
    rebuild of the same version that disagrees with the live store is not swapped in."""

    code = "NONDETERMINISTIC"
    http_status = 409


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
    # extension (docs/PROTOCOL.md §8.5): governance parameters
    UNKNOWN_PARAMETER = "UNKNOWN_PARAMETER"  # a governance line names no parameter the chain has
    BAD_PARAMETER = "BAD_PARAMETER"  # a governance value outside its parameter's range
    PRICE_TOO_HIGH = "PRICE_TOO_HIGH"  # a registration's price_per_kwh above max_price_per_kwh


class Rejection(LedgerError):
    """An input line was refused. Nothing of it reached the log."""

    code = "REJECTED"
    http_status = 422

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code  # type: ignore[misc]  # the protocol code of this refusal
        self.message = message


class ProofError(LedgerError, ValueError):
    """A Merkle inclusion or consistency proof does not verify."""

    code = "BAD_PROOF"
    http_status = 422


class RpcError(LedgerError):
    """A JSON-RPC call failed; ``rpc_code`` is its JSON-RPC error code (ops/api/rpc.py)."""

    code = "RPC_ERROR"
    http_status = 400

    def __init__(self, rpc_code: int, message: str) -> None:
        super().__init__(message)
        self.rpc_code = rpc_code
        self.message = message


class Unsupported(LedgerError):
    """A schema construct the generated Avro codecs do not take; callers fall back to fastavro."""

    code = "UNSUPPORTED_SCHEMA"
    http_status = 500
    exit_code = 2


# -- the running node, seen from a client -------------------------------------------------------------
class NodeUnreachableError(LedgerError):
    """The node named in node.json did not answer."""

    code = "NODE_UNREACHABLE"
    exit_code = 2


class NodeRefusedError(LedgerError):
    """The node answered an error; ``code`` is the code it gave (e.g. REPROJECT_RUNNING)."""

    code = "NODE_REFUSED"
    http_status = 502

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code  # type: ignore[misc]


class NodeRunningError(LedgerError):
    """A node runs on the data dir and the command cannot go through it (stop it, or set admin.token)."""

    code = "NODE_RUNNING"
    http_status = 409


# -- the HTTP edge ------------------------------------------------------------------------------------
class UnauthorizedError(LedgerError):
    code = "UNAUTHORIZED"
    http_status = 401


class ForbiddenError(LedgerError):
    code = "FORBIDDEN"
    http_status = 403


class AdminDisabledError(ForbiddenError):
    code = "ADMIN_DISABLED"


class OriginNotAllowedError(ForbiddenError):
    code = "ORIGIN_NOT_ALLOWED"


class MethodNotAllowedError(LedgerError):
    code = "METHOD_NOT_ALLOWED"
    http_status = 405
    exit_code = 2


class RequestTimeoutError(LedgerError):
    code = "TIMEOUT"
    http_status = 408
    exit_code = 2


class TooLargeError(LedgerError):
    code = "TOO_LARGE"
    http_status = 413
    exit_code = 2


class HeadTooLargeError(LedgerError):
    code = "HEAD_TOO_LARGE"
    http_status = 431
    exit_code = 2


class UnsupportedMediaTypeError(LedgerError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415
    exit_code = 2


class HostNotAllowedError(LedgerError):
    code = "HOST_NOT_ALLOWED"
    http_status = 421


class RateLimitedError(LedgerError):
    """Too many requests from a client (or for an address); ``retry_after`` seconds to wait."""

    code = "RATE_LIMITED"
    http_status = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_seconds = max(1, -int(-retry_after // 1))  # whole seconds, at least 1
        super().__init__(f"{message}; retry in {self.retry_seconds} s")
        self.retry_after = retry_after


class UnavailableError(LedgerError):
    code = "UNAVAILABLE"


class PausedError(UnavailableError):
    code = "PAUSED"


class NotReadyError(UnavailableError):
    code = "NOT_READY"


class OverloadedError(UnavailableError):
    code = "OVERLOADED"


class FaucetDisabledError(UnavailableError):
    code = "FAUCET_DISABLED"


class FaucetPausedError(UnavailableError):
    code = "FAUCET_PAUSED"


class InsufficientBalanceError(UnavailableError):
    code = "INSUFFICIENT_BALANCE"


class TopupKeyMissingError(UnavailableError):
    code = "TOPUP_KEY_MISSING"


class FaucetRejectedError(UnavailableError):
    code = "FAUCET_REJECTED"


class InternalError(LedgerError):
    """Anything not raised on purpose, as users see it: a bug (details only in the log)."""

    code = "INTERNAL"
    http_status = 500
    exit_code = 2
    public = "internal error; see the node's log"
