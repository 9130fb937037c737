"""``http.allowed_origins`` in a real browser: a page served from an allowed origin posts ingest
lines to a node on another port of 127.0.0.1 and reads its answers (CORS: the preflight that
``application/x-ndjson`` asks is answered), while the same page from another origin is refused
by the browser (tests/browsertools.py's headless Chromium)."""
from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from browsertools import chromium, needs_browser
from clitools import LEDGERLOG, cli_env, running_node

pytestmark = needs_browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium()


# what the page does: post its ingest line, then read the node's status; each outcome as text
POST_AND_READ = """
const [node, line, done] = arguments;
const out = {};
try {
  const r = await fetch(node + '/v1/ingest', {method: 'POST', headers: {'Content-Type': 'application/x-ndjson'},
                                               body: line + '\\n'});
  out.ingest = [r.status, await r.json()];
  out.status = (await (await fetch(node + '/v1/status')).json()).height;
} catch (e) { out.error = String(e); }
done(out);
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>wallet</title><p>a wallet page"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _site() -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[str, str]]:
    """Two web origins on 127.0.0.1: the allowed wallet's, and another."""
    (a, wallet), (b, other) = _site(), _site()
    try:
        yield wallet, other
    finally:
        for s in (a, b):
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("cors")
    subprocess.run([LEDGERLOG, "generate", "--events", "40", "--out", str(d / "h.jsonl"),
                    "--genesis-out", str(d / "g.json"), "-q"], check=True, capture_output=True, env=cli_env())
    subprocess.run([LEDGERLOG, "--data-dir", str(d / "data"), "init", "--genesis", str(d / "g.json")],
                   check=True, capture_output=True, env=cli_env())
    return d / "data", (d / "h.jsonl").read_text().splitlines()


def test_a_page_of_an_allowed_origin_posts_ingest_lines_and_reads_the_answers(chain, sites, browser):
    data, lines = chain
    wallet, other = sites
    with running_node(data, cli_env(LEDGERLOG_HTTP_ALLOWED_ORIGINS=wallet)) as node:
        browser.get(wallet + "/")
        got = browser.execute_async_script(POST_AND_READ, node, lines[0])
        assert got.get("ingest") == [200, {"accepted": 1, "duplicates": 0, "rejected": 0, "rejections": []}], got
        assert isinstance(got.get("status"), int), got
        browser.get(other + "/")  # the same page from an origin the node does not allow
        got = browser.execute_async_script(POST_AND_READ, node, lines[1])
        assert "ingest" not in got and "Failed to fetch" in got.get("error", ""), got
