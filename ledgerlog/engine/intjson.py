"""JSON for stored state and answers in which any integer round-trips exactly.

orjson refuses integers beyond 64 bits when writing and reads them back as floats, but totals a
projection derives from signed 64-bit fields are unbounded (PROTOCOL.md §7). ``dumps`` is
orjson's bytes whenever orjson can write the value (so stores written before keep their bytes
and digests); otherwise the stdlib's compact JSON behind one leading space, still valid JSON,
which tells ``loads`` to read it with the stdlib, exactly."""
from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "dumps_any", "loads"]

_WIDE = b" "  # JSON allows leading whitespace; orjson never writes it


def _stdlib(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def dumps(value: Any) -> bytes:
    """Compact JSON of ``value``; integers of any size."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits (anything else fails the stdlib too)
        return _WIDE + _stdlib(value)


def loads(raw: bytes) -> Any:
    """Read what ``dumps`` wrote, integers exactly."""
    if raw[:1] == _WIDE:
        return json.loads(raw)
    return orjson.loads(raw)


def dumps_any(value: Any, option: int = 0) -> bytes:
    """JSON for an answer (HTTP body, CLI output): orjson with ``option``, or the stdlib for
    what orjson refuses: integers beyond 64 bits, and strings that are not UTF-8 (a client's
    lone surrogate echoed back: escaped, as JSON allows); never the marker, which is for stored
    state."""
    try:
        return orjson.dumps(value, option=option)
    except TypeError:
        indent = 2 if option & orjson.OPT_INDENT_2 else None
        separators = (",", ":") if indent is None else None
        return json.dumps(value, allow_nan=False, indent=indent, separators=separators).encode()
