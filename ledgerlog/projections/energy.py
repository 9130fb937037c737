"""Energy market: per provider its registration, credited and settled milli-kWh, settled amount,
with history by height; market totals; governance parameters by height (PROTOCOL.md §6,
docs/PROTOCOL.md §8.5).

Keys: ``p/<provider_id>`` -> [owner, meter_id, stake, price_per_kwh, registered_height,
credited_milli_kwh, settled_milli_kwh, settled_amount, readings, settlements, last_height] (the
first five null until the registration is folded); ``h/<len:2><provider_id><height:8>`` ->
[credited, settled, settled amount, readings, settlements] as of that height, so "provider at H"
is one seek; ``m`` -> [providers, sum of price_per_kwh, total stake, credited, settled milli-kWh,
settled amount, readings, settlements, credited of registered providers, sum over registered
providers of price_per_kwh x credited, height of the newest settlement]; ``mh/<height:8>`` -> the
first ten of those as of that height (an entry at the stamp height of every provider, reading and
settlement event), so "the market at H" is one seek (``mt`` -> [height, entry] of the newest); ``g/<parameter>/<height:8>`` -> [value, seq,
change_id] of the last change (highest seq) stamped at that height.
Commutative: readings and settlements are sums that accumulate whether or not the registration
was folded yet (an event below a provider's newest history entry adds its delta to every later
entry, and likewise to every later market entry); the registration only sets its own fields and
adds its share to the market entries from its height on. Should a provider_id ever be registered twice
(admission refuses it), the lesser (stamp_height, body fields) wins, so even then the order of
folding does not matter; governance changes are ordered by their seq."""
from __future__ import annotations

import heapq
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from ledgerlog.engine import topics as T
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.governance import PARAMETERS

from .base import Event, Txn, View, h8, height_of_key, jdump, jload

NAME = "energy"
VERSION = 3  # 3: market history by height (mh/)
TOPICS = (T.PROVIDERS, T.READINGS, T.SETTLEMENTS, T.GOVERNANCE)
#: the event fields the fold reads
FIELDS = {
    T.PROVIDERS: ("body.provider_id", "body.owner", "body.meter_id", "body.stake", "body.price_per_kwh",
                  "stamp_height"),
    T.READINGS: ("body.provider_id", "body.milli_kwh", "stamp_height"),
    T.SETTLEMENTS: ("body.provider_id", "body.milli_kwh", "body.amount", "stamp_height"),
    T.GOVERNANCE: ("body.parameter", "body.value", "change_id", "seq", "stamp_height"),
}

__all__ = ["NAME", "VERSION", "TOPICS", "initial", "fold", "provider", "market", "providers", "settlement_counts", "page",
           "parameters", "last_settlement_height", "unsettled_since", "unsettled", "below"]

# positions in a provider record
OWNER, METER, STAKE, PRICE, REG_HEIGHT, CREDITED, SETTLED, AMOUNT, READINGS, SETTLEMENTS, LAST = range(11)
# positions in the market record
(M_PROVIDERS, M_PRICE_SUM, M_STAKE, M_CREDITED, M_SETTLED, M_AMOUNT, M_READINGS, M_SETTLEMENTS,
 M_REG_CREDITED, M_WEIGHTED, M_LAST_SETTLED) = range(11)
_LEN = struct.Struct(">H")
_MH = b"mh/"  # market history: the first ten fields of the market record as of a height
_MTOP = b"mt"  # [height, entry] of the newest market history entry (a batch starts from it)
_NO_CHANGE = [0] * 10


def _pkey(provider_id: str) -> bytes:
    return b"p/" + provider_id.encode()


def _hprefix(provider_id: str) -> bytes:
    """History keys of one provider: the id's length first, so no id's prefix is another's."""
    raw = provider_id.encode()
    return b"h/" + _LEN.pack(len(raw)) + raw


def _empty() -> list[Any]:
    return [None, None, None, None, None, 0, 0, 0, 0, 0, -1]


def _no_market() -> list[int]:
    return [0] * 10 + [-1]


