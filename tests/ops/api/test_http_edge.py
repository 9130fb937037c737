"""The HTTP edge holds (PROTOCOL.md §7, DESIGN "Trust at the edges"), in process: POST /v1/ingest
takes application/x-ndjson only, uncompressed, and no foreign Origin, its answer stays small
whatever the body, a foreign Host is refused (DNS rebinding),
out-of-range numbers are 400 (never 500), no answer carries an absolute path, BOM / UTF-16 / NUL
lines are MALFORMED. Over real sockets against a real node: test_http_edge_node.py."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Keys, Lines, encode, load_signer
from fastapi.testclient import TestClient

from ledgerlog.engine.admission.admitter import MAX_REJECTIONS
from ledgerlog.engine.admission.lines import parse_line
from ledgerlog.engine.chain import init_chain
from ledgerlog.engine.config import Config
from ledgerlog.engine.errors import Code, Rejection
from ledgerlog.engine.genesis import dev_genesis
from ledgerlog.ops.api.app import create_app
from ledgerlog.ops.api.limits import HttpLimits
from ledgerlog.ops.node.lifecycle import Node

TOKEN = "t" * 32
NDJSON = {"Content-Type": "application/x-ndjson"}
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1024 * 1024


# -- an in-process node and app -------------------------------------------------------------------
@pytest.fixture
def node(tmp_path) -> Iterator[Node]:
    cfg = Config(data_dir=str(tmp_path / "data"), sync=False, admin_token=TOKEN,
                 http_allowed_origins="https://wallet.example", http_allowed_hosts="ledger.example")
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg)
    n.start()
    yield n
    n.stop()


@pytest.fixture
def client(node) -> Iterator[TestClient]:
    with TestClient(create_app(node, limits=HttpLimits(ingest_rate=0)), raise_server_exceptions=False) as c:
        yield c


def lines_for(node: Node) -> Lines:
    return Lines(node.chain, Keys(*(load_signer(node.config, n) for n in ("producer", "oracle", "treasury", "faucet"))))


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert body["code"] == code and isinstance(body["message"], str) and body["message"], body
    return body


def height(c: TestClient) -> int:
    return c.get("/v1/status").json()["height"]


# -- POST /v1/ingest: content type and origin -----------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/json"},
                                     {"Content-Type": "application/x-www-form-urlencoded"},
                                     {"Content-Type": "multipart/form-data; boundary=x"}])
def test_ingest_refuses_other_content_types_and_admits_nothing(node, client, headers):
    line = encode(lines_for(node).block([])) + b"\n"
    before = height(client)
    assert_error(client.post("/v1/ingest", content=line, headers=headers), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert height(client) == before
    r = client.post("/v1/ingest", content=line, headers={"Content-Type": "application/x-ndjson; charset=utf-8"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert height(client) == before + 1


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_ingest_refuses_a_compressed_body_and_admits_nothing(node, client, encoding):
    """A gzip body was read as lines: 422 MALFORMED for every line, as if the client sent junk."""
    import gzip
    line = encode(lines_for(node).block([])) + b"\n"
    before = height(client)
    assert_error(client.post("/v1/ingest", content=gzip.compress(line), headers={**NDJSON, "Content-Encoding": encoding}),
                 415, "UNSUPPORTED_MEDIA_TYPE")
    assert height(client) == before
    r = client.post("/v1/ingest", content=line, headers={**NDJSON, "Content-Encoding": "identity"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:8080"])
def test_ingest_refuses_a_foreign_origin_and_admits_nothing(node, client, origin):
    line = encode(lines_for(node).block([])) + b"\n"
    before = height(client)
    assert_error(client.post("/v1/ingest", content=line, headers={**NDJSON, "Origin": origin}),
                 403, "ORIGIN_NOT_ALLOWED")
    assert height(client) == before
    r = client.post("/v1/ingest", content=line, headers={**NDJSON, "Origin": "https://wallet.example"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


def test_an_allowed_origin_can_post_ingest_lines_from_a_browser(node, client):
    """http.allowed_origins let no browser post: application/x-ndjson always asks a CORS preflight,
    which got 405 and no Access-Control-* header, and the POST's answer was unreadable to the page."""
    wallet = "https://wallet.example"
    pre = client.options("/v1/ingest", headers={"Origin": wallet, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "content-type",
                                                "Access-Control-Request-Private-Network": "true"})
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-private-network"] == "true"  # a public site, a node on 127.0.0.1
    assert pre.headers["access-control-allow-origin"] == wallet
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "content-type" in pre.headers["access-control-allow-headers"].lower()
    line = encode(lines_for(node).block([])) + b"\n"
    r = client.post("/v1/ingest", content=line, headers={**NDJSON, "Origin": wallet})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == wallet
    # another origin, and the admin token, get no such leave
    for origin, wants in (("https://evil.example", "content-type"), (wallet, "authorization")):
        pre = client.options("/v1/admin/pause" if wants == "authorization" else "/v1/ingest",
                             headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": wants})
        assert pre.headers.get("access-control-allow-origin") is None or wants not in \
            pre.headers.get("access-control-allow-headers", "").lower(), pre.headers
    assert client.get("/v1/status", headers={"Origin": "https://evil.example"}).headers.get(
        "access-control-allow-origin") is None
    for path in ("/v1/status", "/v1/accounts/" + "ab" * 20):  # the page reads answers, the fast lane's too
        assert client.get(path, headers={"Origin": wallet}).headers["access-control-allow-origin"] == wallet


def test_no_origin_is_allowed_by_default(tmp_path):
    cfg = Config(data_dir=str(tmp_path / "d"), sync=False)
    init_chain(cfg, dev_genesis(cfg.keys_dir))
    n = Node(cfg)
    n.start()
    try:
        with TestClient(create_app(n)) as c:
            assert_error(c.post("/v1/ingest", content=b"\n", headers={**NDJSON, "Origin": "https://wallet.example"}),
                         403, "ORIGIN_NOT_ALLOWED")
            assert c.post("/v1/ingest", content=b"\n", headers=NDJSON).status_code == 200
    finally:
        n.stop()


# -- POST /v1/ingest: the answer stays small -------------------------------------------------------
def test_40000_junk_lines_get_a_small_answer_with_exact_counts(client):
    body = b"".join(b'{"type":"share","junk":"' + b"j" * 70 + b'","n":%d}\n' % i for i in range(40_000))
    assert len(body) > 3 * MiB
    r = client.post("/v1/ingest", content=body, headers=NDJSON)
    assert r.status_code == 422
    assert len(r.content) < MiB
    out = r.json()
    assert out["rejected"] == 40_000 and out["accepted"] == 0 and out["duplicates"] == 0
    assert out["rejections_truncated"] is True
    assert len(out["rejections"]) == MAX_REJECTIONS == 1000
    assert [x["line"] for x in out["rejections"]] == list(range(1, 1001))
    assert {x["code"] for x in out["rejections"]} == {"MALFORMED"}


def test_rejections_quoting_huge_lines_stay_small(client):
    body = b"".join(b'{"type":"' + b"\\u0001" * 2000 + b'%d"}\n' % i for i in range(1200))
    r = client.post("/v1/ingest", content=body, headers=NDJSON)
    assert r.status_code == 422 and r.json()["rejected"] == 1200
    assert len(r.content) < MiB, len(r.content)


def test_few_rejections_are_not_marked_truncated(node, client):
    r = client.post("/v1/ingest", content=b"{oops\n\n" + encode(lines_for(node).block([])) + b"\n", headers=NDJSON)
    out = r.json()
    assert r.status_code == 422 and out["accepted"] == 1 and out["rejected"] == 1
    assert "rejections_truncated" not in out and out["rejections"][0]["line"] == 1


def test_the_admitters_summary_keeps_at_most_1000_rejections(node):
    summary = node.admitter.admit([b"junk"] * 2500)
    assert summary.rejected == 2500 and len(summary.rejections) == MAX_REJECTIONS
    assert summary.to_dict()["rejections_truncated"] is True
    assert summary.rejections[-1]["line"] == MAX_REJECTIONS


# -- lines: BOM, UTF-16, NUL -----------------------------------------------------------------------
def _variants(line: bytes) -> dict[str, bytes]:
    text = line.decode()
    return {"bom": b"\xef\xbb\xbf" + line, "utf16le": text.encode("utf-16-le"),
            "utf16-bom": text.encode("utf-16"), "utf16be": text.encode("utf-16-be"),
            "nul-inside": line[:-1] + b"\x00" + line[-1:], "nul-after": line + b"\x00",
            "str-bom": ("\ufeff" + text).encode()}


def test_bom_utf16_and_nul_lines_are_malformed(node):
    line = encode(lines_for(node).block([]))
    parse_line(line)  # the plain line is fine
    for name, bad in _variants(line).items():
        with pytest.raises(Rejection) as exc:
            parse_line(bad)
        assert exc.value.code is Code.MALFORMED, name
    with pytest.raises(Rejection) as exc:
        parse_line("\ufeff" + line.decode())
    assert exc.value.code is Code.MALFORMED
    share = b'{"type":"share","worker":"' + b"a" * 40 + b'.rig","job_id":"j","height":1,"difficulty":1,' \
            b'"accepted":true,"timestamp":1}'
    for name, bad in _variants(share).items():
        with pytest.raises(Rejection) as exc:
            parse_line(bad)
        assert exc.value.code is Code.MALFORMED, name


def test_bom_and_nul_lines_over_http_are_malformed_and_change_nothing(node, client):
    line = encode(lines_for(node).block([]))
    before = height(client)
    body = b"\xef\xbb\xbf" + line + b"\n" + line[:-1] + b"\x00}\n"
    r = client.post("/v1/ingest", content=body, headers=NDJSON)
    assert r.status_code == 422 and r.json()["rejected"] == 2 and r.json()["accepted"] == 0, r.text
    assert {x["code"] for x in r.json()["rejections"]} == {"MALFORMED"}
    assert height(client) == before


# -- Host header (DNS rebinding) -------------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil",
                                  "ledger.example.evil", "[::2]:80", ""])
