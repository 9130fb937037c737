"""Settlement gauges of the energy market (docs/PROTOCOL.md §8.5), read from the energy and
chainstate projections at scrape time:

- ``ledgerlog_energy_unsettled_joules``: energy credited but not settled, all providers
  (1 milli-kWh = 1 Wh = 3600 J, so the value is exact).
- ``ledgerlog_energy_provider_unsettled_age_seconds{provider}``: provider fulfilment time so far:
  now minus the chain time at which the provider's oldest energy not settled yet was credited
  (settlements pay the oldest credit first; a reading credited while block h was the tip counts
  from block h's timestamp, the genesis timestamp for h = 0). Only providers with unsettled
  energy, at most ``MAX_PROVIDERS`` of them (those waiting longest).
- ``ledgerlog_energy_settlement_lag_seconds``: the largest of those ages, the oldest wait of every
  provider (0 when all is settled).
- ``ledgerlog_energy_last_settlement_age_seconds``: now minus the chain time of the newest settlement
  (of genesis before any), for the settlement-stall alert.
Chain time is block header time, which admission keeps increasing; the node's clock is "now"."""
from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from ledgerlog.projections import chainstate, energy

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["JOULES_PER_MILLI_KWH", "MAX_PROVIDERS", "SettlementGauges"]

JOULES_PER_MILLI_KWH = 3600
MAX_PROVIDERS = 500
_FRESH = 1.0  # seconds one reading of the projections serves the four gauges of a scrape


class SettlementGauges:
    """The four gauges' callbacks over one node; one read of the projections per scrape."""

    def __init__(self, node: NodeContext, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def _view(self, name: str) -> Any:
        return self.node.runner.handles[name].store.view()

    def _chain_time(self, view: Any, height: int) -> float | None:
        """Seconds since the epoch of block ``height`` (genesis for 0); None if not folded yet."""
        if height <= 0:
            return self.node.genesis.timestamp / 1000
        found = chainstate.block(view, height)
        return None if found is None else found["header"]["timestamp"] / 1000

    def read(self) -> dict[str, Any]:
        """{unsettled_joules, ages: {provider: seconds}, lag, since_settlement}, at most
        ``_FRESH`` seconds old."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < _FRESH:
                return self._cached[1]
            handles = self.node.runner.handles
            if handles["energy"].failed is not None or handles["chainstate"].failed is not None:
                out: dict[str, Any] = {}
            else:
                out = self._measure()
            self._cached = (now, out)
            return out

    def _measure(self) -> dict[str, Any]:
        ev, cs, now = self._view("energy"), self._view("chainstate"), self.clock()
        waits = heapq.nsmallest(MAX_PROVIDERS, energy.unsettled(ev), key=lambda w: (w[1], w[0]))  # oldest first
        ages: dict[str, float] = {}
        for pid, since in waits:
            at = self._chain_time(cs, since)
            if at is not None:
                ages[pid] = max(0.0, now - at)
        last = energy.last_settlement_height(ev)
        settled_at = self._chain_time(cs, last or 0)
        return {"unsettled_joules": energy.market(ev)["unsettled_milli_kwh"] * JOULES_PER_MILLI_KWH,
                "ages": ages, "lag": max(ages.values(), default=0.0),
                "since_settlement": None if settled_at is None else max(0.0, now - settled_at)}

    # -- callbacks ----------------------------------------------------------------------------
    def unsettled(self, _: CallbackOptions) -> Iterable[Observation]:
        found = self.read()
        if found:
            yield Observation(found["unsettled_joules"])

    def provider_ages(self, _: CallbackOptions) -> Iterable[Observation]:
        for pid, age in self.read().get("ages", {}).items():
            yield Observation(age, {"provider": pid})

    def lag(self, _: CallbackOptions) -> Iterable[Observation]:
        found = self.read()
        if found:
            yield Observation(found["lag"])

    def since_settlement(self, _: CallbackOptions) -> Iterable[Observation]:
        since = self.read().get("since_settlement")
        if since is not None:
            yield Observation(since)