def initial(genesis: Genesis, txn: Txn) -> None:
    txn.put(b"m", jdump(_no_market()))


class _Batch:
    """Providers, history entries and totals touched by one batch, written once at the end."""

    def __init__(self, txn: Txn) -> None:
        self.txn = txn
        self.market: list[int] = jload(txn.get(b"m")) or _no_market()
        self.provs: dict[str, list[Any]] = {}
        self.hist: dict[tuple[str, int], list[int]] = {}
        newest = jload(txn.get(_MTOP))  # (one read: a seek for the last mh/ key walks a fold's overlay)
        self.mtop: int = newest[0] if newest else -1  # height of the newest market entry
        self.mcur: list[int] = newest[1] if newest else list(_NO_CHANGE)  # the market there
        self.mhist: dict[int, list[int]] = {}  # market entries this batch made or changed

    def prov(self, provider_id: str) -> list[Any]:
        p = self.provs.get(provider_id)
        if p is None:
            p = self.provs[provider_id] = jload(self.txn.get(_pkey(provider_id))) or _empty()
        return p

    def register(self, ev: dict[str, Any]) -> None:
        b = ev["body"]
        p, m = self.prov(b["provider_id"]), self.market
        reg = [b["owner"], b["meter_id"], b["stake"], b["price_per_kwh"], ev["stamp_height"]]
        self._market_from(reg[4], _NO_CHANGE)  # an entry at its height, whichever registration wins
        if p[OWNER] is None:
            m[M_PROVIDERS] += 1
            m[M_REG_CREDITED] += p[CREDITED]
        elif (reg[4], *reg[:4]) >= (p[REG_HEIGHT], *p[:4]):
            return
        else:
            self._registered_share(b["provider_id"], p, -1)
        m[M_PRICE_SUM] += reg[PRICE] - (p[PRICE] or 0)
        m[M_STAKE] += reg[STAKE] - (p[STAKE] or 0)
        m[M_WEIGHTED] += (reg[PRICE] - (p[PRICE] or 0)) * p[CREDITED]
        p[:5] = reg
        self._registered_share(b["provider_id"], p, 1)

    def _registered_share(self, provider_id: str, p: list[Any], sign: int) -> None:
        """Add (``sign`` 1) or take back (-1) what p's registration adds to the market entries: from
        its height on, a provider with its price and stake whose credited energy (as of each
        height) counts in the weighted price."""
        price, credited, steps = p[PRICE], *self._credited_from(provider_id, p, p[REG_HEIGHT])
        self._market_from(p[REG_HEIGHT], [sign, sign * price, sign * p[STAKE], 0, 0, 0, 0, 0,
                                          sign * credited, sign * price * credited])
        for height, more in steps:
            self._market_from(height, [0, 0, 0, 0, 0, 0, 0, 0, sign * more, sign * price * more])

    def _credited_from(self, provider_id: str, p: list[Any], height: int) -> tuple[int, list[tuple[int, int]]]:
        """(p's credited energy as of ``height``, [(h, credited added at h)] for each history
        entry above it)."""
        if p[LAST] <= height:  # nothing above it (the usual case: events come in height order)
            return p[CREDITED], []
        self._flush_history(provider_id)
        at, steps, before = 0, [], 0
        for key, raw in self.txn.items(_hprefix(provider_id)):
            h, credited = height_of_key(key), jload(raw)[0]
            if h <= height:
                at = credited
            elif credited != before:
                steps.append((h, credited - before))
            before = credited
        return at, steps

    def _market_from(self, height: int, delta: list[int]) -> None:
        """Add ``delta`` to the market entries at ``height`` and above, making one at ``height``."""
        if height >= self.mtop:
            if height > self.mtop:
                self.mcur, self.mtop = list(self.mcur), height
            cur = self.mcur
            for i, d in enumerate(delta):
                if d:
                    cur[i] += d
            self.mhist[height] = cur
            return
        self._flush_market()  # below the newest entry (rare): shift every entry from there on
        self._shift(_MH, height, delta)
        self.mcur = jload(self.txn.get(_MH + h8(self.mtop)))

    def _history(self, provider_id: str, p: list[Any], height: int, delta: list[int]) -> None:
        """Add ``delta`` to the provider's history from ``height`` on."""
        if height >= p[LAST]:
            p[LAST] = height
            self.hist[(provider_id, height)] = [p[CREDITED], p[SETTLED], p[AMOUNT], p[READINGS], p[SETTLEMENTS]]
            return
        self._flush_history(provider_id)  # below the newest entry (rare): shift every later entry
        self._shift(_hprefix(provider_id), height, delta)

    def _shift(self, prefix: bytes, height: int, delta: list[int]) -> None:
        """Add ``delta`` to the stored entries under ``prefix`` from ``height`` on, first making
        one at ``height`` (a copy of the entry below it, or zeros)."""
        at = prefix + h8(height)
        if self.txn.get(at) is None:
            prev = self.txn.last_at_or_before(prefix, at)
            self.txn.put(at, prev[1] if prev else jdump([0] * len(delta)))
        for key, raw in list(self.txn.items(prefix, at)):
            self.txn.put(key, jdump([a + d for a, d in zip(jload(raw), delta)]))

    def _flush_history(self, provider_id: str) -> None:
        """Write the provider's history entries this batch holds (before reading them back)."""
        prefix = _hprefix(provider_id)
        for (pid, h), v in list(self.hist.items()):
            if pid == provider_id:
                self.txn.put(prefix + h8(h), jdump(v))
                del self.hist[(pid, h)]

    def _flush_market(self) -> None:
        for height, v in self.mhist.items():
            self.txn.put(_MH + h8(height), jdump(v))
        self.mhist.clear()
        if self.mtop >= 0:
            self.txn.put(_MTOP, jdump([self.mtop, self.mcur]))

    def reading(self, ev: dict[str, Any]) -> None:
        b = ev["body"]
        pid, mkwh = b["provider_id"], b["milli_kwh"]
        p, m = self.prov(pid), self.market
        p[CREDITED] += mkwh
        p[READINGS] += 1
        m[M_CREDITED] += mkwh
        m[M_READINGS] += 1
        if p[OWNER] is not None:
            m[M_REG_CREDITED] += mkwh
            m[M_WEIGHTED] += p[PRICE] * mkwh
        height = ev["stamp_height"]
        self._history(pid, p, height, [mkwh, 0, 0, 1, 0])
        if p[OWNER] is None:
            self._market_from(height, [0, 0, 0, mkwh, 0, 0, 1, 0, 0, 0])
        elif p[REG_HEIGHT] <= height:
            self._market_from(height, [0, 0, 0, mkwh, 0, 0, 1, 0, mkwh, p[PRICE] * mkwh])
        else:  # credited below its registration: counts in the weighted price from there on
            self._market_from(height, [0, 0, 0, mkwh, 0, 0, 1, 0, 0, 0])
            self._market_from(p[REG_HEIGHT], [0, 0, 0, 0, 0, 0, 0, 0, mkwh, p[PRICE] * mkwh])

    def settlement(self, ev: dict[str, Any]) -> None:
        b = ev["body"]
        pid = b["provider_id"]
        p, m = self.prov(pid), self.market
        p[SETTLED] += b["milli_kwh"]
        p[AMOUNT] += b["amount"]
        p[SETTLEMENTS] += 1
        m[M_SETTLED] += b["milli_kwh"]
        m[M_AMOUNT] += b["amount"]
        m[M_SETTLEMENTS] += 1
        m[M_LAST_SETTLED] = max(m[M_LAST_SETTLED], ev["stamp_height"])
        self._history(pid, p, ev["stamp_height"], [0, b["milli_kwh"], b["amount"], 0, 1])
        self._market_from(ev["stamp_height"], [0, 0, 0, 0, b["milli_kwh"], b["amount"], 0, 1, 0, 0])

    def governance(self, ev: dict[str, Any]) -> None:
        key = b"g/" + ev["body"]["parameter"].encode() + b"/" + h8(ev["stamp_height"])
        have = jload(self.txn.get(key))
        if have is None or ev["seq"] > have[1]:  # the last change admitted at that height wins
            self.txn.put(key, jdump([ev["body"]["value"], ev["seq"], ev["change_id"]]))

    def flush(self) -> None:
        for provider_id, p in self.provs.items():
            self.txn.put(_pkey(provider_id), jdump(p))
        for (provider_id, height), v in self.hist.items():
            self.txn.put(_hprefix(provider_id) + h8(height), jdump(v))
        self._flush_market()
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
        elif topic == T.GOVERNANCE:
            batch.governance(ev)
    batch.flush()


