"""Every projection a data dir folds: the four built-ins plus the user projections registered in
``<data_dir>/user-projections.json`` (``ledgerlog projections add``).

A user projection is any importable module (or a ``.py`` file) with ``NAME``, ``VERSION``,
``TOPICS`` and ``fold(genesis, events, txn)``, the contract the built-ins follow; ``initial`` and
``FIELDS`` are optional. It is loaded into a module object of its own (``USER`` true, ``SOURCE``
saying where it came from), so the runner, reproject, verify and the worker treat it as they treat
a built-in. A registered module that no longer imports is left out and listed in ``load_errors``:
the node and the other projections go on."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pickle
import re
import sys
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from ledgerlog import projections
from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import write_atomic
from ledgerlog.engine.errors import (
    ProjectionInvalidError,
    UnknownProjectionError,
    UserCodeError,
    UserCodeStuck,
)

__all__ = ["REGISTRY_FILE", "NAME_RE", "registry_path", "registered", "load", "modules", "module", "names",
           "load_errors", "register", "unregister", "write_registered", "is_user", "describe"]

REGISTRY_FILE = "user-projections.json"
#: a name that fits a directory, a URL path segment and a CLI argument
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
MAX_VERSION = 2**31 - 1
_lock = threading.Lock()
#: (projections_dir, registry entry as JSON, source mtime) -> the loaded module
_cache: dict[tuple[str, str, int], ModuleType] = {}
_errors: dict[str, dict[str, str]] = {}  # projections_dir -> name -> why it did not load


def registry_path(projections_dir: str) -> str:
    """The registry lives beside the projections (not in them: wiping the stores keeps it)."""
    return os.path.join(os.path.dirname(os.path.abspath(projections_dir)), REGISTRY_FILE)


def registered(projections_dir: str) -> dict[str, dict[str, str]]:
    """name -> {"module": dotted name, "path": sys.path entry} or {"file": path}, as stored."""
    try:
        with open(registry_path(projections_dir), "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ProjectionInvalidError(f"{registry_path(projections_dir)} cannot be read ({exc}); "
                                     "fix or remove it, then `ledgerlog projections add` again") from exc
    entries = data.get("projections", {}) if isinstance(data, dict) else {}
    return {n: e for n, e in entries.items() if isinstance(e, dict)}


def _source_of(entry: dict[str, str]) -> str:
    return entry.get("file") or entry.get("module", "?")


def _import(entry: dict[str, str]) -> ModuleType:
    """Import a registered source afresh (a changed file is read again, so a version bump is
    seen): a ``.py`` source is compiled from its text, since Python trusts a cached .pyc by the
    source's mtime in whole seconds and its size, and a file edited within the second it was
    compiled, to text of the same length (VERSION 1 -> 2), ran the old code under the new version.
    Each load runs in a fresh module object, so the projection in use keeps its code and globals
    (even if the new source fails halfway), and what the process itself imported of the module
    stays in ``sys.modules``."""
    if "file" in entry:
        path = entry["file"]
        spec = importlib.util.spec_from_file_location(f"ledgerlog_user_{abs(hash(path))}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} is not a Python file")
        name = None
    else:
        where = entry.get("path")
        if where and where not in sys.path:
            sys.path.append(where)
        importlib.invalidate_caches()
        name = entry["module"]
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ImportError(f"no module named {name!r}")
    mod = importlib.util.module_from_spec(spec)  # a fresh module: the one in use keeps its code and globals
    before = sys.modules.get(name) if name else None
    if name:
        sys.modules[name] = mod  # as `import` has it while the module runs
    try:
        if spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, "rb") as f:
                exec(compile(f.read(), spec.origin, "exec", dont_inherit=True), mod.__dict__)  # the operator's module
        else:  # a sourceless or compiled module: its loader
            spec.loader.exec_module(mod)
    except BaseException:
        if name and before is None and sys.modules.get(name) is mod:
            del sys.modules[name]
        raise
    finally:
        if name and before is not None:
            sys.modules[name] = before  # what the process imported of it stays (a notebook's own `import`)
    return mod


def _mtime(entry: dict[str, str]) -> int:
    """When the source last changed (0: not found), so an edited module is imported again."""
    path = entry.get("file")
    if path is None:
        if entry.get("path") and entry["path"] not in sys.path:
            sys.path.append(entry["path"])
        try:
            spec = importlib.util.find_spec(entry["module"])
        except (ImportError, ValueError):
            return 0
        path = spec.origin if spec is not None else None
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return 0


def load(source: str, search: str | None = None) -> tuple[ModuleType, dict[str, str]]:
    """Import ``source`` (a dotted module name, found on ``sys.path`` or under ``search``, or a
    ``.py`` file) and check it; returns (projection module, its registry entry).
    ProjectionInvalidError, one line, when it does not import or breaks the contract."""
    if source.endswith(".py") or os.sep in source:
        path = os.path.abspath(source)
        if not os.path.isfile(path):
            raise ProjectionInvalidError(f"no such file {source}: give a module name on sys.path or a .py file")
        entry = {"file": path}
    else:
        entry = {"module": source, "path": os.path.abspath(search or os.getcwd())}
    try:
        raw = _import(entry)
    except Exception as exc:
        raise ProjectionInvalidError(f"{source} does not import: {type(exc).__name__}: {exc}") from exc
    return adapt(raw, source), entry


def adapt(raw: Any, source: str) -> ModuleType:
    """A projection module built from a user's module or object, after checking the contract."""
    def bad(what: str) -> ProjectionInvalidError:
        return ProjectionInvalidError(f"{source}: {what} (a projection declares NAME, VERSION, TOPICS and "
                                      "fold(genesis, events, txn); see docs/PROJECTIONS.md)")
    name, version, topics = (getattr(raw, a, None) for a in ("NAME", "VERSION", "TOPICS"))
    fold, initial, fields = getattr(raw, "fold", None), getattr(raw, "initial", None), getattr(raw, "FIELDS", None)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise bad(f"NAME must be 1-40 characters of a-z, 0-9 and _, starting with a letter, not {name!r}")
    if name in projections.ALL:
        raise bad(f"NAME {name!r} is a built-in projection's")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise bad(f"VERSION must be an integer from 1 to {MAX_VERSION}, not {version!r}")
    if isinstance(topics, str) or not isinstance(topics, (tuple, list)) or not topics:
        raise bad(f"TOPICS must be a non-empty tuple of event topics, not {topics!r}")
    unknown = [t for t in topics if t not in T.EVENT_TOPICS]
    if unknown:
        raise bad(f"TOPICS {unknown} are not event topics; have {', '.join(T.EVENT_TOPICS)}")
    if not callable(fold):
        raise bad("fold is missing or not callable")
    if initial is not None and not callable(initial):
        raise bad("initial is not callable")
    if fields is not None and (not isinstance(fields, dict) or any(t not in topics for t in fields)):
        raise bad("FIELDS must map some of its TOPICS to the dotted event fields the fold reads")
    mod = ModuleType(f"ledgerlog.user_projections.{name}", getattr(raw, "__doc__", None))
    attrs: dict[str, Any] = {"NAME": name, "VERSION": version, "TOPICS": tuple(dict.fromkeys(topics)),
                             "USER": True, "SOURCE": source, "initial": _guarded_initial(name, initial or _no_initial),
                             "fold": _guarded(name, fold)}
    if fields is not None:
        attrs["FIELDS"] = dict(fields)
    mod.__dict__.update(attrs)
    return mod


