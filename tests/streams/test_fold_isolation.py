"""What stops a projection and what does not. A user projection whose fold (or initial state)
writes what a store cannot hold (a str key or value) stops alone, with the reason, and the others
fold on: the store refused it only at the commit, outside the fold's isolation, so the error
stopped the node's fold loop, and every restart the same way. A read the disk refuses inside a
fold is the disk's fault, not the projection's: it is retried, not marked failed for good."""
from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import admit_ok

from ledgerlog.streams import catalog
from ledgerlog.streams.runner import Runner

BAD_VALUE = """NAME, VERSION, TOPICS = "memo_of", 1, ("pool.shares",)
def fold(genesis, events, txn):
    for _topic, e in events:
        txn.put(e["share_id"].encode(), e["worker"])  # a str, not bytes
"""
BAD_INITIAL = """NAME, VERSION, TOPICS = "seeded", 1, ("pool.shares",)
def initial(genesis, txn):
    txn.put("seed", b"1")  # a str key
def fold(genesis, events, txn):
    pass
"""


@pytest.mark.parametrize("name,source,where", [("memo_of", BAD_VALUE, "value"), ("seeded", BAD_INITIAL, "key")])
def test_a_user_fold_writing_a_str_stops_alone(chain, lines, tmp_path, name: str, source: str, where: str) -> None:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    projections_dir = chain.config.projections_dir
    with open(catalog.registry_path(projections_dir), "w") as f:
        json.dump({"projections": {name: {"file": str(path)}}}, f)
    for i in range(3):
        admit_ok(chain, lines.share(job_id=f"j{i}"))
    runner: Any = None
    try:
        runner = Runner(chain.log, chain.codec, chain.genesis, projections_dir)
        runner.catch_up()  # no exception: the bad projection stops, the others fold on
        failed = runner.failures()
        assert set(failed) == {name}, failed
        assert f"as a {where}" in failed[name].message and "bytes" in failed[name].message
        assert ("initial state raised" in failed[name].message) == (name == "seeded")
        assert runner.lag()["payouts"] == 0 and runner.lag()["chainstate"] == 0
    finally:
        if runner is not None:
            runner.close()