# -- reads ---------------------------------------------------------------------------------------
def _at(view: View, provider_id: str, height: int) -> list[int]:
    """[credited, settled, amount, readings, settlements] as of ``height``."""
    prefix = _hprefix(provider_id)
    found = view.last_at_or_before(prefix, prefix + h8(height))
    return jload(found[1]) if found else [0] * 5


def unsettled_since(view: View, provider_id: str, settled: int, credited: int, upto: int) -> int | None:
    """The height at which the oldest energy not settled yet was credited (settlements pay the
    oldest credit first), or None when everything credited up to ``upto`` is settled. A binary
    search over heights: credited as of a height never falls as the height grows."""
    if credited <= settled:
        return None
    lo, hi = 0, upto  # credited(hi) > settled
    while lo < hi:
        mid = (lo + hi) // 2
        if _at(view, provider_id, mid)[0] > settled:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _as_dict(view: View, provider_id: str, p: list[Any], height: int | None) -> dict[str, Any] | None:
    registered = p[OWNER] is not None and (height is None or p[REG_HEIGHT] <= height)
    if height is None:
        sums, upto = p[CREDITED:SETTLEMENTS + 1], p[LAST]
    else:
        sums, upto = _at(view, provider_id, height), min(height, p[LAST])
        if not registered and not any(sums):
            return None  # nothing of it by that height
    credited, settled, amount, readings, settlements = sums
    reg = p[:5] if registered else [None] * 5
    return {
        "provider_id": provider_id, "registered": registered, "owner": reg[OWNER],
        "meter_id": reg[METER], "stake": reg[STAKE], "price_per_kwh": reg[PRICE],
        "registered_height": reg[REG_HEIGHT], "credited_milli_kwh": credited,
        "settled_milli_kwh": settled, "unsettled_milli_kwh": credited - settled,
        "settled_amount": amount, "readings": readings, "settlements": settlements,
        "unsettled_since_height": unsettled_since(view, provider_id, settled, credited, upto),
    }


