"""The verifiable log end to end, per backend (embedded and a Kafka-protocol broker, Tansu):
a history ingested through the CLI in three runs (each clean stop publishes signed heads)
audits clean from the chain's own log; then, on copies of the raw records `tail --raw` prints,
a flipped byte, a dropped record, a swapped pair, an inserted record, a partition cut behind
its head and a log rolled back against the auditor's --state each make `audit` exit 1 naming
the topic, partition and an index at or before the tampering."""
from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from clitools import LEDGERLOG, cli, cli_env, ok_json
from kafka_broker import kafka_bootstrap  # noqa: F401  (the session fixture)

from ledgerlog.engine import avro
from ledgerlog.engine import topics as T

Line = dict[str, Any]
RUNS = 3


def _audit(*args: str) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([LEDGERLOG, *args], capture_output=True, timeout=300, env=cli_env(), check=False,
                         stdin=subprocess.DEVNULL)
    assert res.returncode in (0, 1), (res.returncode, res.stderr[-3000:])
    return res.returncode, json.loads(res.stdout)


@pytest.fixture(scope="module", params=["embedded", "kafka"])
def stopped_chain(request, tmp_path_factory) -> dict[str, Any]:
    """A chain on the backend, its history ingested in RUNS parts, stopped; its raw records."""
    d = tmp_path_factory.mktemp(f"e2e-{request.param}")
    h, g, data = d / "h.jsonl", d / "g.json", d / "data"
    ok_json(cli(d, "generate", "--events", "900", "--seed", "41", "--out", str(h), "--genesis-out", str(g)))
    init: tuple[str, ...] = ()
    if request.param == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        data.mkdir()
        (data / "config.toml").write_text(
            f'[log]\nurl = "kafka://{bootstrap}"\n\n[kafka]\n"ledgerlog.topic_prefix" = "audit-{uuid.uuid4().hex[:10]}."\n')
        init = ("--log", f"kafka://{bootstrap}")
    ok_json(cli(data, "init", "--genesis", str(g), *init))
    lines = h.read_bytes().splitlines(keepends=True)
    step = -(-len(lines) // RUNS)
    for i in range(RUNS):
        (d / f"part{i}.jsonl").write_bytes(b"".join(lines[i * step:(i + 1) * step]))
        ok_json(cli(data, "ingest", str(d / f"part{i}.jsonl")))
    raw: list[Line] = []
    for topic in sorted(T.DEFAULT_PARTITIONS):
        res = cli(data, "tail", topic, "--raw")
        assert res.returncode == 0, res.stderr[-2000:]
        raw += [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    return {"backend": request.param, "data": str(data), "pubkey": ok_json(cli(data, "status"))["log_pubkey"],
            "lines": raw, "dir": d}


def _sizes(lines: list[Line], topic: str, p: int) -> list[int]:
    out = set()
    for x in lines:
        if x["topic"] == T.CHECKPOINTS:
            head = avro.decode("SignedTreeHead", bytes.fromhex(x["value_hex"])[5:])["head"]
            if (head["topic"], head["partition"]) == (topic, p):
                out.add(head["tree_size"])
    return sorted(out)


def _target(lines: list[Line]) -> tuple[str, int, list[int], list[int]]:
    """The busiest partition with RUNS heads: (topic, partition, head sizes, its line positions)."""
    best = None
    for topic, n in T.DEFAULT_PARTITIONS.items():
        if topic in (T.CHECKPOINTS, T.SCHEMAS):
            continue
        for p in range(n):
            pos = [i for i, x in enumerate(lines) if x["topic"] == topic and x["partition"] == p]
            sizes = _sizes(lines, topic, p)
            if len(sizes) >= RUNS and (best is None or len(pos) > len(best[3])):
                best = (topic, p, sizes, pos)
    assert best is not None, "no partition got a head per run"
    return best


def _audit_lines(chain: dict[str, Any], lines: list[Line], name: str, *extra: str) -> tuple[int, dict[str, Any]]:
    path = Path(chain["dir"]) / f"{name}.jsonl"
    path.write_bytes(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    return _audit("audit", "--log-pubkey", chain["pubkey"], "--records", str(path), *extra)


def _named(report: dict[str, Any], topic: str, p: int, at_most: int) -> dict[str, Any]:
    assert report["ok"] is False, report
    f = report["failure"]
    assert (f["topic"], f["partition"]) == (topic, p) and 0 <= f["index"] <= at_most, (f, at_most)
    return f


def test_a_clean_history_audits_from_the_log_and_from_its_raw_records(stopped_chain):
    c = stopped_chain
    rc, report = _audit("--data-dir", c["data"], "audit", "--log-pubkey", c["pubkey"])
    assert rc == 0 and report["ok"] and report["unanchored"] == 0, report.get("failure")
    assert report["contiguous_offsets"] is (c["backend"] == "embedded")
    rc, from_lines = _audit_lines(c, c["lines"], "clean")
    assert rc == 0 and from_lines["records"] == report["records"] > 0


def test_every_tampering_is_caught_and_named(stopped_chain):
    c = stopped_chain
    lines = c["lines"]
    topic, p, sizes, pos = _target(lines)
    i = (sizes[0] + sizes[1]) // 2  # a leaf between the first two heads

    flipped = [dict(x) for x in lines]
    value = bytearray.fromhex(flipped[pos[i]]["value_hex"])
    value[-1] ^= 0x01
    flipped[pos[i]]["value_hex"] = value.hex()
    f = _named(_audit_lines(c, flipped, "flipped")[1], topic, p, i)
    assert f["index"] >= sizes[0] or f["index"] == 0

    dropped = lines[:pos[i]] + lines[pos[i] + 1:]
    _named(_audit_lines(c, dropped, "dropped")[1], topic, p, i)

    swapped = list(lines)
    swapped[pos[i]], swapped[pos[i + 1]] = swapped[pos[i + 1]], swapped[pos[i]]
    swapped[pos[i]] = {**swapped[pos[i]], "offset": lines[pos[i]]["offset"]}  # keep offsets in order:
    swapped[pos[i + 1]] = {**swapped[pos[i + 1]], "offset": lines[pos[i + 1]]["offset"]}  # only content moves
    _named(_audit_lines(c, swapped, "swapped")[1], topic, p, i)

    inserted = [dict(x) for x in lines]
    extra = {**lines[pos[i]], "value_hex": lines[pos[i]]["value_hex"][:-2] + "00"}
    later = [{**x, "offset": x["offset"] + 1} for x in inserted[pos[i]:] if (x["topic"], x["partition"]) == (topic, p)]
    rest = [x for x in inserted[pos[i]:] if (x["topic"], x["partition"]) != (topic, p)]
    inserted = [*inserted[:pos[i]], extra, *later, *rest]
    _named(_audit_lines(c, inserted, "inserted")[1], topic, p, i)

    cut = [x for k, x in enumerate(lines) if k not in set(pos[sizes[-1] - 3:])]  # behind the last head
    f = _named(_audit_lines(c, cut, "truncated")[1], topic, p, sizes[-1] - 3)
    assert f["index"] == sizes[-1] - 3 and f["code"] == "TRUNCATED"


def test_a_rolled_back_log_fails_against_the_remembered_heads(stopped_chain):
    c = stopped_chain
    lines = c["lines"]
    topic, p, sizes, pos = _target(lines)
    state = str(Path(c["dir"]) / "auditor-state.json")
    rc, report = _audit_lines(c, lines, "before", "--state", state)
    assert rc == 0, report.get("failure")
    remembered = json.loads(Path(state).read_text())
    assert remembered

    # the operator rolls the partition back to its first head: records and later heads both go
    keep = set(pos[:sizes[0]])
    rolled = []
    for k, x in enumerate(lines):
        if (x["topic"], x["partition"]) == (topic, p) and k not in keep:
            continue
        if x["topic"] == T.CHECKPOINTS:
            head = avro.decode("SignedTreeHead", bytes.fromhex(x["value_hex"])[5:])["head"]
            if (head["topic"], head["partition"]) == (topic, p) and head["tree_size"] > sizes[0]:
                continue
        rolled.append(x)
    rc, alone = _audit_lines(c, rolled, "rolled-alone")
    assert rc == 0, alone.get("failure")  # consistent on its own: only the remembered heads tell
    rc, against = _audit_lines(c, rolled, "rolled", "--state", state)
    f = _named(against, topic, p, sizes[0])
    assert f["index"] == sizes[0]
    assert json.loads(Path(state).read_text()) == remembered  # a failed audit leaves the state alone
