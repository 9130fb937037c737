"""Where each projection's stores live, and which one is live (blue/green).

``<projections_dir>/<name>/`` holds one directory per build (``v<version>`` for the first,
``v<version>-<n>`` for rebuilds) and three pointer files, each replaced atomically:
``live`` (the store queries read), ``building`` (a rebuild in progress, resumable) and
``previous`` (the store the last swap replaced, kept until the next successful reproject).
Each pointer is JSON ``{"dir": "<build dir name>", "version": <projection version>}``."""
from __future__ import annotations

import json
import logging
import os
import shutil
from types import ModuleType

from ledgerlog.engine.chain import write_atomic
from ledgerlog.engine.files import plain_name

__all__ = ["Pointer", "read_pointer", "write_pointer", "clear_pointer", "live_path", "new_build_dir",
           "build_dirs"]

Pointer = dict  # {"dir": str, "version": int}
log = logging.getLogger("ledgerlog.layout")


def _dir(projections_dir: str, name: str) -> str:
    return os.path.join(projections_dir, name)


def read_pointer(projections_dir: str, name: str, which: str) -> Pointer | None:
    """The pointer, or None when there is none or it does not name a build dir beside it (a
    path elsewhere, as a foreign snapshot's could: never opened, written to or removed)."""
    path = os.path.join(_dir(projections_dir, name), which)
    try:
        with open(path, encoding="utf-8") as f:
            ptr = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(ptr, dict) or not plain_name(ptr.get("dir")):
        if isinstance(ptr, dict) and "dir" in ptr:
            log.warning("ignoring %s: it names %r, not a build directory beside it", path, ptr["dir"])
        return None
    return ptr


def write_pointer(projections_dir: str, name: str, which: str, build: str, version: int) -> None:
    os.makedirs(_dir(projections_dir, name), exist_ok=True)
    write_atomic(os.path.join(_dir(projections_dir, name), which),
                 json.dumps({"dir": build, "version": version}).encode())


def clear_pointer(projections_dir: str, name: str, which: str, *, remove_dir: bool = False) -> None:
    ptr = read_pointer(projections_dir, name, which)
    path = os.path.join(_dir(projections_dir, name), which)
    if os.path.exists(path):
        os.unlink(path)
    if remove_dir and ptr:
        shutil.rmtree(os.path.join(_dir(projections_dir, name), ptr["dir"]), ignore_errors=True)


def live_path(projections_dir: str, module: ModuleType) -> tuple[str, int]:
    """(path, version) of the live store; the first build (``v<VERSION>``) when none is live yet."""
    ptr = read_pointer(projections_dir, module.NAME, "live")
    if ptr is None:
        return os.path.join(_dir(projections_dir, module.NAME), f"v{module.VERSION}"), module.VERSION
    return os.path.join(_dir(projections_dir, module.NAME), ptr["dir"]), int(ptr.get("version", 0))


def build_dirs(projections_dir: str, name: str) -> list[str]:
    d = _dir(projections_dir, name)
    return sorted(e for e in os.listdir(d) if os.path.isdir(os.path.join(d, e))) if os.path.isdir(d) else []


def new_build_dir(projections_dir: str, module: ModuleType) -> str:
    """A fresh build directory name for the code's version, next to the existing ones."""
    taken = set(build_dirs(projections_dir, module.NAME))
    n = 2
    while f"v{module.VERSION}-{n}" in taken:
        n += 1
    return f"v{module.VERSION}" if f"v{module.VERSION}" not in taken else f"v{module.VERSION}-{n}"
