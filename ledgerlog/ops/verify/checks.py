"""`ledgerlog verify` and the start-up store check.

``verify(config)`` re-checks a data dir from the bottom up and returns a JSON-able report:

- ``storage``: every store (the log and each live projection) opens read-only with paranoid
  checks, every file its MANIFEST lists exists with the recorded size, and every key is read with
  block checksums verified. A bad store names the file and what to do.
- ``log``: every record of every topic partition: offsets contiguous from 0 to the end offset,
  values decode, keys and partitions match the partitioner; blocks chain (heights 1..n,
  prev_hash links from the genesis hash, hash = H(header), tx_root/tx_count, producer key and
  signature); every signed body's id and signature (PROTOCOL.md §2), share ids, ids unique per
  kind, and the cross references (a block's txids are confirmed once, with its height, index and
  hash; settlements name a registered provider and its owner; payouts a pool block).
- ``supply``: the balances of a fresh replay satisfy the supply invariant (PROTOCOL.md §6) and
  equal the write-side accounts kept in the log, account by account.
- ``projections``: each projection replayed from offset 0 into a scratch directory; the live
  store's content digest (recomputed from what it holds) must equal both its recorded digest and
  the replay's digest at the same log positions.

The report is ``{"ok", ..., "storage", "log", "supply", "projections", "seconds"}``; each section
is ``{"ok", "checked", "problems" (the first 50), "problem_count", ...}`` and each problem
``{"code", "where", "message", ...}``.

With no node running, verify first brings the live projections up to the end of the log (as
queries do). With a node running, every store is opened read-only (no lock is taken) and each
live projection is compared with a replay stopped at the positions the live store has reached.

``check_stores(config, mode)`` is the start-up guard: it raises CorruptStoreError naming the bad
file and the remedy, so the node never serves a corrupt store.

What reading every key does not see: RocksDB reads never load a table file's bloom-filter block
in ledgerlog's configuration (gets and scans return the same answers with it zeroed), so a byte
flipped inside that block (a few percent of a small table file, less of a large one) goes
unnoticed, and is harmless to every read. Every other byte of a table file, the MANIFEST and
CURRENT is covered, and so is the write-ahead log up to its last record (which a crash may
legitimately leave torn, so a bad last record is tolerated).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from rocksdict import Rdict

from ledgerlog import projections
from ledgerlog.engine import intjson
from ledgerlog.engine.chain import Chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.digest import DIGEST_MOD, entry_hash
from ledgerlog.engine.errors import ConfigError, LedgerError, StoreLockedError
from ledgerlog.ops.jobs import Progress
from ledgerlog.ops.verify.log import _LogChecker
from ledgerlog.ops.verify.state import state_section
from ledgerlog.ops.verify.storage import (
    AUTO_FULL_BYTES,
    MAX_PROBLEMS,
    Section,
    _checked_items,
    _classify,
    _remedy,
    _storage_section,
    _verified_reads,
    check_stores,
)
from ledgerlog.streams import catalog, layout
from ledgerlog.streams.anchor import Anchor
from ledgerlog.streams.reproject import total_records
from ledgerlog.streams.runner import Runner
from ledgerlog.streams.store import ProjectionStore

__all__ = ["verify", "check_stores", "MAX_PROBLEMS", "AUTO_FULL_BYTES"]

# -- supply ---------------------------------------------------------------------------------------
def _supply_section(chain: Chain, balances_store: ProjectionStore | None, height: int) -> Section:
    sec = Section("supply")
    g = chain.genesis
    expected = sum(g.allocations.values()) + g.block_reward * height
    sec.extra.update({"height": height, "expected": expected})
    if balances_store is None:
        sec.problem("SKIPPED", "balances replay", "the balances replay did not complete")
        return sec
    proj: dict[str, tuple[int, int, int]] = {}
    for k, v in _checked_items(balances_store.db, b"a/"):
        b, s, n, _h = intjson.loads(v)
        proj[k[2:].decode()] = (b, s, n)
    total = sum(b + s for b, s, _n in proj.values())
    sec.extra["total"] = total
    if total != expected:
        sec.problem("SUPPLY", "balances replay", f"sum(balance) + sum(staked) = {total}, but allocations + "
                                                 f"block_reward x height = {expected} (height {height})")
    for addr, (b, s, _n) in proj.items():
        if b < 0 or s < 0:
            sec.problem("NEGATIVE_BALANCE", f"account {addr}", f"balance {b}, staked {s}")
    if not chain.log.atomic_state:
        sec.notes.append("the log keeps no write-side state: replay checked on its own")
        sec.checked = len(proj)
        return sec
    ws: dict[str, tuple[int, int, int]] = {}
    for k, v in chain.log.state_items(b"a/"):
        b, s, n = intjson.loads(v)
        ws[k[2:].decode()] = (b, s, n)
    ws_total = sum(b + s for b, s, _n in ws.values())
    sec.extra["write_side_total"] = ws_total
    if ws_total != expected:
        sec.problem("SUPPLY", "write-side state", f"write-side accounts hold {ws_total}, expected {expected}")
    for addr in sorted(set(proj) | set(ws)):
        a, b = ws.get(addr, (0, 0, 0)), proj.get(addr, (0, 0, 0))
        if a != b:
            sec.problem("ACCOUNT_MISMATCH", f"account {addr}",
                        f"write side (balance, staked, nonce) = {list(a)}, fresh replay = {list(b)}")
    sec.checked = len(set(proj) | set(ws))
    return sec


# -- projections ----------------------------------------------------------------------------------
class _CappedLog:
    """A view of a log that ends at given positions, so a replay stops where a live store is."""

    def __init__(self, log: Any, caps: dict[tuple[str, int], int]) -> None:
        self._log = log
        self._caps = caps

    def end_offsets(self, topic: str) -> list[int]:
        return [min(end, self._caps.get((topic, p), 0)) for p, end in enumerate(self._log.end_offsets(topic))]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def _content_digest(db: Rdict) -> tuple[int, int]:
    """(digest of the state keys, number of state keys), read with checksums verified."""
    digest = n = 0
    for k, v in _checked_items(db):
        if not k.startswith(b"\x00"):
            digest += entry_hash(k, v)
            n += 1
    return digest % DIGEST_MOD, n


def _show(b: bytes | None, limit: int = 120) -> str | None:
    if b is None:
        return None
    text = b.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= limit else text[:limit] + "..."


def _diff(live: Rdict, replay: Rdict, limit: int = 5) -> list[dict[str, Any]]:
    """The first state keys whose values differ between two stores."""
    out: list[dict[str, Any]] = []
    a, b = live.iter(_verified_reads()), replay.iter(_verified_reads())
    a.seek(b"\x01")
    b.seek(b"\x01")
    while (a.valid() or b.valid()) and len(out) < limit:
        ka = a.key() if a.valid() else None
        kb = b.key() if b.valid() else None
        if kb is None or (ka is not None and ka < kb):
            out.append({"key": _show(ka), "live": _show(a.value()), "replay": None})
            a.next()
        elif ka is None or kb < ka:
            out.append({"key": _show(kb), "live": None, "replay": _show(b.value())})
            b.next()
        else:
            if a.value() != b.value():
                out.append({"key": _show(ka), "live": _show(a.value()), "replay": _show(b.value())})
            a.next()
            b.next()
    return out


def verified_modules(chain: Chain, config: Config) -> dict[str, Any]:
    """The projections verify replays: the built-ins, and the data dir's user projections unless
    the log was pruned (the anchor holds the built-ins only: a user projection has no start)."""
    if chain.log.prune_point() is not None:
        return dict(projections.ALL)
    return catalog.modules(config.projections_dir)


def _projections_section(chain: Chain, config: Config, replay: Runner, scratch: str,
                         storage: dict[str, dict[str, Any]], node_running: bool) -> Section:
    sec = Section("projections")
    result: dict[str, Any] = {}
    for name, module in verified_modules(chain, config).items():
        entry: dict[str, Any] = result.setdefault(name, {})
        handle = replay.handles[name]
        replay_digest = handle.store.digest
        entry["replay_digest"] = f"{replay_digest:032x}"
        recomputed, _n = _content_digest(handle.store.db)
        if recomputed != replay_digest:  # the store's incremental digest disagrees with its content
            sec.problem("REPLAY_DIGEST", f"{name} replay", f"the replay's recorded digest {replay_digest:032x} "
                                                           f"is not its content's {recomputed:032x}")
        path, version = layout.live_path(config.projections_dir, module)
        entry.update({"live_path": path, "live_version": version})
        if not ProjectionStore.exists(path):
            sec.notes.append(f"{name}: no live store yet at {path} (it is folded from the log when first opened)")
            entry["compared"] = False
            continue
        if not storage.get(name, {}).get("ok", True):
            sec.notes.append(f"{name}: live store not compared: it is corrupt (see storage)")
            entry["compared"] = False
            continue
        if version != module.VERSION:
            sec.notes.append(f"{name}: live store was built by version {version}, the code folds version "
                             f"{module.VERSION}: not compared (run `ledgerlog reproject {name}`)")
            entry["compared"] = False
            continue
        sec.checked += 1
        try:
            live = ProjectionStore(path, read_only=True)
        except LedgerError as exc:
            sec.problem("STORAGE_ERROR", f"{name} live store", f"cannot open {path}: {exc}")
            continue
        # With a node folding meanwhile, the live store may be ahead of the log snapshot opened
        # at the start: compare against a log opened after the store (never older than it).
        cur = chain
        if node_running:
            try:
                cur = open_chain(config, read_only=True)
            except LedgerError as exc:
                live.close()
                sec.problem("STORAGE_ERROR", "log", f"cannot reopen the log: {exc}")
                continue
        try:
            positions = live.positions()
            recorded = live.digest
            try:
                content, nkeys = _content_digest(live.db)
            except Exception as exc:
                code, file = _classify(str(exc), path)
                sec.problem(code, f"{name} live store", f"reading it failed: {exc}", file=file,
                            remedy=_remedy("projection", name, path))
                continue
            ends = {(t, p): end for t in module.TOPICS for p, end in enumerate(cur.log.end_offsets(t))}
            at_end = all(positions.get(tp, 0) == end for tp, end in ends.items())
            # the full replay stands for exactly the positions of the log snapshot it folded
            at_replay = all(positions.get((t, p), 0) == end for t in module.TOPICS
                            for p, end in enumerate(chain.log.end_offsets(t)))
            ahead = {f"{t}[{p}]": (positions[(t, p)], end) for (t, p), end in ends.items()
                     if positions.get((t, p), 0) > end}
            entry.update({"live_digest": f"{recorded:032x}", "live_content_digest": f"{content:032x}",
                          "live_keys": nkeys, "live_height": live.height, "at_log_end": at_end})
            _recorded_digest(sec, name, path, recorded, content)
            if ahead:
                sec.problem("POSITIONS_AHEAD", f"{name} live store",
                            f"positions past the end of the log: {ahead}", remedy=_remedy("projection", name, path))
                continue
            against, against_db, capped = replay_digest, handle.store.db, None
            try:
                if not at_replay:  # a running node (or an interrupted fold) holds it elsewhere
                    capped = Runner(_CappedLog(cur.log, positions), cur.codec, cur.genesis,  # type: ignore[arg-type]
                                    scratch, names=[name], paths={name: os.path.join(scratch, f"{name}-at-live")},
                                    anchor_dir=config.anchor_dir)
                    capped.catch_up()
                    against, against_db = capped.handles[name].store.digest, capped.handles[name].store.db
                    entry["compared_at"] = "live positions"
                else:
                    entry["compared_at"] = "log end"
                entry["compared"] = True
                if content != against:
                    sec.problem("DIGEST_MISMATCH", f"{name} live store",
                                f"live state digest {content:032x} differs from a fresh replay's {against:032x}",
                                differences=_diff(live.db, against_db), remedy=_remedy("projection", name, path))
            finally:
                if capped is not None:
                    capped.close()
        finally:
            live.close()
            if cur is not chain:
                cur.close()
    sec.extra["projections"] = result
    _unreplayed_user_stores(chain, config, sec)
    _anchor_digests(chain, config, sec)
    if node_running:
        sec.notes.append("a node is running: live stores were read read-only and compared with a replay "
                         "stopped at their own positions")
    return sec


def _recorded_digest(sec: Section, name: str, path: str, recorded: int, content: int) -> None:
    """A live store's content must hash to the digest its folds recorded (RECORDED_DIGEST_MISMATCH)."""
    if recorded != content:
        sec.problem("RECORDED_DIGEST_MISMATCH", f"{name} live store",
                    f"its state hashes to {content:032x} but its recorded digest is {recorded:032x}: its "
                    "content was changed outside the fold (tampering or corruption)",
                    remedy=_remedy("projection", name, path))


