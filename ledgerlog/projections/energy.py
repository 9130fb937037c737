"""Energy market: per provider its registration, credited and settled milli-kWh, settled amount;
market totals (PROTOCOL.md §6).

Keys: ``p/<provider_id>`` -> [owner, meter_id, stake, price_per_kwh, registered_height,
credited_milli_kwh, settled_milli_kwh, settled_amount, readings, settlements] (the first five
are null until the registration is folded); ``m`` -> [providers, sum of price_per_kwh, total
stake, credited, settled milli-kWh, settled amount, readings, settlements].
Commutative: readings and settlements are sums that accumulate whether or not the registration
was folded yet; the registration only sets its own fields. Should a provider_id ever be
registered twice (admission refuses it), the lesser (stamp_height, body fields) wins, so even
then the order of folding does not matter."""
from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from ledgerlog.engine import topics as T
from ledgerlog.engine.genesis import Genesis

from .base import Event, Txn, View, jdump, jload

NAME = "energy"
VERSION = 1
TOPICS = (T.PROVIDERS, T.READINGS, T.SETTLEMENTS)
#: the event fields the fold reads
FIELDS = {
    T.PROVIDERS: ("body.provider_id", "body.owner", "body.meter_id", "body.stake", "body.price_per_kwh",
                  "stamp_height"),
    T.READINGS: ("body.provider_id", "body.milli_kwh"),
    T.SETTLEMENTS: ("body.provider_id", "body.milli_kwh", "body.amount"),
}

__all__ = ["NAME", "VERSION", "TOPICS", "initial", "fold", "provider", "market", "providers"]

# positions in a provider record
OWNER, METER, STAKE, PRICE, REG_HEIGHT, CREDITED, SETTLED, AMOUNT, READINGS, SETTLEMENTS = range(10)
# positions in the market record
(M_PROVIDERS, M_PRICE_SUM, M_STAKE, M_CREDITED, M_SETTLED, M_AMOUNT, M_READINGS,
 M_SETTLEMENTS) = range(8)


def _pkey(provider_id: str) -> bytes:
    return b"p/" + provider_id.encode()


def _empty() -> list[Any]:
    return [None, None, None, None, None, 0, 0, 0, 0, 0]


def initial(genesis: Genesis, txn: Txn) -> None:
    txn.put(b"m", jdump([0] * 8))


class _Batch:
    """Providers and totals touched by one batch, written once at the end."""

    def __init__(self, txn: Txn) -> None:
        self.txn = txn
        self.market: list[int] = jload(txn.get(b"m")) or [0] * 8
        self.provs: dict[str, list[Any]] = {}

    def prov(self, provider_id: str) -> list[Any]:
        p = self.provs.get(provider_id)
        if p is None:
            p = self.provs[provider_id] = jload(self.txn.get(_pkey(provider_id))) or _empty()
        return p

    def register(self, ev: dict[str, Any]) -> None:
        b = ev["body"]
        p, m = self.prov(b["provider_id"]), self.market
        reg = [b["owner"], b["meter_id"], b["stake"], b["price_per_kwh"], ev["stamp_height"]]
        if p[OWNER] is None:
            m[M_PROVIDERS] += 1
        elif (reg[4], *reg[:4]) >= (p[REG_HEIGHT], *p[:4]):
            return
        m[M_PRICE_SUM] += reg[PRICE] - (p[PRICE] or 0)
        m[M_STAKE] += reg[STAKE] - (p[STAKE] or 0)
        p[:5] = reg

    def reading(self, ev: dict[str, Any]) -> None:
        b = ev["body"]
        p = self.prov(b["provider_id"])
        p[CREDITED] += b["milli_kwh"]
        p[READINGS] += 1
        self.market[M_CREDITED] += b["milli_kwh"]
        self.market[M_READINGS] += 1

    def settlement(self, ev: dict[str, Any]) -> None:
        b = ev["body"]
        p, m = self.prov(b["provider_id"]), self.market
        p[SETTLED] += b["milli_kwh"]
        p[AMOUNT] += b["amount"]
        p[SETTLEMENTS] += 1
        m[M_SETTLED] += b["milli_kwh"]
        m[M_AMOUNT] += b["amount"]
        m[M_SETTLEMENTS] += 1

    def flush(self) -> None:
        for provider_id, p in self.provs.items():
            self.txn.put(_pkey(provider_id), jdump(p))
        self.txn.put(b"m", jdump(self.market))


def fold(genesis: Genesis, events: Iterable[Event], txn: Txn) -> None:
    batch = _Batch(txn)
    for topic, ev in events:
        if topic == T.READINGS:
            batch.reading(ev)
        elif topic == T.SETTLEMENTS:
            batch.settlement(ev)
        elif topic == T.PROVIDERS:
            batch.register(ev)
    batch.flush()


def _as_dict(provider_id: str, p: list[Any]) -> dict[str, Any]:
    return {
        "provider_id": provider_id, "registered": p[OWNER] is not None, "owner": p[OWNER],
        "meter_id": p[METER], "stake": p[STAKE], "price_per_kwh": p[PRICE],
        "registered_height": p[REG_HEIGHT], "credited_milli_kwh": p[CREDITED],
        "settled_milli_kwh": p[SETTLED], "unsettled_milli_kwh": p[CREDITED] - p[SETTLED],
        "settled_amount": p[AMOUNT], "readings": p[READINGS], "settlements": p[SETTLEMENTS],
    }


def provider(view: View, provider_id: str) -> dict[str, Any] | None:
    """A provider's registration and energy; None when nothing is known of it. ``registered`` is
    false (registration fields null) only while its registration is not folded yet."""
    p = jload(view.get(_pkey(provider_id)))
    return None if p is None else _as_dict(provider_id, p)


def market(view: View) -> dict[str, Any]:
    m = jload(view.get(b"m")) or [0] * 8
    return {
        "providers": m[M_PROVIDERS], "credited_milli_kwh": m[M_CREDITED],
        "traded_milli_kwh": m[M_SETTLED], "settled_milli_kwh": m[M_SETTLED],
        "unsettled_milli_kwh": m[M_CREDITED] - m[M_SETTLED], "settled_amount": m[M_AMOUNT],
        "average_price_per_kwh": m[M_PRICE_SUM] // m[M_PROVIDERS] if m[M_PROVIDERS] else 0,
        "total_stake": m[M_STAKE], "readings": m[M_READINGS], "settlements": m[M_SETTLEMENTS],
    }


def providers(view: View, limit: int = 20) -> list[dict[str, Any]]:
    """The providers with the most credited energy (ties by id), for dashboards and metrics."""
    rows = ((-p[CREDITED], k[2:].decode(), p) for k, p in
            ((k, jload(v)) for k, v in view.items(b"p/")))
    return [_as_dict(pid, p) for _, pid, p in heapq.nsmallest(limit, rows)]