def test_a_foreign_host_is_refused(client, host):
    assert_error(client.get("/v1/status", headers={"Host": host}), 421, "HOST_NOT_ALLOWED")
    assert_error(client.post("/v1/ingest", content=b"\n", headers={**NDJSON, "Host": host}), 421, "HOST_NOT_ALLOWED")


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1", "127.0.0.1:9", "[::1]", "[::1]:8080",
                                  "LEDGER.example", "ledger.example:443", "testserver"])
def test_the_nodes_own_names_are_served(client, host):
    assert client.get("/v1/status", headers={"Host": host}).status_code == 200


def test_a_dual_stack_node_answers_to_its_ipv4_address(node):
    """Bound to "::", the node sees its own IPv4 address as ::ffff:a.b.c.d: a Host naming the
    address the client connected to is the node's own."""
    from ledgerlog.ops.api.guard import HostGuard
    guard = HostGuard([])
    scope = {"headers": [(b"host", b"10.0.0.5:8080")], "server": ("::ffff:10.0.0.5", 8080)}
    assert guard.allows(scope)
    assert not guard.allows({**scope, "headers": [(b"host", b"10.0.0.6")]})
    assert guard.allows({"headers": [(b"host", b"[::ffff:10.0.0.5]")], "server": ("::ffff:10.0.0.5", 8080)})


