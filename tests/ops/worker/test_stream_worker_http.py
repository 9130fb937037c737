"""The stream worker's HTTP endpoint (ops/worker): FastAPI on uvicorn like the node's. /status,
/projections/<name> answered by the owner, redirected (307) to the owner elsewhere, 503 while
no one serves it; errors are JSON ``{"code","message"}``. No broker: a stand-in fold engine."""
from __future__ import annotations

import subprocess
from typing import Any

import httpx
from clitools import LEDGERLOG
from fastapi.testclient import TestClient

from ledgerlog.ops.worker.http import WorkerHttp


class Engine:
    """What the endpoint reads of streams.faust_worker.FoldEngine."""

    def __init__(self) -> None:
        self.served = {"balances": {"state": "serving", "digest": "ab", "lag": 0}}

    def status(self) -> dict[str, Any]:
        return {"owned": dict(self.served), "gains": [], "error": None}

    def answer(self, name: str) -> dict[str, Any] | None:
        return self.served.get(name)


INFO = {"id": "W1", "pid": 1, "group": "g", "chain_id": "c", "url": "http://127.0.0.1:1"}


def owners(name: str) -> str | None:
    return {"payouts": "http://127.0.0.1:2", "chainstate": "http://127.0.0.1:1"}.get(name)


def test_routes_and_answers() -> None:
    web = WorkerHttp(Engine(), dict(INFO))
    web.route = owners
    with TestClient(web.app, follow_redirects=False) as c:
        assert c.get("/status").json() == {**INFO, **Engine().status()}
        r = c.get("/projections/balances")
        assert r.status_code == 200 and r.json() == {"projection": "balances", "worker": "W1",
                                                     "state": "serving", "digest": "ab", "lag": 0}
        r = c.get("/projections/payouts")
        assert r.status_code == 307 and r.headers["location"] == "http://127.0.0.1:2/projections/payouts"
        r = c.get("/projections/chainstate")  # owned here (by the group) but not serving yet
        assert r.status_code == 503 and r.json()["code"] == "NOT_SERVING"
        assert r.json()["owner"] == "http://127.0.0.1:1"
        r = c.get("/projections/energy")  # no owner known yet
        assert r.status_code == 503 and r.json()["owner"] is None
        for path in ("/projections/nope", "/nowhere"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND" and r.json()["message"]
        r = c.post("/status")
        assert r.status_code == 405 and r.json()["code"] == "METHOD_NOT_ALLOWED"


def test_served_on_uvicorn_in_a_thread() -> None:
    web = WorkerHttp(Engine(), dict(INFO))
    web.listen("127.0.0.1", 0)
    web.start()
    try:
        r = httpx.get(f"http://127.0.0.1:{web.port}/projections/balances", timeout=10)
        assert r.status_code == 200 and r.json()["worker"] == "W1"
    finally:
        web.stop()
    assert not web.running


def test_the_command_is_stream_worker() -> None:
    """`stream-worker` runs a worker; `worker` is the pool query (PROTOCOL §7) and runs none."""
    assert "--worker-dir" in subprocess.run([LEDGERLOG, "stream-worker", "--help"], capture_output=True,
                                            text=True, timeout=60).stdout
    old = subprocess.run([LEDGERLOG, "worker", "--worker-dir", "w"], capture_output=True, text=True, timeout=60)
    assert old.returncode == 2


A1, A2, A3 = "a1" * 20, "a2" * 20, "a3" * 20  # addresses: 40 lower-case hex, as the node takes


class ShardedEngine(Engine):
    """What the endpoint reads of streams.shards.engine.ShardEngine: accounts of its shard."""

    def account(self, address: str, height: int | None = None) -> dict[str, Any] | None:
        if address != A1:
            return None
        return {"address": address, "balance": 5 if height is None else 3, "nonce": 0, "staked": 0, "shard": 0}


def test_accounts_answered_by_the_owner_of_their_shard() -> None:
    web = WorkerHttp(ShardedEngine(), dict(INFO))
    web.account_route = {A2: "http://127.0.0.1:2", A3: "http://127.0.0.1:1"}.get
    with TestClient(web.app, follow_redirects=False) as c:
        r = c.get(f"/accounts/{A1}")
        assert r.status_code == 200 and r.json()["balance"] == 5 and r.json()["worker"] == "W1"
        assert c.get(f"/accounts/{A1}?height=4").json()["balance"] == 3
        r = c.get(f"/accounts/{A2}?height=4")
        assert r.status_code == 307 and r.headers["location"] == f"http://127.0.0.1:2/accounts/{A2}?height=4"
        r = c.get(f"/accounts/{A3}")  # its shard is this worker's, not served yet
        assert r.status_code == 503 and r.json()["code"] == "NOT_SERVING" and r.json()["owner"] == "http://127.0.0.1:1"
        assert c.get(f"/accounts/{A1}?height=-1").status_code == 400
    with TestClient(WorkerHttp(Engine(), dict(INFO)).app) as c:  # whole-projection workers answer no accounts
        r = c.get("/accounts/a1")
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
