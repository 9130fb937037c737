"""Avro schemas of ledgerlog protocol v1 (namespace ``ledgerlog.v1``), shipped as package data.

Signed bodies (``*Body``, ``BlockHeader``) are normative: PROTOCOL.md §2 fixes their field order.
Event schemas reference bodies by full name; ``engine.avro`` inlines them so that every schema
registered on ``_schemas`` stands alone, as stock Avro deserializers expect.
``registered/`` keeps every released version; a test refuses changes that are not backward
compatible with them.
"""
