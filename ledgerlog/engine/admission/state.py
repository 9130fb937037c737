"""The write side's own state (tip, accounts, mempool, ids, providers, pool rounds), read through
a two-level overlay: changes of the line being checked, then of the batch not yet committed.
A rejected line drops its level; a committed batch goes to the log in the same atomic write as
its records (embedded log: one RocksDB WriteBatch)."""
from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

from .. import intjson
from ..genesis import Genesis
from ..governance import PARAMETERS
from ..log.base import Log

__all__ = ["Tip", "Account", "WriteState", "init_state"]

_MISSING = object()
_U64 = struct.Struct(">Q")
_CACHE_MAX = 200_000  # committed values kept in memory (about 50 MB at most)


class Tip(NamedTuple):  # tuples, not frozen dataclasses: made per line, and 4x cheaper
    height: int
    hash: str
    timestamp: int


class Account(NamedTuple):
    balance: int = 0
    staked: int = 0
    nonce: int = 0


_NO_ACCOUNT = Account()
_tuple_new = tuple.__new__


def _k(prefix: bytes, ident: str) -> bytes:
    return prefix + ident.encode()


class WriteState:
    """Typed access to the write-side state; values in the overlays are immutable objects. One
    writer: the admitter uses its instance under its lock; any other reader makes its own."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self._batch: dict[bytes, Any] = {}
        self._line: dict[bytes, Any] = {}
        # committed values already read (None: absent); valid while this object is the only
        # writer of the state, as the admitter's is. Keys a batch changes are dropped on commit.
        self._cache: dict[bytes, Any] = {}

    # -- overlay mechanics ----------------------------------------------------------------
    def _get(self, key: bytes) -> Any:
        v = self._line.get(key, _MISSING)
        if v is _MISSING:
            v = self._batch.get(key, _MISSING)
        if v is _MISSING:
            v = self._cache.get(key, _MISSING)
        if v is _MISSING:
            raw = self._log.state_get(key)
            v = None if raw is None else intjson.loads(raw)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = v
        return v

    def prefetch(self, keys: list[bytes]) -> None:
        """Read the committed values of ``keys`` that no overlay or cache holds, in one call, into
        the cache: the lookups a chunk's rules will make, batched (the rules still read them in
        order, through the overlays first)."""
        line, batch, cache = self._line, self._batch, self._cache
        todo = [k for k in dict.fromkeys(keys) if k not in line and k not in batch and k not in cache]
        if not todo:
            return
        if len(cache) + len(todo) > _CACHE_MAX:
            cache.clear()
        loads = intjson.loads
        for key, raw in zip(todo, self._log.state_get_many(todo)):
            cache[key] = None if raw is None else loads(raw)

    def _put(self, key: bytes, value: Any) -> None:
        self._line[key] = value

    def keep_line(self) -> None:
        self._batch.update(self._line)
        self._line.clear()

    def drop_line(self) -> None:
        self._line.clear()

    def drop_batch(self) -> None:
        self._line.clear()
        self._batch.clear()

    def forget(self) -> None:
        """Drop every value read: the state was written by someone else (a catch-up from the log)."""
        self.drop_batch()
        self._cache.clear()

    def take_batch(self) -> dict[bytes, bytes | None]:
        out = {k: None if v is None else intjson.dumps(v) for k, v in self._batch.items()}
        for k in out:
            self._cache.pop(k, None)
        self._batch.clear()
        return out

    # -- tip and blocks -------------------------------------------------------------------
    def tip(self) -> Tip:
        h, hsh, ts = self._get(b"tip")
        return Tip(h, hsh, ts)

    def tip_height(self) -> int:
        """``tip().height``, without making the Tip."""
        h: int = self._get(b"tip")[0]
        return h

    def set_tip(self, tip: Tip) -> None:
        self._put(b"tip", (tip.height, tip.hash, tip.timestamp))

    def block_hash(self, height: int) -> str | None:
        h: str | None = self._get(b"bh/" + _U64.pack(height))
        return h

    def set_block_hash(self, height: int, block_hash: str) -> None:
        self._put(b"bh/" + _U64.pack(height), block_hash)

    def pool_round(self, height: int) -> tuple[int, int] | None:
        """(cap = reward + fees, paid so far) of a block the pool produced."""
        v = self._get(b"rd/" + _U64.pack(height)) if height >= 0 else None
        return None if v is None else (v[0], v[1])

    def set_pool_round(self, height: int, cap: int, paid: int) -> None:
        self._put(b"rd/" + _U64.pack(height), (cap, paid))

    # -- accounts and mempool -------------------------------------------------------------
    def account(self, address: str) -> Account:
        v = self._get(b"a/" + address.encode())
        return _NO_ACCOUNT if v is None else _tuple_new(Account, v)  # what Account(*v) makes, faster

    def set_account(self, address: str, acct: Account) -> None:
        self._line[b"a/" + address.encode()] = tuple(acct)  # stored as a plain tuple (JSON array)

    def pending(self, sender: str) -> tuple[tuple[int, str, int], ...]:
        """The sender's mempool entries (nonce, txid, amount + fee), by nonce."""
        v = self._get(_k(b"mp/", sender))
        return () if v is None else tuple(tuple(e) for e in v)

    def set_pending(self, sender: str, entries: tuple[tuple[int, str, int], ...]) -> None:
        self._put(_k(b"mp/", sender), entries or None)

    def spendable(self, address: str) -> int:
        return self.account(address).balance - sum(e[2] for e in self.pending(address))

    def tx_status(self, txid: str) -> str | None:
        """'m' in the mempool, 'c' confirmed, 'e' evicted from the mempool, None unknown."""
        status: str | None = self._get(_k(b"tx/", txid))
        return status

    def set_tx_status(self, txid: str, status: str) -> None:
        self._put(_k(b"tx/", txid), status)

    def set_mempool_tx(self, txid: str, signed: dict[str, Any] | None) -> None:
        self._put(_k(b"mpx/", txid), signed)

    def mempool(self) -> Iterator[dict[str, Any]]:
        """Committed mempool transactions (signed lines), in no particular order."""
        for _, raw in self._log.state_items(b"mpx/"):
            yield intjson.loads(raw)

    # -- ids, providers -------------------------------------------------------------------
    @staticmethod
    def seen_key(kind: str, ident: str) -> bytes:
        """The state key recording that an id of ``kind`` was admitted."""
        return f"id/{kind}/{ident}".encode()

    def seen(self, kind: str, ident: str) -> str | None:
        """Body hash under which an id of ``kind`` was admitted, if it was."""
        body_hash: str | None = self._get(self.seen_key(kind, ident))
        return body_hash

    def mark_seen(self, kind: str, ident: str, body_hash: str) -> None:
        self._line[self.seen_key(kind, ident)] = body_hash

    def provider(self, provider_id: str) -> dict[str, Any] | None:
        pv: dict[str, Any] | None = self._get(_k(b"pv/", provider_id))
        return pv

    def set_provider(self, provider_id: str, record: dict[str, Any]) -> None:
        self._put(_k(b"pv/", provider_id), record)

    # -- governance parameters (docs/PROTOCOL.md §8.5) ----------------------------------
    def parameter(self, name: str, genesis: Genesis) -> int:
        """A governance parameter's value now (its genesis value until a change)."""
        v = self._get(b"gv/" + name.encode())
        return PARAMETERS[name].initial(genesis) if v is None else int(v[0])

    def set_parameter(self, name: str, value: int, seq: int) -> None:
        self._put(b"gv/" + name.encode(), (value, seq))

    def governance_seq(self) -> int:
        """The seq of the last governance change admitted (0: none yet)."""
        v = self._get(b"gseq")
        return 0 if v is None else int(v)

    def set_governance_seq(self, seq: int) -> None:
        self._put(b"gseq", seq)

    # -- role keys (rotations) ------------------------------------------------------------
    def role_key(self, role: str, pubkey: str) -> tuple[str, bool] | None:
        """(identity, still active) of a key a rotation named in ``role``; None if none did."""
        v = self._get(b"rk/" + role.encode() + b"/" + pubkey.encode())
        return None if v is None else (v[0], v[1])

    def set_role_key(self, role: str, pubkey: str, identity: str, active: bool) -> None:
        self._put(b"rk/" + role.encode() + b"/" + pubkey.encode(), (identity, active))

    #: the state key of the first log key: recorded by the writer that opens the chain, not by
    #: admission, so a fold of the log (Kafka catch-up) has it only once a log rotation names it
    LOG_ORIGIN = b"lk"

    def log_origin(self) -> str | None:
        """The first log key (PROTOCOL.md §9): it holds the ``log`` role until a rotation moves it.
        No genesis names it; the node records it at its first start (``record_log_origin``)."""
        v = self._get(self.LOG_ORIGIN)
        return None if v is None else str(v)

    def set_log_origin(self, pubkey: str) -> None:
        self._put(self.LOG_ORIGIN, pubkey)

    def _log_role_keys(self) -> Iterator[tuple[str, bool]]:
        """(pubkey, active) of each key a rotation of the ``log`` role named."""
        prefix = b"rk/log/"
        for key, raw in self._log.state_items(prefix):
            yield key[len(prefix):].decode(), bool(intjson.loads(raw)[1])  # (identity, active)

    def log_keys(self) -> set[str]:
        """Every key that has held the ``log`` role: the first one and each a rotation named
        (retired ones too: the heads they signed stay verifiable)."""
        keys = {key for key, _ in self._log_role_keys()}
        origin = self.log_origin()
        return keys | {origin} if origin else keys

    def log_key_now(self) -> str | None:
        """The key holding the ``log`` role now: the newest rotation's, else the first log key."""
        for key, active in self._log_role_keys():
            if active:  # exactly one key is active after a rotation
                return key
        return self.log_origin()


def record_log_origin(log: Log, pubkey: str) -> None:
    """Record ``pubkey`` as the chain's first log key unless one is recorded already."""
    st = WriteState(log)
    if st.log_origin() is None:
        st.set_log_origin(pubkey)
        st.keep_line()
        log.append([], state=st.take_batch())


def init_state(log: Log, genesis: Genesis) -> None:
    """The write side at height 0: genesis tip and allocations."""
    st = WriteState(log)
    st.set_tip(Tip(0, genesis.hash, genesis.timestamp))
    for addr, amount in genesis.allocations.items():
        st.set_account(addr, Account(balance=amount))
    st.keep_line()
    log.append([], st.take_batch())
