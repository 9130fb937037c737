"""Reserved keys and format versions of every RocksDB store ledgerlog writes.

A store records its format version under FORMAT_KEY when created; opening a store whose
version differs from the one here fails with FormatVersionError instead of misreading it.
"""
from __future__ import annotations

import struct

__all__ = ["FORMAT_KEY", "LOG_FORMAT", "PROJECTION_FORMAT", "topic_key", "end_key", "record_key",
           "record_prefix", "group_key", "group_prefix", "STATE_PREFIX", "U64", "POS_PREFIX",
           "pos_key", "DIGEST_KEY", "META_PREFIX"]

U64 = struct.Struct(">Q")
_P = struct.Struct(">I")

FORMAT_KEY = b"\x00format"
LOG_FORMAT = b"ledgerlog-log/1"
PROJECTION_FORMAT = b"ledgerlog-projection/1"

# --- embedded log store (<data_dir>/log) ---
STATE_PREFIX = b"s/"          # write-side state, committed in the same batch as the records


def topic_key(topic: str) -> bytes:
    return b"t/" + topic.encode()


def end_key(topic: str, partition: int) -> bytes:
    return b"e/" + topic.encode() + b"\x00" + _P.pack(partition)


def record_prefix(topic: str, partition: int) -> bytes:
    return b"r/" + topic.encode() + b"\x00" + _P.pack(partition)


def record_key(topic: str, partition: int, offset: int) -> bytes:
    return record_prefix(topic, partition) + U64.pack(offset)


def group_prefix(group: str) -> bytes:
    return b"g/" + group.encode() + b"\x00"


def group_key(group: str, topic: str, partition: int) -> bytes:
    return group_prefix(group) + topic.encode() + b"\x00" + _P.pack(partition)


# --- projection stores (<data_dir>/projections/<name>/<version>) ---
META_PREFIX = b"\x00m/"       # positions, digest, version: never part of the state digest
POS_PREFIX = META_PREFIX + b"pos/"
DIGEST_KEY = META_PREFIX + b"digest"


def pos_key(topic: str, partition: int) -> bytes:
    return POS_PREFIX + topic.encode() + b"\x00" + _P.pack(partition)
