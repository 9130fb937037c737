"""What long data jobs tell a ``Progress`` (ops/jobs.py), beyond what a terminal shows: a resumed
mirror counts what the target held, an interrupted one stops short of its total, and an export of
a height range spans the partitions' offsets from the range's start (what it passes over after
the range's end counts as done, so it ends at its total)."""
from __future__ import annotations

import os

import pytest

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.log.memory import MemoryLog
from ledgerlog.ops.data.export import export
from ledgerlog.ops.data.mirror import mirror
from ledgerlog.ops.devtools.histgen import make_genesis, write_history
from ledgerlog.ops.jobs import Jobs


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory):
    from ledgerlog.engine.config import Config
    root = tmp_path_factory.mktemp("progress")
    genesis, keys = make_genesis(9, wallets=8)
    write_history(root / "h.jsonl", genesis, keys, events=3000, seed=9)
    cfg = Config(data_dir=str(root / "data"), sync=False)
    init_chain(cfg, genesis)
    with open_chain(cfg) as chain, open(root / "h.jsonl", "rb") as f:
        assert chain.admitter.admit(f).rejected == 0
    return cfg


def test_a_resumed_mirror_counts_what_the_target_holds(chain_dir):
    jobs, target = Jobs(), MemoryLog()
    with open_chain(chain_dir, read_only=True) as chain:
        records = sum(sum(chain.log.end_offsets(t)) for t in chain.log.topics())
        with jobs.run("mirror", "first") as job:
            rep = mirror(chain.log, target, to="memory", prefix="", max_records=500, progress=job)
        first = jobs.to_dict()["first"]
        assert not rep.complete and (first["done"], first["total"], first["phase"]) == (500, 2 * records, "copy")
        with jobs.run("mirror", "resumed") as job:
            rep = mirror(chain.log, target, to="memory", prefix="", progress=job)
    resumed = jobs.to_dict()["resumed"]
    assert rep.ok and rep.already == 500 and rep.copied == records - 500
    assert (resumed["done"], resumed["total"], resumed["phase"]) == (2 * records, 2 * records, "verify")


def test_a_height_range_export_spans_from_its_start_and_ends_at_its_total(chain_dir, tmp_path):
    jobs = Jobs()
    with open_chain(chain_dir, read_only=True) as chain:
        ends = chain.log.end_offsets(T.TRANSACTIONS)
        with jobs.run("export", "range") as job:
            out = export(chain, T.TRANSACTIONS, "jsonl", tmp_path / "tx.jsonl", from_height=20, to_height=40,
                         progress=job)
        with jobs.run("export", "all") as job:
            whole = export(chain, T.TRANSACTIONS, "jsonl", tmp_path / "all.jsonl", progress=job)
    ranged, everything = jobs.to_dict()["range"], jobs.to_dict()["all"]
    assert 0 < out["records"] < ranged["total"] < sum(ends)  # starts past offset 0, reads past height 40
    assert ranged["done"] == ranged["total"]
    assert everything["done"] == everything["total"] == sum(ends) == whole["records"]
    assert os.path.getsize(tmp_path / "tx.jsonl") > 0
