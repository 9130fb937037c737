"""`ledgerlog stream-worker --shard balances` on Kafka: workers share the balances projection by
account through a consumer group. A second worker joining mid-fold takes half the shards (rebuilt
from the repartition topic) and half the source partitions to derive; a worker killed (-9)
mid-fold has its shards and its derive leases taken by the survivor. Either way the shards'
digests sum to the embedded fold's, and every account's answer, now and as of past heights, asked
of either worker (routed by 307 to the owner), equals the embedded one."""
from __future__ import annotations

import signal
import uuid
from typing import Any

import pytest
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)
from workertools import Worker, embedded_balances, get, wait_for

from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import generate, make_genesis
from ledgerlog.streams.shards.repartition import combine_digests

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

SEED = 47
EVENTS = 1500
N = 4
CHUNK = 100


@pytest.fixture(scope="module")
def history() -> tuple[dict[str, Any], list[bytes]]:
    genesis, keys = make_genesis(SEED, wallets=12)
    return genesis, list(generate(genesis, keys, events=EVENTS, seed=SEED, invalid_every=97))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, history) -> dict[str, Any]:
    """The embedded fold's balances digest, and answers for every account at a few heights."""
    genesis, lines = history
    digest, answers, _tip = embedded_balances(str(tmp_path_factory.mktemp("embedded") / "data"), genesis, lines,
                                              lambda tip: [0, 1, tip // 3, tip // 2, tip])
    return {"digest": digest, "answers": answers}


class ShardWorker(Worker):
    def __init__(self, data: str, wdir: str, wid: str) -> None:
        super().__init__(data, wdir, wid, "--shard", "balances", "--partitions", str(N), "--batch", "100")

    def serving(self) -> dict[str, str]:
        """Digests of the shards it serves, folded to the end the deriver has written."""
        st = self.status() or {"shards": {}}
        return {k: s["digest"] for k, s in st["shards"].items() if s["state"] == "serving" and s["lag"] == 0}


def split(workers: list[ShardWorker]) -> dict[str, str] | None:
    """Every shard served by exactly one of ``workers``, each serving some: the merged digests."""
    got = [w.serving() for w in workers]
    keys = [set(g) for g in got]
    if not all(keys) or sum(map(len, keys)) != N or set().union(*keys) != {str(k) for k in range(N)}:
        return None
    return {k: v for g in got for k, v in g.items()}


def check_answers(workers: list[ShardWorker], reference: dict[str, Any]) -> None:
    """Every reference answer, asked of each worker in turn, redirected to the owner when needed."""
    urls = {w.url for w in workers}
    redirected = 0
    for i, ((addr, h), want) in enumerate(sorted(reference["answers"].items(), key=lambda x: (x[0][0], x[0][1] or -1))):
        path = f"/accounts/{addr}" + ("" if h is None else f"?height={h}")
        code, body, location = get(workers[i % len(workers)].url or "", path)
        if code == 307:
            assert location is not None and location.rsplit("/accounts/", 1)[0] in urls
            redirected += 1
            code, body, _ = get(location.rsplit("/accounts/", 1)[0], path)
        assert code == 200, (code, body)
        assert {k: body[k] for k in want} == want, (addr, h)
    assert redirected > 0 or len(workers) == 1


def _chain(tmp_path, bootstrap: str, genesis: dict[str, Any]) -> Config:
    cfg = Config(data_dir=str(tmp_path / "data"), log_url=f"kafka://{bootstrap}", sync=False, ingest_chunk=CHUNK,
                 kafka={"ledgerlog.topic_prefix": f"sw-{uuid.uuid4().hex[:10]}."})
    init_chain(cfg, genesis)  # writes config.toml (log.url, [kafka]) for the worker processes
    return cfg


def test_a_second_worker_joins_mid_fold(tmp_path, kafka_bootstrap, history, reference):  # noqa: F811
    genesis, lines = history
    cfg = _chain(tmp_path, kafka_bootstrap, genesis)
    workers: list[ShardWorker] = []
    try:
        with open_chain(cfg) as chain:
            chain.admitter.admit(lines[:500])
            a = ShardWorker(cfg.data_dir, str(tmp_path / "wA"), "A")
            workers = [a]
            wait_for("A to serve every shard", lambda: len(a.serving()) == N, 60, workers)
            chain.admitter.admit(lines[500:1000])
            b = ShardWorker(cfg.data_dir, str(tmp_path / "wB"), "B")  # joins while A folds the new events
            workers = [a, b]
            chain.admitter.admit(lines[1000:])
        merged = wait_for("A and B to split the shards, folded to the end",
                          lambda: (m := split(workers)) and combine_digests(m.values()) == reference["digest"] and m,
                          60, workers)
        assert combine_digests(merged.values()) == reference["digest"]
        st_a, st_b = a.status() or {}, b.status() or {}
        assert st_b["shards"] and all(g["resumed_from"] == 0 for g in st_b["gains"])  # rebuilt from the topic
        leases_a, leases_b = (set((st.get("deriver") or {}).get("leases", {})) for st in (st_a, st_b))
        assert leases_a and leases_b and not leases_a & leases_b  # both derive: the source partitions split
        assert len(leases_a | leases_b) == st_b["derived"]["leases"]
        check_answers(workers, reference)
    finally:
        for w in workers:
            w.stop()


def test_a_killed_worker_s_shards_move_to_the_survivor(tmp_path, kafka_bootstrap, history, reference):  # noqa: F811
    genesis, lines = history
    cfg = _chain(tmp_path, kafka_bootstrap, genesis)
    workers: list[ShardWorker] = []
    try:
        with open_chain(cfg) as chain:
            chain.admitter.admit(lines[:500])
            a = ShardWorker(cfg.data_dir, str(tmp_path / "wA"), "A")
            b = ShardWorker(cfg.data_dir, str(tmp_path / "wB"), "B")
            workers = [a, b]
            wait_for("A and B to split the shards", lambda: split(workers), 60, workers)
            owned_a = set(a.serving())
            chain.admitter.admit(lines[500:900])
            a.proc.send_signal(signal.SIGKILL)  # mid-fold: the new events are being derived and folded
            a.proc.wait(timeout=10)
            chain.admitter.admit(lines[900:])
        workers = [b]
        wait_for("the survivor to fold every shard to the embedded digest",
                 lambda: len(m := b.serving()) == N and combine_digests(m.values()) == reference["digest"], 60, workers)
        st_b = b.status() or {}
        gains = {int(g["shard"]) for g in st_b["gains"]}
        assert {int(k) for k in owned_a} <= gains
        assert len(st_b["deriver"]["leases"]) == st_b["derived"]["leases"]  # the dead one's derive leases too
        check_answers(workers, reference)
    finally:
        for w in workers:
            w.stop()
