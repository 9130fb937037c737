"""What every peer shares: its arguments arrive as one JSON object on the command line, it loads
the neutral transfer events (benchmarks.history), folds them its own way from zero, and prints
one JSON object with its figures and the checksum of the balances it ended with."""
from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ..common import answer, rate
from ..history import checksum, fold, load_events

__all__ = ["figure", "load", "main", "moves", "reference"]


def load(args: dict[str, Any]) -> list[list[Any]]:
    """The events this peer folds: the file's first ``limit`` (all when absent)."""
    return load_events(args["events"], args.get("limit"))


def moves(e: Sequence[Any]) -> tuple[tuple[str, int], ...]:
    """(address, delta) pairs of one neutral event: the same fold, spelled as movements."""
    if e[0] == "t":
        return (e[1], -(e[3] + e[4])), (e[2], e[3])
    return ((e[1], e[2]),)


def figure(n: int, secs: float, **extra: Any) -> dict[str, Any]:
    return {"events": n, "seconds": round(secs, 3), "events_per_s": rate(n, secs), **extra}


def reference(events: list[list[Any]]) -> str:
    return checksum(fold(events))


def main(run: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Run a peer from ``sys.argv[1]`` (JSON) and print its result as one JSON line."""
    args = json.loads(sys.argv[1])
    t = time.perf_counter()
    try:
        res = run(args)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the harness goes on without this peer
        traceback.print_exc(file=sys.stderr)
        res = {"error": f"{type(exc).__name__}: {exc}"}
    res["wall_seconds"] = round(time.perf_counter() - t, 2)
    answer(res)
