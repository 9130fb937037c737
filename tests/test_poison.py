"""No admitted event may make a fold fail (PROTOCOL.md §7 "Integers"): event fields are signed
64-bit, totals derived from them are exact integers of any size, in storage and in answers."""
from __future__ import annotations

import orjson
import pytest
from conftest import admit_ok

from ledgerlog.engine.intjson import dumps, loads
from ledgerlog.ops.api.fast import dumps as http_dumps
from ledgerlog.ops.query.queries import Queries
from ledgerlog.projections import energy, payouts
from ledgerlog.streams.runner import Runner

I64 = (1 << 63) - 1


def _runner(chain) -> Runner:
    r = Runner(chain.log, chain.codec, chain.genesis, chain.config.projections_dir)
    r.catch_up()
    return r


@pytest.mark.parametrize("value", [0, 1, -1, I64, -I64 - 1, 3 * I64, -(10**40), 10**60,
                                   [1, [2 * I64, {"a": -(3 * I64)}]], {"k": 4 * I64, "é": "ü"}])
def test_any_integer_round_trips_exactly(value):
    assert loads(dumps(value)) == value
    assert dumps(loads(dumps(value))) == dumps(value)  # a stable encoding: digests stay equal


def test_small_values_keep_their_orjson_bytes():
    """Stores written before big integers were possible read and re-encode unchanged."""
    for value in ([1, 2, 3], {"a": [I64, "x"]}, (1 << 64) - 1, "ü"):
        assert dumps(value) == orjson.dumps(value)


def test_three_max_difficulty_shares_do_not_poison_payouts(chain, lines):
    worker = lines.keys.faucet.address
    admit_ok(chain, lines.block())
    admit_ok(chain, *(lines.share(worker, f"rig{i}", job_id=f"j{i}", height=1, difficulty=I64)
                      for i in range(3)))
    runner = _runner(chain)
    try:
        q = Queries(runner, chain.genesis.chain_id)
        assert q.worker(worker)["difficulty"] == 3 * I64
        view = runner.handles["payouts"].store.view()
        assert payouts.pool(view)["difficulty"] == 3 * I64
        assert orjson.loads(http_dumps(q.status()))["height"] == 1  # status still answers
        # a pool block over that window divides exactly: no float anywhere
        admit_ok(chain, lines.block(producer=lines.keys.producer))
        runner.catch_up()
        assert isinstance(payouts.pool(view)["difficulty"], int)
    finally:
        runner.close()


def test_huge_energy_readings_credit_exact_sums(chain, lines):
    owner = lines.keys.faucet
    near = I64 - 7
    admit_ok(chain, lines.provider(owner, price_per_kwh=I64))
    admit_ok(chain, lines.reading(milli_kwh=near), lines.reading(milli_kwh=near - 1),
             lines.reading(milli_kwh=near - 2))  # past even the unsigned 64-bit range
    runner = _runner(chain)
    try:
        view = runner.handles["energy"].store.view()
        p = energy.provider(view, "prov-1")
        assert p["credited_milli_kwh"] == 3 * near - 3
        assert p["unsettled_milli_kwh"] == 3 * near - 3
        q = Queries(runner, chain.genesis.chain_id)
        body = q.provider("prov-1")
        assert b'"credited_milli_kwh":%d' % (3 * near - 3) in http_dumps(body)
    finally:
        runner.close()


def _raising_on(fold, difficulty):
    """``fold`` with a bug: it raises on a share of ``difficulty``."""
    def bad(genesis, events, txn):
        for topic, ev in events:
            if topic == "pool.shares" and ev.get("difficulty") == difficulty:
                raise ZeroDivisionError("planted bug")
        fold(genesis, events, txn)
    return bad


