"""Blue/green re-projection: rebuild projections from the log beside the live ones, compare
digests at the same log positions, swap atomically.

A rebuild goes into a new build directory recorded in the ``building`` pointer, so a killed
rebuild resumes from its committed positions. The swap rewrites the ``live`` pointer (atomic
rename); the replaced store becomes ``previous`` and is kept until the next successful rebuild
(or removed at once with ``keep=False``). Whoever holds the live runner (a node, or the CLI when
no node runs) passes it in, so queries keep being answered from the old version until the swap."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any

from ledgerlog.engine.codec import Codec
from ledgerlog.engine.errors import (
    NondeterministicFoldError,
    ProjectionFailedError,
    ReprojectRunningError,
)
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.base import Log

from . import catalog, layout
from .anchor import Anchor, anchor_root
from .parallel import build_bulk
from .runner import Runner
from .store import ProjectionStore

_log = logging.getLogger("ledgerlog.reproject")

__all__ = ["not_rebuildable", "reproject", "reproject_lock", "total_records"]

LOCK_FILE = ".reproject.lock"
_held: dict[str, tuple[int, int, int]] = {}  # lock path -> (owner thread, depth, fd)
_held_guard = threading.Lock()


@contextlib.contextmanager
def reproject_lock(projections_dir: str) -> Iterator[None]:
    """One reproject of ``projections_dir`` at a time, across threads (a node's admin requests)
    and processes (an flock on ``<projections_dir>/.reproject.lock``); re-entrant in the thread
    that holds it. ReprojectRunningError at once, never a wait, when another one holds it."""
    os.makedirs(projections_dir, exist_ok=True)
    path = os.path.realpath(os.path.join(projections_dir, LOCK_FILE))
    me = threading.get_ident()
    busy = ReprojectRunningError("a reproject of these projections is already running; "
                                 "wait for it to finish, then run it again if still needed")
    with _held_guard:
        owner, depth, fd = _held.get(path, (me, 0, -1))
        if owner != me:
            raise busy
        if depth == 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise busy from None
        _held[path] = (me, depth + 1, fd)
    try:
        yield
    finally:
        with _held_guard:
            owner, depth, fd = _held[path]
            if depth > 1:
                _held[path] = (owner, depth - 1, fd)
            else:
                del _held[path]
                os.close(fd)  # releases the flock


def total_records(log: Log, names: Iterable[str], projections_dir: str | None = None) -> int:
    """Records the named projections read from offset 0 (a rebuild's progress total); user
    projections are looked up in ``projections_dir``'s registry."""
    mods = catalog.modules(projections_dir)
    return sum(sum(log.end_offsets(t)) for n in names for t in mods[n].TOPICS)


def _behind_start(log: Log, path: str, topics: tuple[str, ...]) -> bool:
    """Has the build at ``path`` folded less than a pruned log still holds (it cannot go on)?"""
    point = log.prune_point()
    if point is None or not ProjectionStore.exists(path):
        return False
    store = ProjectionStore(path, read_only=True)
    try:
        pos = store.positions()
    finally:
        store.close()
    return any(pos.get(tp, 0) < start for tp, start in point.starts.items() if tp[0] in topics)


def _build_dir(projections_dir: str, name: str, log: Log) -> tuple[str, bool]:
    """The build directory to (re)use for ``name``: (dir name, resumed). A build killed before a
    prune that deleted what it would fold next starts over (from the anchor)."""
    module = catalog.module(projections_dir, name)
    ptr = layout.read_pointer(projections_dir, name, "building")
    live = layout.read_pointer(projections_dir, name, "live")
    if (ptr and ptr.get("version") == module.VERSION and (live is None or ptr["dir"] != live["dir"])
            and os.path.isdir(os.path.join(projections_dir, name, ptr["dir"]))
            and not _behind_start(log, os.path.join(projections_dir, name, ptr["dir"]), module.TOPICS)):
        return ptr["dir"], True
    if ptr:  # a rebuild by other code, or a broken pointer: start over
        layout.clear_pointer(projections_dir, name, "building", remove_dir=not live or ptr["dir"] != live["dir"])
    build = layout.new_build_dir(projections_dir, module)
    os.makedirs(os.path.join(projections_dir, name, build))  # a build killed before its store opens resumes
    layout.write_pointer(projections_dir, name, "building", build, module.VERSION)
    return build, False


def reproject(log: Log, codec: Codec, genesis: Genesis, projections_dir: str, live: Runner,
              names: Iterable[str] | None = None, *, keep: bool = True,
              swap_lock: threading.Lock | None = None, workers: int = 1,
              progress: Callable[[int], None] | None = None, serving: bool = True) -> list[dict[str, Any]]:
    """Rebuild ``names`` (default: all) and swap each into ``live``; one summary per projection.
    ReprojectRunningError when another reproject of ``projections_dir`` runs. ``serving``: queries
    may be reading ``live`` meanwhile (a node), so a swapped-out store closes in the background,
    once they let go; without them (a CLI command) it closes before this returns."""
    if names is None:
        names = [n for n in catalog.names(projections_dir) if n not in not_rebuildable(projections_dir, log)]
    chosen = catalog.check_names(projections_dir, names)
    with reproject_lock(projections_dir):
        return _reproject(log, codec, genesis, projections_dir, live, chosen, keep, swap_lock, workers, progress,
                          serving)


def not_rebuildable(projections_dir: str, log: Log) -> dict[str, str]:
    """The user projections a pruned log cannot rebuild (the anchor holds the built-ins only),
    each with why: left out of a plain ``reproject``, they keep folding live."""
    point = log.prune_point()
    if point is None:
        return {}
    anchor = Anchor.load(anchor_root(projections_dir))
    out = {}
    for name in catalog.names(projections_dir):
        mod = catalog.module(projections_dir, name)
        if catalog.is_user(mod) and (anchor is None or not anchor.covers(mod)):
            out[name] = (f"the log was pruned below height {point.height} and the anchor holds the built-in "
                         "projections only: it keeps folding live, and a snapshot from before the prune rebuilds it")
    return out


def _reproject(log: Log, codec: Codec, genesis: Genesis, projections_dir: str, live: Runner,
               chosen: list[str], keep: bool, swap_lock: threading.Lock | None, workers: int,
               progress: Callable[[int], None] | None, serving: bool) -> list[dict[str, Any]]:
    builds = {n: _build_dir(projections_dir, n, log) for n in chosen}
    paths = {n: os.path.join(projections_dir, n, d) for n, (d, _) in builds.items()}
    started = time.monotonic()
    folded = build_bulk(log, codec, genesis, projections_dir, paths, live.batch, workers, progress)
    build = Runner(log, codec, genesis, projections_dir, names=chosen, batch=live.batch, paths=paths, bulk=True)
    for name, n in folded.items():
        build.handles[name].events += n
    try:
        build.catch_up(progress=progress)  # the rest, while the live runner keeps folding
        build.end_bulk()  # the stores go live: flushed, and logged writes from here on
        with swap_lock or nullcontext():
            targets = {t: log.end_offsets(t) for t in log.topics()}
            build.catch_up(until=targets, progress=progress)
            _refuse_failed(build)
            live.catch_up(until=targets)
            return [_swap(projections_dir, live, build, n, builds[n], keep, time.monotonic() - started, serving)
                    for n in chosen]
    finally:
        build.close()


def _refuse_failed(build: Runner) -> None:
    """A rebuild whose fold raised is not swapped in: the live store stays, the build resumes
    from where it stopped once the code is fixed."""
    failed = build.failures()
    if failed:
        raise ProjectionFailedError("; ".join(f.message for f in failed.values()))


def _swap(projections_dir: str, live: Runner, build: Runner, name: str, built: tuple[str, bool],
          keep: bool, seconds: float, serving: bool) -> dict[str, Any]:
    new = build.handles.pop(name)
    module = new.module
    old = live.handles.get(name)
    if _disagrees(live, name, old, new):
        return _refuse_nondeterministic(projections_dir, name, built[0], module.VERSION, old, new)
    before = old.store.digest_hex() if old else None
    old_dir = os.path.basename(old.store.path) if old else None
    summary = {"projection": name, "version": module.VERSION, "replaced_corrupt": name in live.corrupt,
               "dir": built[0], "resumed": built[1],
               "events": new.events, "seconds": round(seconds, 3), "digest_before": before,
               "digest_after": new.store.digest_hex(), "identical": before == new.store.digest_hex(),
               "stale_version": old.version if old and old.stale else None, "swapped": True}
    new.events = old.events if old else 0  # the live fold's count goes on (the rebuild's is in the summary)
    stale_previous = layout.read_pointer(projections_dir, name, "previous")
    layout.write_pointer(projections_dir, name, "live", built[0], module.VERSION)
    layout.clear_pointer(projections_dir, name, "building")
    live.handles = {**live.handles, name: new}  # a new dict: queries iterating the old one go on
    live.corrupt.pop(name, None)
    if old is not None:
        remove = None
        if keep and old_dir is not None and old_dir != built[0]:
            layout.write_pointer(projections_dir, name, "previous", old_dir, old.version)
            summary["previous"] = old_dir
        elif old_dir != built[0]:
            remove = old_dir
        if serving:  # queries that already hold the old store read on; it closes (then, maybe, goes) after them
            retiring = threading.Thread(target=_retire, args=(old.store, projections_dir, name, remove),
                                        name=f"retire-{name}")
            with _RETIRING_LOCK:
                _RETIRING[os.path.abspath(old.store.path)] = retiring
            retiring.start()
        else:
            _retire(old.store, projections_dir, name, remove, grace=0.0)
    if stale_previous and stale_previous["dir"] not in (built[0], summary.get("previous")):
        _settle_retirement(os.path.join(projections_dir, name, stale_previous["dir"]))
        _remove(projections_dir, name, stale_previous["dir"])
    if not keep:
        layout.clear_pointer(projections_dir, name, "previous")
    return summary


def _disagrees(live: Runner, name: str, old: Any, new: Any) -> bool:
    """A user projection rebuilt at its live version over the same records, to another state:
    its fold is not deterministic (built-ins are checked by the suite instead)."""
    return (catalog.is_user(new.module) and old is not None and not old.stale and old.failed is None
            and name not in live.corrupt and old.store.positions() == new.store.positions()
            and old.store.digest_hex() != new.store.digest_hex())


def _refuse_nondeterministic(projections_dir: str, name: str, build_dir: str, version: int, old: Any,
                             new: Any) -> dict[str, Any]:
    """Keep the live store; drop the build (a rerun folds again rather than resume a wrong state)."""
    error = NondeterministicFoldError(
        f"projection {name} rebuilt at version {version} to digest {new.store.digest_hex()}, but the live store "
        f"folded the same records to {old.store.digest_hex()}: its fold is not deterministic; fix it and bump VERSION")
    new.store.close()
    layout.clear_pointer(projections_dir, name, "building")
    _remove(projections_dir, name, build_dir)
    return {"projection": name, "version": version, "swapped": False, "identical": False,
            "digest_before": old.store.digest_hex(), "digest_after": None,
            "error": {"code": error.code, "message": str(error)}}


#: store path -> the thread that closes it: stores swapped out, which queries may still be reading
_RETIRING: dict[str, threading.Thread] = {}
_RETIRING_LOCK = threading.Lock()
#: a swapped-out store stays open this long at least (a query may be about to take its view) ...
RETIRE_GRACE = 1.0
#: ... and then until its last view is let go, but no longer than this (a view leaked for good)
RETIRE_MAX_WAIT = 60.0


def _retire(store: Any, projections_dir: str, name: str, remove: str | None, grace: float = RETIRE_GRACE) -> None:
    time.sleep(grace)
    deadline = time.monotonic() + RETIRE_MAX_WAIT
    while store.views() and time.monotonic() < deadline:
        time.sleep(0.05)
    if store.views():
        _log.warning("projection %s: closing the store swapped out of it with %d views still held after %.0f s",
                     name, store.views(), RETIRE_MAX_WAIT)
    try:
        store.close()
    finally:
        with _RETIRING_LOCK:
            _RETIRING.pop(os.path.abspath(store.path), None)
    if remove:
        _remove(projections_dir, name, remove)


def _settle_retirement(path: str) -> None:
    """Wait for the store at ``path``, if it was swapped out and is still open, to close:
    its directory is about to be removed, which its open handle still locks. (Only then: back to
    back reprojects otherwise never wait for the previous one's retirements.)"""
    with _RETIRING_LOCK:
        timer = _RETIRING.get(os.path.abspath(path))
    if timer is not None:
        timer.join()


def _remove(projections_dir: str, name: str, build_dir: str) -> None:
    import shutil
    shutil.rmtree(os.path.join(projections_dir, name, build_dir), ignore_errors=True)
