"""Mirror a chain's embedded log into Kafka, record for record, and optionally switch the data
dir over to it.

What is copied: every topic of the embedded log (``_schemas`` first, so schema ids resolve from
the first event on), into topics ``<prefix><topic>`` with the same partition counts; each record
keeps its key, its partition (produced to it explicitly), its place in the partition's order, its
timestamp and its value bytes (Confluent wire format untouched). Records go in broker
transactions of ``batch`` records of one partition each.

Resuming. Progress is read from the target, not remembered beside it: a partition's next source
offset is the number of records the target partition holds (embedded offsets are 0, 1, 2, ...;
Kafka's have gaps for transaction markers, hence counts, not offsets). The producer is
initialised first, which fences a killed mirror's open transaction; whatever of it a broker
still shows (Tansu 0.6 shows aborted transactional records) is a prefix of the partition's
remaining records in order, so counting it is right. The verification at the end compares
per-partition counts and hashes of both sides, whatever happened before.

Switching (``switch_to_kafka``): with the embedded log locked (no node running), mirror and
verify, fold the write-side state from Kafka into ``<data_dir>/state`` and check it equals the
embedded one byte for byte, move the projections aside (their positions are embedded offsets;
they rebuild from Kafka), then rewrite ``config.toml`` (log.url, [kafka] topic prefix) atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ledgerlog.engine import topics as T
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import ConfigError, LogError
from ledgerlog.engine.log.base import Log, Record
from ledgerlog.engine.log.kafka_config import KafkaConfig
from ledgerlog.ops.jobs import Progress

__all__ = ["MirrorReport", "mirror", "open_target", "partition_digest", "rewrite_config", "switch_to_kafka"]

_FRAME = struct.Struct(">IIq")
DEFAULT_BATCH = 5000


def partition_digest(log: Log, topic: str, partition: int, end: int | None = None) -> tuple[int, str]:
    """(record count, blake2b-256 hex over each record's key, value and timestamp, in order)."""
    h = hashlib.blake2b(digest_size=32)
    n = 0
    for rec in log.scan(topic, partition, 0, end):
        h.update(_FRAME.pack(len(rec.key), len(rec.value), rec.timestamp))
        h.update(rec.key)
        h.update(rec.value)
        n += 1
    return n, h.hexdigest()


def _count(log: Log, topic: str, partition: int) -> int:
    return sum(1 for _ in log.scan(topic, partition))


@dataclass
class MirrorReport:
    to: str
    topic_prefix: str
    ok: bool = False
    records: int = 0            # records the source holds (what the mirror covers)
    already: int = 0            # of them, found on the target at the start (resumed)
    copied: int = 0             # copied by this run
    transactions: int = 0
    complete: bool = False      # every source record is on the target (False after --max-records)
    copy_seconds: float = 0.0
    verify_seconds: float = 0.0
    partitions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        rate = self.copied / self.copy_seconds if self.copy_seconds > 0 else None
        return {"ok": self.ok, "to": self.to, "topic_prefix": self.topic_prefix, "records": self.records,
                "already_on_target": self.already, "copied": self.copied, "transactions": self.transactions,
                "complete": self.complete, "copy_seconds": round(self.copy_seconds, 3),
                "records_per_s": round(rate) if rate else None,
                "verify_seconds": round(self.verify_seconds, 3),
                "mismatches": [p for p in self.partitions if not p["ok"]],
                "partitions": self.partitions}


def _bootstrap(url: str) -> str:
    if not url.startswith("kafka://") or not url[len("kafka://"):]:
        raise ConfigError(f"--to must be kafka://HOST:PORT[,HOST:PORT], not {url!r}")
    return url[len("kafka://"):]


def target_config(cfg: Config, to: str, prefix: str, genesis_hash: str) -> KafkaConfig:
    """The target's connection config: the data dir's [kafka] table (security settings etc.)
    for the brokers of ``to``, without the write-side settings, with this prefix and a
    transactional id of its own (the mirror fences a killed mirror of the same chain and prefix,
    never a node)."""
    txid = f"ledgerlog-mirror-{prefix}{hashlib.blake2b(genesis_hash.encode(), digest_size=8).hexdigest()}"
    return KafkaConfig.from_table(_bootstrap(to), cfg.kafka).replace(
        state_dir=None, chain=None, topic_prefix=prefix, transactional_id=txid)


def open_target(cfg: Config, to: str, prefix: str, genesis_hash: str) -> Log:
    from ledgerlog.engine.log.kafka import KafkaLog  # confluent-kafka only when used
    return KafkaLog(target_config(cfg, to, prefix, genesis_hash), sync=cfg.sync)


def _ordered_topics(source: Log) -> list[tuple[str, int]]:
    topics = source.topics()
    first = [T.SCHEMAS] if T.SCHEMAS in topics else []
    return [(t, topics[t]) for t in first + sorted(t for t in topics if t != T.SCHEMAS)]


def mirror(source: Log, target: Log, *, to: str, prefix: str, batch: int = DEFAULT_BATCH,
           max_records: int | None = None, verify: bool = True,
           progress: Progress | None = None) -> MirrorReport:
    """Copy what ``source`` holds now into ``target`` (resuming from the target's counts), then
    verify counts and hashes per partition. ``max_records`` stops the copy early (tests, or a
    bounded run); the report then says ``complete: false`` and verifies nothing. ``progress``
    is told the source's records (twice with ``verify``: copied, then hashed on both sides) and
    of those dealt with (a record the target holds already counts as copied)."""
    if not source.contiguous_offsets:
        raise LogError("the mirror's source must have contiguous offsets (the embedded log)")
    point = source.prune_point()
    if point is not None:  # the target's offsets (and Merkle leaves) would be renumbered
        raise point.error("a mirror needs the whole log from offset 0")
    rep = MirrorReport(to=to, topic_prefix=prefix)
    topics = _ordered_topics(source)
    ends = {t: source.end_offsets(t) for t, _n in topics}
    rep.records = sum(sum(e) for e in ends.values())
    if progress is not None:
        progress.set_total(rep.records * (2 if verify else 1))
        progress.describe("copy")
    target.create_topics({t: n for t, n in topics})
    fence = getattr(target, "_get_producer", None)
    if fence is not None:   # fence (abort) a killed mirror's transaction before counting
        fence()
    t0 = time.monotonic()
    budget = max_records
    for topic, n in topics:
        for p in range(n):
            end = ends[topic][p]
            have = _count(target, topic, p) if end else 0
            if have > end:
                raise LogError(f"{prefix}{topic}[{p}] holds {have} records, more than the source's {end}: "
                               "the target is not a mirror of this log (another --topic-prefix?)")
            rep.already += have
            if progress is not None and have:
                progress(have)
            offset = have
            while offset < end and (budget is None or budget > 0):
                want = min(batch, end - offset, budget if budget is not None else batch)
                chunk = source.read(topic, p, offset, want)
                if not chunk or chunk[0].offset != offset:
                    raise LogError(f"source {topic}[{p}]: expected offset {offset}, read "
                                   f"{chunk[0].offset if chunk else 'nothing'}")
                target.append([Record(topic, r.key, r.value, r.timestamp, p) for r in chunk])
                offset += len(chunk)
                rep.copied += len(chunk)
                rep.transactions += 1
                if budget is not None:
                    budget -= len(chunk)
                if progress:
                    progress(len(chunk))
    rep.copy_seconds = time.monotonic() - t0
    rep.complete = rep.already + rep.copied == rep.records
    if verify and rep.complete:
        t1 = time.monotonic()
        if progress is not None:
            progress.describe("verify")
        for topic, n in topics:
            for p in range(n):
                sc, sh = partition_digest(source, topic, p, ends[topic][p])
                tc, th = partition_digest(target, topic, p)
                if progress is not None:
                    progress(ends[topic][p])
                rep.partitions.append({"topic": topic, "partition": p, "source": sc, "target": tc,
                                       "source_hash": sh, "target_hash": th, "ok": sc == tc and sh == th})
        rep.verify_seconds = time.monotonic() - t1
        rep.ok = all(p["ok"] for p in rep.partitions)
    return rep


# -- switching a data dir over --------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    raise ConfigError(f"config.toml: cannot write a value of type {type(v).__name__}")


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "-_" for c in k) else json.dumps(k, ensure_ascii=False)