def _no_initial(genesis: Any, txn: Any) -> None:
    """A user projection without ``initial`` starts empty."""


def _check_writes(name: str, txn: Any) -> None:
    """Refuse what a user's fold or initial state wrote that the store cannot take: keys and
    values that are not bytes, and keys the store keeps for itself (a zero byte first). Raised
    here, inside the fold, it stops that projection alone; at the commit it stopped the node."""
    for key, value in getattr(txn, "writes", {}).items():
        if type(key) is not bytes or (value is not None and type(value) is not bytes):
            bad = key if type(key) is not bytes else value
            raise TypeError(f"projection {name} wrote {type(bad).__name__} {str(bad)[:40]!r} as a "
                            f"{'key' if bad is key else 'value'}: keys and values are bytes (encode them)")
        if key[:1] == b"\x00":
            raise ValueError(f"projection {name} wrote key {key[:20]!r}: keys starting with a zero byte "
                             "are the store's own; pick another prefix")


#: characters of an exception's text kept in a projection's failure reason
MAX_REASON = 1000


def describe(exc: BaseException) -> str:
    """``Type: text`` of an exception, whatever its ``__str__`` does (user code's may raise): one
    line (control characters as spaces: the text may quote event fields, and it goes to the log)
    of at most MAX_REASON characters."""
    try:
        text = str(exc)[:MAX_REASON + 1]
    except Exception:  # noqa: BLE001 - the text of an exception raised by user code
        text = "(its text could not be read)"
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(text) > MAX_REASON:
        text = text[:MAX_REASON] + "..."
    return f"{type(exc).__name__}: {text}"


def _private(genesis: Any, *rest: Any) -> tuple[Any, ...]:
    """Copies of what a user projection is handed (the genesis, the decoded events): the
    built-ins fold the same objects, which its code might edit in place."""
    return pickle.loads(pickle.dumps((genesis, *rest), protocol=pickle.HIGHEST_PROTOCOL))  # type: ignore[no-any-return]


#: seconds a user projection's fold of one batch (or its initial state) may take
USER_CALL_TIMEOUT = 60.0


