"""The faucet: ``POST /v1/faucet {"address"}`` grants a fixed amount to an address, as a signed
transaction from the faucet key admitted through the node's admitter like any other line. So
every grant is an event on the log (``TransactionSubmitted`` on ``ledger.mempool``), pending
until a block confirms it; the answer carries its ``txid``.

- **Key**: ``<data_dir>/keys/faucet.key`` (JSON with ``"seed"``, as ``init`` writes it), or
  ``faucet.key``. Missing or unreadable (or ``faucet.enabled = false``): 503
  ``FAUCET_DISABLED``. The file is read again whenever it changes, so a key imported or rotated
  (admin ``faucet-import-key {"seed"}``, ``faucet-rotate-key``; ``ledgerlog faucet import-key``,
  ``rotate-key``; ops/api/faucet_keys.py) is used without a restart, and a rotation a crash
  interrupted is finished or undone before the key is read.
- **Nonce**: confirmed + pending + 1 from the committed write-side state. Grants are serialised
  by a lock; another writer using the same key (the dev simulator funds its wallets from it) can
  still win a nonce, so a ``BAD_NONCE`` is retried a few times with a fresh nonce.
- **Balance**: the faucet's spendable balance (balance minus pending costs) must cover
  amount + min_fee, else 503 ``INSUFFICIENT_BALANCE``.
- **Rate limits**: per client IP and per address, ``burst`` grants at once and one more every
  ``interval`` (token buckets), kept in ``<data_dir>/faucet/grants.sqlite`` so a restart keeps
  them (ops/api/faucet_grants.py); 429 ``RATE_LIMITED`` with ``Retry-After``. Only a grant that
  was admitted counts: a refused request (400, 429, 503) costs none.
- **Pause**: admin ``faucet-pause``/``faucet-resume`` (503 ``FAUCET_PAUSED``); the node-wide
  ``pause`` stops the faucet too (503 ``PAUSED``).
- **Top-up**: admin ``faucet-topup {"amount"}`` sends ``amount`` from the **treasury** key
  (``<data_dir>/keys/treasury.key`` or ``faucet.topup_key``) to the faucet address as
  an ordinary transaction through admission: a dev chain's treasury holds the other large
  allocation and the operator holds its key on the node. It is pending until the next block,
  and only then adds to the faucet's spendable balance. It works while ingest is paused (an
  operator's explicit action).

Knobs: settings of the node's ``Config`` (engine/config.py), so each is a ``config.toml`` key
overridable by its environment variable, or ``FaucetSettings`` passed to ``create_app``:

| config.toml | env | default | meaning |
|---|---|---|---|
| ``faucet.enabled`` | ``LEDGERLOG_FAUCET_ENABLED`` | true | false disables the faucet (503 FAUCET_DISABLED) |
| ``faucet.amount`` | ``LEDGERLOG_FAUCET_AMOUNT`` | 10000000 | base units per grant (the fee, min_fee, is on top) |
| ``faucet.key`` | ``LEDGERLOG_FAUCET_KEY`` | <data_dir>/keys/faucet.key | key file of the faucet |
| ``faucet.topup_key`` | ``LEDGERLOG_FAUCET_TOPUP_KEY`` | <data_dir>/keys/treasury.key | key file top-ups are sent from |
| ``faucet.ip_burst`` | ``LEDGERLOG_FAUCET_IP_BURST`` | 5 | grants a client IP may get at once |
| ``faucet.ip_interval`` | ``LEDGERLOG_FAUCET_IP_INTERVAL`` | 60 | seconds for a client IP to earn one more grant (0 = no limit) |
| ``faucet.address_burst`` | ``LEDGERLOG_FAUCET_ADDRESS_BURST`` | 1 | grants an address may get at once |
| ``faucet.address_interval`` | ``LEDGERLOG_FAUCET_ADDRESS_INTERVAL`` | 3600 | seconds for an address to earn one more grant (0 = no limit) |
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.config import Config, env_values
from ledgerlog.engine.errors import (
    BadRequest,
    Code,
    FaucetDisabledError,
    FaucetPausedError,
    FaucetRejectedError,
    InsufficientBalanceError,
    InsufficientFundsError,
    LedgerError,
    PausedError,
    RateLimitedError,
    TopupKeyMissingError,
)
from ledgerlog.engine.genesis import ADDRESS_RE
from ledgerlog.engine.signing import Signer
from ledgerlog.ops.api import faucet_keys
from ledgerlog.ops.api.faucet_grants import GrantLimits, grants_path

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import ChainContext, NodeContext

__all__ = ["DEFAULT_AMOUNT", "Faucet", "FaucetSettings", "Refused", "attach"]

log = logging.getLogger("ledgerlog.faucet")

DEFAULT_AMOUNT = 10_000_000  # = Config().faucet_amount
NONCE_RETRIES = faucet_keys.NONCE_RETRIES
I64_MAX = (1 << 63) - 1


_DEFAULTS = Config()


@dataclass(frozen=True)
class FaucetSettings:
    enabled: bool = _DEFAULTS.faucet_enabled
    amount: int = _DEFAULTS.faucet_amount
    key_path: str = _DEFAULTS.faucet_key                 # "" = <data_dir>/keys/faucet.key
    topup_key_path: str = _DEFAULTS.faucet_topup_key     # "" = <data_dir>/keys/treasury.key
    ip_burst: int = _DEFAULTS.faucet_ip_burst
    ip_interval: float = _DEFAULTS.faucet_ip_interval
    address_burst: int = _DEFAULTS.faucet_address_burst
    address_interval: float = _DEFAULTS.faucet_address_interval
    memo: str = "faucet"

    @classmethod
    def from_config(cls, config: Config) -> FaucetSettings:
        """The settings a node's Config sets (config.toml ``[faucet]``, overridden by LEDGERLOG_FAUCET_*)."""
        return cls(enabled=config.faucet_enabled, amount=config.faucet_amount, key_path=config.faucet_key,
                   topup_key_path=config.faucet_topup_key, ip_burst=config.faucet_ip_burst,
                   ip_interval=config.faucet_ip_interval, address_burst=config.faucet_address_burst,
                   address_interval=config.faucet_address_interval)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FaucetSettings:
        """The defaults overridden by ``env`` alone (no config.toml); prefer ``from_config``."""
        return cls.from_config(replace(Config(), **env_values(env)))