def dump_toml(doc: Mapping[str, Any]) -> str:
    """TOML for a document of scalar keys and one level of tables (what config.toml holds)."""
    out = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for sec, table in doc.items():
        if isinstance(table, dict):
            out.append(f"\n[{_toml_key(sec)}]")
            for k, v in table.items():
                if isinstance(v, dict):
                    raise ConfigError(f"config.toml: nested table [{sec}.{k}] is not supported here")
                out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(out).lstrip() + "\n"


def rewrite_config(path: str, log_url: str, prefix: str) -> None:
    """Set log.url and [kafka] ledgerlog.topic_prefix in config.toml, keeping every other key;
    written via a temp file and a rename (mode 0600: it holds the admin token)."""
    import tomllib

    from ledgerlog.engine.chain import write_atomic
    doc: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    doc.setdefault("log", {})["url"] = log_url
    doc.setdefault("kafka", {})["ledgerlog.topic_prefix"] = prefix
    text = dump_toml(doc)
    assert tomllib.loads(text) == doc
    write_atomic(path, text.encode(), mode=0o600)


def _aside(path: str, tag: str) -> str | None:
    if not os.path.exists(path):
        return None
    dest = f"{path}.{tag}-{time.strftime('%Y%m%dT%H%M%S')}"
    os.replace(path, dest)
    return dest


