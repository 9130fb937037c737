"""A sharded worker's engine: folds the repartition partitions it owns, each into its own Shard,
from one consumer assigned exactly those partitions at the positions their stores hold; and, for
the derive leases it holds (source partitions), runs the deriver on a second thread. Ownership
comes from the group (group.py) or, in tests and benchmarks, from ``assign`` directly.

A gained partition resumes from this worker's store of it (offset 0, i.e. rebuilt from the
repartition topic, if it never had it) and is ``catching_up`` until it reaches the end the newest
progress records gave at the gain, then ``serving``. The progress records (one per source
partition, followed as they are written) also give each shard the height bounds it folds in
order by (shard.py). A revoke returns once no batch of the revoked partitions is in flight, so
two workers never fold a partition at once through the same store."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ledgerlog.engine.codec import Codec
from ledgerlog.engine.errors import LogError
from ledgerlog.engine.genesis import Genesis
from ledgerlog.engine.log.base import Log
from ledgerlog.engine.log.kafka_client import logged
from ledgerlog.engine.log.kafka_config import KafkaConfig

from .deriver import Deriver
from .repartition import (
    FETCH_WAIT_MS,
    SOURCES,
    LeaseLayout,
    Names,
    combine_digests,
    partition_of,
    source_partitions,
)
from .shard import Bounds, Shard, shard_path
from .topics import Progress, ProgressReader

__all__ = ["ShardEngine"]

_log = logging.getLogger("ledgerlog.shards")
_STOP_WAIT = 30.0  # seconds stop() waits for each thread, then for a batch still folding


@dataclass
class _Owned:
    gained_at: float
    target: int | None = None  # the partition's end in the newest progress at the gain
    state: str = "catching_up"
    catch_up_s: float | None = None


class ShardEngine:
    """Folds owned shards under ``shards_dir`` and derives held source partitions (``assign``:
    lease topic partitions, as ``layout`` maps them to shards and source partitions)."""

    def __init__(self, log: Log, codec: Codec, genesis: Genesis, kafka: KafkaConfig, names: Names,
                 partitions: int, shards_dir: str, *, batch: int = 5000, idle_wait: float = 0.1,
                 progress_every: float = 0.25) -> None:
        self.log, self.codec, self.genesis, self.kafka, self.names = log, codec, genesis, kafka, names
        self.partitions, self.shards_dir, self.batch, self.idle_wait = partitions, shards_dir, batch, idle_wait
        self.progress_every = progress_every
        self.sources = source_partitions(log)
        self.layout = LeaseLayout(partitions, self.sources)
        self.leases = self.layout.total  # the lease topic's partitions
        self._source_ids = [(SOURCES.index(t), p) for t, p in self.sources]
        self._lock = threading.Lock()        # ownership, snapshots
        self._batch_lock = threading.Lock()  # held while a batch folds: a revoke waits for it
        self._derive_lock = threading.Lock()  # held while the deriver steps: a revoke waits for it
        self._stop = threading.Event()
        self._wake = threading.Event()       # an assignment changed: the fold thread looks at once
        self._derive_wake = threading.Event()  # ... and so does the derive thread
        self._owned: dict[int, _Owned] = {}
        self._derive: set[int] = set()  # held derive leases (source partition numbers)
        self._shards: dict[int, Shard] = {}
        self._assigned: tuple[int, ...] | None = None
        self._snap: dict[int, dict[str, Any]] = {}
        self.progress: dict[int, Progress] = {}  # per source partition, its newest progress record
        self._progress_at = 0.0
        self.deriver: Deriver | None = None
        self.gains: list[dict[str, Any]] = []
        self.error: str | None = None
        self._consumer: Any = None
        self._reader: ProgressReader | None = None
        self._fold_thread = threading.Thread(target=self._guard, args=(self._fold_loop,), name="ledgerlog-shards", daemon=True)
        self._derive_thread = threading.Thread(target=self._guard, args=(self._derive_loop,), name="ledgerlog-deriver", daemon=True)
        self._progress_thread = threading.Thread(target=self._guard, args=(self._progress_loop,),
                                                 name="ledgerlog-progress", daemon=True)

    # -- ownership ------------------------------------------------------------------------------
    def start(self) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer(logged(self.kafka.librdkafka("consumer", {
            "group.id": f"ledgerlog-shard-reader-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "fetch.wait.max.ms": FETCH_WAIT_MS, "fetch.queue.backoff.ms": 5,
            "enable.partition.eof": False})))
        # librdkafka waits ~1 s for a topic's metadata on its first assign; asking first takes a millisecond
        self._consumer.list_topics(self.names.movements, timeout=30)
        self._reader = ProgressReader(self.kafka, self.names)
        # ready before any lease comes: a gained lease starts deriving at once
        self.deriver = Deriver(self.log, self.codec, self.genesis, self.kafka, self.names, self.partitions,
                               leases=(), batch=self.batch)
        if not self.deriver.wait_writable():
            _log.warning("the deriver's producer has no producer id yet; its first rows wait for it")
        self._fold_thread.start()
        self._derive_thread.start()
        self._progress_thread.start()

    def assign(self, shards: Iterable[int], derive: Iterable[int] = ()) -> None:
        """The full new assignment: the shards to fold (newly gained ones start catching up) and the
        source partitions to derive (numbers in ``sources``)."""
        shards, derive = set(shards), set(derive)
        now = time.monotonic()
        with self._lock:
            for k in list(self._owned):
                if k not in shards:
                    del self._owned[k]
            for k in shards:
                if k < self.partitions and k not in self._owned:
                    self._owned[k] = _Owned(gained_at=now)
            self._derive = {j for j in derive if j < len(self.sources)}
        self._wake.set()
        self._derive_wake.set()
        _log.info("assigned shards %s, derive leases %s", sorted(shards), sorted(derive))

    def revoke(self, shards: Iterable[int], derive: Iterable[int] = ()) -> None:
        """Stop folding and deriving what is named; returns once no batch of it is in flight."""
        shards, derive = set(shards), set(derive)
        with self._lock:
            for k in shards:
                self._owned.pop(k, None)
            self._derive -= derive
        with self._derive_lock:  # the deriver's step in flight, if any, has finished ...
            if derive and self.deriver is not None:
                try:  # ... and what it derived is recorded before another worker takes the leases
                    self.deriver.drain()
                except LogError as exc:  # the next owner resumes from older records: rows twice, skipped
                    _log.warning("revoke: progress not recorded: %s", exc)
        with self._batch_lock:
            pass
        _log.info("revoked shards %s, derive leases %s", sorted(shards), sorted(derive))

    def assign_leases(self, leases: Iterable[int]) -> None:
        """``assign`` by lease topic partitions (the group's assignment)."""
        self.assign(*self.layout.split(leases))

    def revoke_leases(self, leases: Iterable[int]) -> None:
        self.revoke(*self.layout.split(leases))

    # -- threads --------------------------------------------------------------------------------
    def _guard(self, loop: Any) -> None:
        try:
            loop()
        except Exception as exc:  # noqa: BLE001 - surfaced on /status; the app's watch timer stops the worker
            _log.exception("%s failed", threading.current_thread().name)
            self.error = f"{type(exc).__name__}: {exc}"

    def _derive_loop(self) -> None:
        deriver = self.deriver
        assert deriver is not None
        try:
            while not self._stop.is_set():
                with self._derive_lock:
                    with self._lock:
                        wanted = set(self._derive)
                    if wanted != set(deriver.leases):  # a gained lease resumes from its newest record
                        deriver.hold(wanted, known=self.progress)
                    stepped = deriver.step() if wanted else 0
                if not stepped:
                    self._derive_wake.wait(self.idle_wait)
                    self._derive_wake.clear()
        finally:
            deriver.close()

    def _progress_loop(self) -> None:
        """Keep ``progress`` at the newest progress record of every source partition: the reader
        follows the progress topic from its tails (off the fold thread)."""
        assert self._reader is not None
        self._reader.follow(list(range(len(self.sources))))
        while not self._stop.is_set():
            got = self._reader.poll(self.progress_every)
            if got:
                self.progress = {**self.progress, **got}
            if self._reader.caught_up:  # before, a shard's catch-up target could be too low (even 0)
                self._progress_at = time.monotonic()

    def _fold_loop(self) -> None:
        from confluent_kafka import TopicPartition as KTP

        from ledgerlog.engine.log.kafka_client import arrived

        c = self._consumer
        while not self._stop.is_set():
            with self._lock:
                owned = tuple(sorted(self._owned))
            if owned != self._assigned:
                with self._batch_lock:
                    for k in [k for k in self._shards if k not in owned]:
                        self._shards.pop(k).close()
                    for k in owned:
                        if k not in self._shards:
                            self._shards[k] = Shard(shard_path(self.shards_dir, self.partitions, k), self.genesis,
                                                    self.names.movements, k, self.partitions)
                    c.assign([KTP(self.names.movements, k, self._shards[k].read_to) for k in owned])
                    self._assigned = owned
            # wait for records without the batch lock: queries and revokes need it only while folding
            # rows held for other sources' progress: look again soon (the progress thread may release them)
            wait = 0.01 if any(sh.held for sh in self._shards.values()) else self.idle_wait
            msgs = arrived(c, self.batch, wait) if owned else []
            by_part: dict[int, list[tuple[int, bytes, bytes]]] = {}
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise RuntimeError(f"reading {self.names.movements}: {err}")
                    _log.warning("reading %s: %s", self.names.movements, err)  # librdkafka retries
                    continue
                by_part.setdefault(m.partition(), []).append((m.offset(), m.key(), m.value()))
            progress = self.progress
            with self._batch_lock:
                with self._lock:
                    still = set(self._owned)  # a shard revoked while reading is not folded
                for k, shard in self._shards.items():
                    recs = by_part.get(k)
                    if k not in still:
                        if recs:  # not taken: the next assignment reads them again from read_to
                            self._assigned = None
                    elif recs or shard.held:
                        shard.fold(recs or (), self._bounds(progress, k))
            if not owned:
                self._wake.wait(self.idle_wait)
            self._wake.clear()
            self._refresh()

    def _bounds(self, progress: dict[int, Progress], k: int) -> Bounds:
        """Per source partition, (the bound of its later rows, the end of its rows in partition k)."""
        out: Bounds = {}
        for j, src in enumerate(self._source_ids):
            rec = progress.get(j)
            out[src] = None if rec is None else (rec.bound, rec.ends[k])
        return out

    def _refresh(self) -> None:
        """States and snapshots of the owned shards against the newest progress records."""
        now = time.monotonic()
        records = list(self.progress.values())
        ends = [max((r.ends[k] for r in records), default=0) for k in range(self.partitions)]
        with self._lock:
            for k, own in self._owned.items():
                shard = self._shards.get(k)
                if shard is None:
                    continue
                if own.target is None and self._progress_at > own.gained_at:  # progress read since the gain
                    own.target = ends[k]
                if own.state == "catching_up" and own.target is not None and shard.position >= own.target:
                    own.state, own.catch_up_s = "serving", round(now - own.gained_at, 3)
                    self.gains.append({"shard": k, "catch_up_s": own.catch_up_s, "resumed_from": shard.resumed_from,
                                       "target": own.target})
                self._snap[k] = {"state": own.state, "digest": shard.digest_hex(), "position": shard.position,
                                 "lag": max(0, ends[k] - shard.position), "height": shard.store.height,
                                 "rows_folded": shard.folded, "duplicates_skipped": shard.skipped,
                                 "rows_held": len(shard.held),
                                 "resumed_from": shard.resumed_from, "catch_up_s": own.catch_up_s}
            for k in [k for k in self._snap if k not in self._owned]:
                del self._snap[k]

    # -- answers --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            deriver = self.deriver.status() if self.deriver is not None and self._derive else None
            records = list(self.progress.values())
            derived = None if not records else {
                "events": sum(r.events for r in records), "leases_recorded": len(records),
                "leases": len(self.sources), "bound": min(r.bound for r in records),
                "height": max(r.height for r in records),
                "ends": [max(r.ends[k] for r in records) for k in range(self.partitions)]}
            return {"mode": "shards", "projection": self.names.projection, "partitions": self.partitions,
                    "shards": {str(k): dict(v) for k, v in sorted(self._snap.items())},
                    "deriver": deriver, "gains": list(self.gains), "error": self.error, "derived": derived}

    def answer(self, name: str) -> dict[str, Any] | None:
        """Whole projections are not served by a sharded worker (see ``account``)."""
        return None

    def shard_of(self, address: str) -> int:
        return partition_of(address, self.partitions)

    def account(self, address: str, height: int | None = None) -> dict[str, Any] | None:
        """The account's answer if this worker serves its shard, else None (ask the owner)."""
        k = self.shard_of(address)
        with self._batch_lock:
            with self._lock:
                own = self._owned.get(k)
                serving = own is not None and own.state == "serving"
            shard = self._shards.get(k)
            if not serving or shard is None:
                return None
            return {**shard.account(address, height), "shard": k, "shard_height": shard.store.height,
                    "position": shard.position}

    def digest(self) -> str:
        """The combined digest of the shards this worker serves (all of them: the projection's)."""
        with self._lock:
            return combine_digests(s["digest"] for s in self._snap.values())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._derive_wake.set()
        for t in (self._fold_thread, self._derive_thread, self._progress_thread):
            if t.is_alive():
                t.join(timeout=_STOP_WAIT)
        # the stores close with no batch folding into them and no query reading them (a fold
        # thread that outlived its join keeps them open rather than fail in a closed store)
        if self._batch_lock.acquire(timeout=_STOP_WAIT):
            try:
                with self._lock:
                    self._owned.clear()
                    for s in self._shards.values():
                        s.close()
                    self._shards.clear()
            finally:
                self._batch_lock.release()
        else:
            _log.warning("stop: a batch is still folding after %s s more; its shard stores are left open", _STOP_WAIT)
        if self._consumer is not None:
            self._consumer.close()
        if self._reader is not None:
            self._reader.close()
