"""A chain on Kafka behaves as on the embedded log: the same generated history admitted through
``--log kafka://`` gives the same ingest summary, byte-identical write-side state, the same
projection digests and the same query answers; and a write-side state write lost after a
committed transaction (a crash between the two) is caught up from the log on reopen."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from clitools import LEDGERLOG, cli_env
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.ops.devtools.histgen import generate, make_genesis, write_genesis
from ledgerlog.ops.query.client import open_queries
from ledgerlog.streams.runner import Runner

pytestmark = pytest.mark.kafka

EVENTS = 2000
SEED = 23
CHUNK = 100


@dataclass
class Outcome:
    summary: dict[str, Any]
    state: list[tuple[bytes, bytes]]
    digests: dict[str, str]
    answers: dict[str, Any]


def _history() -> tuple[dict[str, Any], list[bytes]]:
    genesis, keys = make_genesis(SEED, wallets=12)
    return genesis, list(generate(genesis, keys, events=EVENTS, seed=SEED, invalid_every=97))


def _fold(cfg: Config) -> tuple[list[tuple[bytes, bytes]], dict[str, str]]:
    with open_chain(cfg) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            # b"lk": the chain's first log key (PROTOCOL.md §9), made per data dir: not the history's
            return [kv for kv in chain.log.state_items(b"") if kv[0] != b"lk"], runner.digests()
        finally:
            runner.close()


def _answers(cfg: Config, genesis: dict[str, Any]) -> dict[str, Any]:
    """What the query commands answer (open_queries: no node, read-only chain, fold to the end)."""
    with open_queries(cfg) as q:
        st = q.status()
        out: dict[str, Any] = {"status": {k: st[k] for k in ("chain_id", "height", "tip_hash", "mempool")},
                               "lag": st["lag"]}
        for addr in sorted(genesis["allocations"]):
            a = q.account(addr)
            out[addr] = {k: a[k] for k in ("balance", "nonce", "staked")}
            out[f"{addr}@5"] = {k: q.account(addr, height=5)[k] for k in ("balance", "nonce", "staked")}
            w = q.worker(addr)
            out[f"worker {addr}"] = {k: w[k] for k in ("credited", "paid", "pending")}
        b = q.block(str(st["height"]))
        out["block"] = b.get("hash") or b
    return out


def _run(cfg: Config, genesis: dict[str, Any], lines: list[bytes]) -> Outcome:
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        summary = chain.admitter.admit(lines).to_dict()
    state, digests = _fold(cfg)
    return Outcome(summary, state, digests, _answers(cfg, genesis))


@pytest.fixture(scope="module")
def history() -> tuple[dict[str, Any], list[bytes]]:
    return _history()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, history) -> Outcome:
    genesis, lines = history
    cfg = Config(data_dir=str(tmp_path_factory.mktemp("embedded") / "data"), sync=False, ingest_chunk=CHUNK)
    return _run(cfg, genesis, lines)


def _kafka_config(tmp_path, bootstrap: str, name: str) -> Config:
    return Config(data_dir=str(tmp_path / name), log_url=f"kafka://{bootstrap}", sync=False,
                  ingest_chunk=CHUNK, kafka={"ledgerlog.topic_prefix": f"e2e-{uuid.uuid4().hex[:10]}."})


def test_history_on_kafka_equals_embedded(tmp_path, kafka_bootstrap, history, embedded):  # noqa: F811
    genesis, lines = history
    assert embedded.summary["rejected"] > 0 and embedded.summary["accepted"] > 400
    cfg = _kafka_config(tmp_path, kafka_bootstrap, "kafka")
    got = _run(cfg, genesis, lines)
    assert got.summary == embedded.summary
    assert got.state == embedded.state
    assert got.digests == embedded.digests
    assert got.answers == embedded.answers
    assert set(got.answers["lag"].values()) == {0}  # gaps in offsets do not read as lag
    with open_chain(cfg) as chain:
        assert chain.log.contiguous_offsets is False
        assert all(r.offset >= 0 for r in chain.log.scan(T.BLOCKS, 0))
        again = chain.admitter.admit(lines).to_dict()  # everything is already there
        assert again["accepted"] == 0
        assert again["duplicates"] == embedded.summary["accepted"] + embedded.summary["duplicates"]


def test_lost_state_write_is_caught_up_on_reopen(tmp_path, kafka_bootstrap, history, embedded,  # noqa: F811
                                                 monkeypatch):
    from ledgerlog.engine.log.kafka import KafkaLog

    genesis, lines = history
    cfg = _kafka_config(tmp_path, kafka_bootstrap, "crash")
    init_chain(cfg, genesis)
    a, b = 300, 300 + CHUNK  # the lines whose state write is lost: one chunk, one transaction
    with open_chain(cfg) as chain:
        first = chain.admitter.admit(lines[:a])
        stored = chain.log.state_positions()
        state_before = list(chain.log.state_items(b""))
        with monkeypatch.context() as m:  # the process dies after the commit, before the state write
            m.setattr(KafkaLog, "_write_state", lambda self, state, positions: None)
            lost = chain.admitter.admit(lines[a:b])
        # (the process is gone now: nothing more is admitted by it)
        assert lost.accepted > 0
        assert list(chain.log.state_items(b"")) == state_before  # nothing of them in the state
        assert chain.log.state_positions() == stored
        ends = {t: chain.log.end_offsets(t) for t in T.EVENT_TOPICS}
    assert any(ends[t][p] > stored.get((t, p), 0) for t in ends for p in range(len(ends[t])))

    with open_chain(cfg) as chain:  # reopen: catch-up folds the lost transaction first
        positions = chain.log.state_positions()
        assert all(positions.get((t, p), 0) == ends[t][p] for t in ends for p in range(len(ends[t]))
                   if ends[t][p] > 0)
        redo = chain.admitter.admit(lines[a:b])  # what was appended is admitted: duplicates
        assert redo.accepted == 0 and redo.duplicates == lost.accepted + lost.duplicates
        rest = chain.admitter.admit(lines[b:])
    total = first.accepted + lost.accepted + rest.accepted
    assert total == embedded.summary["accepted"]
    state, digests = _fold(cfg)
    assert state == embedded.state
    assert digests == embedded.digests


def test_cli_init_ingest_and_query_on_kafka(tmp_path, kafka_bootstrap, history, embedded):  # noqa: F811
    genesis, lines = history
    data = tmp_path / "cli"
    data.mkdir()
    url = f"kafka://{kafka_bootstrap}"
    (data / "config.toml").write_text(  # the topic prefix keeps tests apart on a shared broker
        f'[log]\nurl = "{url}"\n\n[kafka]\n"ledgerlog.topic_prefix" = "cli-{uuid.uuid4().hex[:10]}."\n')
    write_genesis(tmp_path / "genesis.json", genesis)
    (tmp_path / "history.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    env = cli_env()

    def cli(*args: str) -> Any:
        proc = subprocess.run([LEDGERLOG, "--data-dir", str(data), *args], capture_output=True,
                              timeout=180, env=env, check=False)
        assert proc.returncode in (0, 1), (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
        return json.loads(proc.stdout)

    assert cli("init", "--genesis", str(tmp_path / "genesis.json"), "--log", url)["log"] == url
    assert os.path.isdir(data / "state")
    summary = cli("ingest", str(tmp_path / "history.jsonl"))
    assert summary == embedded.summary
    status = cli("status")
    assert {k: status[k] for k in ("chain_id", "height", "tip_hash")} == \
        {k: embedded.answers["status"][k] for k in ("chain_id", "height", "tip_hash")}
    addr = min(genesis["allocations"])
    acct = cli("account", addr)
    assert {k: acct[k] for k in ("balance", "nonce", "staked")} == embedded.answers[addr]


def test_ends_and_reads_skip_markers_and_open_transactions(tmp_path, kafka_bootstrap):  # noqa: F811
    """Each append's commit marker takes an offset; another producer's open transaction is not
    visible (Tansu 0.6 even lists a read_committed end offset of 0 meanwhile); a fresh reader
    finds the same ends."""
    from confluent_kafka import Producer

    from ledgerlog.engine.log import Record
    from ledgerlog.engine.log.kafka import KafkaLog

    prefix = f"ends-{uuid.uuid4().hex[:10]}."
    conf = {"ledgerlog.topic_prefix": prefix}
    log = KafkaLog(kafka_bootstrap, **conf, **{"ledgerlog.state_dir": str(tmp_path / "state")})
    try:
        log.create_topics({"t": 2})
        assert log.append([Record("t", b"k", b"a", 1, 0), Record("t", b"k", b"b", 0, 0)]) == [(0, 0), (0, 1)]
        assert log.end_offsets("t") == [2, 0]
        other = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"other-{prefix}"})
        other.init_transactions(30)
        other.begin_transaction()
        for v in (b"x", b"y"):
            other.produce(prefix + "t", v, b"k", 0)
        other.produce(prefix + "t", b"z", b"k", 1)
        assert other.flush(30) == 0
        fresh = KafkaLog(kafka_bootstrap, read_only=True, **conf)
        try:
            for lg in (log, fresh):
                assert lg.end_offsets("t") == [2, 0]
                assert [r.value for r in lg.scan("t", 0)] == [b"a", b"b"]
                assert lg.read("t", 1, 0) == []
            other.commit_transaction(30)
            for lg in (log, fresh):
                assert lg.end_offsets("t") == [5, 1]  # a, b, our marker, x, y | z
                assert [(r.offset, r.value) for r in lg.scan("t", 0)] == \
                    [(0, b"a"), (1, b"b"), (3, b"x"), (4, b"y")]
                assert [r.timestamp for r in lg.read("t", 0, 0, 2)] == [1, 0]
        finally:
            fresh.close()
        [(p, off)] = log.append([Record("t", b"k", b"c", 7, 0)])
        assert (p, off) == (0, 6) and log.end_offsets("t") == [7, 1]
    finally:
        log.close()


def test_a_failed_transaction_is_aborted_and_never_forgotten(tmp_path, kafka_bootstrap):  # noqa: F811
    """A transaction that fails after its records were sent is aborted. Where the broker still
    shows aborted records to read_committed readers (Tansu 0.6 does), the log refuses further
    appends until reopened, so the write-side state can never fall behind what readers see."""
    from ledgerlog.engine.errors import LogError
    from ledgerlog.engine.log import Record
    from ledgerlog.engine.log.kafka import KafkaLog

    log = KafkaLog(kafka_bootstrap, **{"ledgerlog.topic_prefix": f"fail-{uuid.uuid4().hex[:10]}.",
                                       "ledgerlog.state_dir": str(tmp_path / "state")})
    try:
        log.create_topics({"t": 1})
        log.append([Record("t", b"k", b"kept", 1, 0)], state={b"tip": b"1"})
        real = log._tx.get_producer()

        class FlushFails:  # delivers, then reports one record undelivered
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def flush(self, timeout: float) -> int:
                real.flush(timeout)
                return 1

        log._tx.producer = FlushFails()  # type: ignore[assignment]
        with pytest.raises(LogError, match="append failed"):
            log.append([Record("t", b"k", b"doomed", 2, 0)], state={b"tip": b"2"})
        log._tx.producer = real
        assert log.state_get(b"tip") == b"1"
        seen = [r.value for r in log.scan("t", 0)]
        if b"doomed" in seen:  # the broker does not hide aborted records
            with pytest.raises(LogError, match="reopen"):
                log.append([Record("t", b"k", b"next", 3, 0)])
        else:
            assert seen == [b"kept"]
            log.append([Record("t", b"k", b"next", 3, 0)])
            assert [r.value for r in log.scan("t", 0)] == [b"kept", b"next"]
    finally:
        log.close()


def test_a_read_continuing_a_full_read_sees_records_appended_since(tmp_path, kafka_bootstrap):  # noqa: F811
    """A read that filled max_records keeps its prefetch for the next read; an end of partition
    that prefetch queued before newer records were appended is stale, not the end."""
    from ledgerlog.engine.log import Record
    from ledgerlog.engine.log.kafka import KafkaLog

    log = KafkaLog(kafka_bootstrap, **{"ledgerlog.topic_prefix": f"stale-{uuid.uuid4().hex[:10]}."})
    try:
        log.create_topics({"t": 1})
        [(_, at)] = log.append([Record("t", b"k", b"a0", 1, 0)])
        for i in range(3):  # each round: a full read, the prefetch reaching the end, an append
            assert [r.value for r in log.read("t", 0, at, 1)] == [b"a%d" % i]
            time.sleep(0.2)
            [(_, at)] = log.append([Record("t", b"k", b"a%d" % (i + 1), 1, 0)])
            assert [(r.offset, r.value) for r in log.read("t", 0, at - 1, 10)] == [(at, b"a%d" % (i + 1))]
    finally:
        log.close()
