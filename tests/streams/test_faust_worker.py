"""`ledgerlog stream-worker` on Kafka: two workers split the projections through a consumer group; one is
killed (-9) while events are still being appended; the survivor takes over its share, catches up
from its own local stores (from offset 0 for what it never had) and ends with every projection's
digest equal to the embedded runner's over the same history. A restarted worker rejoins and
resumes from its stored positions with the same digests."""
from __future__ import annotations

import signal
import subprocess
import time
import uuid
from typing import Any

import pytest
from clitools import LEDGERLOG, cli_env
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)
from nodetools import TX_COUNT
from workertools import Worker, get, wait_for

from ledgerlog import projections
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import generate, make_genesis
from ledgerlog.streams.runner import Runner

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

EVENTS = 2000
SEED = 23
CHUNK = 100
ALL = set(projections.ALL)


@pytest.fixture(scope="module")
def history() -> tuple[dict[str, Any], list[bytes]]:
    genesis, keys = make_genesis(SEED, wallets=12)
    return genesis, list(generate(genesis, keys, events=EVENTS, seed=SEED, invalid_every=97))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, history) -> dict[str, str]:
    """Digests of the embedded runner over the embedded log of the same history."""
    genesis, lines = history
    cfg = Config(data_dir=str(tmp_path_factory.mktemp("embedded") / "data"), sync=False, ingest_chunk=CHUNK)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        chain.admitter.admit(lines)
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            return runner.digests()
        finally:
            runner.close()


class ProjectionWorker(Worker):
    def __init__(self, data: str, wdir: str, wid: str) -> None:
        super().__init__(data, wdir, wid, "--batch", "200")

    def serving(self) -> dict[str, str]:
        st = self.status() or {"owned": {}}
        return {n: o["digest"] for n, o in st["owned"].items() if o.get("state") == "serving" and o.get("lag") == 0}


def test_two_workers_split_survive_kill_and_match_embedded(tmp_path, kafka_bootstrap, history,  # noqa: F811
                                                           reference):
    genesis, lines = history
    data = str(tmp_path / "data")
    cfg = Config(data_dir=data, log_url=f"kafka://{kafka_bootstrap}", sync=False, ingest_chunk=CHUNK,
                 kafka={"ledgerlog.topic_prefix": f"fw-{uuid.uuid4().hex[:10]}."})
    init_chain(cfg, genesis)  # writes config.toml (log.url, [kafka]) for the worker processes
    first = 800
    workers: list[ProjectionWorker] = []
    try:
        with open_chain(cfg) as chain:
            chain.admitter.admit(lines[:first])
            a = ProjectionWorker(data, str(tmp_path / "wA"), "A")
            b = ProjectionWorker(data, str(tmp_path / "wB"), "B")
            workers = [a, b]

            def split() -> bool:  # each owns (and serves) a share, together all of them
                sa, sb = a.serving(), b.serving()
                return bool(sa) and bool(sb) and not (sa.keys() & sb.keys()) and (sa.keys() | sb.keys()) == ALL
            wait_for("the two workers to split the projections", split, 60, workers)
            owned_a, owned_b = set(a.serving()), set(b.serving())

            # a query for B's projection at A is routed (redirected) to B
            name = min(owned_b)
            code, _, location = get(a.url, f"/projections/{name}")  # type: ignore[arg-type]
            assert code == 307 and location == f"{b.url}/projections/{name}"
            code, body, _ = get(b.url, f"/projections/{name}")  # type: ignore[arg-type]
            assert code == 200 and body["worker"] == "B" and body["projection"] == name

            # mid-stream: more history arrives; A is killed while it is being appended
            chain.admitter.admit(lines[first:first + 2 * CHUNK])
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(timeout=10)
            killed_at = time.monotonic()
            chain.admitter.admit(lines[first + 2 * CHUNK:])
        workers = [b]
        wait_for("the survivor to fold everything to the embedded digests",
                 lambda: b.serving() == reference, 60, workers)
        took = time.monotonic() - killed_at
        gains = {g["projection"]: g for g in (b.status() or {})["gains"]}
        for name in owned_a:  # taken over: caught up in B's own store, which never had them
            assert gains[name]["resumed_from"] == 0, gains
        print(f"\nsplit A={sorted(owned_a)} B={sorted(owned_b)}; survivor done {took:.1f} s after kill -9; "
              f"catch-up: {[(g['projection'], g['catch_up_s'], g['target']) for g in gains.values()]}")

        # A restarts on its own directory: rejoins, resumes from its stored positions, same digests
        a = ProjectionWorker(data, str(tmp_path / "wA"), "A")
        workers = [a, b]

        def rejoined() -> bool:
            sa, sb = a.serving(), b.serving()
            return (bool(sa) and bool(sb) and not (sa.keys() & sb.keys()) and {**sa, **sb} == reference)
        wait_for("the restarted worker to rejoin with equal digests", rejoined, 60, workers)
    finally:
        for w in workers:
            w.stop()


def test_a_worker_folds_the_data_dirs_user_projections(tmp_path, kafka_bootstrap, history):  # noqa: F811
    """A user projection registered with the data dir (docs/PROJECTIONS.md) gets a lease partition of
    its own; the worker folds it to the digest the runner's replay gives over the same log."""
    from ledgerlog.ops.notebook import replay

    genesis, lines = history
    data = str(tmp_path / "data")
    cfg = Config(data_dir=data, log_url=f"kafka://{kafka_bootstrap}", sync=False, ingest_chunk=CHUNK,
                 kafka={"ledgerlog.topic_prefix": f"fu-{uuid.uuid4().hex[:10]}."})
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        chain.admitter.admit(lines[:1200])
    (tmp_path / "tx_count.py").write_text(TX_COUNT)
    added = subprocess.run([LEDGERLOG, "--data-dir", data, "projections", "add", "tx_count"], cwd=tmp_path,
                           capture_output=True, env=cli_env(), timeout=120, check=False)
    assert added.returncode == 0, added.stderr
    w = ProjectionWorker(data, str(tmp_path / "w"), "U")
    try:
        wait_for("the worker to serve the built-ins and tx_count",
                 lambda: set(w.serving()) == ALL | {"tx_count"}, 90, [w])
        with replay(str(tmp_path / "tx_count.py"), data, progress=False) as clean:
            assert clean.events > 0
            assert w.serving()["tx_count"] == clean.digest
        code, body, _ = get(w.url, "/projections/tx_count")  # type: ignore[arg-type]
        assert code == 200 and body["projection"] == "tx_count" and body["lag"] == 0
        assert w.status()["projections"][-1] == "tx_count"  # its lease follows the built-ins'
    finally:
        w.stop()
