"""Schemathesis against the app's own OpenAPI description: generated requests (valid and invalid)
for every operation never get a 5xx, and every error is a JSON body with a stable ``code``.
Bounded: a fixed number of examples per operation and mode, no deadline, no database of
examples. The admin API is left out (its actions have side effects; tests/ops/node/test_faucet.py covers
its refusals)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.faucet import FaucetSettings
from ledgerlog.ops.api.limits import HttpLimits
from ledgerlog.ops.node.lifecycle import Node

EXAMPLES = 25  # per operation and generation mode


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> dict[str, Any]:
    """POST /v1/ingest's body type: the generated value as bytes (ingest lines or junk)."""
    return {"data": value if isinstance(value, bytes) else json.dumps(value).encode()}


@pytest.fixture
def app(tmp_path) -> Iterator[Any]:
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token="t" * 32)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    node = Node(cfg)
    node.start()
    yield create_app(node, limits=HttpLimits(ingest_rate=0),
                     faucet=FaucetSettings(ip_burst=10**6, address_burst=10**6))
    node.stop()


def _operations(app: Any) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path_regex=r"^/v1/admin")
    ops = [result.ok() for result in schema.get_all_operations()]
    assert ops, "the schema lists no operations"
    return ops


def _has_invalid_inputs(operation: dict[str, Any]) -> bool:
    """Whether negative generation can make something invalid: a body, or a parameter that is
    not an unconstrained string (searching for an invalid free-form string takes seconds and
    finds none)."""
    plain = {"type", "title", "description"}
    return "requestBody" in operation or any(
        p.get("schema", {}).get("type") != "string" or set(p.get("schema", {})) - plain
        for p in operation.get("parameters", []))


def _fuzz(op: Any, mode: Any, seen: dict[str, set[int]]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        r = case.call()  # through the app in-process (ASGI), nothing on a network
        seen.setdefault(op.label, set()).add(r.status_code)
        text = r.content[:500].decode("utf-8", "replace")
        assert r.status_code < 500, (op.label, r.request.method, r.request.url, r.status_code, text)
        if r.status_code >= 400:  # the Schema Registry's Confluent bodies carry a code too
            body = json.loads(r.content)
            if op.label == "POST /v1/ingest" and r.status_code == 422:  # the summary: something was rejected
                assert body["rejected"] >= 1 and body["rejections"], text
                return
            assert isinstance(body.get("code"), str) and body["code"], (op.label, text)

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, op.label  # nothing to make invalid


def test_no_server_errors_on_generated_requests(app):
    ops = _operations(app)
    paths = {op.path for op in ops}
    assert {"/rpc", "/v1/faucet", "/v1/ingest", "/v1/ready", "/v1/status"} <= paths
    spec = app.openapi()
    seen: dict[str, set[int]] = {}
    for op in ops:
        _fuzz(op, GenerationMode.POSITIVE, seen)
        if _has_invalid_inputs(spec["paths"][op.path][op.method.lower()]):
            _fuzz(op, GenerationMode.NEGATIVE, seen)
    assert len(seen) == len(ops)
    assert 200 in seen["POST /rpc"] and 200 in seen["POST /v1/faucet"]