def _unreplayed_user_stores(chain: Chain, config: Config, sec: Section) -> None:
    """User projections of a pruned log are not replayed (the anchor holds the built-ins only):
    their live stores are still checked against their own recorded digests, and the report says
    what was not done."""
    skipped = sorted(set(catalog.modules(config.projections_dir)) - set(verified_modules(chain, config)))
    for name in skipped:
        path, _version = layout.live_path(config.projections_dir, catalog.module(config.projections_dir, name))
        if not ProjectionStore.exists(path):
            continue
        try:
            live = ProjectionStore(path, read_only=True)
            try:
                content, _n = _content_digest(live.db)
                recorded = live.digest
            finally:
                live.close()
        except LedgerError as exc:
            sec.problem("STORAGE_ERROR", f"{name} live store", f"cannot read {path}: {exc}")
            continue
        sec.checked += 1
        _recorded_digest(sec, name, path, recorded, content)
    if skipped:
        sec.notes.append(f"user projection(s) {', '.join(skipped)}: not replayed, the log being pruned (the anchor "
                         "holds the built-ins only); their stores were checked against their recorded digests")


def _anchor_digests(chain: Chain, config: Config, sec: Section) -> None:
    """A pruned log's anchor (replays start from it): each store's content must hash to the digest
    anchor.json recorded when the prune folded it (ANCHOR_DIGEST otherwise)."""
    try:
        anchor = Anchor.load(config.anchor_dir)
    except LedgerError as exc:
        sec.problem("ANCHOR_DAMAGED", "anchor", str(exc))
        return
    if anchor is None:
        return
    point = chain.log.prune_point()
    if point is not None:  # the anchor stands where the log says it was pruned, nowhere else
        moved = [f"{t}[{p}]" for (t, p), start in sorted(point.starts.items())
                 if (anchor.positions.get(t) or [])[p:p + 1] != [start]]
        if anchor.height != point.height or moved:
            sec.problem("ANCHOR_MISMATCH", "anchor", f"anchor.json says height {anchor.height} and positions that "
                        f"differ at {moved[:5]}; the log was pruned below height {point.height}: it was changed "
                        "since the prune; restore the data dir from a snapshot")
    for name, meta in sorted(anchor.projections.items()):
        try:
            store = ProjectionStore(anchor.store_path(name), read_only=True)
        except LedgerError as exc:
            sec.problem("ANCHOR_DAMAGED", f"anchor {name}", f"cannot open {anchor.store_path(name)}: {exc}")
            continue
        try:
            content, _n = _content_digest(store.db)
            pos = store.positions()
            held = {t: [pos.get((t, p), 0) for p in range(len(offs))] for t, offs in meta.get("positions", {}).items()}
        except LedgerError as exc:
            sec.problem("ANCHOR_DAMAGED", f"anchor {name}", f"{exc}; restore the data dir from a snapshot")
            continue
        finally:
            store.close()
        recorded = point.anchor.get(name) if point is not None else None
        upgraded = meta.get("upgraded") or {}  # rebuilt from the archives for newer code (ops/data/anchorupgrade.py)
        if recorded is not None and recorded not in (meta.get("digest"), upgraded.get("from_digest")):
            sec.problem("ANCHOR_MISMATCH", f"anchor {name}", f"anchor.json gives its digest as {meta.get('digest')}, "
                        f"the log's prune point recorded {recorded}: the anchor was changed since the prune; restore "
                        "the data dir from a snapshot")
        if held != meta.get("positions"):
            sec.problem("ANCHOR_MISMATCH", f"anchor {name}", "the anchor store's log positions are not those "
                        "anchor.json recorded at the prune: it was changed since; restore the data dir from a snapshot")
        sec.checked += 1
        if f"{content:032x}" != meta["digest"]:
            sec.problem("ANCHOR_DIGEST", f"anchor {name}", f"the anchor store's state hashes to {content:032x}, "
                        f"anchor.json recorded {meta['digest']} at the prune: it was changed since (tampering or "
                        "corruption); replays starting from it are not to be trusted")
    sec.extra["anchor"] = anchor.to_dict()
    for name, meta in sorted(anchor.projections.items()):
        if meta.get("upgraded"):
            sec.notes.append(f"anchor {name} was rebuilt from the prunes' archives for version {meta.get('version')} "
                             f"(the prune folded version {meta['upgraded'].get('from_version')})")
    sec.notes.append(f"replays start from the anchor at height {anchor.height} (the log was pruned below it); its "
                     "stores were checked against the digests recorded at the prune")


