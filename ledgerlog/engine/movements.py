"""The money-movement rules of PROTOCOL.md §6, written once: the write side applies them when it
admits an event, and the balances projection folds the very same function over the log."""
from __future__ import annotations

from typing import Any

from . import topics as T
from .genesis import Genesis

__all__ = ["Movement", "movements", "confirmed_nonce", "event_height"]

#: (address, balance delta, staked delta)
Movement = tuple[str, int, int]


def movements(topic: str, ev: dict[str, Any], genesis: Genesis) -> list[Movement]:
    """Balance and stake changes an admitted event makes. Shares and mempool entries move nothing."""
    if topic == T.TRANSACTIONS:
        b = ev["body"]
        return [(b["sender"], -(b["amount"] + b["fee"]), 0), (b["recipient"], b["amount"], 0)]
    if topic == T.BLOCKS:
        return [(ev["header"]["producer"], ev["reward"] + ev["fees"], 0)]
    if topic == T.PROVIDERS:
        b = ev["body"]
        return [(b["owner"], -b["stake"], b["stake"])]
    if topic == T.SETTLEMENTS:
        amount = ev["body"]["amount"]
        return [(genesis.energy.treasury, -amount, 0), (ev["owner"], amount, 0)]
    if topic == T.PAYOUTS:
        b = ev["body"]
        return [(genesis.pool.address, -b["amount"], 0), (b["address"], b["amount"], 0)]
    return []


def confirmed_nonce(topic: str, ev: dict[str, Any]) -> tuple[str, int] | None:
    """(sender, nonce) a confirmed transaction sets; an account's nonce is the highest one."""
    if topic == T.TRANSACTIONS:
        return ev["body"]["sender"], ev["body"]["nonce"]
    return None


def event_height(topic: str, ev: dict[str, Any]) -> int:
    """The height an event takes effect at: its block's, or the tip when it was admitted."""
    h: int
    if topic == T.BLOCKS:
        h = ev["header"]["height"]
    elif topic == T.TRANSACTIONS:
        h = ev["height"]
    else:
        h = ev["stamp_height"]
    return h