def test_a_raising_fold_stops_only_its_projection(chain, lines, monkeypatch, tmp_path):
    from ledgerlog.engine.errors import ProjectionFailedError
    from ledgerlog.streams.reproject import reproject

    worker = lines.keys.faucet.address
    admit_ok(chain, lines.block())
    admit_ok(chain, *(lines.share(worker, job_id=f"j{i}", difficulty=1000 + i) for i in range(5)))
    admit_ok(chain, lines.share(worker, job_id="poison", difficulty=666))
    shares_end = chain.log.end_offsets("pool.shares")
    monkeypatch.setattr(payouts, "fold", _raising_on(payouts.fold, 666))
    runner = _runner(chain)  # must not raise
    try:
        failed = runner.failures()
        assert list(failed) == ["payouts"]
        f = failed["payouts"]
        assert (f.topic, f.offset) == ("pool.shares", shares_end[f.partition] - 1)
        assert "ZeroDivisionError" in f.error and "reproject payouts" in f.message
        q = Queries(runner, chain.genesis.chain_id)
        status = q.status()  # chainstate still answers, and names the failure
        assert status["height"] == 1 and status["failed_projections"]["payouts"]["offset"] == f.offset
        with pytest.raises(ProjectionFailedError, match="payouts"):
            q.worker(worker)
        assert q.account(worker)["balance"] >= 0
        assert q.dashboard()["pool"] is None
        # admission and the other projections go on
        admit_ok(chain, lines.block())
        runner.catch_up()
        assert q.status()["height"] == 2 and q.block("2")["height"] == 2
        # a rebuild with the bug still in is refused and leaves the live store alone
        with pytest.raises(ProjectionFailedError):
            reproject(chain.log, chain.codec, chain.genesis, chain.config.projections_dir, runner,
                      ["payouts"])
        monkeypatch.undo()  # the fix
        [summary] = reproject(chain.log, chain.codec, chain.genesis, chain.config.projections_dir,
                              runner, ["payouts"])
        assert summary["swapped"] and not runner.failures()
        assert q.worker(worker)["shares"] == 6
        clean = Runner(chain.log, chain.codec, chain.genesis, str(tmp_path / "clean"), names=["payouts"])
        clean.catch_up()
        assert clean.digests()["payouts"] == runner.digests()["payouts"]
        clean.close()
    finally:
        runner.close()


def test_a_failed_projection_is_reported_by_the_node(tmp_path, monkeypatch):
    """Over HTTP: health and status name it, the metric is 1, its queries answer a typed 503,
    ingest and every other query keep working."""
    import httpx
    from conftest import Keys, Lines, encode, load_signer
    from servers import serve_app

    from ledgerlog.engine.chain import init_chain
    from ledgerlog.engine.config import Config
    from ledgerlog.engine.genesis import dev_genesis
    from ledgerlog.ops.api.app import create_app
    from ledgerlog.ops.node.lifecycle import Node

    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token="t" * 32)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    monkeypatch.setattr(payouts, "fold", _raising_on(payouts.fold, 666))
    node = Node(cfg)
    node.start()
    try:
        ln = Lines(node.chain, Keys(*(load_signer(cfg, n) for n in ("producer", "oracle", "treasury", "faucet"))))
        worker = ln.keys.faucet.address
        with serve_app(create_app(node)) as (host, port):
            base = f"http://{host}:{port}"
            post = {"headers": {"content-type": "application/x-ndjson"}, "timeout": 10}
            body = b"\n".join(encode(x) for x in (ln.block(), ln.share(worker, difficulty=666)))
            assert httpx.post(base + "/v1/ingest", content=body, **post).status_code == 200
            node.queries.sync()
            health = httpx.get(base + "/v1/health").json()
            assert health["status"] == "degraded"
            assert health["failed_projections"]["payouts"]["topic"] == "pool.shares"
            r = httpx.get(f"{base}/v1/pool/workers/{worker}")
            assert r.status_code == 503 and r.json()["code"] == "PROJECTION_FAILED", r.text
            assert "reproject payouts" in r.json()["message"]
            metrics = httpx.get(base + "/metrics").text
            assert 'ledgerlog_projection_failed{projection="payouts"} 1' in metrics
            assert 'ledgerlog_projection_failed{projection="balances"} 0' in metrics
            assert httpx.post(base + "/v1/ingest", content=encode(ln.block()), **post).status_code == 200
            node.queries.sync()
            status = httpx.get(base + "/v1/status").json()
            assert status["height"] == 2 and "payouts" in status["failed_projections"]
            assert httpx.get(f"{base}/v1/accounts/{worker}").status_code == 200
    finally:
        node.stop()