def _admitted(log: Log) -> list[tuple[bytes, bytes]]:
    """The write-side state admission made (without the writer's record of its first log key)."""
    from ledgerlog.engine.admission.state import WriteState
    return [(k, v) for k, v in log.state_items(b"") if k != WriteState.LOG_ORIGIN]


def switch_to_kafka(cfg: Config, source: Log, rep: MirrorReport, to: str, prefix: str) -> dict[str, Any]:
    """After a verified, complete mirror of ``source`` (opened writable: no node runs): build the
    Kafka write-side state by catch-up, compare it with the embedded one, then move projections
    aside and rewrite config.toml. Nothing is switched unless every check passed."""
    from ledgerlog.engine.admission.state_fold import catch_up
    from ledgerlog.engine.codec import Codec, Registry
    from ledgerlog.engine.genesis import Genesis
    from ledgerlog.engine.log.kafka import KafkaLog

    if not (rep.ok and rep.complete):
        raise LogError("the mirror is not verified: not switching")
    genesis = Genesis.load(cfg.genesis_path)
    state_dir = os.path.join(cfg.data_dir, "state")
    moved_state = _aside(state_dir, "old")
    klog = KafkaLog(target_config(cfg, to, prefix, genesis.hash).replace(state_dir=state_dir, chain=genesis.hash),
                    sync=cfg.sync)
    try:
        folded = catch_up(klog, Codec(Registry(klog)), genesis)
        # the first log key is the writer's record, not a fold's: the next open records it again
        same = _admitted(klog) == _admitted(source)
    finally:
        klog.close()
    if not same:
        _aside(state_dir, "mismatch")
        raise LogError("the write-side state folded from Kafka differs from the embedded log's: not switching")
    moved_proj = _aside(cfg.projections_dir, "embedded")
    rewrite_config(cfg.config_path, to, prefix)
    return {"switched": True, "log_url": to, "topic_prefix": prefix, "state_events_folded": folded,
            "state_equal": True, "projections_moved_to": moved_proj, "old_state_moved_to": moved_state}
