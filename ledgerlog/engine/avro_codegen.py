"""Plain-Python Avro code generated from a schema, for the schemas ledgerlog registers (records,
arrays, string, long, int, boolean; anything else is Unsupported and the caller uses fastavro):
the encoders here, and the walk over a schema's names that the decoders (streams/feed.py) share.

The encoders build a list of byte strings, which beats fastavro's per-field dispatch on
ledgerlog's small records (ShareSubmitted: 2.1 us against 3.6 us). Their bytes are fastavro's
(tests/engine/test_avro_codegen.py checks every schema on generated records); canonical body bytes
(PROTOCOL.md §1) are among them. A datum the generated code cannot take (a missing field, a
wrong type, a long out of range) is handed to fastavro, which raises its own error or writes
what it writes, so callers see fastavro's behaviour either way."""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from fastavro import parse_schema, schemaless_writer

from ledgerlog.engine.errors import (
    Unsupported,  # the schema uses a type the generated code does not handle
)

__all__ = ["SchemaNames", "Unsupported", "compile_encoder", "encoder", "long_bytes"]

_PRIMITIVES = ("long", "int", "string", "boolean")
#: varints of the zig-zag values below 128: one byte each
_ONE = [bytes((z,)) for z in range(128)]


class SchemaNames:
    """What a code generator walking a schema keeps: fresh variable names, and the named records
    seen so far (a later use of a name is a reference to its first, inlined, definition)."""

    def __init__(self) -> None:
        self.named: dict[str, Any] = {}
        self._count = 0

    def var(self) -> str:
        self._count += 1
        return f"v{self._count}"

    @staticmethod
    def fullname(name: str, ns: str | None) -> str:
        return name if "." in name or not ns else f"{ns}.{name}"

    def resolve(self, t: Any, ns: str | None) -> tuple[Any, str | None]:
        """Primitive type objects as their names, named references as their definition."""
        if isinstance(t, dict) and set(t) <= {"type", "doc"} and t.get("type") in _PRIMITIVES:
            return t["type"], ns
        if isinstance(t, str) and t not in _PRIMITIVES:
            full = self.fullname(t, ns)
            if full not in self.named:
                raise Unsupported(t)
            return self.named[full], full.rpartition(".")[0] or None
        if isinstance(t, dict) and t.get("type") == "record":
            self.named[self.fullname(t["name"], t.get("namespace", ns))] = t
        return t, ns

    def record_ns(self, t: dict[str, Any], ns: str | None) -> str | None:
        """The namespace a record's own fields are resolved in."""
        return self.fullname(t["name"], t.get("namespace", ns)).rpartition(".")[0] or None


def _varint(z: int) -> bytes | bytearray:
    """The varint of a zig-zagged value of 128 or more. The zig-zag of a value outside the signed
    64-bit range is 2**64 or more (and of one inside it less), so the range is checked here."""
    if z < 16384:
        return bytes(((z & 127) | 128, z >> 7))
    if z >> 64:
        raise OverflowError("long out of range")
    out = bytearray()
    while z > 127:
        out.append((z & 127) | 128)
        z >>= 7
    out.append(z)
    return out


def long_bytes(n: int) -> bytes:
    """The Avro encoding of the long ``n`` (zig-zag varint); OverflowError outside 64 bits."""
    z = (n << 1) ^ (n >> 63)
    if z < 0:
        raise OverflowError("long out of range")
    return _ONE[z] if z < 128 else bytes(_varint(z))


def compile_encoder(schema: Any) -> Callable[[dict[str, Any]], bytes]:
    """``encode(record) -> bytes`` for the Avro schema ``schema`` (parsed JSON, names inlined on
    first use as ``engine.avro.schema_json`` writes them); raises Unsupported."""
    lines: list[str] = []
    names = SchemaNames()
    var, resolve = names.var, names.resolve

    def long_(ind: str, value: str) -> None:  # ``value`` is a name: it is read twice
        z = var()
        lines.append(f"{ind}{z} = ({value} << 1) ^ ({value} >> 63)")  # a float or str: TypeError
        lines.append(f"{ind}a(ONE[{z}] if {z} < 128 else varint({z}))")

    def gen(t: Any, ind: str, ns: str | None, value: str) -> None:
        t, ns = resolve(t, ns)
        if t in ("long", "int"):
            v = var()
            lines.append(f"{ind}{v} = {value}")
            long_(ind, v)
        elif t == "string":
            v = var()
            lines.append(f"{ind}{v} = {value}.encode()")
            lines.append(f"{ind}n = len({v}) << 1")
            lines.append(f"{ind}a(ONE[n] if n < 128 else varint(n))")
            lines.append(f"{ind}a({v})")
        elif t == "boolean":
            lines.append(f"{ind}a(b'\\x01' if {value} else b'\\x00')")
        elif isinstance(t, dict) and t.get("type") == "record":
            inner = names.record_ns(t, ns)
            r = var()
            lines.append(f"{ind}{r} = {value}")
            for f in t["fields"]:
                get = f"{r}[{f['name']!r}]" if "default" not in f else f"{r}.get({f['name']!r}, {f['default']!r})"
                gen(f["type"], ind, inner, get)
        elif isinstance(t, dict) and t.get("type") == "array":
            items, item = var(), var()
            lines.append(f"{ind}{items} = {value}")
            lines.append(f"{ind}if {items}:")
            lines.append(f"{ind}    n = len({items})")
            long_(ind + "    ", "n")
            lines.append(f"{ind}    for {item} in {items}:")
            gen(t["items"], ind + "        ", ns, item)
            lines.append(f"{ind}a(b'\\x00')")
        else:
            raise Unsupported(repr(t)[:80])

    gen(schema, "    ", None, "record")
    src = "\n".join(["def encode(record):", "    o = []", "    a = o.append", *lines,
                     "    return b''.join(o)", ""])
    scope: dict[str, Any] = {"ONE": _ONE, "varint": _varint}
    exec(compile(src, "<generated avro encoder>", "exec"), scope)
    encode: Callable[[dict[str, Any]], bytes] = scope["encode"]
    return encode


def encoder(schema_text: str) -> Callable[[dict[str, Any]], bytes]:
    """``encode(record) -> bytes`` for a schema's text: the generated encoder, falling back to
    fastavro for a datum it cannot take (or for the whole schema, if it is Unsupported)."""
    parsed = parse_schema(json.loads(schema_text))

    def slow(record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed, record)
        return buf.getvalue()

    try:
        fast = compile_encoder(json.loads(schema_text))
    except Unsupported:
        return slow

    def encode(record: dict[str, Any]) -> bytes:
        try:
            return fast(record)
        except Exception:  # noqa: BLE001 - fastavro decides what an odd datum becomes
            return slow(record)
    return encode
