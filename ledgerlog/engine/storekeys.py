"""Reserved keys and format versions of every RocksDB store ledgerlog writes.

A store records its format version under FORMAT_KEY when created; opening a store whose
version differs from the one here fails with FormatVersionError instead of misreading it.
"""
from __future__ import annotations

import struct

__all__ = ["FORMAT_KEY", "LOG_FORMAT", "PROJECTION_FORMAT", "KAFKA_STATE_FORMAT", "topic_key", "end_key",
           "record_key", "record_prefix", "RECORD_PREFIX", "RECORD_HEAD", "record_value", "split_record_value",
           "parse_record_key", "group_key", "group_prefix", "split_topic_partition", "STATE_PREFIX", "TOPIC_PREFIX",
           "U32", "U64", "TREE_STATE_PREFIX", "TREE_NODE_PREFIX", "TREE_CHUNK_PREFIX", "TREE_LEAF_PREFIX", "leaf_key", "LOG_START_PREFIX", "log_start_key", "PRUNE_KEY",
           "POS_PREFIX", "pos_key", "DIGEST_KEY", "META_PREFIX", "KAFKA_POS_PREFIX", "kafka_pos_key"]

U64 = struct.Struct(">Q")
U32 = struct.Struct(">I")
_P = U32

FORMAT_KEY = b"\x00format"
LOG_FORMAT = b"ledgerlog-log/1"
PROJECTION_FORMAT = b"ledgerlog-projection/1"
KAFKA_STATE_FORMAT = b"ledgerlog-kafka-state/1"

# --- embedded log store (<data_dir>/log) ---
STATE_PREFIX = b"s/"          # write-side state, committed in the same batch as the records
TOPIC_PREFIX = b"t/"          # t/<topic> -> partition count (u32)
RECORD_PREFIX = b"r/"         # r/<topic>\0<partition u32><offset u64> -> RECORD_HEAD, key, value
# Merkle trees (engine/logtree.py), in the log store on the embedded log, in the state store on Kafka
TREE_STATE_PREFIX = b"h/"     # h/<topic>\0<partition u32> -> the partition's frontier (TreeState)
TREE_NODE_PREFIX = b"n/"      # n/<topic>\0<partition u32><level u8><index u64> -> subtree hash
TREE_CHUNK_PREFIX = b"c/"     # c/<topic>\0<partition u32><chunk u64> -> offset of its first leaf (Kafka)
TREE_LEAF_PREFIX = b"l/"      # l/<topic>\0<partition u32><index u64> -> leaf hash of a pruned record (32
                              # bytes; then its offset, u64, where offsets are not contiguous)
# Pruning (engine/prunepoint.py): in the log store on the embedded log, in the state store on Kafka
LOG_START_PREFIX = b"lo/"     # lo/<topic>\0<partition u32> -> first offset the log still holds (u64)
PRUNE_KEY = b"x/prune"        # the log's prune point (JSON): height, start offsets, tip below it, archive
#: A record's value: timestamp (i64), key length (u32); then the key, then the value.
RECORD_HEAD = struct.Struct(">qI")


def topic_key(topic: str) -> bytes:
    return TOPIC_PREFIX + topic.encode()


def end_key(topic: str, partition: int) -> bytes:
    return b"e/" + topic.encode() + b"\x00" + _P.pack(partition)


def leaf_key(topic: str, partition: int, index: int) -> bytes:
    return TREE_LEAF_PREFIX + topic.encode() + b"\x00" + _P.pack(partition) + U64.pack(index)


def log_start_key(topic: str, partition: int) -> bytes:
    return LOG_START_PREFIX + topic.encode() + b"\x00" + _P.pack(partition)


def record_prefix(topic: str, partition: int) -> bytes:
    return RECORD_PREFIX + topic.encode() + b"\x00" + _P.pack(partition)


def record_key(topic: str, partition: int, offset: int) -> bytes:
    return record_prefix(topic, partition) + U64.pack(offset)


def parse_record_key(key: bytes) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of a record key, or None if it is not one."""
    if len(key) < len(RECORD_PREFIX) + 13 or not key.startswith(RECORD_PREFIX) or key[-13:-12] != b"\x00":
        return None
    topic = key[len(RECORD_PREFIX):-13].decode(errors="replace")
    return topic, _P.unpack_from(key, len(key) - 12)[0], U64.unpack_from(key, len(key) - 8)[0]


def record_value(timestamp: int, key: bytes, value: bytes) -> bytes:
    """A record's stored value (RECORD_HEAD, key, value)."""
    return RECORD_HEAD.pack(timestamp, len(key)) + key + value


def split_record_value(raw: bytes) -> tuple[int, bytes, bytes] | None:
    """(timestamp, key, value) of a stored record value; None if shorter than its head says."""
    n = RECORD_HEAD.size
    if len(raw) < n:
        return None
    ts, klen = RECORD_HEAD.unpack_from(raw)
    if len(raw) < n + klen:
        return None
    return ts, raw[n:n + klen], raw[n + klen:]


def group_prefix(group: str) -> bytes:
    return b"g/" + group.encode() + b"\x00"


def group_key(group: str, topic: str, partition: int) -> bytes:
    return group_prefix(group) + topic.encode() + b"\x00" + _P.pack(partition)


def split_topic_partition(rest: bytes) -> tuple[str, int]:
    """(topic, partition) of a key tail ``<topic>\\0<partition u32>`` (group and position keys);
    the partition's 4 bytes may hold \\0 bytes, so it is cut from the end."""
    return rest[:-5].decode(), _P.unpack(rest[-4:])[0]


# --- projection stores (<data_dir>/projections/<name>/<version>) ---
META_PREFIX = b"\x00m/"       # positions, digest, version: never part of the state digest
POS_PREFIX = META_PREFIX + b"pos/"
DIGEST_KEY = META_PREFIX + b"digest"


def pos_key(topic: str, partition: int) -> bytes:
    return POS_PREFIX + topic.encode() + b"\x00" + _P.pack(partition)


# --- the Kafka backend's local write-side state (<data_dir>/state) ---
# s/<key>: the same state keys as the embedded log's (STATE_PREFIX)
KAFKA_POS_PREFIX = b"p/"      # p/<topic>\0<partition u32> -> next offset the state reflects (u64)


def kafka_pos_key(topic: str, partition: int) -> bytes:
    return KAFKA_POS_PREFIX + topic.encode() + b"\x00" + _P.pack(partition)
