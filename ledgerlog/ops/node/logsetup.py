"""Logging of a running node: stderr plus ``<data_dir>/logs/node.log``, rotated by size, as plain
text or JSON lines, reopened on SIGHUP (so logrotate may rename or copy-truncate it).

One call, ``setup_logging(config)``, made by ``ledgerlog run`` before the node starts. Settings:
``node.log_level`` (``--log-level``), ``node.log_json``, ``node.log_max_bytes`` (0: no size
rotation, leave it to logrotate), ``node.log_backups``."""
from __future__ import annotations

import datetime as _dt
import logging
import logging.handlers
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import orjson

from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import ConfigError

__all__ = [
    "TEXT_FORMAT",
    "JsonFormatter",
    "LogSetup",
    "ReopenableFileHandler",
    "log_file",
    "setup_logging",
]

log = logging.getLogger("ledgerlog.logs")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MARK = "_ledgerlog_handler"  # set on the handlers we install, so a second setup replaces them


def log_file(config: Config) -> str:
    return os.path.join(config.data_dir, "logs", "node.log")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, thread, and exc when an
    exception is attached; trace_id/span_id when a recording trace span is current."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, _dt.UTC)
        out: dict[str, Any] = {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                               "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage(), "thread": record.threadName}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        ctx = _span_context()
        if ctx is not None:
            out["trace_id"], out["span_id"] = ctx
        return orjson.dumps(out, default=str).decode()


def _span_context() -> tuple[str, str] | None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - a dependency
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


class ReopenableFileHandler(logging.handlers.RotatingFileHandler):
    """A size-rotating file handler that can also reopen its file by name (after logrotate
    renamed it away); ``max_bytes=0`` turns size rotation off."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                try:
                    self.stream.flush()
                finally:
                    self.stream.close()
                    self.stream = None  # type: ignore[assignment]  # emit() opens it if _open fails here
            self.stream = self._open()
        finally:
            self.release()


@dataclass
class LogSetup:
    """What ``setup_logging`` installed; ``reopen`` is what SIGHUP triggers."""

    path: str
    file_handler: ReopenableFileHandler
    reopens: int = 0
    _wake_w: int | None = None

    def reopen(self) -> None:
        self.file_handler.reopen()
        self.reopens += 1
        log.info("reopened log file %s", self.path)

    def request_reopen(self) -> None:
        """Async-signal-safe: wake the reopen thread (the signal handler must not take locks)."""
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:  # pipe full: a reopen is already pending
                pass


def _level(name: str) -> int:
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise ConfigError(f"log level {name!r}: expected DEBUG, INFO, WARNING or ERROR")
    return level


def setup_logging(config: Config, *, stderr: bool = True, handle_sighup: bool = True) -> LogSetup:
    """Install the node's log handlers on the root logger (replacing ones a previous call set)
    and, from the main thread, a SIGHUP handler that reopens the log file."""
    level = _level(config.log_level)
    if config.log_max_bytes < 0 or config.log_backups < 0:
        raise ConfigError("node.log_max_bytes and node.log_backups must be >= 0")
    path = log_file(config)
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    formatter: logging.Formatter = JsonFormatter() if config.log_json else logging.Formatter(TEXT_FORMAT)
    fh = ReopenableFileHandler(path, maxBytes=config.log_max_bytes, backupCount=config.log_backups,
                               encoding="utf-8")
    handlers: list[logging.Handler] = [fh]
    if stderr:
        handlers.append(logging.StreamHandler())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _MARK, False):
            root.removeHandler(h)
            h.close()
    for h in handlers:
        h.setFormatter(formatter)
        setattr(h, _MARK, True)
        root.addHandler(h)
    root.setLevel(level)
    setup = LogSetup(path, fh)
    if handle_sighup and hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        _watch_sighup(setup)
    log.debug("logging to %s (level %s, json=%s, max_bytes=%d, backups=%d)", path,
              logging.getLevelName(level), config.log_json, config.log_max_bytes, config.log_backups)
    return setup


def _watch_sighup(setup: LogSetup) -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    setup._wake_w = w

    def on_sighup(_signum: int, _frame: Any) -> None:
        setup.request_reopen()

    def reopen_loop() -> None:
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:
                return
            try:
                setup.reopen()
            except OSError as exc:  # e.g. the logs dir vanished: keep the node running
                log.error("cannot reopen log file %s: %s", setup.path, exc)

    threading.Thread(target=reopen_loop, name="ledgerlog-log-reopen", daemon=True).start()
    signal.signal(signal.SIGHUP, on_sighup)
