"""Avro bytes of admitted events from parts already at hand, so no body is encoded twice.

Every signed event's record starts with its signed body (or header), whose Avro bytes are the
canonical bytes that were hashed and verified: the event's bytes are those followed by the
encoding of its other fields. A share's event is known but for its ``stamp_height`` (its last
field) before admission, so a worker encodes it ahead (``share_head``; ``prepare.py``)."""
from __future__ import annotations

from typing import Any

from .. import avro
from .. import topics as T
from ..avro_codegen import long_bytes

__all__ = ["signed_event", "share_head", "share_event"]

_SHARE = T.EVENT_SCHEMA[T.SHARES]


def signed_event(topic: str, canonical: bytes, event: dict[str, Any]) -> bytes:
    """The Avro bytes of ``event`` (of ``topic``), whose first field is the body ``canonical`` encodes."""
    return canonical + avro.fields_encoder(T.EVENT_SCHEMA[topic], 1)(event)


def share_head(event: dict[str, Any]) -> bytes:
    """The Avro bytes of a share event's fields before ``stamp_height`` (which ``event`` need not have)."""
    return avro.fields_encoder(_SHARE, 0, -1)(event)


def share_event(head: bytes, stamp_height: int) -> bytes:
    """A share event's Avro bytes from its ``share_head`` and its stamp height (its last field)."""
    return head + long_bytes(stamp_height)
