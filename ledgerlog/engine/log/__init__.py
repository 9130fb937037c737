"""The log: a Kafka-style partitioned, append-only record store, with pluggable backends."""
from .base import Log, LogRecord, Record, TopicPartition
from .memory import MemoryLog

__all__ = ["Log", "LogRecord", "Record", "TopicPartition", "MemoryLog", "open_log"]


def open_log(url: str, *, read_only: bool = False, sync: bool = True, **kafka_conf: str) -> Log:
    """Open a log by URL: ``embedded:<path>``, ``memory:`` or ``kafka://host:port[,...]``."""
    if url.startswith("embedded:"):
        from .embedded import EmbeddedLog
        return EmbeddedLog(url[len("embedded:"):], read_only=read_only, sync=sync)
    if url.startswith("memory:"):
        return MemoryLog()
    if url.startswith("kafka://"):
        from .kafka import KafkaLog  # imported lazily: confluent-kafka only when used
        return KafkaLog(url[len("kafka://"):], read_only=read_only, sync=sync, **kafka_conf)
    from ..errors import ConfigError
    raise ConfigError(f"unknown log url {url!r} (expected embedded:PATH, memory: or kafka://HOST:PORT)")
