"""Progress bars for CLI commands: drawn on stderr when it is a terminal, absent on pipes and
files (so scripts and logs get nothing but the JSON). The one place commands get a bar from."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

__all__ = ["progress_bar"]

Tick = Callable[[int], None]


@contextlib.contextmanager
def progress_bar(desc: str, *, total: int | None = None, unit: str = " records",
                 stream: TextIO | None = None) -> Iterator[Tick | None]:
    """``with progress_bar("ingest x", total=n) as tick:`` -- ``tick(k)`` advances by ``k``;
    ``tick`` is None when ``stream`` (default stderr) is not a terminal. Callers get a plain
    function, never the bar: a tqdm without a total refuses ``bool()`` (``if bar:``)."""
    out = sys.stderr if stream is None else stream
    if not _is_terminal(out):
        yield None
        return
    from tqdm import tqdm
    sized = _size(out) > (0, 0)  # a terminal that reports no size (0x0) would get no bar at all
    bar = tqdm(desc=desc, total=total, unit=unit, unit_scale=True,
               unit_divisor=1024 if unit.strip() == "B" else 1000, file=out, leave=True,
               dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24)
    try:
        yield bar.update
    finally:
        bar.close()


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
