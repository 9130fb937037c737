"""What a data dir holds (bytes, records and keys per topic and projection) and RocksDB manual
compaction of its log and projection stores, offline or (admin action ``compact``) in a running node."""
from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ledgerlog import projections
from ledgerlog.engine import storekeys as K
from ledgerlog.engine.errors import ConfigError, StorageError
from ledgerlog.engine.log import open_log
from ledgerlog.engine.rocks import Rdict, iter_prefix, open_store
from ledgerlog.streams import layout
from ledgerlog.streams.store import ProjectionStore

if TYPE_CHECKING:
    from ledgerlog.engine.config import Config
    from ledgerlog.ops.node.context import NodeContext

__all__ = ["compact_action", "compact_offline", "dir_bytes", "storage_bytes", "storage_stats"]


#: an archive's ``h<H>`` directory (a prune's, renamed into place whole) is never written again:
#: its bytes by path, with the (inode, mtime) they were measured at
_sealed: dict[str, tuple[tuple[int, int], int]] = {}
_SEALED_NAME = re.compile(r"h\d+")


def storage_bytes(data_dir: str) -> dict[tuple[str, str], int]:
    """Bytes of the files under ``data_dir`` by (component, projection): ("log", ""),
    ("projection", name) for everything under projections/<name>/, ("other", ""). The
    archive's ``h<H>`` directories (one per prune: a retained chain gains one a minute) are
    measured once each, not at every call."""
    global _sealed
    out: dict[tuple[str, str], int] = {("log", ""): 0, ("other", ""): 0}
    root = os.path.abspath(data_dir)
    archive = os.path.join(root, "archive")
    sealed: dict[str, tuple[tuple[int, int], int]] = {}

    def walk(path: str, key: tuple[str, str] | None, depth: int) -> None:
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for e in entries:
            try:
                if path == archive and _SEALED_NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    have = _sealed.get(e.path)
                    size = have[1] if have and have[0] == (st.st_ino, st.st_mtime_ns) else dir_bytes(e.path)
                    sealed[e.path] = ((st.st_ino, st.st_mtime_ns), size)
                    out[("other", "")] += size
                elif e.is_dir(follow_symlinks=False):
                    k = key
                    if k is None and depth == 0 and e.name == "log":
                        k = ("log", "")
                    elif k is None and depth == 1 and os.path.basename(path) == "projections":
                        k = ("projection", e.name)
                    walk(e.path, k, depth + 1)
                elif e.is_file(follow_symlinks=False):
                    k = key or ("other", "")
                    out[k] = out.get(k, 0) + e.stat(follow_symlinks=False).st_size
            except OSError:  # a file RocksDB removed meanwhile
                continue

    walk(root, None, 0)
    _sealed = {k: v for k, v in _sealed.items() if os.path.dirname(k) != archive} | sealed  # (gone ones drop out)
    return out


#: RocksDB integer properties reported per store.
_PROPS = {"estimated_keys": "rocksdb.estimate-num-keys", "sst_bytes": "rocksdb.total-sst-files-size",
          "live_data_bytes": "rocksdb.estimate-live-data-size", "memtable_bytes": "rocksdb.cur-size-all-mem-tables",
          "pending_compaction_bytes": "rocksdb.estimate-pending-compaction-bytes"}


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:  # removed by a compaction meanwhile
                pass
    return total


def _props(db: Rdict) -> dict[str, int]:
    out = {}
    for name, prop in _PROPS.items():
        try:
            v = db.property_int_value(prop)
        except Exception:  # noqa: BLE001 - rocksdict raises plain Exception for unknown properties
            v = None
        if v is not None:
            out[name] = int(v)
    with contextlib.suppress(Exception):  # rocksdict raises plain Exception
        out["sst_files"] = len(db.live_files())
    return out


def _count(items: Any) -> tuple[int, int]:
    n = size = 0
    for k, v in items:
        n += 1
        size += len(k) + len(v)
    return n, size


def _log_stats(cfg: Config, exact: bool) -> dict[str, Any]:
    log = open_log(cfg.resolved_log_url, read_only=True, sync=cfg.sync, kafka=cfg.kafka_connection())
    try:
        topics: dict[str, Any] = {}
        for topic, n in sorted(log.topics().items()):
            ends, starts = log.end_offsets(topic), log.start_offsets(topic)
            topics[topic] = {"partitions": n, "records": sum(ends) - sum(starts), "end_offsets": ends}
            if any(starts):  # pruned (ops/data/prune.py): the first offsets the log still holds
                topics[topic]["start_offsets"] = starts
        point = log.prune_point()
        out: dict[str, Any] = {"url": cfg.log_url, "topics": topics,
                               "pruned": point.to_dict() if point is not None else None}
        db = log.raw()
        if db is None:
            return out
        out.update(path=os.path.abspath(cfg.log_path), bytes=dir_bytes(cfg.log_path), **_props(db))
        if exact:
            for topic, info in topics.items():
                recs = [_count(iter_prefix(db, K.record_prefix(topic, p))) for p in range(info["partitions"])]
                info["records_counted"] = sum(r[0] for r in recs)
                info["bytes"] = sum(r[1] for r in recs)
            out["state_keys"], out["state_bytes"] = _count(iter_prefix(db, K.STATE_PREFIX))
            out["keys"], out["key_value_bytes"] = _count(iter_prefix(db, b""))
        return out
    finally:
        log.close()


