"""The faucet's key file: an operator's key imported over it, or a fresh key rotated in that takes
the faucet's spendable balance by a transaction from the old key. Both keep the old file under
``retired/`` beside it (``keys/retired/faucet-<pubkey prefix>.key``), never overwritten.

Rotation, in an order that a crash at any point leaves a usable faucet:

1. the new key is written to ``faucet.key.next`` (0600, atomically), naming the txid of the
   transfer about to be admitted (a nonce race rewrites it with the next try's txid);
2. the transfer (spendable balance minus the fee, from the old key to the new address) is
   admitted like any other line, so it is on the log;
3. the old file is copied under ``retired/``;
4. ``faucet.key.next`` replaces ``faucet.key``.

``recover`` finishes or undoes an interrupted rotation from what the log says: a ``.next`` whose
transfer was admitted (pending or confirmed) or that moved nothing is finished (steps 3 and 4);
one whose transfer the log does not hold (never admitted, or evicted from the mempool) is removed,
and the old key, which still holds the balance, stays. The faucet runs it before it loads its key,
and the CLI before it imports or rotates."""
from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

import orjson

from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.errors import BadKeyError, Code, RotationRefusedError
from ledgerlog.engine.files import fsync_dir, write_atomic
from ledgerlog.engine.signing import Signer, signed_line

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import ChainContext

__all__ = ["NONCE_RETRIES", "install", "next_path", "parse_key", "read_key", "recover", "rotate",
           "signer_of_seed", "transfer_line"]

NONCE_RETRIES = 3
ROTATION_MEMO = "faucet key rotation"
_SEED_RE = re.compile(r"[0-9a-fA-F]{64}")
_KEY_HELP = ('a faucet key is a key file as `ledgerlog keys new --out FILE` writes it (JSON with "seed": '
             "64 hex digits) or the seed alone")


# -- reading keys -----------------------------------------------------------------------------------
def signer_of_seed(seed: Any) -> Signer:
    """The key of a 64-hex-digit seed; BadKeyError (never quoting the seed) otherwise."""
    if not isinstance(seed, str) or not _SEED_RE.fullmatch(seed.strip()):
        raise BadKeyError(f"the seed is not 64 hex digits (32 bytes); {_KEY_HELP}")
    return Signer.from_seed(seed.strip().lower())


def parse_key(text: str) -> Signer:
    """A key file's text (JSON with "seed", and "pubkey"/"address" that must be the seed's) or a
    bare hex seed; BadKeyError when malformed."""
    text = text.strip()
    if not text.startswith("{"):
        return signer_of_seed(text)
    try:
        doc = json.loads(text)
    except ValueError:
        raise BadKeyError(f"the key file is not JSON; {_KEY_HELP}") from None
    if not isinstance(doc, dict) or "seed" not in doc:
        raise BadKeyError(f'the key file has no "seed"; {_KEY_HELP}')
    signer = signer_of_seed(doc["seed"])
    for field, own in (("pubkey", signer.pubkey), ("address", signer.address)):
        given = doc.get(field)
        if given is not None and (not isinstance(given, str) or given.strip().lower() != own):
            raise BadKeyError(f"the key file's {field} is not its seed's: the file is damaged or edited")
    return signer


def read_key(path: str) -> Signer | None:
    """The key in file ``path`` (signing as its own address), or None if it is missing or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_key(f.read())
    except (OSError, ValueError, BadKeyError):
        return None


def next_path(path: str) -> str:
    return path + ".next"


def _key_text(signer: Signer, **extra: Any) -> bytes:
    doc = {**json.loads(Signer(signer.key).to_json("faucet")), **extra}
    return (json.dumps(doc) + "\n").encode()


def _retire(path: str, old: Signer | None) -> str | None:
    """Copy the key file at ``path`` under ``retired/`` beside it (kept if already there); its copy."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    retired = os.path.join(os.path.dirname(os.path.abspath(path)), "retired")
    os.makedirs(retired, mode=0o700, exist_ok=True)
    name = f"faucet-{old.pubkey[:16]}.key" if old else f"faucet-unreadable-{int(time.time() * 1000)}.key"
    dest = os.path.join(retired, name)
    if not os.path.exists(dest):
        write_atomic(dest, data, mode=0o600)
    return dest


