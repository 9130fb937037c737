"""Fuzzed lines and batches: whatever a line becomes, it is admitted or changes nothing, and
the summary stays consistent (codes from PROTOCOL.md §5, line numbers in order)."""
from __future__ import annotations

import json
from typing import Any

from conftest import Keys, Lines, admit, encode, resign, snapshot, supply
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_admission import ALICE, BOB, PROTOCOL_CODES, block1, with_provider

import ledgerlog.engine.admission.lines as lines_mod
from ledgerlog.engine.crypto import H, canonical_json
from ledgerlog.engine.errors import Rejection
from ledgerlog.engine.signing import share_line

# -- fuzzing: mutated valid lines ---------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
INTS = st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64]) | st.integers()


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for key, v in obj.items():
            out += _paths(v, (*prefix, key))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _base_line(ln: Lines, k: Keys, kind: str, data: st.DataObject) -> dict:
    f = k.faucet
    if kind == "tx":
        return ln.tx(f, ALICE, data.draw(st.integers(1, 10**6)))
    if kind == "block":
        n = ln.chain.write_state().account(f.address).nonce
        return ln.block([ln.tx(f, BOB, 5, nonce=n + 1 + i) for i in range(data.draw(st.integers(0, 2)))])
    if kind == "share":
        return ln.share(job_id=data.draw(st.sampled_from(["a", "b"])),
                        difficulty=data.draw(st.integers(1, 9)))
    if kind == "reading":
        return ln.reading(milli_kwh=data.draw(st.integers(1, 10)))
    if kind == "provider":
        return ln.provider(f, data.draw(st.sampled_from(["prov-1", "prov-2", "prov-3"])))
    if kind == "settlement":
        return ln.settlement(data.draw(st.sampled_from(["s1", "s2"])), milli_kwh=4, amount=1)
    return ln.payout(data.draw(st.sampled_from(["p1", "p2"])), ALICE, 1000, round_height=1)


def _mutate(line: dict, k: Keys, data: st.DataObject) -> dict | bytes:
    how = data.draw(st.sampled_from(["none", "delete", "add", "replace", "int", "string", "bytes", "resign"]))
    paths = _paths(line)
    if how == "delete":
        path = data.draw(st.sampled_from(paths[1:]))
        parent = _get(line, path[:-1])
        del parent[path[-1]]
    elif how == "add":
        target = data.draw(st.sampled_from([p for p in paths if isinstance(_get(line, p), dict)]))
        _get(line, target)[data.draw(st.text(max_size=6))] = data.draw(JSON)
    elif how == "replace":
        path = data.draw(st.sampled_from(paths))
        if not path:
            return encode(json.dumps(data.draw(JSON)))
        _get(line, path[:-1])[path[-1]] = data.draw(JSON)
    elif how in ("int", "string", "resign"):
        kinds = int if how != "string" else str
        leaves = [p for p in paths
                  if p and isinstance(_get(line, p), kinds) and not isinstance(_get(line, p), bool)]
        if leaves:
            path = data.draw(st.sampled_from(leaves))
            value = data.draw(INTS) if kinds is int else data.draw(
                st.text(alphabet="0123456789abcdefABX.\ud800", max_size=70))
            _get(line, path[:-1])[path[-1]] = value
        if how == "resign":
            signer = data.draw(st.sampled_from([k.faucet, k.producer, k.oracle, k.treasury, ALICE]))
            try:
                resign(line, signer)
            except Exception:
                pass
    elif how == "bytes":
        raw = bytearray(encode(line))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, 2**16 - 1)) * len(raw) >> 16  # not len-bound: lengths vary
            op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
            if op == "flip":
                raw[i] = data.draw(st.integers(0, 255))
            elif op == "insert":
                raw.insert(i, data.draw(st.integers(0, 255)))
            elif op == "delete" and len(raw) > 1:
                del raw[i]
            elif op == "truncate":
                raw = raw[:max(i, 1)]
        return bytes(raw)
    return line


_FUZZ = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _ready(ln: Lines, k: Keys) -> None:
    """A history the fuzzed lines can build on (once per test, not per example)."""
    if ln.chain.write_state().tip().height == 0:
        block1(ln)
        with_provider(ln, k, milli_kwh=100)


@_FUZZ
@given(data=st.data())
def test_fuzzed_line_is_admitted_or_changes_nothing(chain, keys, lines, data):
    _ready(lines, keys)
    kind = data.draw(st.sampled_from(["tx", "block", "share", "reading", "provider", "settlement", "payout"]))
    line = _mutate(_base_line(lines, keys, kind, data), keys, data)
    before = snapshot(chain)
    s = admit(chain, line)
    event("outcome", "accepted" if s.accepted else "duplicate" if s.duplicates else s.rejections[0]["code"])
    assert s.accepted + s.duplicates + s.rejected == 1
    assert len(s.rejections) == s.rejected
    for r in s.rejections:
        assert r["code"] in PROTOCOL_CODES and r["line"] == 1 and r["message"]
    if not s.accepted:
        assert snapshot(chain) == before
    total, expected = supply(chain)
    assert total == expected


@_FUZZ
@given(data=st.data())
def test_fuzzed_batches_keep_the_summary_consistent(chain, keys, lines, data):
    _ready(lines, keys)
    batch = []
    for _ in range(data.draw(st.integers(1, 5))):
        kind = data.draw(st.sampled_from(["tx", "share", "reading", "provider", "settlement", "payout"]))
        batch.append(_mutate(_base_line(lines, keys, kind, data), keys, data))
    before = snapshot(chain)
    s = admit(chain, *batch)
    assert s.accepted + s.duplicates + s.rejected == len(batch)
    numbers = [r["line"] for r in s.rejections]
    assert numbers == sorted(set(numbers)) and all(1 <= n <= len(batch) for n in numbers)
    assert {r["code"] for r in s.rejections} <= PROTOCOL_CODES
    if not s.accepted:
        assert snapshot(chain) == before
    total, expected = supply(chain)
    assert total == expected


# -- a parsed share is the line's own object (its id is H of that object, PROTOCOL.md §5) ------

@given(st.data())
@settings(max_examples=300, deadline=None)
def test_parsed_share_is_the_lines_object(data) -> None:
    obj = share_line("ab" * 20, "rig1", job_id="job-1", height=1, difficulty=1024, timestamp=1)
    for _ in range(data.draw(st.integers(0, 2))):
        field = data.draw(st.sampled_from([*sorted(obj), "extra"]))
        obj[field] = data.draw(JSON | INTS)
    line = encode(obj)
    try:
        share = lines_mod.parse_line(line)
    except Rejection as rej:
        assert rej.code.value == "MALFORMED"
        return
    assert isinstance(share, lines_mod.ShareLine)
    assert share.obj == json.loads(line) and share.address == obj["worker"].split(".")[0]
    assert share.id == H(canonical_json(json.loads(line)))
