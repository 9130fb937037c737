"""Storage checks for `ledgerlog verify` and the start-up guard: every store opens, its files are
all there with their recorded sizes, and every key reads back with block checksums verified."""
from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

from rocksdict import AccessType, DBRecoveryMode, Options, Rdict, ReadOptions

from ledgerlog import projections
from ledgerlog.engine import storekeys as K
from ledgerlog.engine.config import Config
from ledgerlog.engine.digest import DIGEST_MOD, digest_hex, entry_hash
from ledgerlog.engine.errors import CorruptStoreError
from ledgerlog.streams import layout

#: Problems listed per section (all are counted in ``problem_count``).
MAX_PROBLEMS = 50
#: ``check_stores(mode="auto")`` reads every key when the stores' live files total at most this.
AUTO_FULL_BYTES = 256 * 1024 * 1024



# -- report sections ----------------------------------------------------------------------------
class Section:
    """One part of the report: ok, how many things were checked, the problems found."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.checked = 0
        self.problems: list[dict[str, Any]] = []
        self.count = 0
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self._seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.count == 0

    def problem(self, code: str, where: str, message: str, **extra: Any) -> None:
        self.count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append({"code": code, "where": where, "message": message, **extra})

    def done(self) -> Section:
        """Stop the section's clock."""
        if self._seconds is None:
            self._seconds = time.monotonic() - self._t0
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "checked": self.checked, "problems": self.problems,
                               "problem_count": self.count}
        out.update(self.extra)
        if self.notes:
            out["notes"] = self.notes
        out["seconds"] = round(self.done()._seconds or 0.0, 3)
        return out


# -- raw RocksDB access with checksums ------------------------------------------------------------
def _ro_options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(False)
    opts.set_paranoid_checks(True)
    # a torn last record (crash mid-append) is tolerated; a bad record before the tail is not
    # (the default, point-in-time recovery, would silently drop everything after it)
    opts.set_wal_recovery_mode(DBRecoveryMode.tolerate_corrupted_tail_records())
    opts.set_keep_log_file_num(3)
    return opts


def _open_ro(path: str) -> Rdict:
    return Rdict(path, _ro_options(), access_type=AccessType.read_only())


def _verified_reads() -> ReadOptions:
    ro = ReadOptions()
    ro.set_verify_checksums(True)
    ro.fill_cache(False)  # type: ignore[call-arg]  # rocksdict's stub lacks the argument
    return ro


