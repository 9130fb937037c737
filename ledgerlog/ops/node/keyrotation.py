"""Rotating the node's role keys (docs/PROTOCOL.md §8): ``POST /v1/admin/rotate-key {"key"}``
and ``ledgerlog keys rotate NAME``.

``NAME`` is a key file under ``<data_dir>/keys`` (producer, oracle, treasury, pool...). Every
role the file's key holds now is moved to one fresh key by ``rotation`` lines, admitted like any
other line, so the rotation is on ``ledger.keys`` for auditors before the file changes. Order,
for crash safety: the new key is written to ``NAME.key.next``; the lines are admitted; the old
file is kept under ``keys/retired/``; then ``NAME.key.next`` replaces ``NAME.key``. A crash
between admission and the rename leaves ``NAME.key.next`` holding the key that now signs: the
next writable open of the chain (and the next rotation) finishes it (engine/pendingkeys.py)."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from ledgerlog.engine.admission import Summary
from ledgerlog.engine.admission.lines import ROLES
from ledgerlog.engine.admission.roles import identity_of
from ledgerlog.engine.admission.state import WriteState
from ledgerlog.engine.errors import BadRequest, ConfigError, RotationRefusedError
from ledgerlog.engine.files import fsync_dir, write_atomic
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.pendingkeys import finish_rotations, retire, rotation_lock
from ledgerlog.engine.signing import Signer, rotation_line

if TYPE_CHECKING:
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["rotate_key"]


def rotate_key(keys_dir: str, genesis: Genesis, state: WriteState,
               admit: Callable[[list[bytes]], Summary], name: str) -> dict[str, Any]:
    """Move every role key file ``name`` holds to a new key; returns what was rotated. One
    rotation of a data dir at a time (RotationRefusedError while another runs)."""
    if not name or os.sep in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a file name under {keys_dir}")
    if not os.path.isfile(os.path.join(keys_dir, f"{name}.key")):
        raise ConfigError(f"no key file {name}.key under {keys_dir}")
    finish_rotations(keys_dir, genesis, state)  # one a crash cut short first
    with rotation_lock(keys_dir):
        return _rotate(keys_dir, genesis, state, admit, name)


def _rotate(keys_dir: str, genesis: Genesis, state: WriteState,
            admit: Callable[[list[bytes]], Summary], name: str) -> dict[str, Any]:
    path = os.path.join(keys_dir, f"{name}.key")
    try:
        old = Signer.load(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read key file {path}: {exc}") from None
    roles = [(r, ident) for r in ROLES if (ident := identity_of(state, genesis, r, old.pubkey)) is not None]
    if not roles:
        raise ConfigError(f"key {name} ({old.pubkey[:16]}...) holds no role ({', '.join(ROLES)}) on "
                          "this chain: nothing to rotate")
    identities = {ident for _, ident in roles}
    if len(identities) > 1:
        raise ConfigError(f"key {name} signs for several identities {sorted(identities)}; rotate by hand")
    new = Signer(Signer.generate().key, identities.pop())
    pending = path + ".next"
    write_atomic(pending, new.to_json(name).encode(), mode=0o600)
    now = int(time.time() * 1000)
    lines = [rotation_line(old, new, chain_id=genesis.chain_id, role=r, timestamp=now) for r, _ in roles]
    summary = admit([orjson.dumps(line) for line in lines])
    if summary.rejected or summary.accepted != len(lines):
        os.unlink(pending)
        raise ConfigError(f"key rotation refused: {summary.rejections}")
    retire(keys_dir, name, old)
    os.replace(pending, path)
    fsync_dir(keys_dir)
    return {"key": name, "old_pubkey": old.pubkey, "new_pubkey": new.pubkey, "identity": new.address,
            "roles": [r for r, _ in roles]}


def rotate_key_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """Rotate a role key of the node (body ``{"key": "producer"}``); the simulator, if any, signs
    with the new key from then on."""
    name = body.get("key")
    if not isinstance(name, str):
        raise BadRequest('body must name a key file: {"key": "producer"}')
    try:
        result = rotate_key(node.config.keys_dir, node.genesis, WriteState(node.chain.log),
                            lambda lines: node.admitter.admit(lines), name)
    except ConfigError as exc:
        raise RotationRefusedError(str(exc)) from exc
    node.keys_rotated()
    return result
