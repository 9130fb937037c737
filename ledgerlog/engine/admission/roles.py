"""Which key signs for which role identity, given genesis and the key rotations admitted so far
(docs/PROTOCOL.md §8). Without rotations this is exactly protocol v1's signer rules: producers
and oracles are the genesis keys, the pool's and the treasury's key is the key of that address.

A role identity never changes: the producer's and oracle's genesis address, the pool address,
the treasury address. A rotation moves an identity to a new key and retires the old one, so
block rewards, pool rounds and treasury funds stay where they are."""
from __future__ import annotations

from ..crypto import address_of
from ..genesis import Genesis
from .state import WriteState

__all__ = ["LOG_IDENTITY", "genesis_identity", "identity_of"]

#: The identity of the log key (PROTOCOL.md §9): the log itself, whichever key signs its heads.
LOG_IDENTITY = "log"


def genesis_identity(g: Genesis, role: str, pubkey: str) -> str | None:
    """The identity ``pubkey`` holds in ``role`` by genesis, or None."""
    addr = address_of(bytes.fromhex(pubkey))
    if role == "producer":
        return addr if pubkey in g.producers else None
    if role == "oracle":
        return addr if pubkey in g.oracles else None
    if role == "pool":
        return addr if addr == g.pool.address else None
    if role == "treasury":
        return addr if addr == g.energy.treasury else None
    if role == "log":
        return None  # no genesis names the log key: the node records its first one (log_origin)
    raise ValueError(f"unknown role {role!r}")


def identity_of(st: WriteState, g: Genesis, role: str, pubkey: str) -> str | None:
    """The identity ``pubkey`` signs for in ``role`` now; None when it holds none (never did, or
    a rotation retired it)."""
    rotated = st.role_key(role, pubkey)
    if rotated is not None:
        identity, active = rotated
        return identity if active else None
    if role == "log":
        return LOG_IDENTITY if pubkey == st.log_origin() else None
    return genesis_identity(g, role, pubkey)