#: what the faucet raises when it refuses a request: a LedgerError of the error table
#: (BadRequest, FaucetDisabledError, PausedError, RateLimitedError, ...; engine/errors.py)
Refused = LedgerError


_load_key = faucet_keys.read_key


def _file_id(path: str) -> tuple[int, int, int] | None:
    """What tells a changed key file: (inode, mtime ns, size); None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Faucet:
    def __init__(self, node: NodeContext, settings: FaucetSettings | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.settings = settings or FaucetSettings()
        s = self.settings
        self.limits = GrantLimits(grants_path(node.config.data_dir),
                                  {"ip": (s.ip_burst, s.ip_interval), "address": (s.address_burst, s.address_interval)},
                                  clock=clock)
        self._lock = threading.Lock()       # one grant, top-up or key change at a time
        self._key_lock = threading.RLock()  # the key file and the signer read from it
        self._signer: Signer | None = None
        self._key_id: tuple[int, int, int] | None = None

    def close(self) -> None:
        """Close the grant records (reopened if the faucet is used again)."""
        self.limits.close()

    # -- keys and state ---------------------------------------------------------------------------
    @property
    def key_path(self) -> str:
        return self.settings.key_path or os.path.join(self.node.config.keys_dir, "faucet.key")

    @property
    def topup_key_path(self) -> str:
        return self.settings.topup_key_path or os.path.join(self.node.config.keys_dir, "treasury.key")

    def signer(self) -> Signer | None:
        """The faucet key as the file holds it now (re-read when it changed; an interrupted
        rotation finished or undone first); None when disabled or unreadable."""
        if not self.settings.enabled:
            return None
        with self._key_lock:
            path = self.key_path
            if os.path.exists(faucet_keys.next_path(path)):
                done = faucet_keys.recover(path, self._state())
                log.warning("faucet key rotation interrupted earlier: %s", done)
            key_id = _file_id(path)
            if key_id != self._key_id or (self._signer is None and key_id is not None):
                self._signer, self._key_id = _load_key(path), key_id
                if self._signer is not None:
                    log.info("faucet key loaded: address %s", self._signer.address)
            return self._signer

    def _state(self) -> WriteState:
        return WriteState(self.node.chain.log)  # committed write-side state

    @property
    def fee(self) -> int:
        return self.node.genesis.min_fee

    def status(self) -> dict[str, Any]:
        signer = self.signer()
        s = self.settings
        out: dict[str, Any] = {"enabled": signer is not None, "paused": self.node.controls.faucet_paused,
                               "ingest_paused": self.node.controls.ingest_paused, "amount": s.amount,
                               "fee": self.fee,
                               "limits": {"ip_burst": s.ip_burst, "ip_interval_seconds": s.ip_interval,
                                          "address_burst": s.address_burst,
                                          "address_interval_seconds": s.address_interval}}
        if signer is not None:
            out["address"] = signer.address
            out["spendable"] = self._state().spendable(signer.address)
        return out

    # -- granting ---------------------------------------------------------------------------------
    def grant(self, address: Any, client: str) -> dict[str, Any]:
        """Admit a grant to ``address``; raises the LedgerError refusing it."""
        if not isinstance(address, str) or not ADDRESS_RE.match(address.strip().lower()):
            raise BadRequest("address must be a 40-hex address")
        address = address.strip().lower()
        signer = self.signer()
        if signer is None:
            why = "disabled by configuration" if not self.settings.enabled else f"no faucet key at {self.key_path}"
            raise FaucetDisabledError(f"the faucet is {why}")
        c = self.node.controls
        if c.ingest_paused:
            raise PausedError("ingest is paused by the operator")
        if c.faucet_paused:
            raise FaucetPausedError("the faucet is paused by the operator")
        if address == signer.address:
            raise BadRequest("the faucet does not pay itself")
        with self.node.external_write(), self._lock:  # (refused if ingest was paused meanwhile)
            by_ip, by_address = self.limits.wait("ip", client), self.limits.wait("address", address)
            if max(by_ip, by_address) > 0:
                which = "this client" if by_ip > 0 else "this address"
                raise RateLimitedError(f"too many faucet grants for {which}", max(by_ip, by_address))
            granted = _send(self.node, signer, address, self.settings.amount, self.settings.memo,
                            insufficient=lambda have, need: InsufficientBalanceError(
                                f"the faucet can spend {have}, a grant needs {need}; ask the operator for a top-up"))
            self.limits.take("ip", client)
            self.limits.take("address", address)
        log.info("faucet granted %d to %s (tx %s)", self.settings.amount, address, granted["txid"])
        return granted

    def topup(self, amount: Any) -> dict[str, Any]:
        """Send ``amount`` from the top-up (treasury) key to the faucet; raises the LedgerError refusing it."""
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= I64_MAX:
            raise BadRequest("amount must be a positive integer (base units)")
        signer = self.signer()
        if signer is None:
            raise FaucetDisabledError(f"the faucet is disabled (no key at {self.key_path})")
        source = _load_key(self.topup_key_path)
        if source is None:
            raise TopupKeyMissingError(f"no top-up (treasury) key at {self.topup_key_path}")
        if source.address == signer.address:
            raise BadRequest("the top-up key is the faucet key")
        with self._lock:
            sent = _send(self.node, source, signer.address, amount, "faucet top-up",
                         insufficient=lambda have, need: InsufficientFundsError(
                             f"the treasury can spend {have}, the top-up needs {need}"))
        log.info("faucet top-up of %d from %s (tx %s)", amount, source.address, sent["txid"])
        return {**sent, "note": "pending: adds to the faucet's spendable balance once a block confirms it"}

    # -- key changes ------------------------------------------------------------------------------
    def import_key(self, seed: Any) -> dict[str, Any]:
        """Make the key of ``seed`` the faucet key (the old file kept under retired/); used from
        the next grant on. Raises BadKeyError for a malformed seed."""
        new = faucet_keys.signer_of_seed(seed)
        if not self.settings.enabled:
            raise FaucetDisabledError("the faucet is disabled by configuration")
        with self._lock, self._key_lock:
            result = faucet_keys.install(self.key_path, new, self._state())
            self._key_id = None
            signer = self.signer()
        if signer is None or signer.pubkey != new.pubkey:
            raise FaucetDisabledError("the imported key was written but cannot be read back")
        log.warning("faucet key imported by admin: address %s (was %s)", new.address, result["previous_address"])
        return {**result, "spendable": self._state().spendable(new.address)}

    def rotate_key(self) -> dict[str, Any]:
        """A fresh faucet key that takes the spendable balance by a transaction from the old one
        (ops/api/faucet_keys.py ``rotate``); used from the next grant on."""
        if not self.settings.enabled:
            raise FaucetDisabledError("the faucet is disabled by configuration")
        with self._lock, self._key_lock:
            try:
                result = faucet_keys.rotate(self.node, self.key_path)
            finally:
                self._key_id = None  # whatever happened, read the file (and any .next) again
            self.signer()
        log.warning("faucet key rotated by admin: %s -> %s (transfer %s)", result["old_address"],
                    result["new_address"], result["txid"])
        return result


def _send(node: ChainContext, signer: Signer, to: str, amount: int, memo: str,
          insufficient: Callable[[int, int], LedgerError]) -> dict[str, Any]:
    """Build, sign and admit one transaction; retry a lost nonce race a few times."""
    fee = node.genesis.min_fee
    last = ""
    for _ in range(NONCE_RETRIES):
        st = WriteState(node.chain.log)
        have, need = st.spendable(signer.address), amount + fee
        if have < need:
            raise insufficient(have, need)
        txid, nonce, line = faucet_keys.transfer_line(node, signer, to, amount, memo, st)
        summary = node.admitter.admit([orjson.dumps(line)])
        if summary.accepted == 1:
            return {"txid": txid, "sender": signer.address, "recipient": to, "amount": amount, "fee": fee,
                    "nonce": nonce, "status": "pending"}
        rej = summary.rejections[0] if summary.rejections else {"code": "DUPLICATE", "message": "duplicate"}
        last = f"{rej['code']}: {rej['message']}"
        if rej["code"] == Code.INSUFFICIENT_FUNDS.value:
            raise insufficient(WriteState(node.chain.log).spendable(signer.address), amount + fee)
        if rej["code"] not in (Code.BAD_NONCE.value, Code.DUPLICATE.value):
            break
    log.error("faucet transaction refused by admission: %s", last)
    raise FaucetRejectedError(f"admission refused the transaction ({last})")


# -- one faucet per node, held by the node (admin actions find it there) --------------------------
def attach(node: NodeContext, settings: FaucetSettings | None = None) -> Faucet:
    """Give ``node`` a new faucet (the node makes one; an app built with other settings replaces it)."""
    previous = getattr(node, "faucet", None)
    node.faucet = Faucet(node, settings or FaucetSettings.from_config(node.config))
    if isinstance(previous, Faucet):
        previous.close()
    return node.faucet



# -- admin actions -------------------------------------------------------------------------------
def _switch(node: NodeContext, paused: bool) -> dict[str, Any]:
    c = node.controls
    with c.lock:
        was, c.faucet_paused = c.faucet_paused, paused
    log.warning("faucet %s by admin", "paused" if paused else "resumed")
    return {"faucet": {"paused": paused, "was_paused": was}}


def faucet_pause_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """Stop faucet grants (503 FAUCET_PAUSED) until faucet-resume."""
    return _switch(node, True)


def faucet_resume_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """Let faucet grants out again."""
    return _switch(node, False)


def faucet_topup_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """{"amount": n}: a transaction of n from the treasury key to the faucet, through admission."""
    return node.faucet.topup(body.get("amount"))


def faucet_import_key_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """{"seed": hex}: make that key the faucet key (the seed is redacted in the audit record)."""
    if body.get("seed") is None:
        raise BadRequest('body must carry the key\'s seed: {"seed": "<64 hex digits>"}')
    result = node.faucet.import_key(body["seed"])
    node.keys_rotated()  # the simulator, if any, funds its wallets from the new key
    return result


def faucet_rotate_key_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """A fresh faucet key; the spendable balance moves to it by a transaction from the old key."""
    result = node.faucet.rotate_key()
    node.keys_rotated()
    return result