# -- out-of-range numbers: 400, never 500 ---------------------------------------------------------
BIG = "99999999999999999999999"


@pytest.mark.parametrize("path", [f"/v1/accounts/{'a' * 40}?height={BIG}", f"/v1/accounts/{'a' * 40}?height=9223372036854775808",
                                  f"/v1/blocks/{BIG}", "/v1/blocks/9223372036854775808", "/v1/blocks/\u00b2",
                                  f"/v1/accounts/{'a' * 40}?height=-1"])
def test_out_of_range_numbers_in_paths_and_queries_are_400(client, path):
    assert_error(client.get(path), 400, "BAD_REQUEST")


def test_in_range_heights_still_answer(node, client):
    assert client.get(f"/v1/accounts/{'a' * 40}?height=9223372036854775807").status_code == 200
    assert client.post("/v1/ingest", content=encode(lines_for(node).block([])), headers=NDJSON).status_code == 200
    assert client.get("/v1/blocks/1").status_code == 200
    assert_error(client.get("/v1/blocks/9223372036854775807"), 404, "NOT_FOUND")


@pytest.mark.parametrize("name,body", [
    ("faucet-topup", {"amount": 10**30}), ("faucet-topup", {"amount": 1e30}), ("faucet-topup", {"amount": -(10**30)}),
    ("faucet-topup", {"amount": 5, "extra": 1}), ("pause", {"zzz": 1}), ("reproject", {"names": ["nope"]}),
    ("reproject", {"names": "chainstate"}), ("reproject", {"keep": 10**30}), ("snapshot", {"out": 5}),
    ("rotate-key", {"key": 10**30}), ("compact", {"a": 1}), ("faucet-pause", {"x": None}),
    ("pause", {"\ud800": 1}), ("rotate-key", {"key": "\udc00"}),  # lone surrogates, quoted back in the error
    ("snapshot-prune", {"keep": 2**64, "dry_run": True}), ("snapshot-prune", {"keep": 2**63}),  # ran, and were recorded
    ("snapshot-prune", {"keep": -(2**63) - 1}),
    ("snapshot", {"out": "x\u0000y"}), ("snapshot-prune", {"keep": 1, "dir": "x\u0000y"}),  # NUL: were 500
    ("prune", {"before_height": 1, "archive": "x\u0000y"}), ("reproject", {"job": "a\u0000"})])