# -- the whole check ------------------------------------------------------------------------------
def _skipped(name: str, why: str) -> Section:
    sec = Section(name)
    sec.problem("SKIPPED", name, why)
    return sec


def _node_running(config: Config) -> str | None:
    from ledgerlog.ops.query.client import NodeClient
    client = NodeClient.find(config)
    if client is None:
        return None
    client.close()
    return client.url


def _catch_up_live(chain: Chain, config: Config, storage: dict[str, dict[str, Any]],
                   progress: Progress | None = None) -> list[str]:
    """Bring the sound, current-version live projections to the end of the log (no node runs);
    ``progress`` is told what that adds to the job and of each batch folded."""
    names = []
    for name, module in verified_modules(chain, config).items():
        _path, version = layout.live_path(config.projections_dir, module)
        if storage.get(name, {}).get("ok", True) and version == module.VERSION:
            names.append(name)
    if not names:
        return []
    try:
        runner = Runner(chain.log, chain.codec, chain.genesis, config.projections_dir, names=names)
    except StoreLockedError:
        return ["live projections are in use by another process: compared at their own positions"]
    except LedgerError as exc:
        return [f"live projections could not be opened to catch up ({exc}): compared at their own positions"]
    try:
        if progress is not None:
            progress.describe("catch-up")
            progress.set_total(_planned(chain) + sum(runner.lag().values()))
        runner.catch_up(progress=progress)
        for h in runner.handles.values():
            h.store.flush()
    except LedgerError as exc:
        return [f"catching up the live projections failed ({exc}): compared at their own positions"]
    finally:
        runner.close()
    return []


