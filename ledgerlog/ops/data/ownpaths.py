"""The paths a chain's commands keep for themselves, which an export, a prune's archive or a
snapshot written elsewhere must never land in: written over or inside them, the log's CURRENT
or config.toml left the chain unreadable, and a prune replaces its anchor directory whole (an
archive or a backup put there was deleted without a word)."""
from __future__ import annotations

import os

from ledgerlog.engine.config import Config

__all__ = ["refuse_own_path"]

#: what a data dir holds for the chain itself (besides the configured places below)
_STORES = ("log", "projections", "anchor", "keys", "logs", "config.toml", "genesis.json", "node.json",
           "user-projections.json", "heads-cache.json")


def _own(cfg: Config) -> dict[str, str]:
    """What each kept path is called -> its real path."""
    places = {name: os.path.join(cfg.data_dir, name) for name in _STORES}
    places.update({"config file": cfg.config_path, "snapshot dir": cfg.snapshots_dir, "archive": cfg.archive_dir})
    return {what: os.path.realpath(path) for what, path in places.items()}


def refuse_own_path(out: str, cfg: Config, error: type[Exception], *, allow: tuple[str, ...] = ()) -> None:
    """Raise ``error`` if ``out`` is, or is inside, a path the chain keeps (but those of ``allow``:
    "snapshot dir" for a snapshot, "archive" for a prune's archive)."""
    real = os.path.realpath(out)
    for what, own in _own(cfg).items():
        if what not in allow and (real == own or real.startswith(own + os.sep)):
            raise error(f"{out} is the chain's own {what} ({own}): write it outside")
