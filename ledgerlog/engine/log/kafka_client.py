"""What the parts of the Kafka backend share: the connection config, topic-name prefixing, client
settings, error wrapping and bounded retries (with backoff) of transient broker errors."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from ..errors import LogError
from .kafka_config import KafkaConfig, Role, Setting

__all__ = ["Broker", "arrived", "kafka_error", "logged", "transient"]

_log = logging.getLogger("ledgerlog.kafka")


class _Deliberate(logging.Filter):
    """Drops librdkafka's warning, at every producer's start, that a setting ledgerlog chose on
    purpose is experimental (the deriver's gapless guarantee): operators can do nothing about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) == 3 and args[0] == "CONFWARN"
                    and "enable.gapless.guarantee is experimental" in str(args[2]))


_log.addFilter(_Deliberate())


def logged(conf: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` with librdkafka's own log lines sent to the ``ledgerlog.kafka`` logger (a node's
    JSON log), not written raw to stderr."""
    return {"logger": _log, **conf}
T = TypeVar("T")

_TRANSIENT = {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
              KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_COORDINATOR,
              KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
              KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
              KafkaError.CONCURRENT_TRANSACTIONS, KafkaError._WAIT_COORD}


def arrived(consumer: Any, limit: int, wait: float) -> list[Any]:
    """The messages a consumer has fetched, up to ``limit``, waiting at most ``wait`` seconds for
    the first. (librdkafka's ``consume(limit, timeout)`` waits the whole timeout unless ``limit``
    messages come: a reader that wants what is there would lose ``timeout`` at every call.)"""
    msgs: list[Any] = consumer.consume(limit, 0)
    if msgs or wait <= 0:
        return msgs
    first = consumer.poll(wait)
    if first is None:
        return []
    return [first, *consumer.consume(limit - 1, 0)] if limit > 1 else [first]


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The KafkaError a KafkaException carries, if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def transient(exc: BaseException) -> bool:
    """Is ``exc`` worth retrying (a timeout, or a retriable, non-fatal broker error)?"""
    if isinstance(exc, TimeoutError):
        return True
    err = kafka_error(exc)
    return err is not None and not err.fatal() and (err.retriable() or err.code() in _TRANSIENT)


class Broker:
    """One log's view of the cluster: names on the broker, client settings, failures as LogError."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.bootstrap = config.bootstrap
        self.prefix = config.topic_prefix
        self.timeout = config.timeout
        self.retries = config.retries
        self.last_error: str | None = None

    def real(self, topic: str) -> str:
        """A topic's (or group's) name on the broker."""
        return self.prefix + topic

    def client_conf(self, role: Role, defaults: Mapping[str, Setting] | None = None) -> dict[str, Any]:
        """librdkafka settings of one client, reporting its errors here (values: strings,
        numbers, the logger and the error callback)."""
        return {"error_cb": self._on_error, **logged(self.config.librdkafka(role, defaults))}

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)
        if err.fatal():
            _log.error("kafka fatal error: %s", err)

    def fail(self, what: str, exc: BaseException) -> LogError:
        """The LogError for a failed operation, with the last error a client reported."""
        extra = f" (last client error: {self.last_error})" if self.last_error else ""
        return LogError(f"kafka {self.bootstrap}: {what}: {exc}{extra}")

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` with bounded retries and backoff on transient broker errors."""
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.retries) | stop_after_delay(self.timeout),
                                    reraise=True,
                                    wait=wait_exponential(multiplier=0.1, max=2.0),
                                    retry=retry_if_exception(transient)):
                with attempt:
                    return fn()
        except LogError:
            raise
        except (KafkaException, TimeoutError, RuntimeError, ValueError, TypeError) as exc:
            raise self.fail(what, exc) from exc
        raise AssertionError("unreachable")