def _run_user(call: Callable[..., Any], *args: Any) -> None:
    """Call user code on a thread of its own and wait for it up to ``USER_CALL_TIMEOUT``; what it
    raises that is not an ``Exception`` comes out as one."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call(*args)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome.append(exc)

    worker = threading.Thread(target=run, name="user-projection", daemon=True)
    worker.start()
    worker.join(USER_CALL_TIMEOUT)
    if not outcome:
        raise UserCodeStuck(f"did not return within {USER_CALL_TIMEOUT:g} s (it may loop or wait for ever); "
                            "it is left running: fix it, then restart the node")
    exc = outcome[0]
    if exc is None:
        return
    if isinstance(exc, (Exception, KeyboardInterrupt)):
        raise exc
    raise UserCodeError(describe(exc)) from None


def _guarded(name: str, fold: Callable[..., Any]) -> Callable[..., None]:
    """The user's fold, on its own copies, its writes checked (``_check_writes``)."""
    def fold_checked(genesis: Any, events: Any, txn: Any) -> None:
        _run_user(fold, *_private(genesis, events), txn)
        _check_writes(name, txn)
    return fold_checked


def _guarded_initial(name: str, initial: Callable[..., Any]) -> Callable[..., None]:
    """The user's initial state, on its own copy of the genesis, its writes checked."""
    def initial_checked(genesis: Any, txn: Any) -> None:
        _run_user(initial, *_private(genesis), txn)
        _check_writes(name, txn)
    return initial_checked


def is_user(mod: ModuleType) -> bool:
    return bool(getattr(mod, "USER", False))


def modules(projections_dir: str | None) -> dict[str, ModuleType]:
    """name -> module: the built-ins, then the user projections registered for the data dir
    that import and keep the contract (the others: ``load_errors``)."""
    out: dict[str, ModuleType] = dict(projections.ALL)
    if projections_dir is None:
        return out
    errors: dict[str, str] = {}
    for name, entry in sorted(registered(projections_dir).items()):
        key = (os.path.abspath(projections_dir), json.dumps(entry, sort_keys=True), _mtime(entry))
        with _lock:
            mod = _cache.get(key)
        if mod is None:
            try:
                mod = adapt(_import(entry), _source_of(entry))
                if name != mod.NAME:
                    raise ProjectionInvalidError(f"{_source_of(entry)} now declares NAME {mod.NAME!r}, "
                                                 f"registered as {name!r}: remove and add it again")
            except Exception as exc:  # noqa: BLE001 - a broken user module leaves only itself out
                errors[name] = f"{type(exc).__name__}: {exc}"
                continue
            with _lock:
                _cache[key] = mod
        out[name] = mod
    with _lock:
        _errors[os.path.abspath(projections_dir)] = errors
    return out


def load_errors(projections_dir: str) -> dict[str, str]:
    """Registered user projections the last ``modules`` call could not load, and why."""
    with _lock:
        return dict(_errors.get(os.path.abspath(projections_dir), {}))


def names(projections_dir: str | None) -> list[str]:
    return list(modules(projections_dir))


def module(projections_dir: str | None, name: str) -> ModuleType:
    """One projection by name; UnknownProjectionError (404) names the ones there are."""
    mods = modules(projections_dir)
    if name not in mods:
        why = load_errors(projections_dir).get(name) if projections_dir else None
        raise UnknownProjectionError(f"projection {name!r} " + (f"is registered but does not load: {why}" if why else
                                     f"does not exist; have {', '.join(sorted(mods))}"))
    return mods[name]


def check_names(projections_dir: str | None, chosen: Iterable[str]) -> list[str]:
    """``chosen``, each name once (in first-named order), if every name is a projection here,
    else UnknownProjectionError. (A name given twice opened its store twice: LOCKED.)"""
    chosen = list(dict.fromkeys(chosen))
    for n in chosen:
        module(projections_dir, n)
    return chosen


def register(projections_dir: str, mod: ModuleType, entry: dict[str, str]) -> None:
    """Add (or replace) a user projection's entry in the registry, atomically."""
    entries = registered(projections_dir)
    entries[mod.NAME] = entry
    write_registered(projections_dir, entries)


def unregister(projections_dir: str, name: str) -> None:
    entries = registered(projections_dir)
    if name not in entries:
        if name in projections.ALL:
            raise ProjectionInvalidError(f"{name} is a built-in projection and cannot be removed")
        raise UnknownProjectionError(f"no user projection {name!r} is registered; have {', '.join(sorted(entries)) or 'none'}")
    del entries[name]
    write_registered(projections_dir, entries)


def write_registered(projections_dir: str, entries: dict[str, dict[str, str]]) -> None:
    """Write the registry of ``projections_dir`` (as ``registered`` reads it), atomically."""
    path = registry_path(projections_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, json.dumps({"projections": entries}, indent=2, sort_keys=True).encode() + b"\n")