def test_bad_admin_bodies_are_400_and_change_nothing(node, client, name, body):
    r = client.post(f"/v1/admin/{name}", content=json.dumps(body), headers={**ADMIN, "Content-Type": "application/json"})
    assert_error(r, 400, "BAD_REQUEST")
    assert not node.controls.ingest_paused and not node.controls.faucet_paused


@pytest.mark.parametrize("name", ["nope", BIG, "faucet-topup-" + BIG])
def test_unknown_admin_actions_are_404(client, name):
    assert_error(client.post(f"/v1/admin/{name}", content=b"{}", headers=ADMIN), 404, "NOT_FOUND")


def test_rpc_with_a_huge_id_is_not_500(client):
    r = client.post("/rpc", content=b'{"jsonrpc":"2.0","method":"getblockcount","params":[],"id":%s}' % BIG.encode())
    assert r.status_code < 500, r.text


# -- no absolute path in any answer ---------------------------------------------------------------
def test_no_absolute_path_in_answers(node, client):
    root = os.path.realpath(node.config.data_dir)
    answers = [client.post("/v1/admin/rotate-key", json={"key": "nope"}, headers=ADMIN),
               client.post("/v1/admin/rotate-key", json={"key": "../../etc/passwd"}, headers=ADMIN),
               client.post("/v1/admin/compact", json={}, headers=ADMIN),
               client.post("/v1/admin/snapshot", json={"out": "/proc/no/such/dir"}, headers=ADMIN)]
    for r in answers:
        assert r.status_code != 500, r.text
        assert root not in r.text and node.config.data_dir not in r.text, r.text
        assert not re.search(r'(?<![\w:/.])/(tmp|home|root|proc|var|usr|etc)/', r.text), r.text


def test_a_token_with_spaces_around_in_config_toml_still_matches_the_one_sent():
    """The token a client sends is stripped; the one from config.toml was not, so a token written
    with a space around could never match."""
    from starlette.requests import Request

    from ledgerlog.ops.api.admin import check_token

    def request(auth: str) -> Request:
        return Request({"type": "http", "method": "POST", "path": "/v1/admin/pause", "query_string": b"",
                        "headers": [(b"authorization", auth.encode())], "client": ("127.0.0.1", 1)})
    check_token(request("Bearer s3cret-token"), " s3cret-token\n", [])
    with pytest.raises(Exception, match="wrong token"):
        check_token(request("Bearer other"), " s3cret-token ", [])
    with pytest.raises(Exception, match="disabled"):
        check_token(request("Bearer x"), "   ", [])
