"""The ``ledgerlog`` command line (PROTOCOL.md §7). Output is JSON; exit 0 ok, 1 a refusal or
failure the output explains, 2 a usage or I/O error."""
from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import Any, Optional

import orjson
import typer

from ledgerlog.engine import restorejournal
from ledgerlog.engine.config import Config, load_config
from ledgerlog.engine.errors import (
    ConfigError,
    CorruptStoreError,
    LedgerError,
    NotFoundError,
    StorageError,
    StorageUnavailableError,
    StoreLockedError,
    error_code,
)
from ledgerlog.engine.intjson import dumps_any
from ledgerlog.engine.rocks import map_error

__all__ = ["app", "main", "emit", "fail", "config_of"]

_DEBUG = [False]  # --debug: set by the root callback, read when an error reaches main()

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ledgerlog: an event-sourced ledger engine on Kafka-style logs.")


def emit(obj: Any) -> None:
    sys.stdout.buffer.write(dumps_any(obj, orjson.OPT_INDENT_2 if sys.stdout.isatty() else 0) + b"\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1, /, **extra: Any) -> None:
    sys.stderr.write(orjson.dumps({"error": message, **extra}).decode() + "\n")
    raise typer.Exit(code)


@app.callback()
def _root(ctx: typer.Context,
          data_dir: str = typer.Option("./data", "--data-dir", envvar="LEDGERLOG_DATA_DIR",
                                       help="Chain data directory."),
          log_level: Optional[str] = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING, ERROR."),
          debug: bool = typer.Option(False, "--debug", help="Print a traceback with a storage or I/O error.")) -> None:
    ctx.obj = {"data_dir": data_dir, "flags": {"log_level": log_level}}
    _DEBUG[0] = debug


def config_of(ctx: typer.Context, **flags: Any) -> Config:
    obj = ctx.find_root().obj
    try:
        restorejournal.recover(obj["data_dir"])  # before config.toml is read: it may be mid-restore
    except StoreLockedError as exc:
        fail(str(exc), 1, code="LOCKED")
    except (StorageError, OSError) as exc:
        fail(f"cannot finish an interrupted restore of {obj['data_dir']}: {exc}", 2, code="STORAGE_ERROR")
    try:
        return load_config(obj["data_dir"], os.environ, {**obj["flags"], **flags})
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable


def _register_commands() -> None:
    """Import the command groups: each module adds its commands to ``app``."""
    from . import (chain, export, generate, genesis, keys, mirror, query,  # noqa: F401
                   reproject, snapshot, storage, verify, worker)


def _storage_error(exc: BaseException) -> StorageError | None:
    """A storage fault as a StorageError: what the OS or RocksDB raised outside a mapped call."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT):
            return StorageUnavailableError(f"the disk refused a write: {exc}")
        return StorageError(f"I/O error: {exc}")
    if type(exc) is Exception and str(exc).startswith("IO error"):  # rocksdict's plain Exception
        return map_error(exc, "a store")
    return None


def main() -> None:
    _register_commands()
    try:
        try:
            app()
        except StoreLockedError as exc:
            fail(str(exc), 1, code=error_code(exc))
        except NotFoundError as exc:
            fail(str(exc), 1, code=error_code(exc))
        except ConfigError as exc:
            fail(str(exc), 2, code=error_code(exc))
        except CorruptStoreError as exc:
            fail(str(exc), 1, code=error_code(exc))
        except LedgerError as exc:
            if isinstance(exc, StorageError):  # a full or failing disk, a store ahead of its log: exit 2
                fail(_one_line(exc), 2, code=error_code(exc))
            fail(str(exc), 1, code=error_code(exc))
        except Exception as exc:
            mapped = _storage_error(exc)
            if mapped is None:
                raise
            fail(_one_line(mapped), 2, code=mapped.code)
    except typer.Exit as exc:  # raised by fail() outside the app: exit with its code, no traceback
        sys.exit(exc.exit_code)


def _one_line(exc: BaseException) -> str:
    """The error's message on one line; with --debug its traceback first."""
    if _DEBUG[0]:
        traceback.print_exception(exc, file=sys.stderr)
    return " ".join(str(exc).split())
