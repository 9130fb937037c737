"""`ledgerlog stream-worker` processes for the Kafka-mode tests: start one, read its /status, ask it
over HTTP (redirects not followed: routing is what the tests check), wait for a condition while
failing early, with the worker's stderr, when a worker dies."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from clitools import LEDGERLOG, cli_env, terminate

__all__ = ["Worker", "get", "wait_for"]


class Worker:
    """One `ledgerlog --data-dir DATA stream-worker --worker-dir WDIR --id WID ARGS...`."""

    def __init__(self, data: str, wdir: str, wid: str, *args: str) -> None:
        self.wdir, self.wid = wdir, wid
        self.err = open(os.path.join(os.path.dirname(wdir), f"{wid}.err"), "ab")
        self.proc = subprocess.Popen([LEDGERLOG, "--data-dir", data, "stream-worker", "--worker-dir", wdir, "--id", wid,
                                      *args],
                                     stdout=subprocess.DEVNULL, stderr=self.err, stdin=subprocess.DEVNULL,
                                     env=cli_env(LEDGERLOG_LOG_LEVEL="WARNING"))
        self.url: str | None = None

    def status(self) -> dict[str, Any] | None:
        """Its /status once it listens (from its worker.json), else None."""
        if self.url is None:
            try:
                with open(os.path.join(self.wdir, "worker.json"), encoding="utf-8") as f:
                    info = json.load(f)
                if info["pid"] != self.proc.pid:
                    return None
                self.url = info["url"]
            except (OSError, ValueError, KeyError):
                return None
        code, body, _ = get(self.url, "/status")
        return body if code == 200 else None

    def stop(self) -> None:
        terminate(self.proc, timeout=20)
        self.err.close()

    def tail(self) -> str:
        with open(self.err.name, "rb") as f:
            return f.read()[-3000:].decode(errors="replace")


def get(url: str, path: str) -> tuple[int, Any, str | None]:
    """(status, JSON body, Location) of a GET; (0, None, None) when the worker does not answer."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else None), resp.getheader("Location")
    except OSError:
        return 0, None, None
    finally:
        conn.close()


def wait_for(what: str, cond: Callable[[], Any], timeout: float, workers: list[Worker]) -> Any:
    """``cond()``'s first truthy value within ``timeout`` seconds; fails at once if a worker exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        for w in workers:
            assert w.proc.poll() is None, f"worker {w.wid} exited {w.proc.returncode}: {w.tail()}"
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}: " + " | ".join(
        f"{w.wid}: {w.status()} {w.tail()[-1500:]}" for w in workers))


def embedded_balances(data_dir: str, genesis: dict[str, Any], lines: list[bytes],
                      heights: Callable[[int], list[int]]) -> tuple[str, dict[tuple[str, int | None], Any], int]:
    """What the embedded fold says of ``lines``: the balances digest, every account's answer now
    (height None) and at ``heights(tip)``, and the tip height (the reference of the Kafka tests)."""
    from ledgerlog.engine.chain import init_chain, open_chain
    from ledgerlog.engine.config import Config
    from ledgerlog.projections import balances
    from ledgerlog.streams.runner import Runner

    cfg = Config(data_dir=data_dir, sync=False, ingest_chunk=100)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        chain.admitter.admit(lines)
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir, names=["balances"])
        try:
            runner.catch_up()
            store = runner.handles["balances"].store
            view = store.view()
            addrs = sorted(k[2:].decode() for k, _ in view.items(b"a/"))
            answers: dict[tuple[str, int | None], Any] = {
                (a, h): balances.account(view, a, h) for a in addrs for h in heights(store.height)}
            answers.update({(a, None): balances.account(view, a) for a in addrs})
            return runner.digests()["balances"], answers, store.height
        finally:
            runner.close()
