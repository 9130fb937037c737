"""The log: a Kafka-style partitioned, append-only record store, with pluggable backends."""
from __future__ import annotations

from .base import Log, LogRecord, Record, TopicPartition
from .kafka_config import KafkaConfig
from .memory import MemoryLog

__all__ = ["KafkaConfig", "Log", "LogRecord", "Record", "TopicPartition", "MemoryLog", "open_log"]


def open_log(url: str, *, read_only: bool = False, sync: bool = True, kafka: KafkaConfig | None = None) -> Log:
    """Open a log by URL: ``embedded:<path>``, ``memory:`` or ``kafka://host:port[,...]``;
    ``kafka`` is the connection config of a Kafka log (``Config.kafka_connection()``; default:
    the URL's brokers, nothing else set)."""
    if url.startswith("embedded:"):
        from .embedded import EmbeddedLog
        return EmbeddedLog(url[len("embedded:"):], read_only=read_only, sync=sync)
    if url.startswith("memory:"):
        return MemoryLog()
    if url.startswith("kafka://"):
        from .kafka import KafkaLog  # imported lazily: confluent-kafka only when used
        return KafkaLog(kafka or KafkaConfig.from_table(url[len("kafka://"):], {}), read_only=read_only, sync=sync)
    from ..errors import ConfigError
    raise ConfigError(f"unknown log url {url!r} (expected embedded:PATH, memory: or kafka://HOST:PORT)")
