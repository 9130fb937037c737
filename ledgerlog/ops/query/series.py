"""Per-block series for the dashboard's charts, answered whole so the charts are full on first
paint. Block figures (time, interval, transactions, fees) come from chainstate. No projection
keeps the mempool size or the energy credited per height, so a running node samples those
(``Samples``) and a height it never saw as the tip has them null."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["COIN_DECIMALS", "SERIES_BLOCKS", "Samples", "block_series"]

SERIES_BLOCKS = 60  # blocks in the dashboard's series (and its recent-blocks read)
COIN_DECIMALS = 8  # the dashboard's denomination: 1 coin = 10^8 base units (docs/DESIGN.md)


class Samples:
    """The mempool size and energy credited (milli-kWh, market total) when the node first saw
    each height as the tip; the newest ``limit`` heights, in memory only."""

    def __init__(self, limit: int = 2 * SERIES_BLOCKS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._by_height: OrderedDict[int, tuple[int, int | None]] = OrderedDict()

    def record(self, height: int, mempool: int, credited: int | None) -> None:
        with self._lock:
            if height in self._by_height:
                return  # the first look at a tip is the one kept
            self._by_height[height] = (mempool, credited)
            while len(self._by_height) > self.limit:
                self._by_height.popitem(last=False)  # heights only grow: the first is the oldest

    def get(self, height: int) -> tuple[int, int | None] | None:
        with self._lock:
            return self._by_height.get(height)


def block_series(recent: list[dict[str, Any]], samples: Samples, credited_now: int | None) -> list[dict[str, Any]]:
    """``recent`` (chainstate.recent_blocks, newest first) oldest first, each block with its
    interval from the previous one (null for the oldest), its sampled ``mempool``, and
    ``energy_credited_milli_kwh``: what was credited while it was the tip (the tip's so far),
    null unless both ends were sampled."""
    out: list[dict[str, Any]] = []
    blocks = recent[::-1]
    for i, b in enumerate(blocks):
        here = samples.get(b["height"])
        after = samples.get(b["height"] + 1)
        end = after[1] if after is not None else (credited_now if i == len(blocks) - 1 else None)
        energy = None
        if here is not None and here[1] is not None and end is not None:
            energy = end - here[1]
        out.append({"height": b["height"], "timestamp": b["timestamp"], "tx_count": b["tx_count"],
                    "fees": b["fees"],
                    "interval_ms": b["timestamp"] - blocks[i - 1]["timestamp"] if i else None,
                    "mempool": here[0] if here is not None else None,
                    "energy_credited_milli_kwh": energy})
    return out
