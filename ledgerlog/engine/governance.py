"""Energy market parameters the treasury may change (docs/PROTOCOL.md §8.5): their names, ranges
and genesis values, written once for admission, the write-side fold, projections and verify."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .genesis import Genesis

__all__ = ["I64_MAX", "PARAMETERS", "Parameter", "genesis_values", "out_of_range"]

I64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Parameter:
    """One parameter: its name, inclusive range and value before any change (from genesis)."""

    name: str
    lo: int
    hi: int
    initial: Callable[[Genesis], int]
    doc: str


#: Every parameter, by name. A registration checks stake >= min_stake (STAKE_TOO_LOW) and
#: price_per_kwh <= max_price_per_kwh (PRICE_TOO_HIGH) with the values in force when admitted.
PARAMETERS: dict[str, Parameter] = {p.name: p for p in (
    Parameter("min_stake", 0, I64_MAX, lambda g: g.energy.min_stake,
              "least stake a provider registration locks (genesis energy.min_stake)"),
    Parameter("max_price_per_kwh", 1, I64_MAX, lambda g: I64_MAX,
              "highest price_per_kwh a provider registration may ask (2^63-1, no cap, until changed)"),
)}


def genesis_values(g: Genesis) -> dict[str, int]:
    """Every parameter's value at height 0."""
    return {name: p.initial(g) for name, p in PARAMETERS.items()}


def out_of_range(name: str, value: int) -> str | None:
    """Why ``value`` cannot be ``name``'s value, or None when it can (``name`` must be known)."""
    p = PARAMETERS[name]
    if not p.lo <= value <= p.hi:
        return f"{name} must be between {p.lo} and {p.hi}, got {value}"
    return None
