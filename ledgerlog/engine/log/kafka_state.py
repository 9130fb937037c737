"""The Kafka backend's write-side state: a local RocksDB beside the broker, holding the admission
state (the same ``s/`` keys as the embedded log's) and the log positions it reflects. The broker
cannot commit it with a transaction, so ``KafkaLog.append`` writes it right after the commit and
``engine.admission.state_fold.catch_up`` folds in whatever the log holds beyond the positions."""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from .. import storekeys as K
from ..rocks import WriteBatch, iter_prefix, map_error, open_store, write_options
from .base import StateWrites, TopicPartition

__all__ = ["STATE_FORMAT", "LocalState"]

STATE_FORMAT = K.KAFKA_STATE_FORMAT
_STATE = K.STATE_PREFIX          # b"s/": the same keys as the embedded log's state
_POS = K.KAFKA_POS_PREFIX


class LocalState:
    def __init__(self, path: str, *, read_only: bool, sync: bool) -> None:
        self.path = path
        self._db = open_store(path, STATE_FORMAT, read_only=read_only)
        self._write_opts = write_options(sync)

    def write(self, state: StateWrites, positions: Mapping[TopicPartition, int]) -> None:
        """State changes and the positions they reflect, in one WriteBatch."""
        wb = WriteBatch(raw_mode=True)
        for k, v in state.items():
            if v is None:
                wb.delete(_STATE + k)
            else:
                wb.put(_STATE + k, v)
        for (topic, p), off in positions.items():
            wb.put(K.kafka_pos_key(topic, p), K.U64.pack(off))
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

    def close(self) -> None:
        self._db.close()
