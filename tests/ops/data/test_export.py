"""Exports (ops.export, `ledgerlog export`) and `ledgerlog tail --follow`.

Every expectation is computed by decoding the log directly (Log.scan + Codec.decode +
engine.movements.event_height) and filtering by brute force, never through ops.export itself;
Avro files are read back with plain fastavro."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

import clitools
import fastavro
import orjson
import pytest
from clitools import LEDGERLOG, cli_env
from fastavro.schema import to_parsing_canonical_form

from ledgerlog.engine import topics as T
from ledgerlog.engine.chain import init_chain, open_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.movements import event_height
from ledgerlog.ops.data.export import ExportError, export, iter_events, open_follower, parse_time
from ledgerlog.ops.devtools.histgen import generate, make_genesis

SEED = 23


cli = partial(clitools.cli, timeout=60)  # exports of these small chains are quick


# -- a chain with a generated history, and the log decoded directly ---------------------------


@pytest.fixture(scope="module")
def hist(tmp_path_factory):
    """(config, read-only chain) over an ingested history of ~900 lines."""
    root = tmp_path_factory.mktemp("export")
    cfg = Config(data_dir=str(root / "data"), sync=False)
    genesis, keys = make_genesis(SEED, wallets=12)
    init_chain(cfg, genesis)
    with open_chain(cfg) as ch:
        summary = ch.admitter.admit(list(generate(genesis, keys, events=3000, seed=SEED)))
        assert summary.rejected == 0 and summary.accepted > 500, summary.to_dict()
    chain = open_chain(cfg, read_only=True)
    yield cfg, chain
    chain.close()
    _DECODED.clear()


_DECODED: dict[tuple[int, str], list[dict[str, Any]]] = {}


def log_events(chain, topic: str) -> list[dict[str, Any]]:
    """Every event of a topic, by partition then offset, decoded straight from the log."""
    if chain.read_only and (id(chain), topic) in _DECODED:
        return _DECODED[(id(chain), topic)]
    out = []
    for p, end in enumerate(chain.log.end_offsets(topic)):
        for rec in chain.log.scan(topic, p, 0, end):
            value = chain.codec.decode(topic, rec.value)
            out.append({"partition": p, "offset": rec.offset, "key": rec.key.decode(),
                        "timestamp": rec.timestamp, "schema_id": int.from_bytes(rec.value[1:5], "big"),
                        "height": event_height(topic, value), "value": value})
    if chain.read_only:
        _DECODED[(id(chain), topic)] = out
    return out


def select(events, field: str, lo: int | None, hi: int | None, partitions=None):
    return [e for e in events if (lo is None or e[field] >= lo) and (hi is None or e[field] <= hi)
            and (partitions is None or e["partition"] in partitions)]


def as_dicts(stream) -> list[dict[str, Any]]:
    return [{"partition": e.partition, "offset": e.offset, "key": e.key, "timestamp": e.timestamp,
             "schema_id": e.schema_id, "height": e.height, "value": e.value} for e in stream]


def tip(chain) -> int:
    return chain.log.end_offsets(T.BLOCKS)[0]


# -- Avro files read back with plain fastavro --------------------------------------------------


def _range_for(chain, topic: str, spec: str) -> tuple[dict[str, Any], str, int | None, int | None]:
    """iter_events keywords for a named range, and the brute-force filter (field, lo, hi)."""
    h = tip(chain)
    if spec == "all":
        return {}, "height", None, None
    if spec == "height-mid":
        lo, hi = h // 3, 2 * h // 3
        return {"from_height": lo, "to_height": hi}, "height", lo, hi
    if spec == "height-from":
        return {"from_height": h // 2}, "height", h // 2, None
    if spec == "offset":
        return {"from_offset": 2, "to_offset": 9}, "offset", 2, 9
    if spec == "time":
        stamps = sorted(e["timestamp"] for e in log_events(chain, topic))
        lo, hi = stamps[len(stamps) // 4], stamps[3 * len(stamps) // 4]
        return {"from_time": lo, "to_time": hi}, "timestamp", lo, hi
    raise AssertionError(spec)


@pytest.mark.parametrize("topic,spec", [
    (T.BLOCKS, "all"), (T.TRANSACTIONS, "height-mid"), (T.SHARES, "height-mid"),
    (T.MEMPOOL, "height-from"), (T.READINGS, "offset"), (T.SETTLEMENTS, "time"),
    (T.PAYOUTS, "height-mid"), (T.PROVIDERS, "all"),
])
def test_avro_file_equals_the_log(hist, tmp_path, topic, spec):
    _cfg, chain = hist
    kwargs, field, lo, hi = _range_for(chain, topic, spec)
    expected = select(log_events(chain, topic), field, lo, hi)
    assert expected, "the range should not be empty"
    out = tmp_path / f"{topic}.avro"
    summary = export(chain, topic, "avro", out, **kwargs)
    assert summary["records"] == len(expected) and summary["format"] == "avro"
    assert summary["path"] == str(out) and summary["bytes"] == out.stat().st_size
    with open(out, "rb") as f:
        reader = fastavro.reader(f)
        records = list(reader)
        meta = reader.metadata
        header_schema = reader.writer_schema
    assert [r["value"] for r in records] == [e["value"] for e in expected]
    assert [(r["topic"], r["partition"], r["offset"], r["key"], r["timestamp"], r["height"]) for r in records] == \
        [(topic, e["partition"], e["offset"], e["key"], e["timestamp"], e["height"]) for e in expected]
    assert meta["avro.codec"] == "deflate"
    assert meta["ledgerlog.topic"] == topic
    assert meta["ledgerlog.chain_id"] == chain.genesis.chain_id
    rng = json.loads(meta["ledgerlog.range"])
    assert (rng["from"], rng["to"]) == ((lo, hi) if kwargs else (None, None))
    registered = chain.codec.registry.latest(T.subject_of(topic))
    assert meta["ledgerlog.schema_id"] == str(registered.id)
    assert to_parsing_canonical_form(header_schema["fields"][-1]["type"]) == \
        to_parsing_canonical_form(fastavro.parse_schema(json.loads(registered.schema)))
    assert {r["schema_id"] for r in records} == {registered.id}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")], "temp file left behind"


def test_export_from_a_data_dir_and_rewrite(hist, tmp_path):
    cfg, _chain = hist
    out = tmp_path / "blocks.avro"
    out.write_bytes(b"old")
    summary = export(cfg.data_dir, T.BLOCKS, "avro", out, from_height=3, to_height=3)
    with open(out, "rb") as f:
        (block,) = list(fastavro.reader(f))
    assert summary["records"] == 1 and block["value"]["header"]["height"] == 3 == block["height"]
    with iter_events(cfg.data_dir, T.BLOCKS, to_height=2) as stream:
        assert [e.height for e in stream] == [1, 2]


# -- ranges -------------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", [T.TRANSACTIONS, T.SHARES])
def test_height_ranges_hold_exactly_the_events_stamped_in_them(hist, topic):
    _, chain = hist
    events = log_events(chain, topic)
    assert len(chain.log.end_offsets(topic)) > 1
    heights = sorted({e["height"] for e in events})
    # a boundary pair with events just outside both ends
    inner = [h for h in heights if h - 1 in heights and h + 1 in heights]
    lo, hi = inner[len(inner) // 4], inner[3 * len(inner) // 4]
    assert any(e["height"] == lo - 1 for e in events) and any(e["height"] == hi + 1 for e in events)
    cases = [(lo, hi), (lo, lo), (hi, hi), (None, lo), (hi, None), (0, 0), (heights[-1] + 1, None),
             (heights[0], heights[-1])]
    for a, b in cases:
        got = as_dicts(iter_events(chain, topic, from_height=a, to_height=b))
        assert got == select(events, "height", a, b), (a, b)
    got = as_dicts(iter_events(chain, topic, from_height=lo, to_height=hi))
    assert {e["height"] for e in got} == {h for h in heights if lo <= h <= hi}
    assert min(e["height"] for e in got) == lo and max(e["height"] for e in got) == hi
    # more than one partition contributes, in partition then offset order
    assert len({e["partition"] for e in got}) > 1
    assert [(e["partition"], e["offset"]) for e in got] == sorted((e["partition"], e["offset"]) for e in got)
    only = as_dicts(iter_events(chain, topic, from_height=lo, to_height=hi, partitions=[3, 1]))
    assert only == select(events, "height", lo, hi, partitions={1, 3})


def test_offset_ranges_are_per_partition_and_inclusive(hist):
    _, chain = hist
    events = log_events(chain, T.TRANSACTIONS)
    ends = chain.log.end_offsets(T.TRANSACTIONS)
    short = min(e for e in ends if e)
    for a, b in [(0, 0), (5, 17), (None, 3), (max(ends) - 2, None), (max(ends) + 5, None),
                 (short - 1, max(ends) + 100)]:
        got = as_dicts(iter_events(chain, T.TRANSACTIONS, from_offset=a, to_offset=b))
        assert got == select(events, "offset", a, b), (a, b)
    got = as_dicts(iter_events(chain, T.TRANSACTIONS, from_offset=5, to_offset=17))
    assert len(got) == sum(len(range(5, min(18, e))) for e in ends)


def test_time_ranges_use_the_record_timestamp(hist):
    _, chain = hist
    events = log_events(chain, T.TRANSACTIONS)
    stamps = sorted({e["timestamp"] for e in events})
    lo, hi = stamps[100], stamps[300]
    got = as_dicts(iter_events(chain, T.TRANSACTIONS, from_time=lo, to_time=hi))
    assert got == select(events, "timestamp", lo, hi)
    assert {e["timestamp"] for e in got} >= {lo, hi}  # both ends inclusive
    iso = datetime.fromtimestamp(lo / 1000, tz=UTC).isoformat()
    assert parse_time(iso) == lo and parse_time(iso.replace("+00:00", "Z")) == lo
    assert parse_time(str(hi)) == hi
    assert as_dicts(iter_events(chain, T.TRANSACTIONS, from_time=iso, to_time=str(hi))) == got
    assert list(iter_events(chain, T.TRANSACTIONS, to_time=stamps[0] - 1)) == []


def test_argument_errors(hist, tmp_path):
    _, chain = hist
    bad = [{"from_height": 1, "to_offset": 3}, {"from_time": 1, "from_height": 1},
           {"from_height": 5, "to_height": 4}, {"from_offset": -1}, {"to_height": "3"},
           {"from_time": "yesterday"}, {"partitions": [4]}, {"partitions": [-1]}]
    for kwargs in bad:
        with pytest.raises(ExportError):
            iter_events(chain, T.TRANSACTIONS, **kwargs)
    for topic in ("nope", T.SCHEMAS, T.CHECKPOINTS):
        with pytest.raises(ExportError):
            iter_events(chain, topic)
    with pytest.raises(ExportError):
        export(chain, T.BLOCKS, "csv", tmp_path / "x.csv")
    with pytest.raises(ExportError):
        export(chain, T.BLOCKS, "avro", tmp_path / "x.avro", from_height=2, to_offset=3)
    with pytest.raises(ExportError):
        export(chain, T.BLOCKS, "avro", tmp_path / "missing" / "x.avro")
    assert os.listdir(tmp_path) == []


def test_jsonl_round_trip(hist, tmp_path):
    _, chain = hist
    h = tip(chain)
    expected = select(log_events(chain, T.SHARES), "height", h // 4, h // 2)
    out = tmp_path / "shares.jsonl"
    summary = export(chain, T.SHARES, "jsonl", out, from_height=h // 4, to_height=h // 2)
    rows = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert summary["records"] == len(rows) == len(expected)
    assert rows == [{"topic": T.SHARES, **e} for e in expected]


def test_exports_read_back_in_duckdb_join_the_log(hist, tmp_path):
    """What a data team does: load the export in DuckDB and find each row's record on the log."""
    duckdb = pytest.importorskip("duckdb")
    _, chain = hist
    expected = log_events(chain, T.TRANSACTIONS)
    export(chain, T.TRANSACTIONS, "jsonl", tmp_path / "tx.jsonl")
    db = duckdb.connect()
    rows = db.execute("SELECT partition, \"offset\", key, timestamp, height, value.body.amount "
                      f"FROM read_json_auto('{tmp_path / 'tx.jsonl'}') ORDER BY partition, \"offset\"").fetchall()
    assert rows == [(e["partition"], e["offset"], e["key"], e["timestamp"], e["height"], e["value"]["body"]["amount"])
                    for e in expected]
    partition, offset = rows[len(rows) // 2][:2]
    (rec,) = chain.log.read(T.TRANSACTIONS, partition, offset, 1)  # the coordinates lead back to the record
    assert chain.codec.decode(T.TRANSACTIONS, rec.value)["body"]["amount"] == rows[len(rows) // 2][5]


def test_avro_exports_read_in_duckdb(hist, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    _, chain = hist
    rows = [(e["partition"], e["offset"], e["key"], e["timestamp"], e["height"], e["value"]["body"]["amount"])
            for e in log_events(chain, T.TRANSACTIONS)]
    export(chain, T.TRANSACTIONS, "avro", tmp_path / "tx.avro")
    db = duckdb.connect()
    try:
        db.execute("LOAD avro")
    except duckdb.Error as exc:  # the extension is downloaded once (INSTALL avro), which needs the network
        pytest.skip(f"DuckDB's avro extension is not installed here ({str(exc).splitlines()[0][:120]})")
    avro_rows = db.execute("SELECT partition, \"offset\", key, timestamp, height, value.body.amount "
                           f"FROM read_avro('{tmp_path / 'tx.avro'}') ORDER BY partition, \"offset\"").fetchall()
    assert avro_rows == rows


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_export(hist, tmp_path):
    cfg, chain = hist
    h = tip(chain)
    txs = select(log_events(chain, T.TRANSACTIONS), "height", h // 3, h // 2)
    stamps = sorted(e["timestamp"] for e in log_events(chain, T.SHARES))
    lo_iso = datetime.fromtimestamp(stamps[10] / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    shares = select(log_events(chain, T.SHARES), "timestamp", stamps[10], stamps[-10])
    d = cfg.data_dir
    commands = {
        "avro": ("export", "--topic", T.TRANSACTIONS, "--from-height", str(h // 3), "--to-height",
                 str(h // 2), "--format", "avro", "--out", str(tmp_path / "tx.avro")),
        "jsonl": ("export", "--topic", T.SHARES, "--from-time", lo_iso, "--to-time", str(stamps[-10]),
                  "--out", str(tmp_path / "shares.jsonl")),
        "mixed": ("export", "--topic", T.TRANSACTIONS, "--from-height", "1", "--to-offset", "5",
                  "--out", str(tmp_path / "m.avro")),
        "topic": ("export", "--topic", "ledger.nope", "--out", str(tmp_path / "n.avro")),
        "format": ("export", "--topic", T.BLOCKS, "--format", "csv", "--out", str(tmp_path / "b.csv")),
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        done = dict(zip(commands, pool.map(lambda args: cli(d, *args), commands.values())))
    for name in ("avro", "jsonl"):
        assert done[name].returncode == 0, (name, done[name].stderr[-2000:])
    for name in ("mixed", "topic", "format"):
        assert done[name].returncode == 2, (name, done[name].returncode, done[name].stderr[-2000:])
        assert "error" in json.loads(done[name].stderr.splitlines()[-1])
    summary = json.loads(done["avro"].stdout)
    assert summary["records"] == len(txs) and summary["topic"] == T.TRANSACTIONS
    with open(tmp_path / "tx.avro", "rb") as f:
        assert [r["value"] for r in fastavro.reader(f)] == [e["value"] for e in txs]
    assert json.loads(done["jsonl"].stdout)["format"] == "jsonl"
    rows = [orjson.loads(line) for line in (tmp_path / "shares.jsonl").read_bytes().splitlines()]
    assert [(r["partition"], r["offset"], r["value"]) for r in rows] == \
        [(e["partition"], e["offset"], e["value"]) for e in shares]
    assert sorted(os.listdir(tmp_path)) == ["shares.jsonl", "tx.avro"]


# -- following the log -------------------------------------------------------------------------


def _split_history(tmp_path, seed: int, events: int = 700):
    genesis, keys = make_genesis(seed, wallets=8)
    lines = list(generate(genesis, keys, events=events, seed=seed))
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False)
    init_chain(cfg, genesis)
    return cfg, lines[: len(lines) // 2], lines[len(lines) // 2:]


@pytest.mark.parametrize("mode", ["secondary", "reopen"])
def test_follower_sees_later_appends(tmp_path, mode):
    cfg, first, rest = _split_history(tmp_path, 31, events=300)
    with open_chain(cfg) as ch:
        assert ch.admitter.admit(first).rejected == 0
        with open_follower(cfg, mode) as follower:
            assert follower.mode == mode
            before = follower.log.end_offsets(T.TRANSACTIONS)
            assert before == ch.log.end_offsets(T.TRANSACTIONS)
            assert ch.admitter.admit(rest).rejected == 0
            follower.refresh()
            after = follower.log.end_offsets(T.TRANSACTIONS)
            assert after == ch.log.end_offsets(T.TRANSACTIONS) and sum(after) > sum(before)
            for p, end in enumerate(after):
                mine = follower.log.read(T.TRANSACTIONS, p, before[p], end - before[p])
                theirs = ch.log.read(T.TRANSACTIONS, p, before[p], end - before[p])
                assert mine == theirs
                assert [follower.codec.decode(T.TRANSACTIONS, r.value) for r in mine] == \
                    [ch.codec.decode(T.TRANSACTIONS, r.value) for r in theirs]


class _Output:
    """Lines a subprocess prints, collected by a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[bytes] = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.lines) >= n, f"{len(self.lines)} lines, expected {n}"
        return [json.loads(line) for line in self.lines]


def test_tail_follow_prints_what_another_process_appends(tmp_path):
    cfg, first, rest = _split_history(tmp_path, 37)
    with open_chain(cfg) as ch:
        assert ch.admitter.admit(first).rejected == 0
        blocks_before = ch.log.end_offsets(T.BLOCKS)[0]
        txs_before = sum(ch.log.end_offsets(T.TRANSACTIONS))
    (tmp_path / "rest.jsonl").write_bytes(b"\n".join(rest) + b"\n")
    base = [LEDGERLOG, "--data-dir", cfg.data_dir, "tail"]
    follow = subprocess.Popen([*base, T.TRANSACTIONS, "--follow", "--poll-interval", "0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    limit = blocks_before + 3
    limited = subprocess.Popen([*base, T.BLOCKS, "-f", "--limit", str(limit)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    try:
        out, out_limited = _Output(follow), _Output(limited)
        out.wait_for(txs_before)
        out_limited.wait_for(blocks_before)
        assert limited.poll() is None  # still waiting for more blocks
        ingest = cli(cfg.data_dir, "ingest", str(tmp_path / "rest.jsonl"))
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        with open_chain(cfg, read_only=True) as ch:
            ends = ch.log.end_offsets(T.TRANSACTIONS)
            assert ch.log.end_offsets(T.BLOCKS)[0] >= limit
            expected = {(p, r.offset): ch.codec.decode(T.TRANSACTIONS, r.value)
                        for p, end in enumerate(ends) for r in ch.log.scan(T.TRANSACTIONS, p, 0, end)}
        rows = out.wait_for(sum(ends))
        assert limited.wait(10) == 0  # --limit ends the follow by itself
        assert len(out_limited.wait_for(limit)) == limit
        assert [r["offset"] for r in out_limited.wait_for(limit)] == list(range(limit))
        time.sleep(0.3)  # nothing more should come
        follow.send_signal(signal.SIGTERM)
        assert follow.wait(10) == 0, follow.stderr.read()
        rows = out.wait_for(sum(ends))
        assert len(rows) == sum(ends)
        assert {(r["partition"], r["offset"]): r["value"] for r in rows} == expected
        for p in range(len(ends)):
            assert [r["offset"] for r in rows if r["partition"] == p] == list(range(ends[p]))
    finally:
        for proc in (follow, limited):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("target", ["log/CURRENT", "config.toml", "genesis.json", "log/x.jsonl"])
def test_an_export_never_writes_over_the_chain_s_own_files(hist, tmp_path, target):
    """--out naming the log's CURRENT (the chain then did not open: CORRUPT) or config.toml (the
    admin token gone) was written over: refused, and the file left as it was."""
    cfg, _chain = hist
    path = os.path.join(cfg.data_dir, target)
    before = open(path, "rb").read() if os.path.exists(path) else None
    proc = subprocess.run([LEDGERLOG, "--data-dir", cfg.data_dir, "export", "--topic", T.BLOCKS, "--format",
                           "jsonl", "--out", path], capture_output=True, env=cli_env(), timeout=120, check=False)
    assert proc.returncode != 0 and "own" in json.loads(proc.stderr)["error"], proc.stderr
    assert (open(path, "rb").read() if os.path.exists(path) else None) == before


def test_an_export_never_writes_into_the_configured_backups_nor_the_config_file(hist, tmp_path):
    """The guard knew only the default places under the data dir: with snapshot.dir elsewhere (as
    OPERATIONS advises) an export wrote over a backup's log/CURRENT (the backup then CORRUPT), and
    over the config file given with --config (the admin token gone)."""
    cfg, _chain = hist
    data, etc, backups = tmp_path / "data", tmp_path / "etc", tmp_path / "backups"
    shutil.copytree(cfg.data_dir, data)
    etc.mkdir()
    os.rename(data / "config.toml", etc / "config.toml")
    (backups / "snap-1" / "log").mkdir(parents=True)
    (backups / "snap-1" / "log" / "CURRENT").write_bytes(b"MANIFEST-000001\n")
    before = {p: p.read_bytes() for p in (etc / "config.toml", backups / "snap-1" / "log" / "CURRENT")}
    for out in before:
        proc = subprocess.run([LEDGERLOG, "--config", str(etc / "config.toml"), "--data-dir", str(data), "export",
                               "--topic", T.BLOCKS, "--format", "jsonl", "--out", str(out)],
                              capture_output=True, env=cli_env(LEDGERLOG_SNAPSHOT_DIR=str(backups)), timeout=120,
                              check=False)
        assert proc.returncode != 0 and "own" in json.loads(proc.stderr)["error"], proc.stderr
    assert {p: p.read_bytes() for p in before} == before
