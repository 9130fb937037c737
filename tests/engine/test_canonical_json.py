"""The fast share-id canonicalisation (orjson) writes exactly the bytes of PROTOCOL.md's
canonical JSON (json.dumps, sorted keys, compact, UTF-8 unescaped) for flat objects."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ledgerlog.engine.crypto import canonical_json, canonical_json_flat

scalars = st.one_of(st.text(), st.booleans(), st.integers(), st.integers(-(1 << 63), (1 << 63) - 1))


@given(st.dictionaries(st.text(), scalars, max_size=8))
def test_flat_objects_canonicalise_identically(obj):
    assert canonical_json_flat(obj) == canonical_json(obj)


def test_every_code_point_is_escaped_identically():
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for i in range(0, len(points), 4096):
        obj = {"job_id": "".join(points[i:i + 4096]), "accepted": True, "height": 7}
        assert canonical_json_flat(obj) == canonical_json(obj)


def test_integers_beyond_64_bits_take_the_stdlib_path():
    obj = {"height": 1 << 70, "difficulty": -(1 << 64)}
    assert canonical_json_flat(obj) == canonical_json(obj)
