"""The ``ledgerlog`` command line (PROTOCOL.md §7). Output is JSON. A failure is one line of JSON
on stderr, ``{"error": ..., "code": ...}``, and the exit status its class in the error table
(engine/errors.py) says: 1 refused or a verification failed, 2 usage, config, I/O or storage; a
command's own result may also exit 1 (rejected lines, a failed verification), its output saying
why. Anything unexpected is code INTERNAL, exit 2. A traceback only with ``--debug``."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Any, NoReturn

import orjson
import typer

from ledgerlog import __version__
from ledgerlog.engine import restorejournal
from ledgerlog.engine.config import Config, load_config
from ledgerlog.engine.errors import (
    ConfigError,
    InternalError,
    LedgerError,
    StorageError,
    StoreLockedError,
    UsageError,
    error_class_for,
    error_code,
    storage_error,
)
from ledgerlog.engine.intjson import dumps_any
from ledgerlog.engine.rocks import map_error

__all__ = ["app", "main", "emit", "fail", "config_of"]

_DEBUG = [False]  # --debug: set by the root callback, read when an error reaches main()

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ledgerlog: an event-sourced ledger engine on Kafka-style logs.")


_DATA_DIR: list[str | None] = [None]  # --data-dir: set by the root callback


def real_paths(value: Any) -> Any:
    """``value`` with ``<data_dir>`` written as the data dir's real path (``local_paths``): for
    errors and the answers of prune and export. (Not applied to events: their text is shown as it is.)"""
    from ledgerlog.ops.query.client import local_paths
    return value if _DATA_DIR[0] is None else local_paths(value, os.path.abspath(_DATA_DIR[0]))


def emit(obj: Any) -> None:
    sys.stdout.buffer.write(dumps_any(obj, orjson.OPT_INDENT_2 if sys.stdout.isatty() else 0) + b"\n")
    sys.stdout.flush()


def fail(message: str, exit_code: int = 2, /, code: str | None = None) -> NoReturn:
    """Raise the error of the table that owns ``code`` (without one: UsageError for exit 2, else
    LedgerError) with ``message``; ``main`` prints it. Prefer raising the LedgerError itself."""
    cls = error_class_for(code) if code else (UsageError if exit_code == 2 else LedgerError)
    raise (cls if cls is not None and cls.__init__ is Exception.__init__ else UsageError)(message)


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"ledgerlog {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          data_dir: str = typer.Option("./data", "--data-dir", envvar="LEDGERLOG_DATA_DIR",
                                       help="Chain data directory."),
          config: str | None = typer.Option(None, "--config", envvar="LEDGERLOG_CONFIG",
                                            help="Config file to read instead of <data-dir>/config.toml."),
          log_level: str | None = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING, ERROR."),
          debug: bool = typer.Option(False, "--debug", help="Print the traceback behind any error (errors are one line without it)."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Draw no progress bars, even on a terminal (pipes never get one)."),
          _version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                        help="Print the version and exit.")) -> None:
    ctx.obj = {"data_dir": data_dir, "config": config, "flags": {"log_level": log_level}}
    _DEBUG[0], _DATA_DIR[0] = debug, data_dir
    from ledgerlog.ops.cli.progress import set_quiet
    set_quiet(quiet)


def config_of(ctx: typer.Context, **flags: Any) -> Config:
    obj = ctx.find_root().obj
    try:
        restorejournal.recover(obj["data_dir"])  # before config.toml is read: it may be mid-restore
    except StoreLockedError:
        raise
    except StorageError as exc:
        raise StorageError(f"cannot finish an interrupted restore of {obj['data_dir']}: {exc}") from exc
    except OSError as exc:
        raise storage_error(exc, f"cannot finish an interrupted restore of {obj['data_dir']}") from exc
    named = obj.get("config")
    if named and not os.path.isfile(named) and ctx.info_name != "init":  # init writes it
        raise ConfigError(f"no config file {named} (--config / LEDGERLOG_CONFIG); `ledgerlog --config {named} init` "
                          "writes one")
    return load_config(obj["data_dir"], os.environ, {**obj["flags"], **flags}, config_file=named)


def _register_commands() -> None:
    """Import the command groups: each module adds its commands to ``app``."""
    from . import (  # noqa: F401
        audit,
        chain,
        export,
        faucet,
        generate,
        genesis,
        keys,
        mirror,
        projections,
        proof,
        prune,
        query,
        reproject,
        snapshot,
        storage,
        verify,
        worker,
    )


def as_ledger_error(exc: BaseException) -> LedgerError:
    """``exc`` as the error of the table users see: a LedgerError as it is; a storage fault the OS
    or RocksDB raised outside a mapped call as its StorageError; a usage error of the command
    line parser, or an argument that is not UTF-8, as USAGE; anything else INTERNAL (a bug)."""
    if isinstance(exc, LedgerError):
        return exc
    if isinstance(exc, OSError):
        return storage_error(exc, "I/O error")
    if type(exc) is Exception and str(exc).startswith("IO error"):  # rocksdict's plain Exception
        return map_error(exc, "a store")
    if isinstance(exc, typer.TyperException) and hasattr(exc, "format_message"):  # the parser's (click's)
        return UsageError(exc.format_message())
    if isinstance(exc, typer.Abort):
        return UsageError("aborted")
    if isinstance(exc, UnicodeEncodeError) and "surrogate" in exc.reason:  # argv bytes that are not UTF-8
        return UsageError(f"an argument is not valid UTF-8 text ({exc.object[exc.start:exc.end]!r}); "
                          "pass addresses, ids and names as UTF-8")
    return InternalError(f"internal error ({type(exc).__name__}); run again with --debug for the traceback")


def report(exc: BaseException) -> int:
    """Print ``exc`` as the one line users see (its traceback first with --debug); its exit status."""
    err = as_ledger_error(exc)
    if _DEBUG[0] or "--debug" in sys.argv:  # argv too: a usage error may come before --debug is parsed
        traceback.print_exception(exc, file=sys.stderr)
    message = real_paths(" ".join(str(err).split())) or err.code
    sys.stderr.write(orjson.dumps({"error": message, "code": error_code(err)}).decode() + "\n")
    return err.exit_code


def main() -> None:
    _register_commands()
    try:
        # standalone_mode=False: click's own errors (a bad flag, a missing argument) reach report()
        rv = app(standalone_mode=False)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure: one line, the table's exit status
        if isinstance(exc, KeyboardInterrupt):
            sys.exit(130)
        if type(exc).__name__ == "NoArgsIsHelpError" and hasattr(exc, "show"):
            exc.show()  # `ledgerlog` alone: the help, as click prints it
            sys.exit(2)
        sys.exit(report(exc))
    sys.exit(rv if isinstance(rv, int) else 0)
