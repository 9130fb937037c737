"""`ledgerlog mirror`: an embedded chain copied into Kafka record for record (counts and hashes
per partition verified), resumed after a bounded run and after a kill -9 without duplicates,
then `--switch`ed so the data dir runs on Kafka and answers exactly as before."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from functools import partial
from typing import Any

import clitools
import pytest
from clitools import LEDGERLOG, cli_env
from conftest import folded_digests
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config, load_config
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.ops.data.mirror import partition_digest
from ledgerlog.ops.devtools.histgen import generate, make_genesis

pytestmark = pytest.mark.kafka

EVENTS = 4000
SEED = 31
KILL_WAIT = 60.0


cli = partial(clitools.cli, timeout=180)  # mirroring into Kafka takes longer


def ok_json(proc: subprocess.CompletedProcess) -> Any:
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads(proc.stdout)


def _answers(data_dir: Any, genesis: dict[str, Any]) -> dict[str, Any]:
    st = ok_json(cli(data_dir, "status"))
    out: dict[str, Any] = {"status": {k: v for k, v in st.items() if k != "provenance"},
                           "digest": st["provenance"]["digest"], "height": st["provenance"]["height"]}
    for addr in sorted(genesis["allocations"])[:6]:
        a = ok_json(cli(data_dir, "account", addr))
        out[addr] = {k: a[k] for k in ("balance", "nonce", "staked")}
    out["block"] = ok_json(cli(data_dir, "block", str(st["height"])))["hash"]
    return out


def _target(bootstrap: str, prefix: str):
    from ledgerlog.engine.log.kafka import KafkaLog
    return KafkaLog(bootstrap, **{"ledgerlog.topic_prefix": prefix, "ledgerlog.timeout.ms": "10000"})


def _report(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    rep = ok_json(proc)
    assert not rep["mismatches"], rep["mismatches"]
    return rep


def test_mirror_resume_and_switch(tmp_path, kafka_bootstrap):  # noqa: F811
    genesis, keys = make_genesis(SEED, wallets=10)
    lines = list(generate(genesis, keys, events=EVENTS, seed=SEED))
    data = tmp_path / "data"
    cfg = Config(data_dir=str(data), sync=False, ingest_chunk=200)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        summary = chain.admitter.admit(lines).to_dict()
    assert summary["rejected"] == 0 and summary["accepted"] > 500
    before = _answers(data, genesis)
    digests_before = folded_digests(cfg)
    to = f"kafka://{kafka_bootstrap}"

    # 1. a whole mirror, verified
    rep = _report(cli(data, "mirror", "--to", to, "--topic-prefix", f"m-{uuid.uuid4().hex[:8]}."))
    assert rep["ok"] and rep["complete"] and rep["copied"] == rep["records"] > EVENTS
    with EmbeddedLog(cfg.log_path, read_only=True) as src:
        topics = src.topics()
        assert {(p["topic"], p["partition"]) for p in rep["partitions"]} == \
            {(t, p) for t, n in topics.items() for p in range(n)}
        assert all(p["source"] == p["target"] for p in rep["partitions"])

    # 2. another prefix in steps: a bounded run, a run killed -9 mid-way, a resuming run
    prefix = f"r-{uuid.uuid4().hex[:8]}."
    first = ok_json(cli(data, "mirror", "--to", to, "--topic-prefix", prefix, "--max-records", "3000",
                        "--batch", "500"))
    assert not first["complete"] and first["copied"] == 3000 and not first["ok"]
    proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "mirror", "--to", to, "--topic-prefix", prefix,
                             "--batch", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    try:
        seen = 0
        with _target(kafka_bootstrap, prefix) as tgt:
            deadline = time.monotonic() + KILL_WAIT
            while time.monotonic() < deadline and proc.poll() is None:
                seen = sum(sum(1 for _ in tgt.scan(t, p)) for t in tgt.topics() for p in range(topics[t]))
                if seen > 3000 + 300:
                    break
                time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed = proc.returncode == -signal.SIGKILL
    resumed = _report(cli(data, "mirror", "--to", to, "--topic-prefix", prefix))
    assert resumed["ok"] and resumed["complete"]
    assert resumed["already_on_target"] >= 3000 + (300 if killed else 0)
    assert resumed["already_on_target"] + resumed["copied"] == resumed["records"]
    # nothing twice: counts and hashes matched; and every transaction is on the target once
    with _target(kafka_bootstrap, prefix) as tgt, open_chain(cfg, read_only=True) as chain:
        txids = Counter(chain.codec.decode(T.TRANSACTIONS, r.value)["txid"]
                        for p in range(topics[T.TRANSACTIONS]) for r in tgt.scan(T.TRANSACTIONS, p))
        assert txids and max(txids.values()) == 1
        for t in (T.SCHEMAS, T.BLOCKS):
            assert partition_digest(tgt, t, 0) == partition_digest(chain.log, t, 0)

    # 3. switch the data dir over to the resumed mirror; it answers as before
    sw = _report(cli(data, "mirror", "--to", to, "--topic-prefix", prefix, "--switch"))
    assert sw["switched"] and sw["state_equal"] and sw["copied"] == 0
    kcfg = load_config(str(data), {})
    assert kcfg.log_url == to and kcfg.kafka["ledgerlog.topic_prefix"] == prefix
    assert kcfg.admin_token and kcfg.ingest_chunk == cfg.ingest_chunk  # the rest of config.toml is kept
    assert os.path.isdir(data / "state") and any(n.startswith("projections.embedded-") for n in os.listdir(data))
    after = _answers(data, genesis)
    assert after == before
    assert folded_digests(kcfg) == digests_before
    # the switched chain keeps admitting: the same lines again are all duplicates
    hist = tmp_path / "h.jsonl"
    hist.write_bytes(b"\n".join(lines) + b"\n")
    redo = ok_json(cli(data, "ingest", str(hist), timeout=300))
    assert redo["accepted"] == 0 and redo["duplicates"] == summary["accepted"] + summary["duplicates"]


def test_mirror_refuses_a_foreign_target(tmp_path, kafka_bootstrap):  # noqa: F811
    """A target partition holding more records than the source is no mirror of it: exit 1."""
    genesis, keys = make_genesis(SEED + 1, wallets=4)
    data = tmp_path / "data"
    cfg = Config(data_dir=str(data), sync=False)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        chain.admitter.admit(list(generate(genesis, keys, events=300, seed=SEED + 1)))
    prefix = f"f-{uuid.uuid4().hex[:8]}."
    _report(cli(data, "mirror", "--to", f"kafka://{kafka_bootstrap}", "--topic-prefix", prefix))
    other = tmp_path / "other"
    g2, _k2 = make_genesis(SEED + 2, wallets=4)
    cfg2 = Config(data_dir=str(other), sync=False)
    init_chain(cfg2, g2)  # a smaller chain: its partitions hold fewer records than the target's
    proc = cli(other, "mirror", "--to", f"kafka://{kafka_bootstrap}", "--topic-prefix", prefix)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert b"not a mirror" in proc.stderr or b"mismatch" in proc.stdout or b'"ok":false' in proc.stdout
