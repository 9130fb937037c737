"""Key rotations a crash cut short (ops/node/keyrotation.py writes ``NAME.key.next``, admits the
rotation lines, then renames it over ``NAME.key``). Killed between the admission and the rename,
the chain already names the new key while the file still holds the retired one: the node then
signed tree heads with a retired key, or its simulator found no producer key and the chain
stopped. ``finish_rotations`` settles each ``NAME.key.next`` at a writable open: if the new key
holds a role on the chain the rotation is finished (the old file kept under ``retired/``), else
it never landed and the file is removed."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil

from ledgerlog.engine.admission.lines import ROLES
from ledgerlog.engine.admission.roles import identity_of
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.errors import RotationRefusedError
from ledgerlog.engine.files import flock_held, fsync_dir
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.signing import Signer

__all__ = ["NEXT", "ROTATE_LOCK_FILE", "finish_rotations", "retire", "rotation_lock"]

ROTATE_LOCK_FILE = ".rotate.lock"
NEXT = ".key.next"
log = logging.getLogger("ledgerlog.keys")


def rotation_lock(keys_dir: str) -> contextlib.AbstractContextManager[None]:
    """One key rotation of a data dir at a time (two at once wrote the same pending key file and
    lost the key the chain rotated to): RotationRefusedError at once when another runs."""
    return flock_held(os.path.join(keys_dir, ROTATE_LOCK_FILE),
                      RotationRefusedError("another key rotation of this data dir is running; try again when it is done"))


def retire(keys_dir: str, name: str, old: Signer) -> None:
    """Keep the key file being replaced under ``retired/``."""
    retired = os.path.join(keys_dir, "retired")
    os.makedirs(retired, mode=0o700, exist_ok=True)
    shutil.copy2(os.path.join(keys_dir, f"{name}.key"), os.path.join(retired, f"{name}-{old.pubkey[:16]}.key"))


def finish_rotations(keys_dir: str, genesis: Genesis, state: WriteState) -> list[dict[str, str]]:
    """Finish or undo each role key rotation left pending (see the module docstring); what was
    done. Nothing while a rotation runs (it holds the lock, and its file is pending by design)."""
    try:
        names = sorted(f[:-len(NEXT)] for f in os.listdir(keys_dir) if f.endswith(NEXT))
    except FileNotFoundError:
        return []
    if not names:
        return []
    done = []
    try:
        with rotation_lock(keys_dir):
            for name in names:
                outcome = _settle(keys_dir, genesis, state, name)
                if outcome is not None:
                    done.append({"key": name, "rotation": outcome})
    except RotationRefusedError:
        return []
    return done


def _settle(keys_dir: str, genesis: Genesis, state: WriteState, name: str) -> str | None:
    path = os.path.join(keys_dir, f"{name}.key")
    pending = path + ".next"
    try:
        with open(pending, encoding="utf-8") as f:
            doc = json.load(f)
        if "rotation_txid" in doc:
            return None  # the faucet's own rotation (a transfer): ops/api/faucet_keys.py settles it
        new = Signer.from_doc(doc)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # not a key file of ours: left for the operator
    if not any(identity_of(state, genesis, r, new.pubkey) is not None for r in ROLES):
        os.unlink(pending)
        log.warning("key rotation of %s.key was cut short before it reached the log: undone", name)
        return "undone"
    try:
        retire(keys_dir, name, Signer.load(path))
    except (OSError, ValueError, KeyError):
        pass  # the old file is gone or unreadable: nothing to keep
    os.replace(pending, path)
    fsync_dir(keys_dir)
    log.warning("key rotation of %s.key was cut short after it reached the log: finished (%s... now signs)",
                name, new.pubkey[:16])
    return "finished"