def test_a_storage_error_while_folding_is_the_disk_s_not_a_failed_projection(chain, lines, monkeypatch) -> None:
    """A read the disk refuses inside a fold (an iterator's I/O error is a StorageError) goes to the
    caller, which retries once the disk is back (the node's fold loop backs off); the projection is
    not marked failed for good."""
    from ledgerlog.engine.errors import StorageError
    from ledgerlog.projections import payouts

    admit_ok(chain, lines.share(job_id="j0"))
    real, calls = payouts.fold, [0]

    def flaky(genesis: Any, events: Any, txn: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise StorageError("IO error: read failed")
        real(genesis, events, txn)
    monkeypatch.setattr(payouts, "fold", flaky)
    runner = Runner(chain.log, chain.codec, chain.genesis, chain.config.projections_dir, names=["payouts"])
    try:
        with pytest.raises(StorageError):
            runner.catch_up()
        assert runner.failures() == {}
        runner.catch_up()  # the disk is back
        assert runner.lag()["payouts"] == 0 and runner.failures() == {}
    finally:
        runner.close()


EXITS = """NAME, VERSION, TOPICS = "exits", 1, ("pool.shares",)
def fold(genesis, events, txn):
    raise SystemExit("bad event")  # not an Exception: it ended the node's fold thread, silently
"""
STR_BOMB = """NAME, VERSION, TOPICS = "bomb", 1, ("pool.shares",)
class Weird(Exception):
    def __str__(self):
        raise RuntimeError("no str")
def fold(genesis, events, txn):
    raise Weird()
"""
STR_BOMB_INITIAL = STR_BOMB.replace('"bomb"', '"ibomb"').replace("def fold(genesis, events, txn):",
                                                                 "def initial(genesis, txn):") + """
def fold(genesis, events, txn):
    pass
"""


def _register(chain: Any, tmp_path: Any, name: str, source: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    projections_dir = chain.config.projections_dir
    with open(catalog.registry_path(projections_dir), "w") as f:
        json.dump({"projections": {name: {"file": str(path)}}}, f)
    return projections_dir


STUCK = """NAME, VERSION, TOPICS = "stuck", 1, ("pool.shares",)
def fold(genesis, events, txn):
    __import__("time").sleep(3600)  # never returns (in this test's time)
"""


@pytest.mark.parametrize("name,source,says", [("exits", EXITS, "SystemExit: bad event"),
                                              ("bomb", STR_BOMB, "Weird"), ("ibomb", STR_BOMB_INITIAL, "Weird"),
                                              ("stuck", STUCK, "did not return within 0.5 s")])
def test_a_user_fold_exiting_raising_the_unprintable_or_stuck_stops_alone(chain, lines, tmp_path, monkeypatch,
                                                                           name: str, source: str, says: str) -> None:
    """sys.exit() in a fold, an exception whose str() raises (the node then could not even start
    again), or a fold that never returns (it held up every projection behind it on the node's one
    fold thread; now left running on its own thread after the timeout) stop that projection alone,
    with as much of the reason as can be told."""
    monkeypatch.setattr(catalog, "USER_CALL_TIMEOUT", 0.5)
    projections_dir = _register(chain, tmp_path, name, source)
    for i in range(3):
        admit_ok(chain, lines.share(job_id=f"j{i}"))
    runner = Runner(chain.log, chain.codec, chain.genesis, projections_dir)
    try:
        runner.catch_up()
        failed = runner.failures()
        assert set(failed) == {name} and says in failed[name].message, failed
        assert runner.lag()["payouts"] == 0 and runner.lag()["chainstate"] == 0
    finally:
        runner.close()


MEDDLES = """NAME, VERSION, TOPICS = "meddles", 1, ("ledger.transactions", "ledger.blocks")
def initial(genesis, txn):
    genesis.allocations.clear()  # what balances' initial state reads
def fold(genesis, events, txn):
    for _topic, e in events:
        if "body" in e:
            e["body"]["amount"] = 1  # what balances' fold reads
        else:
            e["reward"] = 0
    txn.put(b"n", str(len(events)).encode())
"""


def test_a_user_fold_cannot_change_what_the_built_ins_read(chain, lines, keys, tmp_path) -> None:
    """A user projection gets its own copy of the events and genesis: one that edits them in
    place (folded before balances in the same batch) leaves balances' state as it is alone."""
    for i in range(2):
        admit_ok(chain, lines.block([lines.tx(keys.treasury, keys.faucet, 500 + i)]))
    projections_dir = _register(chain, tmp_path, "meddles", MEDDLES)
    alone = Runner(chain.log, chain.codec, chain.genesis, str(tmp_path / "alone"), names=["balances"])
    both = Runner(chain.log, chain.codec, chain.genesis, projections_dir, names=["meddles", "balances"])
    try:
        alone.catch_up()
        both.catch_up()
        assert both.failures() == {} and both.lag()["meddles"] == 0
        assert both.digests()["balances"] == alone.digests()["balances"]
        assert chain.genesis.allocations  # the node's own genesis is untouched
    finally:
        alone.close()
        both.close()


HUGE = """NAME, VERSION, TOPICS = "huge", 1, ("pool.shares",)
def initial(genesis, txn):
    txn.put(b"a", b'"' + b"x" * 1_000_000 + b'"')
    txn.put(b"b", b"7")
def fold(genesis, events, txn):
    pass
"""


def test_the_dashboard_shows_the_start_of_a_huge_user_value_not_all_of_it(chain, tmp_path) -> None:
    """The dashboard, polled every second by every open tab, sent a user projection's values
    whole (a 4 MB one made a 4 MB answer and an 8 MB page): it shows their first characters."""
    from ledgerlog.ops.query.queries import DASHBOARD_VALUE_CHARS, Queries

    projections_dir = _register(chain, tmp_path, "huge", HUGE)
    runner = Runner(chain.log, chain.codec, chain.genesis, projections_dir)
    try:
        runner.catch_up()
        [panel] = Queries(runner, chain.genesis.chain_id).dashboard()["user_projections"]
        big, small = panel["items"]
        assert big["key"] == "a" and big["truncated"] and big["bytes"] == 1_000_002
        assert big["value"].startswith('"xxx') and len(big["value"]) <= DASHBOARD_VALUE_CHARS + 1
        assert small == {"key": "b", "value": 7, "encoding": "json"}
    finally:
        runner.close()



@pytest.mark.parametrize("kind", ["truncated", "magic", "unknown_id"])
def test_an_undecodable_record_stops_the_projections_reading_its_topic_not_the_runner(chain, lines, keys,
                                                                                        kind) -> None:
    """One malformed record on the log (a foreign producer on Kafka, damage) raised out of the
    shared feed (IndexError from the generated decoder: INTERNAL) and stopped the node, at every
    restart. Now the projections reading that topic stop there, naming the record; the others fold on."""
    import struct

    from ledgerlog.engine import topics as T
    from ledgerlog.engine.log.base import Record

    admit_ok(chain, lines.block([lines.tx(keys.treasury, keys.faucet, 500)]))
    value = {"truncated": chain.codec.wire(T.TRANSACTIONS, b"\x02c"), "magic": b"\x01" + b"\x00" * 10,
             "unknown_id": struct.pack(">bI", 0, 999) + b"\x00" * 10}[kind]
    (p, off), = chain.log.append([Record(T.TRANSACTIONS, b"k", value, 1_700_000_000_000, 0)])
    admit_ok(chain, lines.share(job_id="after"))
    runner = Runner(chain.log, chain.codec, chain.genesis, chain.config.projections_dir)
    try:
        runner.catch_up()  # no exception
        failed = runner.failures()
        readers = {n for n, h in runner.handles.items() if T.TRANSACTIONS in h.module.TOPICS}
        assert set(failed) == readers and readers, failed
        for f in failed.values():
            assert (f.topic, f.partition, f.offset) == (T.TRANSACTIONS, p, off), f
            assert "cannot be decoded" in f.message
        others = set(runner.handles) - readers
        assert others and all(runner.lag()[n] == 0 for n in others)
    finally:
        runner.close()


def test_a_raw_read_error_of_the_store_inside_a_fold_is_retried_not_a_failed_projection(chain, lines,
                                                                                          monkeypatch) -> None:
    """RocksDB's own I/O error on a point read inside a fold (a plain Exception from rocksdict)
    marked the projection failed for good, like a bug in its code; it is the disk's, and is retried."""
    from ledgerlog.engine.errors import StorageError
    from ledgerlog.streams import store

    admit_ok(chain, lines.share(job_id="j0"))
    real_begin, failing = store.ProjectionStore.begin, [True]

    class Flaky:
        def __init__(self, db: Any) -> None:
            self.db = db

        def get(self, key: bytes) -> Any:
            if failing[0]:
                failing[0] = False
                raise Exception("IO error: While pread offset 0 len 4096: /x/000012.sst: Input/output error")
            return self.db.get(key)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.db, name)

    def begin(self: Any) -> Any:
        txn = real_begin(self)
        txn._db, txn._keys = Flaky(txn._db), None  # no key filter: every read goes to the store
        return txn
    monkeypatch.setattr(store.ProjectionStore, "begin", begin)
    runner = Runner(chain.log, chain.codec, chain.genesis, chain.config.projections_dir, names=["payouts"])
    try:
        with pytest.raises(StorageError):
            runner.catch_up()
        assert runner.failures() == {}
        runner.catch_up()  # the disk answers again
        assert runner.lag()["payouts"] == 0 and runner.failures() == {}
    finally:
        runner.close()


def test_the_reason_a_user_fold_stopped_is_one_line_of_bounded_size() -> None:
    """An exception's text is user code's, and may quote event fields a client chose: it went
    raw into the node's text log and /v1/status, newlines (a forged log line) and megabytes too."""
    forged = "boom\n2026-12-08 01:00:00 WARNING ledgerlog: forged line\r\x1b[31m" + "x" * 1_000_000
    text = catalog.describe(ValueError(forged))
    assert text.startswith("ValueError: boom 2026-12-08 01:00:00 WARNING")
    assert not any(c in text for c in "\n\r\x1b") and len(text) <= catalog.MAX_REASON + 100
