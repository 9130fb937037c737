"""engine/avro_codegen.py: the generated encoders write fastavro's bytes for every schema ledgerlog
registers (events and signed bodies, whose bytes are the canonical signing payload), on generated
records including edge values (64-bit bounds, empty and non-ASCII strings, empty and long arrays);
a datum they cannot take goes to fastavro, which raises or writes as it would."""
from __future__ import annotations

import io
import json
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerlog.engine import avro
from ledgerlog.engine.avro_codegen import Unsupported, compile_encoder, encoder

NAMES = avro.EVENT_NAMES + avro.BODY_NAMES + avro.HEAD_NAMES
LONGS = st.sampled_from([0, -1, 1, 63, 64, -64, -65, 127, 128, 2**31, -(2**31), 2**63 - 1, -(2**63)]) | st.integers(
    -(2**63), 2**63 - 1)


def _datum(t: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    if isinstance(t, dict) and t.get("type") in ("long", "int", "string", "boolean"):
        t = t["type"]
    if t in ("long", "int"):
        return LONGS
    if t == "string":
        return st.text(max_size=80)
    if t == "boolean":
        return st.booleans()
    if isinstance(t, str):
        return _datum(named[t if "." in t else f"{avro.NAMESPACE}.{t}"], named)
    if t["type"] == "record":
        named[f"{t.get('namespace', avro.NAMESPACE)}.{t['name']}"] = t
        return st.fixed_dictionaries({f["name"]: _datum(f["type"], named) for f in t["fields"]})
    assert t["type"] == "array"
    return st.lists(_datum(t["items"], named), max_size=70)


def _fastavro(name: str, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, avro.parsed(name), record)
    return buf.getvalue()


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_generated_encoder_writes_fastavros_bytes(name: str, data) -> None:
    schema = json.loads(avro.schema_json(name))
    record = data.draw(_datum(schema, {}))
    fast = compile_encoder(json.loads(avro.schema_json(name)))
    assert fast(record) == _fastavro(name, record)


def test_odd_datums_get_fastavros_behaviour() -> None:
    enc = encoder(avro.schema_json("TransactionBody"))
    body = {"chain_id": "c", "sender": "s", "recipient": "r", "amount": 1, "fee": 2, "nonce": 3,
            "timestamp": 4, "memo": ""}
    assert enc(body) == _fastavro("TransactionBody", body)
    for out_of_range in (2**63, -(2**63) - 1, 2**200, -(2**200)):
        with pytest.raises(OverflowError):
            compile_encoder(json.loads(avro.schema_json("TransactionBody")))({**body, "amount": out_of_range})
    for odd in ({**body, "amount": 2**63}, {k: v for k, v in body.items() if k != "memo"}, {**body, "memo": b"x"}):
        try:
            expected: Any = _fastavro("TransactionBody", odd)
        except Exception as exc:
            with pytest.raises(type(exc)):
                enc(odd)
        else:
            assert enc(odd) == expected


def test_unsupported_types_are_refused() -> None:
    with pytest.raises(Unsupported):
        compile_encoder({"type": "record", "name": "X", "fields": [{"name": "d", "type": "double"}]})
