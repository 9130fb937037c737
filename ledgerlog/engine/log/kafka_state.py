"""The Kafka backend's write-side state: a local RocksDB beside the broker, holding the admission
state (the same ``s/`` keys as the embedded log's) and the log positions it reflects. The broker
cannot commit it with a transaction, so ``KafkaLog.append`` writes it right after the commit and
``engine.admission.state_fold.catch_up`` folds in whatever the log holds beyond the positions.
The same store keeps the partitions' Merkle trees (``h/``, ``n/``, ``c/`` keys, kafka_trees.py),
read and written raw."""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from .. import storekeys as K
from ..rocks import WriteBatch, iter_prefix, map_error, open_store, write_options
from .base import StateWrites, TopicPartition

__all__ = ["STATE_FORMAT", "LocalState"]

STATE_FORMAT = K.KAFKA_STATE_FORMAT
_STATE = K.STATE_PREFIX          # b"s/": the same keys as the embedded log's state
_POS = K.KAFKA_POS_PREFIX
#: The keys ``raw_put`` may write (logtree.py's trees, the hashes of pruned leaves, the prune
#: point): never the state or the positions.
_RAW = (K.TREE_STATE_PREFIX, K.TREE_NODE_PREFIX, K.TREE_CHUNK_PREFIX, K.TREE_LEAF_PREFIX, K.PRUNE_KEY)


class LocalState:
    def __init__(self, path: str, *, read_only: bool, sync: bool) -> None:
        self.path = path
        self._db = open_store(path, STATE_FORMAT, read_only=read_only)
        self._write_opts = write_options(sync)
        self._unsynced = write_options(False)

    def write(self, state: StateWrites, positions: Mapping[TopicPartition, int]) -> None:
        """State changes and the positions they reflect, in one WriteBatch."""
        wb = WriteBatch(raw_mode=True)
        for k, v in state.items():
            if v is None:
                wb.delete(_STATE + k)
            else:
                wb.put(_STATE + k, v)
        for (topic, p), off in positions.items():  # a position never moves back
            key = K.kafka_pos_key(topic, p)
            old = self._db.get(key)
            if old is None or K.U64.unpack(old)[0] < off:
                wb.put(key, K.U64.pack(off))
        if wb.is_empty():
            return
        try:
            self._db.write(wb, self._write_opts)
        except Exception as exc:
            raise map_error(exc, self.path) from exc

    def positions(self) -> dict[TopicPartition, int]:
        out = {}
        for key, val in iter_prefix(self._db, _POS):
            out[K.split_topic_partition(key[len(_POS):])] = K.U64.unpack(val)[0]
        return out

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(_STATE + key)

    def items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        n = len(_STATE)
        for k, v in iter_prefix(self._db, _STATE + prefix):
            yield k[n:], v

    def raw_get(self, key: bytes) -> bytes | None:
        """A tree key's value (``h/``, ``n/``, ``c/``: the full key)."""
        return self._db.get(key)

    def raw_put(self, writes: Mapping[bytes, bytes], *, sync: bool = False) -> None:
        """Tree keys in one WriteBatch, not synced unless ``sync``: the trees are rebuilt from the
        log if a crash loses them (kafka_trees.py catches up on open); what a prune stores (the
        hashes of the leaves it deletes, its prune point) is synced."""
        wb = WriteBatch(raw_mode=True)
        for k, v in writes.items():
            if not k.startswith(_RAW):
                raise ValueError(f"raw_put writes tree keys only, not {k[:8]!r}")
            wb.put(k, v)
        if wb.is_empty():
            return
        try:
            self._db.write(wb, write_options(True) if sync else self._unsynced)
        except Exception as exc:
            raise map_error(exc, self.path) from exc

    def close(self) -> None:
        self._db.close()
