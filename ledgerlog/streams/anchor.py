"""The anchor of a pruned log: every projection folded exactly up to the prune positions, from
which rebuilds (``reproject``, ``verify``'s replay, a deleted projection) start once the records
below those positions are gone.

Layout, beside the projections (``<data_dir>/anchor``)::

    CURRENT            {"dir": "h<H>"}, replaced atomically: the anchor in force
    h<H>/anchor.json   height, positions (topic -> offset per partition), per projection its
                       version, digest, height and positions, chain id and genesis hash, tip
    h<H>/<name>/       RocksDB store of projection <name> folded exactly up to the positions

An anchor is built in ``.tmp-h<H>-*`` (from a copy of the anchor before it, folding only the
records between the two prune points), every file and directory fsynced, renamed into place and
then made current; a build a crash left behind is removed by the next one. A store seeded from
it (``seed``) hard-links its table files (immutable in RocksDB) and copies the rest.

The anchor's stores are never opened for writing: their digests, recorded in anchor.json, are
what ``verify`` compares a seeded replay against."""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ledgerlog import projections
from ledgerlog.engine.errors import CorruptStoreError, PrunedError
from ledgerlog.engine.files import atomic_dir, plain_name, write_atomic

__all__ = ["ANCHOR_FILE", "Anchor", "anchor_root", "copy_store", "seed", "write_anchor", "remove_others"]

ANCHOR_FILE = "anchor.json"
CURRENT = "CURRENT"
TMP_PREFIX = ".tmp-h"


def anchor_root(projections_dir: str) -> str:
    """Where a data dir's anchor lives, beside its projections."""
    return os.path.join(os.path.dirname(os.path.abspath(projections_dir)), "anchor")


@dataclass(frozen=True)
class Anchor:
    """A loaded anchor (see the module docstring)."""

    root: str
    dir: str
    height: int
    positions: Mapping[str, list[int]]     # topic -> offset per partition
    projections: Mapping[str, dict[str, Any]]  # name -> {version, digest, height, positions}
    doc: Mapping[str, Any]

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.dir)

    def store_path(self, name: str) -> str:
        return os.path.join(self.path, name)

    @classmethod
    def load(cls, root: str) -> Anchor | None:
        """The current anchor under ``root``; None when there is none."""
        try:
            with open(os.path.join(root, CURRENT), encoding="utf-8") as f:
                ptr = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CorruptStoreError(f"{root}/{CURRENT} is not readable JSON ({exc}): the anchor of this "
                                    "pruned log is damaged; restore it from a snapshot") from exc
        d = ptr.get("dir") if isinstance(ptr, dict) else None
        if not plain_name(d):
            raise CorruptStoreError(f"{root}/{CURRENT} names {d!r}, not an anchor directory beside it: the anchor "
                                    "of this pruned log is damaged; restore it from a snapshot")
        assert isinstance(d, str)
        try:
            with open(os.path.join(root, d, ANCHOR_FILE), encoding="utf-8") as f:
                doc = json.load(f)
            return cls(root, d, int(doc["height"]), {t: list(v) for t, v in doc["positions"].items()},
                       dict(doc["projections"]), doc)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(f"the anchor {os.path.join(root, d)} is damaged ({exc}); restore it from a "
                                    "snapshot") from exc

    def covers(self, module: ModuleType) -> bool:
        """Was ``module`` (at its code's version) folded into this anchor?"""
        meta = self.projections.get(module.NAME)
        return meta is not None and int(meta.get("version", -1)) == module.VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "dir": self.dir, "positions": dict(self.positions),
                "projections": {n: {"version": m["version"], "digest": m["digest"]}
                                for n, m in sorted(self.projections.items())}}


def seed(anchor: Anchor, module: ModuleType, path: str) -> None:
    """Create the store ``path`` as a copy of ``module``'s anchor store (table files hard-linked,
    the rest copied), whole or not at all."""
    if not anchor.covers(module):
        have = anchor.projections.get(module.NAME, {}).get("version")
        raise PrunedError(f"projection {module.NAME} version {module.VERSION} cannot be built: the log was "
                          f"pruned below height {anchor.height} and the anchor holds "
                          f"{'no ' + module.NAME if have is None else f'version {have}'} of it; "
                          + (f"start the node or run `ledgerlog reproject {module.NAME}`, which rebuild its anchor "
                             "from the prunes' archives when every one is under the archive dir; else "
                             if module.NAME in projections.ALL else "")
                          + "restore a snapshot taken before the prune")
    with atomic_dir(path, f".seed-{os.path.basename(path)}-") as tmp:
        copy_store(anchor.store_path(module.NAME), tmp)


def copy_store(src: str, dest: str) -> None:
    """Copy the RocksDB store ``src`` into the directory ``dest``: its table files (immutable)
    hard-linked where the filesystem allows, the rest copied."""
    os.makedirs(dest, exist_ok=True)
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dest, name)
        if name.endswith(".sst"):
            try:
                os.link(s, d)
                continue
            except OSError:
                pass
        shutil.copy2(s, d)


def write_anchor(root: str, height: int, positions: Mapping[str, list[int]], build: Callable[[str], dict[str, Any]],
                 extra: Mapping[str, Any]) -> Anchor:
    """Build an anchor at ``height``: ``build(tmp)`` folds every projection into ``tmp/<name>``
    and returns name -> {version, digest, height, positions}; then anchor.json, fsync, rename,
    and the CURRENT pointer. An anchor already at ``height`` is kept as it is."""
    os.makedirs(root, exist_ok=True)
    final = f"h{height}"
    current = Anchor.load(root)
    if current is not None and current.dir == final:
        return current
    for stale in os.listdir(root):
        if stale.startswith(TMP_PREFIX):
            shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
    # replace: a build a crash left at ``final`` before CURRENT moved
    with atomic_dir(os.path.join(root, final), f"{TMP_PREFIX}{height}-", replace=True) as tmp:
        metas = build(tmp)
        doc = {"format": "ledgerlog-anchor/1", "height": height, "positions": dict(positions),
               "projections": metas, "created_ms": int(time.time() * 1000), **extra}
        with open(os.path.join(tmp, ANCHOR_FILE), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
    write_atomic(os.path.join(root, CURRENT), json.dumps({"dir": final}).encode())
    loaded = Anchor.load(root)
    assert loaded is not None
    return loaded


def remove_others(root: str) -> list[str]:
    """Remove every anchor but the current one (and builds a crash left); their names."""
    current = Anchor.load(root)
    gone = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        full = os.path.join(root, name)
        if os.path.isdir(full) and (current is None or name != current.dir):
            shutil.rmtree(full, ignore_errors=True)
            gone.append(name)
    return gone
