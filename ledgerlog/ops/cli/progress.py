"""Progress bars for CLI commands: drawn on stderr when it is a terminal (with the total and an
ETA when the job knows its size), absent on pipes and files (so scripts and logs get nothing but
the JSON), and absent with ``--quiet`` (global, or the command's own). The one place commands get
a bar from. A command that can take seconds::

    @app.command()
    def prune(ctx: typer.Context, ..., quiet: bool = quiet_option()) -> None:
        with progress_bar("prune", total=records, quiet=quiet) as bar:
            run_prune(..., progress=bar)   # bar(n) advances; bar is None when nothing is drawn

and one a running node does for it: ``admin_with_progress(node, "reproject", ...)``."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

import typer

if TYPE_CHECKING:
    from ledgerlog.ops.query.client import NodeClient

__all__ = ["Bar", "Tick", "admin_with_progress", "notebook_bar", "progress_bar", "quiet_option", "set_quiet"]

Tick = Callable[[int], None]

#: with a known total: percentage, bar, done/total, elapsed and the ETA (tqdm's remaining time)
_SIZED = "{l_bar}{bar}| {n_fmt}/{total_fmt}{unit} [{elapsed}, ETA {remaining}, {rate_fmt}{postfix}]"
_POLL_SECONDS = 0.5  # how often a CLI waiting on a node's job asks for its progress
_QUIET = [False]     # the global --quiet (set by the root callback on every invocation)


def quiet_option() -> Any:
    """The per-command ``--quiet`` option (a command passes its value to ``progress_bar``)."""
    return typer.Option(False, "--quiet", "-q", help="Draw no progress bar, even on a terminal.")


def set_quiet(quiet: bool) -> None:
    """The global ``ledgerlog --quiet``: no command draws a bar."""
    _QUIET[0] = quiet


class Bar:
    """What a command gets while a bar is drawn: ``bar(n)`` advances by ``n`` (a ``Progress``,
    ops/jobs.py, so jobs take it as they are); the total and the phase may be told later."""

    def __init__(self, tqdm_bar: Any, desc: str) -> None:
        self._bar, self._desc = tqdm_bar, desc

    def __call__(self, n: int, /) -> None:
        bar = self._bar
        if bar.total is not None and bar.n + n > bar.total:  # more than announced: never past 100%
            bar.total = bar.n + n
        bar.update(n)

    def set_total(self, total: int | None) -> None:
        bar = self._bar
        if total == bar.total:
            return
        bar.total = None if total is None else max(total, bar.n)
        bar.bar_format = None if total is None else _SIZED
        bar.refresh()

    def describe(self, phase: str) -> None:
        self._bar.set_description(f"{self._desc} {phase}" if phase else self._desc)

    def update_to(self, done: int) -> None:
        """Set the units done (a figure read from elsewhere, e.g. a node's job)."""
        if done > self._bar.n:
            self(done - self._bar.n)


@contextlib.contextmanager
def progress_bar(desc: str, *, total: int | None = None, unit: str = " records",
                 stream: TextIO | None = None, quiet: bool = False) -> Iterator[Bar | None]:
    """``with progress_bar("ingest x", total=n) as bar:`` -- ``bar(k)`` advances by ``k``;
    ``bar`` is None when ``stream`` (default stderr) is not a terminal, or with ``quiet`` or the
    global ``--quiet``. Callers never get tqdm itself (a tqdm without a total refuses ``bool()``)."""
    out = sys.stderr if stream is None else stream
    if quiet or _QUIET[0] or not _is_terminal(out):
        yield None
        return
    from tqdm import tqdm
    sized = _size(out) > (0, 0)  # a terminal that reports no size (0x0) would get no bar at all
    bar = tqdm(desc=desc, total=total, unit=unit, unit_scale=True,
               unit_divisor=1024 if unit.strip() == "B" else 1000, file=out, leave=True,
               dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24,
               bar_format=None if total is None else _SIZED)
    try:
        yield Bar(bar, desc)
    finally:
        bar.close()


@contextlib.contextmanager
def notebook_bar(desc: str, *, total: int | None = None, unit: str = " records",
                 quiet: bool = False) -> Iterator[Bar | None]:
    """A bar for Python callers (ops/notebook.py): tqdm.auto's widget in Jupyter, text on stderr
    elsewhere, whatever stderr is (a notebook's is no terminal); None with ``quiet``."""
    if quiet:
        yield None
        return
    from tqdm.auto import tqdm
    bar = tqdm(desc=desc, total=total, unit=unit, unit_scale=True, leave=True)
    try:
        yield Bar(bar, desc)
    finally:
        bar.close()


def admin_with_progress(node: NodeClient, action: str, token: str, body: dict[str, Any], desc: str, *,
                        unit: str = " records", quiet: bool = False) -> Any:
    """Run admin ``action`` on the node and return its result; on a terminal, draw the progress
    the node shows for it meanwhile (``jobs`` in ``GET /v1/status``, the job named by a ``job``
    id sent in the body), ending on the job's final figures."""
    with progress_bar(desc, unit=unit, quiet=quiet) as bar:
        if bar is None:
            return node.admin(action, token, body, timeout=None)
        job = f"cli-{uuid.uuid4().hex[:16]}"
        outcome: list[Any] = []

        def call() -> None:
            try:
                outcome.append((True, node.admin(action, token, {**body, "job": job}, timeout=None)))
            except BaseException as exc:  # noqa: BLE001 - raised again in the waiting thread
                outcome.append((False, exc))

        worker = threading.Thread(target=call, name=f"admin-{action}", daemon=True)
        worker.start()
        from ledgerlog.ops.query.client import NodeClient
        watcher = NodeClient(node.url, timeout=10.0)
        try:
            while worker.is_alive():
                _show_job(bar, watcher, job)
                worker.join(_POLL_SECONDS)
            if outcome and outcome[0][0]:
                _show_job(bar, watcher, job)  # its final figures
        finally:
            watcher.close()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value


def _show_job(bar: Bar, watcher: NodeClient, job: str) -> None:
    from ledgerlog.engine.errors import LedgerError
    try:
        figures = (watcher.status().get("jobs") or {}).get(job)
    except LedgerError:  # busy or briefly away: the next poll tells
        return
    if not isinstance(figures, dict):
        return
    if isinstance(figures.get("total"), int):
        bar.set_total(figures["total"])
    if figures.get("phase"):
        bar.describe(str(figures["phase"]))
    if isinstance(figures.get("done"), int):
        bar.update_to(figures["done"])


def _size(stream: TextIO) -> tuple[int, int]:
    """(columns, lines) of the terminal, (0, 0) when it reports none."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return 0, 0
    return (size.columns, size.lines) if size.columns > 0 and size.lines > 0 else (0, 0)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False