# -- recovery ---------------------------------------------------------------------------------------
def recover(path: str, state: WriteState) -> dict[str, Any] | None:
    """Finish or undo a rotation a crash interrupted (see the module docstring); what was done, or
    None when there was nothing to do."""
    pending = next_path(path)
    try:
        with open(pending, encoding="utf-8") as f:
            doc = json.load(f)
        new = signer_of_seed(doc.get("seed"))
        txid = doc.get("rotation_txid")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError, BadKeyError):  # written atomically: not ours
        os.unlink(pending)
        return {"rotation": "undone", "why": "unreadable .next file removed"}
    status = state.tx_status(txid) if isinstance(txid, str) else "c"
    if status in ("m", "c"):
        old = read_key(path)
        _retire(path, old)
        os.replace(pending, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
        return {"rotation": "finished", "new_address": new.address, "txid": txid}
    os.unlink(pending)
    return {"rotation": "undone", "why": f"transfer {txid} is not on the log"}


# -- import -----------------------------------------------------------------------------------------
def install(path: str, new: Signer, state: WriteState | None) -> dict[str, Any]:
    """Make ``new`` the faucet key at ``path`` (0600, atomically; the old file kept under
    ``retired/``). ``state`` resolves an interrupted rotation first; without it one must not be pending."""
    if state is not None:
        recover(path, state)
    elif os.path.exists(next_path(path)):
        raise RotationRefusedError(f"{next_path(path)} is left from an interrupted rotation: start the node "
                                   "(or run the command on an initialised data dir) to finish or undo it first")
    old = read_key(path)
    out: dict[str, Any] = {"address": new.address, "pubkey": new.pubkey,
                           "previous_address": old.address if old else None}
    if old is not None and old.pubkey == new.pubkey:
        return {**out, "unchanged": True}
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    out["retired"] = _retire(path, old)
    write_atomic(path, _key_text(new), mode=0o600)
    return out


# -- rotation ---------------------------------------------------------------------------------------
def transfer_line(node: ChainContext, signer: Signer, to: str, amount: int, memo: str,
                  state: WriteState) -> tuple[str, int, dict[str, Any]]:
    """(txid, nonce, line) of a transaction of ``amount`` from ``signer`` to ``to`` at the next
    nonce after its confirmed and pending ones, paying the chain's min_fee."""
    nonce = state.account(signer.address).nonce + len(state.pending(signer.address)) + 1
    body = {"chain_id": node.genesis.chain_id, "sender": signer.address, "recipient": to, "amount": amount,
            "fee": node.genesis.min_fee, "nonce": nonce, "timestamp": int(time.time() * 1000), "memo": memo}
    txid, _ = signer.sign_body("TransactionBody", body)
    return txid, nonce, signed_line("transaction", signer, body)


def _incoming(state: WriteState, address: str) -> list[dict[str, Any]]:
    """Mempool transactions paying ``address``."""
    return [tx for tx in state.mempool() if tx.get("body", {}).get("recipient") == address]


def rotate(node: ChainContext, path: str) -> dict[str, Any]:
    """Replace the faucet key at ``path`` by a fresh one that takes its spendable balance (see the
    module docstring); names both addresses and the transfer's txid (None when nothing could move)."""
    recover(path, WriteState(node.chain.log))
    old = read_key(path)
    if old is None:
        raise RotationRefusedError(f"no readable faucet key at {path} to rotate")
    incoming = _incoming(WriteState(node.chain.log), old.address)
    if incoming:
        raise RotationRefusedError(f"{len(incoming)} pending transaction(s) pay the faucet's address (a top-up or "
                                   "the last rotation's transfer): rotate after a block confirms them, or they "
                                   "would land on the retired key")
    new = Signer.generate()
    pending, fee = next_path(path), node.genesis.min_fee
    txid: str | None = None
    amount, last = 0, ""
    for _ in range(NONCE_RETRIES):
        state = WriteState(node.chain.log)
        amount = state.spendable(old.address) - fee
        if amount <= 0:  # nothing to move: the new key starts empty (a top-up funds it)
            amount, txid = 0, None
            write_atomic(pending, _key_text(new, rotation_txid=None, previous_address=old.address), mode=0o600)
            break
        txid, _nonce, line = transfer_line(node, old, new.address, amount, ROTATION_MEMO, state)
        write_atomic(pending, _key_text(new, rotation_txid=txid, previous_address=old.address), mode=0o600)
        summary = node.admitter.admit([orjson.dumps(line)])  # an exception here: recover() decides later
        if summary.accepted == 1:
            break
        rej = summary.rejections[0] if summary.rejections else {"code": "DUPLICATE", "message": "duplicate"}
        last = f"{rej['code']}: {rej['message']}"
        if rej["code"] not in (Code.BAD_NONCE.value, Code.DUPLICATE.value, Code.INSUFFICIENT_FUNDS.value):
            break  # another writer's spend is retried; anything else is final
        txid = None
    if amount > 0 and txid is None:
        os.unlink(pending)
        raise RotationRefusedError(f"admission refused the faucet's transfer to its new key ({last}); "
                                   "the old key stays")
    retired = _retire(path, old)
    os.replace(pending, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return {"old_address": old.address, "new_address": new.address, "new_pubkey": new.pubkey, "txid": txid,
            "amount": amount, "fee": fee if txid else 0, "status": "pending" if txid else "nothing to move",
            "retired": retired}
