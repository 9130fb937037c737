"""The ``ledgerlog`` command line (PROTOCOL.md §7). Output is JSON; exit 0 ok, 1 a refusal or
failure the output explains, 2 a usage or I/O error."""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

import orjson
import typer

from engine.config import Config, load_config
from engine.errors import ConfigError, LedgerError, NotFoundError, StoreLockedError

__all__ = ["app", "main", "emit", "fail", "config_of"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ledgerlog: an event-sourced ledger engine on Kafka-style logs.")


def emit(obj: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 if sys.stdout.isatty() else 0) + b"\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1, /, **extra: Any) -> None:
    sys.stderr.write(orjson.dumps({"error": message, **extra}).decode() + "\n")
    raise typer.Exit(code)


@app.callback()
def _root(ctx: typer.Context,
          data_dir: str = typer.Option("./data", "--data-dir", envvar="LEDGERLOG_DATA_DIR",
                                       help="Chain data directory."),
          log_level: Optional[str] = typer.Option(None, "--log-level", help="DEBUG, INFO, WARNING, ERROR.")) -> None:
    ctx.obj = {"data_dir": data_dir, "flags": {"log_level": log_level}}


def config_of(ctx: typer.Context, **flags: Any) -> Config:
    obj = ctx.find_root().obj
    try:
        return load_config(obj["data_dir"], os.environ, {**obj["flags"], **flags})
    except ConfigError as exc:
        fail(str(exc), 2)
        raise  # unreachable


def _register_commands() -> None:
    """Import every ``ops/cli_*.py``: each registers its commands on ``app``."""
    import importlib
    import pkgutil

    from . import __path__ as ops_path
    for mod in sorted(m.name for m in pkgutil.iter_modules(ops_path) if m.name.startswith("cli_")):
        importlib.import_module(f"{__package__}.{mod}")


def _code(exc: LedgerError, default: str) -> str:
    """The error's own ``code`` when it names one (engine/errors.py), else ``default``."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else default


def main() -> None:
    _register_commands()
    try:
        try:
            app()
        except StoreLockedError as exc:
            fail(str(exc), 1, code=_code(exc, "LOCKED"))
        except NotFoundError as exc:
            fail(str(exc), 1, code=_code(exc, "NOT_FOUND"))
        except ConfigError as exc:
            fail(str(exc), 2, code=_code(exc, "CONFIG"))
        except LedgerError as exc:
            fail(str(exc), 1, code=_code(exc, type(exc).__name__))
    except typer.Exit as exc:  # raised by fail() outside the app: exit with its code, no traceback
        sys.exit(exc.exit_code)
