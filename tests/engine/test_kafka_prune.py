"""Pruning a chain on Kafka (engine/log/kafka_prune.py): DeleteRecords is sent only where the
chain's [kafka] table enables it, because Tansu 0.6 advertises the API and panics on it. Against
Tansu, `ledgerlog prune` refuses with PRUNE_UNSUPPORTED naming why, before anything is written;
the log's start is the broker's low watermark."""
from __future__ import annotations

import json
import uuid

import pytest
from clitools import cli
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.log.kafka_config import KafkaConfig
from ledgerlog.ops.devtools.histgen import generate, make_genesis

pytestmark = pytest.mark.kafka


def test_prune_on_kafka_is_refused_with_the_reason_and_writes_nothing(tmp_path, kafka_bootstrap):  # noqa: F811
    genesis, keys = make_genesis(37, wallets=4)
    cfg = Config(data_dir=str(tmp_path / "data"), log_url=f"kafka://{kafka_bootstrap}", sync=False,
                 kafka={"ledgerlog.topic_prefix": f"prune-{uuid.uuid4().hex[:10]}."})
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain:
        assert chain.admitter.admit(list(generate(genesis, keys, events=150, seed=37))).rejected == 0
        why = chain.log.prune_refusal()
        assert why is not None and "ledgerlog.delete_records" in why and "Tansu" in why
        assert chain.log.start_offsets(T.BLOCKS) == [0]  # the low watermark
        assert chain.log.prune_point() is None
        tip = chain.write_state().tip().height
    proc = cli(cfg.data_dir, "prune", "--before-height", str(max(1, tip // 2)))
    assert proc.returncode == 2, proc.stderr
    err = json.loads(proc.stderr)
    assert err["code"] == "PRUNE_UNSUPPORTED" and "delete_records" in err["error"]
    assert not (tmp_path / "data" / "archive").exists() and not (tmp_path / "data" / "anchor").exists()


def test_delete_records_is_an_explicit_switch() -> None:
    assert KafkaConfig.from_table("h:1", {}).delete_records is False
    assert KafkaConfig.from_table("h:1", {"ledgerlog.delete_records": "true"}).delete_records is True
