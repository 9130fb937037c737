"""Reading ingest files as numbered lines in constant memory, whatever their size."""
from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from ledgerlog.engine.admission.lines import MAX_LINE_BYTES

__all__ = ["numbered_lines"]


def numbered_lines(f: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each non-blank line. A line over ``limit`` bytes (its ending, LF or
    CRLF, not counted) is yielded cut to ``limit + 1`` bytes (so admission reports it MALFORMED)
    and the rest of it is skipped."""
    number = 0
    while True:
        line = f.readline(limit + 2)
        if not line:
            return
        number += 1
        ended = line.endswith(b"\n")
        body = line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith((b"\n", b"\r")) else line
        if len(body) > limit:
            while not ended:  # drain the remainder of the over-long line
                rest = f.readline(1 << 20)
                ended = not rest or rest.endswith(b"\n")
            yield number, line[:limit + 1]
            continue
        stripped = body.strip()
        if stripped:
            yield number, stripped