def _checked_items(db: Rdict, prefix: bytes = b"", start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) with ``prefix`` in key order, block checksums verified. Unlike a bare RocksDB
    iterator, which just stops at a bad block, this raises when the scan ended on an error."""
    it = db.iter(_verified_reads())
    if start is not None or prefix:
        it.seek(start if start is not None else prefix)
    else:
        it.seek_to_first()
    while it.valid():
        key = it.key()
        if prefix and not key.startswith(prefix):
            return
        yield key, it.value()
        it.next()
    it.status()  # raises if the iterator stopped on a corrupt block or an I/O error


_PATH_RE = re.compile(r"(/[^\s:,;'\"()]*?(?:\d+\.(?:sst|log|blob)|MANIFEST-\d+|CURRENT|OPTIONS-\d+))")
_HINT_RE = re.compile(r"The file (\S+?) may be corrupted")


def _classify(text: str, store_path: str) -> tuple[str, str]:
    """(problem code, file) for a RocksDB error text: the file it names (the store directory
    when it names none). RocksDB appends "The file MANIFEST-n may be corrupted" to any error met
    while replaying the MANIFEST; the table file it names first is the culprit then."""
    hinted = set(_HINT_RE.findall(text))
    found = [p.rstrip(".") for p in _PATH_RE.findall(text)]
    specific = [p for p in found if p not in hinted]
    low = text.lower()
    if not found and ("checksum" in low or "corrupt" in low):
        # RocksDB names no file when a write-ahead log record fails its checksum while the WAL is
        # replayed at open; the WALs are replayed oldest first and replay stops at the bad one
        found = _wal_files(store_path)[:1]
    file = (specific or found or [store_path])[0]
    if "size mismatch" in low:
        code = "TRUNCATED_FILE"
    elif "no such file" in low:
        code = "MISSING_FILE"
    elif "lock" in low and ("LOCK" in text or "hold" in low):
        code = "LOCKED"
    elif "corrupt" in low or "checksum" in low or "magic number" in low or "bad " in low:
        code = "CORRUPT_FILE"
    else:
        code = "STORAGE_ERROR"
    return code, file


def _tidy(message: str, file: str) -> str:
    """One line; without RocksDB's generic "MANIFEST may be corrupted" hint when the culprit is
    another file."""
    for hinted in _HINT_RE.findall(message):
        if hinted != file:
            message = message.replace(f"The file {hinted} may be corrupted.", "")
    return " ".join(message.split()).rstrip(" .")


def _wal_files(store_path: str) -> list[str]:
    """Non-empty write-ahead log files of a store, oldest first."""
    try:
        names = sorted(n for n in os.listdir(store_path) if re.fullmatch(r"\d+\.log", n))
    except OSError:
        return []
    return [os.path.join(store_path, n) for n in names if os.path.getsize(os.path.join(store_path, n)) > 0]


def _remedy(kind: str, name: str, path: str) -> str:
    if kind == "log":
        return ("the log is the source of truth and cannot be rebuilt from anything else: stop the "
                f"node, restore {path} from a snapshot (`ledgerlog snapshot list`, then `ledgerlog "
                "snapshot restore`) or from your backup, then run `ledgerlog verify`")
    return (f"projections are rebuilt from the log: with the node stopped, run `ledgerlog reproject "
            f"{name}` (it replaces the damaged store), then start the node")


# -- storage --------------------------------------------------------------------------------------
def _store_list(config: Config) -> list[tuple[str, str, str]]:
    """(name, kind, path) of the log (when embedded) and of each live projection store."""
    out = []
    if config.log_url == "embedded":
        out.append(("log", "log", config.log_path))
    for name, module in projections.ALL.items():
        path, _version = layout.live_path(config.projections_dir, module)
        out.append((name, "projection", path))
    return out


def _check_store(name: str, kind: str, path: str, full: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check one store; returns (facts, problems). Problems carry store, path, file, remedy."""
    info: dict[str, Any] = {"kind": kind, "path": path}
    problems: list[dict[str, Any]] = []

    def bad(code: str, file: str, message: str) -> None:
        problems.append({"code": code, "where": f"{name} store", "message": _tidy(message, file),
                         "store": name, "path": path, "file": file, "remedy": _remedy(kind, name, path)})

    current = os.path.join(path, "CURRENT")
    if not os.path.isdir(path) or (kind == "projection" and _never_created(path)):
        if kind == "log":
            bad("MISSING_STORE", path, f"the log store {path} does not exist")
        else:
            info["missing"] = True  # not built yet: it is folded from the log when opened
        return info, problems
    try:
        with open(current, "rb") as f:
            manifest = f.read().decode("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        bad("MISSING_FILE" if isinstance(exc, FileNotFoundError) else "CORRUPT_FILE", current,
            f"{current} cannot be read: {exc}")
        return info, problems
    if not re.fullmatch(r"MANIFEST-\d+", manifest):
        bad("CORRUPT_FILE", current, f"{current} does not name a MANIFEST file (holds {manifest[:40]!r})")
        return info, problems
    if not os.path.isfile(os.path.join(path, manifest)):
        bad("MISSING_FILE", os.path.join(path, manifest), f"{manifest}, named by CURRENT, is missing")
        return info, problems
    # A running node may flush, compact and delete files between our listing and our look: a
    # finding is only reported when a second, fresh open sees it too.
    for attempt in (1, 2):
        try:
            db = _open_ro(path)
        except Exception as exc:  # rocksdict raises plain Exception
            if attempt == 1:
                time.sleep(0.2)
                continue
            code, file = _classify(str(exc), path)
            bad(code, file, f"cannot open: {exc}".strip())
            return info, problems
        files = db.live_files()
        damaged = _damaged_files(path, files)
        if not damaged or attempt == 2:
            break
        db.close()
    try:
        info["files"] = len(files)
        info["bytes"] = sum(f["size"] for f in files)
        for code, fpath, message in damaged:
            bad(code, fpath, message)
        try:
            fmt = db.get(K.FORMAT_KEY)
        except Exception as exc:
            code, file = _classify(str(exc), path)
            bad(code, file, f"reading the format key failed: {exc}")
            return info, problems
        want = K.LOG_FORMAT if kind == "log" else K.PROJECTION_FORMAT
        if fmt is None and kind == "projection" and not problems and _holds_nothing(db):
            # created but never written (a process killed right after RocksDB made it): opening
            # it writes the format key and folds it from the log, like a store not built yet
            info["missing"] = True
            return info, problems
        if fmt != want:
            bad("FORMAT", path, f"format key is {fmt!r}, expected {want!r}")
        if full and not problems:
            keys = nbytes = 0
            digest = 0
            try:
                for k, v in _checked_items(db):
                    keys += 1
                    nbytes += len(k) + len(v)
                    if kind == "projection" and not k.startswith(b"\x00"):
                        digest += entry_hash(k, v)
            except Exception as exc:
                code, file = _classify(str(exc), path)
                bad(code, file, f"reading every key failed after {keys} keys: {exc}")
            info["keys"], info["key_bytes"] = keys, nbytes
            if kind == "projection" and not problems:
                info["content_digest"] = digest_hex(digest % DIGEST_MOD)
    finally:
        db.close()
    return info, problems