def below(key: bytes, value: bytes, height: int) -> bool:
    """Does this entry hold history from below ``height`` (a provider's or a parameter's state as
    of a height there)? After a prune below it the raw reads leave it out."""
    return key.startswith((b"h/", b"g/", _MH)) and height_of_key(key) < height


def provider(view: View, provider_id: str, height: int | None = None) -> dict[str, Any] | None:
    """A provider's registration and energy, now or as of ``height``; None when nothing is known of
    it (by then). ``registered`` is false (registration fields null) only while its registration
    is not folded yet (or, as of a height, not admitted by then)."""
    p = jload(view.get(_pkey(provider_id)))
    return None if p is None else _as_dict(view, provider_id, p, height)


def unsettled(view: View) -> Iterator[tuple[str, int]]:
    """(provider_id, ``unsettled_since`` height) of every provider with energy not settled yet,
    in provider_id order (for the settlement gauges: the oldest wait of them all)."""
    for pid, p in _records(view):
        if p[CREDITED] > p[SETTLED]:
            since = unsettled_since(view, pid, p[SETTLED], p[CREDITED], p[LAST])
            if since is not None:
                yield pid, since


def _records(view: View, after: str | None = None) -> Iterator[tuple[str, list[Any]]]:
    start = None if after is None else _pkey(after) + b"\x00"
    for k, v in view.items(b"p/", start):
        yield k[2:].decode(), jload(v)


