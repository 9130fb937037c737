"""Pruning a Kafka log: DeleteRecords through the AdminClient, the leaf hashes of the deleted
records and the prune point kept in the local state store (kafka_state.py).

A partition's start is the broker's low watermark. DeleteRecords is sent only where the chain's
``[kafka]`` table sets ``ledgerlog.delete_records = true``: Tansu 0.6 advertises the API but its
broker panics on it ("not yet implemented", and drops every client's connection), so a cluster
must be known to implement it. Order, each step idempotent: the leaf hashes (synced), the prune
point (synced; from then on proofs read those hashes below the start), then DeleteRecords."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as KTP

from .. import storekeys as K
from ..errors import LogError, PruneUnsupportedError
from ..logtree import has_tree, leaf_of, pruned_leaf
from ..prunepoint import PrunePoint
from .base import TopicPartition

if TYPE_CHECKING:
    from .kafka import KafkaLog
    from .kafka_state import LocalState
    from .kafka_topics import Topics

__all__ = ["KafkaPrune"]

TANSU_NOTE = ("DeleteRecords is not enabled for this cluster: set \"ledgerlog.delete_records\" = \"true\" in "
              "[kafka] once the brokers implement it (Apache Kafka does; Tansu 0.6 advertises it but its broker "
              "panics on it, 'not yet implemented', dropping every client)")


class KafkaPrune:
    """The prune point of one Kafka log and the prune itself."""

    def __init__(self, log: KafkaLog, topics: Topics, store: LocalState | None) -> None:
        self._log, self._topics, self._store = log, topics, store
        raw = store.raw_get(K.PRUNE_KEY) if store is not None else None
        self.point: PrunePoint | None = PrunePoint.decode(raw) if raw else None

    def refusal(self) -> str | None:
        if self._log.read_only:
            return f"the kafka log {self._log.bootstrap} is open read-only"
        if self._store is None:
            return "this kafka log keeps no local state store (ledgerlog.state_dir) for the hashes of pruned leaves"
        if not self._log.config.delete_records:
            return TANSU_NOTE
        return None

    def pruned_leaves(self, topic: str, partition: int) -> tuple[int, int]:
        p = self.point
        if p is None:
            return 0, 0
        return p.leaves.get((topic, partition), 0), p.starts.get((topic, partition), 0)

    def check_read(self, topic: str, partition: int, offset: int) -> None:
        p = self.point
        if p is not None and offset < p.starts.get((topic, partition), 0):
            raise p.error(f"offset {offset} of {topic}[{partition}]")

    def start_offsets(self, topic: str) -> list[int]:
        n = self._topics.partition_count(topic)
        low = self._topics.list_offsets(topic, n, earliest=True)
        p = self.point
        return [max(low[i], p.starts.get((topic, i), 0) if p else 0) for i in range(n)]

    def prune(self, point: PrunePoint, progress: Callable[[int], None] | None) -> None:
        why = self.refusal()
        if why is not None:
            raise PruneUnsupportedError(why)
        assert self._store is not None
        old = self.point
        starts = dict(old.starts) if old else {}
        leaves = dict(old.leaves) if old else {}
        for (topic, p), stop in sorted(point.starts.items()):
            lo = starts.get((topic, p), 0)
            if stop <= lo:
                continue
            if has_tree(topic):
                leaves[(topic, p)] = self._store_leaves(topic, p, lo, stop, leaves.get((topic, p), 0), progress)
            starts[(topic, p)] = stop
        new = replace(point, starts={tp: starts.get(tp, 0) for tp in point.starts},
                      leaves={tp: leaves.get(tp, 0) for tp in point.starts if has_tree(tp[0])})
        self._store.raw_put({K.PRUNE_KEY: new.encode()}, sync=True)
        self.point = new
        self._delete_records({tp: off for tp, off in new.starts.items() if off})

    def _store_leaves(self, topic: str, p: int, lo: int, hi: int, index: int,
                      progress: Callable[[int], None] | None) -> int:
        """Store the leaf hash of each data record in [lo, hi) from leaf ``index`` on; the
        number of leaves below ``hi``."""
        assert self._store is not None
        at = lo
        while at < hi:
            recs = [r for r in self._log.read(topic, p, at, min(10_000, hi - at)) if r.offset < hi]
            if not recs:
                break
            writes = dict(pruned_leaf(topic, p, index + i, r.offset, leaf_of(r.key, r.timestamp, r.value), False)
                          for i, r in enumerate(recs))
            self._store.raw_put(writes, sync=True)
            index += len(recs)
            at = recs[-1].offset + 1
            if progress is not None:
                progress(len(recs))
        return index

    def _delete_records(self, starts: dict[TopicPartition, int]) -> None:
        if not starts:
            return
        b = self._topics.broker
        wanted = [KTP(b.real(t), p, off) for (t, p), off in sorted(starts.items())]
        try:
            futures = self._topics.admin.delete_records(wanted, request_timeout=b.timeout,
                                                        operation_timeout=b.timeout)
            for fut in futures.values():
                fut.result(timeout=b.timeout)
        except KafkaException as exc:
            raise b.fail(f"DeleteRecords on {len(wanted)} partitions", exc) from exc
        except Exception as exc:
            raise LogError(f"kafka {b.bootstrap}: DeleteRecords failed: {exc}") from exc