def _planned(chain: Chain) -> int:
    """Records verify reads for sure: every record of the log once, and again in the replay."""
    log = chain.log
    return sum(sum(log.end_offsets(t)) for t in log.topics()) + total_records(log, projections.ALL)


def verify(config: Config, *, signatures: bool = True, scratch_dir: str | None = None,
           workers: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Check the data dir (see the module doc); returns the report. Raises ConfigError when the
    data dir holds no chain. ``progress`` is told of the records checked and replayed."""
    t0 = time.monotonic()
    if not os.path.exists(config.genesis_path):
        raise ConfigError(f"{config.data_dir} holds no chain; run `ledgerlog init` first")
    workers = workers or max(config.verify_workers, os.cpu_count() or 1)
    node_url = _node_running(config)
    report: dict[str, Any] = {"ok": False, "data_dir": config.data_dir, "node": node_url,
                              "signatures": "verified" if signatures else "skipped"}
    notes: list[str] = []

    if progress is not None:
        progress.describe("storage")
    storage_sec, storage = _storage_section(config)
    log_ok = storage.get("log", {}).get("ok", config.log_url != "embedded")
    try:
        chain = open_chain(config, read_only=True)
    except LedgerError as exc:
        chain = None
        why = f"the log cannot be opened: {exc}"
    sections = [storage_sec]
    if chain is None:
        sections += [_skipped("log", why), _skipped("supply", why), _skipped("projections", why)]
    else:
        scratch = tempfile.mkdtemp(prefix="ledgerlog-verify-", dir=scratch_dir)
        replay: Runner | None = None
        try:
            report.update({"chain_id": chain.genesis.chain_id, "genesis_hash": chain.genesis.hash})
            if progress is not None:
                progress.set_total(_planned(chain))
            log_sec = Section("log")
            checker = _LogChecker(chain, log_sec, signatures, workers)
            if progress is not None:
                progress.describe("log")
            checker.progress = progress
            checker.run()
            report["height"] = checker.height
            sections.append(log_sec.done())
            if not log_ok or checker.reader.read_errors:
                # a RocksDB iterator stops quietly at a bad block: a replay would fold part of the
                # log and blame the projections
                why = ("the log store is damaged (see storage and log): a replay would fold only part "
                       "of it, so supply and projections are not checked")
                sections += [_skipped("supply", why), _skipped("projections", why)]
                return _finish(report, sections, notes, t0)
            if node_url is None and log_sec.ok:  # only a log that checked clean goes into the live stores
                notes += _catch_up_live(chain, config, storage, progress)
            elif node_url is None:
                notes.append("the live projections were not caught up: the log did not check clean, and "
                             "what it holds past them is not folded into what the node serves")
            try:
                mods = verified_modules(chain, config)
                replay = Runner(chain.log, chain.codec, chain.genesis, scratch, names=list(mods), modules=mods,
                                paths={n: os.path.join(scratch, n) for n in mods},
                                anchor_dir=config.anchor_dir)  # a pruned log: from the anchor
                t_replay = time.monotonic()
                if progress is not None:
                    progress.describe("replay")
                replay.catch_up(progress=progress)
                report["replay_seconds"] = round(time.monotonic() - t_replay, 3)
            except Exception as exc:
                why = f"replaying the log failed: {type(exc).__name__}: {exc}"
                sections += [_skipped("supply", why), _skipped("projections", why)]
            else:
                if progress is not None:
                    progress.describe("projections")
                sections.append(_supply_section(chain, replay.handles["balances"].store, checker.height).done())
                if progress is not None:
                    progress.describe("write-side state")
                sections.append(state_section(chain, os.path.join(scratch, "write-state")).done())
                sections.append(_projections_section(chain, config, replay, scratch, storage,
                                                     node_url is not None).done())
        finally:
            if replay is not None:
                replay.close()
            chain.close()
            shutil.rmtree(scratch, ignore_errors=True)
    return _finish(report, sections, notes, t0)


def _finish(report: dict[str, Any], sections: list[Section], notes: list[str], t0: float) -> dict[str, Any]:
    for sec in sections:
        report[sec.name] = sec.to_dict()
    report["ok"] = all(sec.ok for sec in sections)
    if notes:
        report["notes"] = notes
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report