def _projection_stats(cfg: Config, ends: dict[str, list[int]], exact: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, module in projections.ALL.items():
        path, version = layout.live_path(cfg.projections_dir, module)
        builds = {b: dir_bytes(os.path.join(cfg.projections_dir, name, b))
                  for b in layout.build_dirs(cfg.projections_dir, name)}
        records = sum(sum(ends.get(t, [])) for t in module.TOPICS)
        info: dict[str, Any] = {"version": version, "path": os.path.abspath(path), "builds": builds,
                                "bytes": sum(builds.values()), "topics": list(module.TOPICS)}
        out[name] = info
        if not ProjectionStore.exists(path):  # not built yet: everything is still to fold
            info.update(live=None, records_folded=0, lag=records)
            continue
        store = ProjectionStore(path, read_only=True)
        try:
            pos = store.positions()
            folded = sum(pos.get((t, p), 0) for t in module.TOPICS for p in range(len(ends.get(t, []))))
            info.update(live=os.path.basename(path), live_bytes=builds.get(os.path.basename(path), 0),
                        height=store.height, records_folded=folded, lag=records - folded,
                        digest=store.digest_hex(), **_props(store.db))
            if exact:
                n_all, b_all = _count(iter_prefix(store.db, b""))
                n_meta, _ = _count(iter_prefix(store.db, K.META_PREFIX))
                n_fmt = 1 if store.db.get(K.FORMAT_KEY) is not None else 0
                info["keys"] = n_all - n_meta - n_fmt   # state keys (what the digest covers)
                info["key_value_bytes"] = b_all
        finally:
            store.close()
    return out


def storage_stats(cfg: Config, *, exact: bool = False, node_running: bool = False) -> dict[str, Any]:
    """What the data dir holds. Opens every store read-only, so it works while a node runs
    (``node_running``: the caller found one, said in the answer)."""
    if not os.path.exists(cfg.genesis_path):
        raise ConfigError(f"{cfg.data_dir} holds no chain; run `ledgerlog init` first")
    sizes = storage_bytes(cfg.data_dir)
    st = os.statvfs(cfg.data_dir)
    log_info = _log_stats(cfg, exact)
    ends = {t: info["end_offsets"] for t, info in log_info["topics"].items()}
    capacity, available = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    return {
        "data_dir": os.path.abspath(cfg.data_dir),
        "node_running": node_running,
        "exact": exact,
        "bytes": {"total": sum(sizes.values()), "log": sizes.get(("log", ""), 0),
                  "projections": sum(n for (c, _), n in sizes.items() if c == "projection"),
                  "other": sizes.get(("other", ""), 0)},
        "filesystem": {"capacity_bytes": capacity, "available_bytes": available,
                       "used_ratio": round(1 - available / capacity, 4) if capacity else None},
        "log": log_info,
        "projections": _projection_stats(cfg, ends, exact),
        "rocksdb": rocksdb_settings(cfg),
    }


def rocksdb_settings(cfg: Config) -> dict[str, Any]:
    """The RocksDB tuning in force ([rocksdb]) and the memory it implies for a node: the shared
    block cache plus two memtables per store (log and 4 projections; 9 stores while a reproject
    builds beside them)."""
    t = cfg.rocks_tuning()
    stores, during_reproject = 5, 9
    return {**asdict(t), "compression_per_level": t.levels(),
            "memory_bytes": {"block_cache": t.block_cache_mb << 20,
                             "memtables_max": stores * 2 * (t.write_buffer_mb << 20),
                             "memtables_max_during_reproject": during_reproject * 2 * (t.write_buffer_mb << 20)}}


# -- compaction ---------------------------------------------------------------------------------
def _compact(db: Rdict, path: str, component: str) -> dict[str, Any]:
    before, start = dir_bytes(path), time.monotonic()
    db.compact_range(None, None)
    return {"component": component, "path": os.path.abspath(path), "bytes_before": before, "bytes_after": dir_bytes(path),
            "seconds": round(time.monotonic() - start, 3)}


def compact_offline(cfg: Config) -> dict[str, Any]:
    """Compact the log and every projection build with no node running (takes the write locks:
    fails with LOCKED if some process holds a store)."""
    if not os.path.exists(cfg.genesis_path):
        raise ConfigError(f"{cfg.data_dir} holds no chain; run `ledgerlog init` first")
    results = []
    log = open_log(cfg.resolved_log_url, sync=cfg.sync, kafka=cfg.kafka_connection())
    try:
        db = log.raw()
        if db is None:
            raise StorageError(f"the {cfg.log_url} log is compacted by its brokers, not by ledgerlog")
        results.append(_compact(db, cfg.log_path, "log"))
    finally:
        log.close()
    for name in projections.ALL:
        for build in layout.build_dirs(cfg.projections_dir, name):
            path = os.path.join(cfg.projections_dir, name, build)
            if not ProjectionStore.exists(path):
                continue
            db = open_store(path, K.PROJECTION_FORMAT, create=False)
            try:
                results.append(_compact(db, path, f"projection/{name}/{build}"))
            finally:
                db.close()
    return {"compacted": results, "through_node": False}


def compact_action(node: NodeContext, body: dict[str, Any]) -> Any:
    """Compact the running node's log and live projection stores. Each projection is compacted
    under the fold lock (no blue/green swap may close it meanwhile); the log is never closed while
    the node runs, so admission goes on."""
    results = []
    db = node.chain.log.raw()
    if db is not None:
        results.append(_compact(db, node.config.log_path, "log"))
    for name in list(node.runner.handles):
        with node.fold_lock:
            h = node.runner.handles.get(name)
            if h is not None:
                results.append(_compact(h.store.db, h.store.path, f"projection/{name}/{os.path.basename(h.store.path)}"))
    return {"compacted": results, "through_node": True}
