"""`verify` on a Kafka chain (Tansu broker, transactions): commit markers take offsets no reader
sees, so a healthy chain's data records have gaps and verify must stay clean; records lost from
the broker still show as OFFSET_GAP (two or more unseen offsets in a row), and a record lost
inside a transaction, which offsets cannot show, fails other checks."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import clitools
import pytest
from clitools import ok_json
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import open_chain
from ledgerlog.engine.config import load_config
from ledgerlog.engine.log.kafka import KafkaLog
from ledgerlog.ops.devtools.histgen import make_genesis, write_genesis, write_history
from ledgerlog.ops.verify.checks import verify

pytestmark = pytest.mark.kafka

CHUNK = 20  # lines per append, so per Kafka transaction: many commit markers


cli = partial(clitools.cli, timeout=300)  # verify reads the whole Kafka log


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory, kafka_bootstrap) -> str:  # noqa: F811
    d = tmp_path_factory.mktemp("kv")
    genesis, keys = make_genesis(17, wallets=10)
    write_genesis(str(d / "genesis.json"), genesis)
    write_history(str(d / "h.jsonl"), genesis, keys, events=1200, seed=17)
    data = d / "data"
    data.mkdir()
    url = f"kafka://{kafka_bootstrap}"
    (data / "config.toml").write_text(f'[log]\nurl = "{url}"\n\n[ingest]\nchunk = {CHUNK}\n\n'
                                      f'[kafka]\n"ledgerlog.topic_prefix" = "kv-{uuid.uuid4().hex[:10]}."\n')
    ok_json(cli(str(data), "init", "--genesis", str(d / "genesis.json"), "--log", url))
    ok_json(cli(str(data), "ingest", str(d / "h.jsonl")))
    return str(data)


def _data_offsets(data: str, topic: str, partition: int) -> list[int]:
    with open_chain(load_config(data, {}), read_only=True) as chain:
        return [r.offset for r in chain.log.scan(topic, partition)]


def test_verify_is_clean_on_a_healthy_chain_whose_offsets_have_marker_gaps(chain_dir):
    offsets = _data_offsets(chain_dir, T.TRANSACTIONS, 0)
    assert len(offsets) > 2 and offsets[-1] + 1 > len(offsets)  # markers took offsets: there are gaps
    res = cli(chain_dir, "verify")
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["ok"] is True, report["log"]["problems"][:5]
    assert report["log"]["problem_count"] == 0


def test_the_uncommitted_probe_sees_every_data_record_and_no_marker(chain_dir):
    offsets = _data_offsets(chain_dir, T.TRANSACTIONS, 0)
    with open_chain(load_config(chain_dir, {}), read_only=True) as chain:
        assert isinstance(chain.log, KafkaLog)
        assert chain.log.uncommitted_offsets(T.TRANSACTIONS, 0, 0, offsets[-1] + 1) == offsets
        assert chain.log.uncommitted_offsets(T.TRANSACTIONS, 0, offsets[1], offsets[1]) == []


def _losing(monkeypatch: pytest.MonkeyPatch, topic: str, partition: int, lost: set[int]) -> None:
    """As if the broker had lost the records at ``lost`` of one partition (for every reader)."""
    scan, probe = KafkaLog.scan, KafkaLog.uncommitted_offsets

    def lossy_scan(self: KafkaLog, t: str, p: int, *a: Any, **k: Any) -> Iterator[Any]:
        return (r for r in scan(self, t, p, *a, **k) if not (t == topic and p == partition and r.offset in lost))

    def lossy_probe(self: KafkaLog, t: str, p: int, start: int, stop: int) -> list[int]:
        return [o for o in probe(self, t, p, start, stop) if not (t == topic and p == partition and o in lost)]
    monkeypatch.setattr(KafkaLog, "scan", lossy_scan)
    monkeypatch.setattr(KafkaLog, "uncommitted_offsets", lossy_probe)


def _run_of(offsets: list[int], n: int) -> list[int]:
    """``n`` consecutive data offsets (inside one transaction), away from the partition's ends."""
    for i in range(1, len(offsets) - n):
        if offsets[i + n - 1] - offsets[i] == n - 1:
            return offsets[i:i + n]
    raise AssertionError("no run of consecutive records")


def test_records_lost_from_the_broker_are_an_offset_gap(chain_dir, monkeypatch):
    offsets = _data_offsets(chain_dir, T.TRANSACTIONS, 0)
    lost = _run_of(offsets, 2)
    _losing(monkeypatch, T.TRANSACTIONS, 0, set(lost))
    report = verify(load_config(chain_dir, {}), signatures=False)
    gaps = [p for p in report["log"]["problems"] if p["code"] == "OFFSET_GAP"]
    assert report["ok"] is False
    assert [g["where"] for g in gaps] == [f"{T.TRANSACTIONS}[0]"], gaps
    assert f"{lost[0]}..{lost[-1]}" in gaps[0]["message"]


def test_one_record_lost_inside_a_transaction_fails_other_checks(chain_dir, monkeypatch):
    offsets = _data_offsets(chain_dir, T.TRANSACTIONS, 0)
    lost = _run_of(offsets, 3)[1]  # between two records of its transaction: looks like a marker
    _losing(monkeypatch, T.TRANSACTIONS, 0, {lost})
    report = verify(load_config(chain_dir, {}), signatures=False)
    assert report["ok"] is False
    assert not [p for p in report["log"]["problems"] if p["code"] == "OFFSET_GAP"]