def _never_created(path: str) -> bool:
    """An empty projection dir, or one RocksDB was killed while creating: CURRENT is renamed into
    place last, and no table file can exist before it."""
    names = os.listdir(path)
    return "CURRENT" not in names and not any(n.endswith(".sst") for n in names)


def _holds_nothing(db: Rdict) -> bool:
    it = db.iter()
    it.seek_to_first()
    return not it.valid()


def _damaged_files(path: str, files: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(code, file, message) for table files the MANIFEST lists that are missing or resized."""
    out = []
    for f in files:
        fpath = path + f["name"] if f["name"].startswith("/") else os.path.join(path, f["name"])
        try:
            size = os.path.getsize(fpath)
        except OSError:
            out.append(("MISSING_FILE", fpath, f"{os.path.basename(fpath)} is listed in the MANIFEST but missing"))
            continue
        if size != f["size"]:
            out.append(("TRUNCATED_FILE" if size < f["size"] else "CORRUPT_FILE", fpath,
                        f"{os.path.basename(fpath)} has {size} bytes; the MANIFEST records {f['size']}"))
    return out


def _storage_section(config: Config, full: bool = True) -> tuple[Section, dict[str, dict[str, Any]]]:
    sec = Section("storage")
    stores: dict[str, dict[str, Any]] = {}
    if config.log_url != "embedded":
        sec.notes.append(f"the log is {config.log_url}, not embedded: only projection stores are checked")
    for name, kind, path in _store_list(config):
        info, problems = _check_store(name, kind, path, full)
        info["ok"] = not problems
        stores[name] = info
        if not info.get("missing"):
            sec.checked += 1
        for p in problems:
            sec.problem(p.pop("code"), p.pop("where"), p.pop("message"), **p)
    sec.extra["stores"] = {n: {k: v for k, v in i.items() if k != "content_digest"} for n, i in stores.items()}
    return sec.done(), stores


def check_stores(config: Config, mode: str = "quick") -> dict[str, Any]:
    """The start-up guard: raise CorruptStoreError (naming the bad file and what to do) unless
    every store of the data dir is sound.

    ``quick``: each store's CURRENT names a MANIFEST that exists, the store opens (RocksDB replays
    the MANIFEST and WAL with paranoid checks and opens every table file: footers, index and
    meta blocks are checksummed), and every table file the MANIFEST lists exists with the
    recorded size. ``full``: also reads every key with block checksums verified, which finds a
    flipped byte anywhere but in a table file's (unused) bloom-filter block, see the module doc.
    ``auto``: full when the stores' live files total at most AUTO_FULL_BYTES, else quick.

    Returns ``{"mode", "stores": {name: facts}, "seconds"}``. The raised error carries the list
    of problems as ``.problems``. A data dir without a chain passes (opening it fails later with
    its own message)."""
    if mode not in ("quick", "full", "auto"):
        raise ValueError(f"mode must be quick, full or auto, not {mode!r}")
    t0 = time.monotonic()
    if not os.path.exists(config.genesis_path):
        return {"mode": mode, "stores": {}, "seconds": 0.0}
    problems: list[dict[str, Any]] = []
    stores: dict[str, dict[str, Any]] = {}
    for name, kind, path in _store_list(config):
        info, found = _check_store(name, kind, path, full=mode == "full")
        stores[name], problems = info, problems + found
    if mode == "auto" and not problems:
        total = sum(i.get("bytes", 0) for i in stores.values())
        if total <= AUTO_FULL_BYTES:
            for name, kind, path in _store_list(config):
                info, found = _check_store(name, kind, path, full=True)
                stores[name], problems = info, problems + found
    if problems:
        parts: list[str] = []
        remedies: dict[str, str] = {}
        for p in problems:
            parts.append(f"{p['store']} store: {p['file']}: {p['code']}: {p['message']}")
            remedies.setdefault(p["store"], p["remedy"])
        todo = "; ".join(f"{store}: {r}" if len(remedies) > 1 else r for store, r in remedies.items())
        exc = CorruptStoreError(f"refusing to start on a damaged store in {config.data_dir}: "
                                + "; ".join(parts) + f". What to do: {todo}")
        exc.problems = problems  # type: ignore[attr-defined]
        raise exc
    return {"mode": mode, "stores": stores, "seconds": round(time.monotonic() - t0, 3)}