def page(view: View, limit: int, after: str | None = None, height: int | None = None) -> list[dict[str, Any]]:
    """Up to ``limit`` providers in provider_id order (UTF-8 bytes), after ``after``; as of
    ``height`` when given (providers nothing was known of by then are left out)."""
    out: list[dict[str, Any]] = []
    for pid, p in _records(view, after):
        row = _as_dict(view, pid, p, height)
        if row is not None:
            out.append(row)
            if len(out) >= limit:
                break
    return out


def _average(weighted: int, reg_credited: int, price_sum: int, providers: int) -> int:
    """Mean price_per_kwh of registered providers weighted by their credited energy (floor), the
    plain mean (floor) while none has credited energy, 0 without providers."""
    if reg_credited > 0:
        return weighted // reg_credited
    return price_sum // providers if providers else 0


def _market(m: list[int]) -> dict[str, Any]:
    return {
        "providers": m[M_PROVIDERS], "credited_milli_kwh": m[M_CREDITED],
        "traded_milli_kwh": m[M_SETTLED], "settled_milli_kwh": m[M_SETTLED],
        "unsettled_milli_kwh": m[M_CREDITED] - m[M_SETTLED], "settled_amount": m[M_AMOUNT],
        "average_price_per_kwh": _average(m[M_WEIGHTED], m[M_REG_CREDITED], m[M_PRICE_SUM], m[M_PROVIDERS]),
        "mean_price_per_kwh": m[M_PRICE_SUM] // m[M_PROVIDERS] if m[M_PROVIDERS] else 0,
        "total_stake": m[M_STAKE], "readings": m[M_READINGS], "settlements": m[M_SETTLEMENTS],
    }


def market(view: View, height: int | None = None) -> dict[str, Any]:
    """Market totals now, or as of ``height``: one read or one seek."""
    if height is None:
        return _market(jload(view.get(b"m")) or _no_market())
    found = view.last_at_or_before(_MH, _MH + h8(height))
    return _market(jload(found[1]) if found else _NO_CHANGE)


def last_settlement_height(view: View) -> int | None:
    """The stamp height of the newest settlement; None before any."""
    h: int = (jload(view.get(b"m")) or _no_market())[M_LAST_SETTLED]
    return None if h < 0 else h


def _ranked(view: View, limit: int) -> list[tuple[str, list[Any]]]:
    """(provider_id, record) of the ``limit`` providers with the most credited energy (ties by id)."""
    return [(pid, p) for _, pid, p in heapq.nsmallest(limit, ((-p[CREDITED], pid, p) for pid, p in _records(view)))]


def providers(view: View, limit: int = 20) -> list[dict[str, Any]]:
    """The providers with the most credited energy (ties by id), for dashboards."""
    return [row for pid, p in _ranked(view, limit) if (row := _as_dict(view, pid, p, None)) is not None]


def settlement_counts(view: View, limit: int) -> list[tuple[str, int]]:
    """(provider_id, settlements) of the providers with the most credited energy (the metrics'
    per-provider series): ``providers`` without the rest of each row (its unsettled-since search
    was most of a scrape's cost)."""
    return [(pid, p[SETTLEMENTS]) for pid, p in _ranked(view, limit)]


def parameters(view: View, genesis: Genesis, height: int | None = None) -> dict[str, dict[str, Any]]:
    """Each governance parameter's value now or as of ``height``, with the height it took that
    value at and the change that set it (null: the genesis value)."""
    out = {}
    for name, param in PARAMETERS.items():
        prefix = b"g/" + name.encode() + b"/"
        found = view.last_at_or_before(prefix, prefix + h8((1 << 64) - 1 if height is None else height))
        if found is None:
            out[name] = {"value": param.initial(genesis), "since_height": 0, "change_id": None, "seq": None}
        else:
            value, seq, change_id = jload(found[1])
            out[name] = {"value": value, "since_height": int.from_bytes(found[0][len(prefix):], "big"),
                         "change_id": change_id, "seq": seq}
    return out
