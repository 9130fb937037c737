"""`ledgerlog audit` end to end (PROTOCOL.md §9): a generated history ingested in three runs (so
every busy partition has several signed heads) audits clean over the data dir and over the
`tail --raw` lines of every topic (a file and stdin). Copies of the raw records, tampered (a
flipped byte, a dropped, swapped or inserted record, a partition cut behind its head, a log
rolled back against the auditor's --state, a head signed by a foreign key), make it exit 1
naming the topic, partition and the index the tampering implies; a log-key rotation still
audits with the first key pinned; bad input is one JSON line with its code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json

from ledgerlog.engine import avro
from ledgerlog.engine import storekeys as K
from ledgerlog.engine import topics as T
from ledgerlog.engine.log.embedded import EmbeddedLog
from ledgerlog.engine.signing import Signer
from ledgerlog.engine.treehead import head_key, sign_head

EVENTS = 700
SEED = 29
RUNS = 3

Line = dict[str, Any]


def _run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([LEDGERLOG, *args], capture_output=True, timeout=180, env=cli_env(), check=False, **feed)


def _raw_lines(data: str) -> list[Line]:
    """`tail --raw` of every topic, interleaved topic by topic as a user would concatenate them."""
    out: list[Line] = []
    for topic in sorted(T.DEFAULT_PARTITIONS):
        res = cli(data, "tail", topic, "--raw")
        assert res.returncode == 0, res.stderr[-2000:]
        out += [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    return out


def _ingest_in_runs(data: str, history: Path, runs: int, between: list[str] | None = None) -> None:
    """Ingest ``history`` in ``runs`` parts: each run's clean stop publishes the heads of what grew."""
    lines = history.read_bytes().splitlines(keepends=True)
    step = -(-len(lines) // runs)
    for i in range(runs):
        part = history.parent / f"{history.stem}-{data.rsplit('/', 1)[-1]}-{i}.jsonl"
        part.write_bytes(b"".join(lines[i * step:(i + 1) * step]))
        ok_json(cli(data, "ingest", str(part)))
        if between and i == 0:
            ok_json(cli(data, *between))


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audit-hist")
    h, g = d / "history.jsonl", d / "genesis.json"
    ok_json(_run("generate", "--events", str(EVENTS), "--seed", str(SEED), "--out", str(h), "--genesis-out", str(g)))
    return {"history": h, "genesis": g, "dir": d}


@pytest.fixture(scope="module")
def chain(history) -> dict[str, Any]:
    """A stopped chain holding the history, its log key, and its raw records."""
    data = str(history["dir"] / "data")
    ok_json(cli(data, "init", "--genesis", str(history["genesis"])))
    _ingest_in_runs(data, history["history"], RUNS)
    pubkey = ok_json(cli(data, "status"))["log_pubkey"]
    return {"data": data, "pubkey": pubkey, "lines": _raw_lines(data)}


def _write(lines: list[Line], path: Path) -> Path:
    path.write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    return path


def _audit(*args: str, stdin: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """`ledgerlog ARGS` (an audit) on a pipe: (exit code, its report)."""
    res = _run(*args, stdin=stdin)
    assert res.returncode in (0, 1), (res.returncode, res.stderr[-3000:])
    assert res.stderr == b"", res.stderr[-3000:]  # a pipe: no progress, no error line
    return res.returncode, json.loads(res.stdout)


def _audit_lines(lines: list[Line], tmp_path: Path, pubkey: str, *extra: str) -> tuple[int, dict[str, Any]]:
    return _audit("audit", "--log-pubkey", pubkey, "--records", str(_write(lines, tmp_path / "records.jsonl")), *extra)


def _heads(lines: list[Line]) -> dict[tuple[str, int], list[int]]:
    """(topic, partition) -> the distinct tree sizes of its published heads, ascending."""
    out: dict[tuple[str, int], set[int]] = {}
    for x in lines:
        if x["topic"] == T.CHECKPOINTS:
            head = avro.decode("SignedTreeHead", bytes.fromhex(x["value_hex"])[5:])["head"]
            out.setdefault((head["topic"], head["partition"]), set()).add(head["tree_size"])
    return {k: sorted(v) for k, v in out.items()}


def _target(lines: list[Line]) -> tuple[str, int, list[int]]:
    """The partition with the most heads (then records): where tampering is localised best."""
    heads = _heads(lines)
    topic, p = max(heads, key=lambda tp: (len(heads[tp]), heads[tp][-1], tp))
    assert len(heads[(topic, p)]) >= RUNS, heads[(topic, p)]
    return topic, p, heads[(topic, p)]


def _positions(lines: list[Line], topic: str, p: int) -> list[int]:
    return [i for i, x in enumerate(lines) if x["topic"] == topic and x["partition"] == p]


def _between(sizes: list[int], index: int) -> tuple[int, int]:
    """(M, N): the head sizes around leaf ``index`` (M <= index < N), M = 0 before the first head."""
    return max([0, *[s for s in sizes if s <= index]]), min(s for s in sizes if s > index)


def _failure(rc: int, report: dict[str, Any]) -> dict[str, Any]:
    assert rc == 1 and report["ok"] is False, report
    return report["failure"]


# -- clean ----------------------------------------------------------------------------------------
def test_a_clean_log_audits_over_the_data_dir_and_its_raw_records(chain, tmp_path):
    rc, over_dir = _audit("--data-dir", chain["data"], "audit", "--log-pubkey", chain["pubkey"])
    assert rc == 0 and over_dir["ok"] is True, over_dir.get("failure")
    data_lines = [x for x in chain["lines"] if x["topic"] not in (T.CHECKPOINTS, T.SCHEMAS)]
    assert over_dir["records"] == len(data_lines)
    heads = _heads(chain["lines"])
    assert over_dir["heads"]["checked"] == over_dir["heads"]["published"] == sum(
        1 for x in chain["lines"] if x["topic"] == T.CHECKPOINTS)
    assert over_dir["keys"]["used"] == [chain["pubkey"]] and over_dir["contiguous_offsets"] is True
    for (topic, p), sizes in heads.items():  # stopped cleanly: every record is under a head
        part = over_dir["partitions"][f"{topic}/{p}"]
        assert part["verified_size"] == sizes[-1] == part["leaves"] and part["unanchored"] == 0
    rc, over_lines = _audit_lines(chain["lines"], tmp_path, chain["pubkey"])
    assert rc == 0 and over_lines["contiguous_offsets"] is True
    assert over_lines["partitions"] == {k: v for k, v in over_dir["partitions"].items() if v["leaves"]}
    body = (tmp_path / "records.jsonl").read_bytes()
    rc, over_stdin = _audit("audit", "--log-pubkey", chain["pubkey"], "--records", "-", stdin=body)
    assert rc == 0 and over_stdin["partitions"] == over_lines["partitions"]


def test_the_outcome_is_written_for_prometheus(chain, tmp_path):
    prom = tmp_path / "ledgerlog_audit.prom"
    rc, _ = _audit("--data-dir", chain["data"], "audit", "--log-pubkey", chain["pubkey"], "--metrics-file", str(prom))
    text = prom.read_text()
    assert rc == 0 and "ledgerlog_audit_failed 0.0" in text and "# TYPE ledgerlog_audit_records gauge" in text
    lines = [dict(x) for x in chain["lines"]]
    topic, p, _sizes = _target(lines)
    row = lines[_positions(lines, topic, p)[0]]
    row["value_hex"] = row["value_hex"][:-2] + ("00" if row["value_hex"][-2:] != "00" else "01")
    records = _write(lines, tmp_path / "bad.jsonl")
    rc, _ = _audit("audit", "--log-pubkey", chain["pubkey"], "--records", str(records), "--metrics-file", str(prom))
    assert rc == 1 and "ledgerlog_audit_failed 1.0" in prom.read_text()
    assert not [f for f in os.listdir(tmp_path) if f.startswith("ledgerlog_audit.prom.")]  # no temp file left


def test_lines_may_interleave_partitions(chain, tmp_path):
    """Round-robin over the partitions (each still in offset order), as a merged consumer prints."""
    queues: dict[tuple[str, int], list[Line]] = {}
    for x in chain["lines"]:
        queues.setdefault((x["topic"], x["partition"]), []).append(x)
    mixed: list[Line] = []
    while any(queues.values()):
        for q in queues.values():
            if q:
                mixed.append(q.pop(0))
    rc, report = _audit_lines(mixed, tmp_path, chain["pubkey"])
    assert rc == 0 and report["contiguous_offsets"] is True, report.get("failure")
    gappy = [{**x, "offset": 2 * x["offset"]} for x in mixed]  # offsets as Kafka's markers leave them
    rc, report = _audit_lines(gappy, tmp_path, chain["pubkey"])
    assert rc == 0 and report["contiguous_offsets"] is False, report.get("failure")


# -- tampered records ---------------------------------------------------------------------------
def test_a_flipped_byte_in_a_value_is_localised_between_two_heads(chain, tmp_path):
    lines = [dict(x) for x in chain["lines"]]
    topic, p, sizes = _target(lines)
    index = (sizes[0] + sizes[1]) // 2 if sizes[1] - sizes[0] > 1 else sizes[0]
    row = lines[_positions(lines, topic, p)[index]]
    value = bytearray.fromhex(row["value_hex"])
    value[len(value) // 2] ^= 0x01
    row["value_hex"] = value.hex()
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    m, n = _between(sizes, index)
    assert (f["code"], f["topic"], f["partition"], f["index"], f["tree_size"]) == ("ROOT_MISMATCH", topic, p, m, n)
    assert m <= index < n and f"[{m}, {n})" in f["message"]


def test_a_dropped_record_is_pinpointed_by_its_offset_gap(chain, tmp_path):
    lines = list(chain["lines"])
    topic, p, sizes = _target(lines)
    index = sizes[0] + 1
    del lines[_positions(lines, topic, p)[index]]
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    assert (f["code"], f["topic"], f["partition"], f["index"], f["offset"]) == ("OFFSET_GAP", topic, p, index, index)


def test_a_dropped_record_with_offsets_renumbered_fails_its_head(chain, tmp_path):
    lines = [dict(x) for x in chain["lines"]]
    topic, p, sizes = _target(lines)
    index = sizes[0] + 1  # below a head that is not the last: the partition still reaches it
    pos = _positions(lines, topic, p)
    for i in pos[index + 1:]:
        lines[i]["offset"] -= 1
    del lines[pos[index]]
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    m, n = _between(sizes, index)
    assert (f["code"], f["topic"], f["partition"], f["index"], f["tree_size"]) == ("ROOT_MISMATCH", topic, p, m, n)


def test_a_swapped_pair_fails_the_head_covering_it(chain, tmp_path):
    lines = [dict(x) for x in chain["lines"]]
    topic, p, sizes = _target(lines)
    index = sizes[1] - 2 if sizes[1] - sizes[0] >= 2 else sizes[1]
    a, b = _positions(lines, topic, p)[index:index + 2]
    for k in ("key_hex", "value_hex", "timestamp"):  # the records trade places; offsets stay
        lines[a][k], lines[b][k] = lines[b][k], lines[a][k]
    assert lines[a] != lines[b]
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    m, n = _between(sizes, index)
    assert (f["code"], f["topic"], f["partition"], f["index"], f["tree_size"]) == ("ROOT_MISMATCH", topic, p, m, n)


def test_swapped_lines_are_out_of_place(chain, tmp_path):
    """Lines traded with their offsets: on gap-free offsets the first is out of place at once;
    where offsets have gaps (Kafka's) the second goes back."""
    lines = list(chain["lines"])
    topic, p, sizes = _target(lines)
    index = sizes[0]
    a, b = _positions(lines, topic, p)[index:index + 2]
    lines[a], lines[b] = lines[b], lines[a]
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    assert (f["code"], f["topic"], f["partition"], f["index"], f["offset"]) == ("OFFSET_GAP", topic, p, index, index)
    gappy = [{**x, "offset": 2 * x["offset"]} for x in lines]
    rc, report = _audit_lines(gappy, tmp_path, chain["pubkey"])
    f = _failure(rc, report)
    assert report["contiguous_offsets"] is False
    assert (f["code"], f["topic"], f["partition"], f["index"], f["offset"]) == ("OUT_OF_ORDER", topic, p, index + 1, 2 * index)


def test_an_inserted_record_fails_the_head_covering_it(chain, tmp_path):
    lines = [dict(x) for x in chain["lines"]]
    topic, p, sizes = _target(lines)
    index = sizes[1] + 1
    pos = _positions(lines, topic, p)
    forged = {**lines[pos[index]], "value_hex": lines[pos[index - 1]]["value_hex"]}  # a replayed value
    for i in pos[index:]:
        lines[i]["offset"] += 1
    lines.insert(pos[index], forged)
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    m, n = _between(sizes, index)
    assert (f["code"], f["topic"], f["partition"], f["index"], f["tree_size"]) == ("ROOT_MISMATCH", topic, p, m, n)


def test_a_partition_cut_behind_its_head_is_truncated(chain, tmp_path):
    lines = list(chain["lines"])
    topic, p, sizes = _target(lines)
    keep = sizes[-1] - 3
    for i in reversed(_positions(lines, topic, p)[keep:]):
        del lines[i]
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    assert (f["code"], f["topic"], f["partition"], f["index"], f["tree_size"]) == ("TRUNCATED", topic, p, keep, sizes[-1])


def test_a_record_deleted_from_the_data_dir_is_pinpointed(chain, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(chain["data"], data)
    topic, p, sizes = _target(chain["lines"])
    index = sizes[1] - 1
    log = EmbeddedLog(str(data / "log"))
    try:
        log.raw().delete(K.record_key(topic, p, index))
    finally:
        log.close()
    rc, report = _audit("--data-dir", str(data), "audit", "--log-pubkey", chain["pubkey"])
    f = _failure(rc, report)
    assert (f["code"], f["topic"], f["partition"], f["index"]) == ("OFFSET_GAP", topic, p, index)


def _rolled_back(lines: list[Line], topic: str, p: int, keep: int) -> list[Line]:
    """The log as it was when ``topic``/``p`` held ``keep`` records: later records and the heads
    covering them gone (a consistent older log: only a remembered head can tell)."""
    cut = set(_positions(lines, topic, p)[keep:])
    out = []
    for i, x in enumerate(lines):
        if i in cut:
            continue
        if x["topic"] == T.CHECKPOINTS:
            head = avro.decode("SignedTreeHead", bytes.fromhex(x["value_hex"])[5:])["head"]
            if (head["topic"], head["partition"]) == (topic, p) and head["tree_size"] > keep:
                continue
        out.append(x)
    for k, x in enumerate(y for y in out if y["topic"] == T.CHECKPOINTS):  # offsets without a gap
        out[out.index(x)] = {**x, "offset": k}
    return out


def test_a_rolled_back_log_fails_against_the_remembered_heads(chain, tmp_path):
    state = tmp_path / "audit-state.json"
    rc, first = _audit_lines(chain["lines"], tmp_path, chain["pubkey"], "--state", str(state))
    assert rc == 0 and first["state"]["written"] is True and first["state"]["remembered"] == 0
    remembered = json.loads(state.read_text())
    topic, p, sizes = _target(chain["lines"])
    assert remembered["heads"][f"{topic}/{p}"]["tree_size"] == sizes[-1]
    rc, again = _audit_lines(chain["lines"], tmp_path, chain["pubkey"], "--state", str(state))
    assert rc == 0 and again["state"]["remembered"] == len(remembered["heads"])
    old = _rolled_back(chain["lines"], topic, p, sizes[0])
    rc, alone = _audit_lines(old, tmp_path, chain["pubkey"])
    assert rc == 0, alone.get("failure")  # consistent in itself
    before = state.read_bytes()
    f = _failure(*_audit_lines(old, tmp_path, chain["pubkey"], "--state", str(state)))
    assert (f["code"], f["topic"], f["partition"], f["index"], f["tree_size"]) == ("TRUNCATED", topic, p, sizes[0], sizes[-1])
    assert "--state" in f["message"] and state.read_bytes() == before  # not overwritten by a failed audit


def test_a_forked_log_fails_against_the_remembered_heads(chain, tmp_path):
    """A log rewritten from some index on, with heads re-signed by the log key, is consistent in
    itself; the remembered root at the old size is not."""
    state = tmp_path / "audit-state.json"
    state.write_text(json.dumps({"chain_id": None, "heads": {}}))
    lines = [dict(x) for x in chain["lines"]]
    topic, p, sizes = _target(lines)
    rc, _ = _audit_lines(lines, tmp_path, chain["pubkey"], "--state", str(state))
    assert rc == 0
    doc = json.loads(state.read_text())
    doc["heads"][f"{topic}/{p}"]["root_hash"] = "00" * 32  # as if the auditor saw another history
    state.write_text(json.dumps(doc))
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"], "--state", str(state)))
    assert (f["code"], f["topic"], f["partition"], f["index"], f["tree_size"]) == (
        "ROOT_MISMATCH", topic, p, sizes[-1], sizes[-1])


def test_no_heads_at_all_fails(chain, tmp_path):
    lines = [x for x in chain["lines"] if x["topic"] != T.CHECKPOINTS]
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    assert f["code"] == "NO_HEADS" and f["index"] == 0


# -- keys -------------------------------------------------------------------------------------
def test_a_wrong_pinned_key_fails(chain, tmp_path):
    f = _failure(*_audit_lines(chain["lines"], tmp_path, Signer.generate().pubkey))
    assert (f["code"], f["topic"], f["partition"], f["index"]) == ("UNKNOWN_KEY", T.CHECKPOINTS, 0, 0)


def _head_line(lines: list[Line], signed: dict[str, Any], template: Line) -> Line:
    cp = [x for x in lines if x["topic"] == T.CHECKPOINTS]
    value = bytes.fromhex(template["value_hex"])[:5] + avro.encode("SignedTreeHead", signed)
    h = signed["head"]
    return {**template, "offset": cp[-1]["offset"] + 1, "key_hex": head_key(h["topic"], h["partition"]).hex(),
            "value_hex": value.hex()}


def test_a_head_signed_by_a_foreign_key_fails(chain, tmp_path):
    lines = list(chain["lines"])
    cp = [x for x in lines if x["topic"] == T.CHECKPOINTS]
    head = avro.decode("SignedTreeHead", bytes.fromhex(cp[-1]["value_hex"])[5:])["head"]
    lines.append(_head_line(lines, sign_head(Signer.generate(), {**head, "timestamp": head["timestamp"] + 1}), cp[-1]))
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    assert (f["code"], f["topic"], f["partition"], f["index"]) == ("UNKNOWN_KEY", T.CHECKPOINTS, 0, len(cp))


def test_a_head_whose_root_was_changed_fails_its_signature(chain, tmp_path):
    lines = list(chain["lines"])
    cp = [x for x in lines if x["topic"] == T.CHECKPOINTS]
    signed = avro.decode("SignedTreeHead", bytes.fromhex(cp[0]["value_hex"])[5:])
    signed["head"]["root_hash"] = "11" * 32
    lines[lines.index(cp[0])] = {**_head_line(lines, signed, cp[0]), "offset": cp[0]["offset"]}
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    assert (f["code"], f["topic"], f["partition"], f["index"]) == ("BAD_SIGNATURE", T.CHECKPOINTS, 0, 0)


def test_a_head_record_that_is_not_a_signed_tree_head_fails(chain, tmp_path):
    lines = list(chain["lines"])
    cp = [i for i, x in enumerate(lines) if x["topic"] == T.CHECKPOINTS]
    lines[cp[2]] = {**lines[cp[2]], "value_hex": lines[cp[2]]["value_hex"] + "00"}  # a trailing byte
    lines[cp[3]] = {**lines[cp[3]], "key_hex": b"ledger.blocks/7".hex()}  # under another partition's key
    rc, report = _audit_lines(lines, tmp_path, chain["pubkey"])
    f = _failure(rc, report)
    assert (f["code"], f["topic"], f["partition"], f["index"]) == ("BAD_HEAD", T.CHECKPOINTS, 0, 2)
    assert [(p["code"], p["index"]) for p in report["problems"][:2]] == [("BAD_HEAD", 2), ("BAD_HEAD", 3)]


def test_two_roots_signed_for_one_tree_size_fail(chain, tmp_path):
    """The log key itself signing a second history (equivocation): the records match one root."""
    lines = list(chain["lines"])
    cp = [x for x in lines if x["topic"] == T.CHECKPOINTS]
    topic, p, sizes = _target(lines)
    signer = Signer.load(os.path.join(chain["data"], "keys", "log.key"))
    head = {"chain_id": ok_json(cli(chain["data"], "status"))["chain_id"], "topic": topic, "partition": p,
            "tree_size": sizes[-1], "root_hash": "22" * 32, "timestamp": 1}
    lines.append(_head_line(lines, sign_head(signer, head), cp[-1]))
    f = _failure(*_audit_lines(lines, tmp_path, chain["pubkey"]))
    assert (f["code"], f["topic"], f["partition"], f["index"], f.get("tree_size")) == (
        "ROOT_MISMATCH", topic, p, sizes[-1], sizes[-1])
    assert "two roots" in f["message"], f


def test_a_log_key_rotation_audits_with_the_first_key_pinned(history, tmp_path):
    data = str(tmp_path / "rotated")
    first = ok_json(cli(data, "init", "--genesis", str(history["genesis"])))["log_pubkey"]
    _ingest_in_runs(data, history["history"], 2, between=["keys", "rotate", "log"])
    second = ok_json(cli(data, "status"))["log_pubkey"]
    assert second != first
    rc, report = _audit("--data-dir", data, "audit", "--log-pubkey", first)
    assert rc == 0, report.get("failure")
    assert report["keys"]["accepted"] == [first, second] and report["keys"]["used"] == [first, second]
    rc, report = _audit_lines(_raw_lines(data), tmp_path, first)
    assert rc == 0 and report["keys"]["used"] == [first, second]
    f = _failure(*_audit("--data-dir", data, "audit", "--log-pubkey", second))  # the old heads need the first key
    assert f["code"] == "UNKNOWN_KEY" and f["topic"] == T.CHECKPOINTS


def test_a_head_signed_by_a_retired_log_key_after_its_successor_s_first_head_fails(history, tmp_path):
    """A rotated-out log key (perhaps why it was rotated: it leaked) stayed valid for new heads for
    ever. A head it signs after the first head of the key that replaced it is refused: here the
    newest head, re-signed by the first key and appended after it, root and all correct."""
    import glob

    data = str(tmp_path / "rotated")
    first = ok_json(cli(data, "init", "--genesis", str(history["genesis"])))["log_pubkey"]
    _ingest_in_runs(data, history["history"], 2, between=["keys", "rotate", "log"])
    (retired_file,) = glob.glob(os.path.join(data, "keys", "retired", "log-*.key"))
    retired = Signer.load(retired_file)
    assert retired.pubkey == first
    lines = _raw_lines(data)
    cp = [x for x in lines if x["topic"] == T.CHECKPOINTS]
    newest = avro.decode("SignedTreeHead", bytes.fromhex(cp[-1]["value_hex"])[5:])
    assert newest["pubkey"] != first
    lines.append(_head_line(lines, sign_head(retired, newest["head"]), cp[-1]))
    f = _failure(*_audit_lines(lines, tmp_path, first))
    assert (f["code"], f["topic"]) == ("RETIRED_KEY", T.CHECKPOINTS), f
    assert f["offset"] == cp[-1]["offset"] + 1


# -- bad input --------------------------------------------------------------------------------
def _one_line(res: subprocess.CompletedProcess[bytes], code: str) -> str:
    err = res.stderr.decode()
    assert res.returncode == 2 and res.stdout == b"" and err.count("\n") == 1, (res.returncode, err)
    doc = json.loads(err)
    assert doc["code"] == code, doc
    return str(doc["error"])


@pytest.mark.parametrize("pubkey", ["zz", "ab" * 31, "ab" * 33])
def test_a_bad_pubkey_is_a_usage_error(chain, pubkey):
    assert "--log-pubkey" in _one_line(_run("--data-dir", chain["data"], "audit", "--log-pubkey", pubkey), "USAGE")


def test_unreadable_and_malformed_records_are_one_line(chain, tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    assert "missing.jsonl" in _one_line(_run("audit", "--log-pubkey", chain["pubkey"], "--records", missing),
                                        "BAD_AUDIT_INPUT")
    path = _write(chain["lines"][:3], tmp_path / "bad.jsonl")
    with open(path, "ab") as f:
        f.write(b'{"topic": "ledger.blocks", "partition": 0}\n')
    assert "line 4" in _one_line(_run("audit", "--log-pubkey", chain["pubkey"], "--records", str(path)),
                                 "BAD_AUDIT_INPUT")
    assert "line 1" in _one_line(_run("audit", "--log-pubkey", chain["pubkey"], "--records", "-", stdin=b"{nope\n"),
                                 "BAD_AUDIT_INPUT")


def test_a_timestamp_outside_64_bits_is_bad_input_not_an_alias(chain, tmp_path):
    """The leaf hash writes a timestamp in 64 bits: 2**64 - 5 would hash as -5 does, so a rewritten
    timestamp would pass; a record's timestamp must be a signed 64-bit integer."""
    lines = [dict(x) for x in chain["lines"]]
    row = next(x for x in lines if x["topic"] != "_checkpoints")
    row["timestamp"] = row["timestamp"] + (1 << 64)
    path = _write(lines, tmp_path / "wide.jsonl")
    assert "64-bit" in _one_line(_run("audit", "--log-pubkey", chain["pubkey"], "--records", str(path)),
                                 "BAD_AUDIT_INPUT")


def test_a_malformed_state_file_is_one_line(chain, tmp_path):
    state = tmp_path / "state.json"
    state.write_text('{"heads": {"ledger.blocks/0": {"tree_size": "x"}}}')
    records = str(_write(chain["lines"], tmp_path / "records.jsonl"))
    _one_line(_run("audit", "--log-pubkey", chain["pubkey"], "--records", records, "--state", str(state)),
              "BAD_AUDIT_INPUT")


def test_sources_are_exclusive(chain, tmp_path):
    _one_line(_run("audit", "--log-pubkey", chain["pubkey"], "--records", "-", "--kafka", "127.0.0.1:1"), "USAGE")
    _one_line(_run("--data-dir", chain["data"], "audit", "--log-pubkey", chain["pubkey"], "--topic-prefix", "x."),
              "USAGE")
    assert os.path.isdir(chain["data"])
