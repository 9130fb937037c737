"""Durations as operators write them in config and flags (``30s``, ``30m``, ``12h``, ``7d``,
``2w``): one whole number and one unit, nothing else, so a typo is refused rather than guessed."""
from __future__ import annotations

import re

__all__ = ["UNITS", "parse_duration"]

#: unit -> seconds
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")


def parse_duration(text: str) -> int:
    """Seconds in ``text`` (``<digits><s|m|h|d|w>``); ValueError saying what is expected otherwise."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} is not a duration: write a whole number and one unit, like 30s, 30m, 12h, 7d "
                         f"or 2w")
    return int(m.group(1)) * UNITS[m.group(2)]

