"""The dashboard's data without a browser: the per-block series (ops/query/series.py) the charts
draw on first paint, the coin's decimals, the energy fields the page reads existing in the
answer, and the offline /docs and /favicon.ico (their assets served by the node, no CDN).
The page itself, in headless Chromium: test_dashboard_browser.py."""
from __future__ import annotations

import re
from importlib import resources

from nodetools import NDJSON, ingest_all, observed_node

from ledgerlog.ops.query.series import COIN_DECIMALS, SERIES_BLOCKS, Samples, block_series


def _blocks(*heights: int) -> list[dict[str, int]]:
    """chainstate.recent_blocks rows, newest first: block h at h seconds with h txs and 10*h fees."""
    return [{"height": h, "timestamp": 1000 * h, "tx_count": h, "fees": 10 * h} for h in sorted(heights, reverse=True)]


def test_samples_keep_the_first_look_at_a_height_and_the_newest_heights():
    s = Samples(limit=3)
    s.record(1, 5, 100)
    s.record(1, 9, 900)  # a later look at the same tip does not replace the first
    for h in (2, 3, 4):
        s.record(h, h, 100 * h)
    assert s.get(1) is None  # the oldest dropped past the limit
    assert [s.get(h) for h in (2, 3, 4)] == [(2, 200), (3, 300), (4, 400)]
    s2 = Samples()
    s2.record(7, 1, 10)
    s2.record(7, 2, 20)
    assert s2.get(7) == (1, 10)


def test_block_series_is_oldest_first_with_intervals_and_sampled_figures():
    s = Samples()
    s.record(3, 4, 1000)
    s.record(4, 6, 1500)
    s.record(6, 2, 2600)  # height 5 was never seen as the tip
    series = block_series(_blocks(2, 3, 4, 5, 6), s, credited_now=2900)
    assert [b["height"] for b in series] == [2, 3, 4, 5, 6]
    assert [b["interval_ms"] for b in series] == [None, 1000, 1000, 1000, 1000]
    assert [b["tx_count"] for b in series] == [2, 3, 4, 5, 6] and [b["fees"] for b in series] == [20, 30, 40, 50, 60]
    assert [b["mempool"] for b in series] == [None, 4, 6, None, 2]
    # credited while each block was the tip: up to the next height's sample, the tip's up to now
    assert [b["energy_credited_milli_kwh"] for b in series] == [None, 500, None, None, 300]
    assert block_series([], s, 0) == []
    assert block_series(_blocks(6), s, None)[0]["energy_credited_milli_kwh"] is None  # energy failed: no figure


def _function_body(page: str, name: str) -> str:
    start = page.index(f"function {name}(")
    end = page.index("\n  function ", start + 1)
    return page[start:end]


def test_dashboard_answer_has_the_series_the_coin_and_the_fields_the_page_reads(tmp_path):
    page = (resources.files("ledgerlog.ops") / "static" / "index.html").read_text()
    with observed_node(tmp_path) as w:
        client, node = w["client"], w["node"]
        ingest_all(client, w["lines"])
        assert node.queries.sync()
        node.queries.sample()
        d = client.get("/v1/dashboard").json()
        height = d["status"]["height"]
        series = d["series"]
        assert height > 1 and [b["height"] for b in series] == list(range(max(1, height - SERIES_BLOCKS + 1), height + 1))
        for b in series[-3:]:
            blk = client.get(f"/v1/blocks/{b['height']}").json()
            assert (b["timestamp"], b["tx_count"], b["fees"]) == (blk["header"]["timestamp"], blk["header"]["tx_count"],
                                                                  blk["fees"])
        assert series[-1]["interval_ms"] == series[-1]["timestamp"] - series[-2]["timestamp"]
        assert series[-1]["mempool"] is not None and series[-1]["energy_credited_milli_kwh"] is not None
        assert d["coin"] == {"decimals": COIN_DECIMALS}
    # every energy figure the page shows is a field of the answer (the page once read avg_price_per_kwh)
    read = set(re.findall(r"\be\.([a-z_]+)", _function_body(page, "renderEnergy")))
    assert {"average_price_per_kwh", "traded_milli_kwh", "credited_milli_kwh"} <= read
    assert read <= set(d["energy"])
    series_read = set(re.findall(r"\bb\.([a-z_]+)", _function_body(page, "renderThroughput")))
    series_read |= set(re.findall(r"\bb\.([a-z_]+)", _function_body(page, "renderEnergy")))
    assert series_read and series_read <= set(series[0])


def test_docs_and_favicon_are_served_by_the_node(tmp_path):
    with observed_node(tmp_path) as w:
        client = w["client"]
        docs = client.get("/docs")
        assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text
        refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", docs.text) + re.findall(r"url: '([^']+)'", docs.text)
        assert refs and all(r.startswith("/") and not r.startswith("//") for r in refs), refs  # nothing from a CDN
        for ref in refs:
            r = client.get(ref)
            assert r.status_code == 200 and r.content, ref
        assert '"validatorUrl": null' in docs.text  # Swagger UI asks no online validator
        icon = client.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
        assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
        page = client.get("/").text
        assert 'rel="icon" href="/favicon.ico"' in page
        assert client.get("/static/no-such-file.js").status_code == 404


def test_the_dashboard_walks_a_projection_once_per_state_not_per_request(tmp_path, monkeypatch):
    """The richest accounts (and top workers and providers) come from a walk of the whole
    projection: many clients polling the dashboard cost one walk per new state, not one each, and
    on a node whose state changes with every fold, one walk per RANK_SECONDS (it walked on every
    request there: 4.5 ms at 2,000 accounts, growing with them)."""
    from ledgerlog.ops.query.queries import RANK_SECONDS
    from ledgerlog.projections import balances
    walks = [0]
    real = balances.richest

    def counted(view, limit=10):
        walks[0] += 1
        return real(view, limit)
    monkeypatch.setattr(balances, "richest", counted)
    now = [0.0]
    with observed_node(tmp_path) as w:
        client, node = w["client"], w["node"]
        node.queries.clock = lambda: now[0]
        half = len(w["lines"]) // 2
        r = client.post("/v1/ingest", content=b"\n".join(w["lines"][:half]) + b"\n", headers=NDJSON)
        assert r.status_code == 200 and node.queries.sync()
        first = [client.get("/v1/dashboard").json()["richest"] for _ in range(5)]
        assert walks[0] == 1 and all(f == first[0] for f in first)
        r = client.post("/v1/ingest", content=b"\n".join(w["lines"][half:]) + b"\n", headers=NDJSON)
        assert r.status_code == 200 and node.queries.sync()
        assert client.get("/v1/dashboard").json()["richest"] == first[0] and walks[0] == 1  # changed, but fresh
        now[0] += RANK_SECONDS
        after = client.get("/v1/dashboard").json()["richest"]
        assert walks[0] == 2  # the state changed and the list aged: walked again
        assert after == real(node.runner.handles["balances"].store.view(), 10)


def test_every_answer_forbids_framing_and_sniffing_and_pages_are_revalidated(tmp_path):
    """The dashboard and /docs cannot be framed by another site (clickjacking), no answer is
    sniffed into another type, no URL leaks as a Referer, and a page is revalidated after an
    upgrade: through FastAPI, the fast lane, a 404 and the Host guard's refusal alike."""
    with observed_node(tmp_path) as w:
        client = w["client"]
        addr = sorted(w["genesis"]["allocations"])[0]
        answers = {p: client.get(p) for p in ("/", "/static/index.html", "/docs", "/v1/status",
                                              f"/v1/accounts/{addr}", "/v1/nope")}
        answers["refused"] = client.get("/v1/status", headers={"host": "evil.example"})
        assert answers["refused"].status_code == 421 and answers[f"/v1/accounts/{addr}"].status_code == 200
        for path, r in answers.items():
            h = r.headers
            assert h["x-content-type-options"] == "nosniff", path
            assert h["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in h["content-security-policy"], path
            assert h["referrer-policy"] == "no-referrer", path
            if h["content-type"].startswith("text/html"):
                assert h["cache-control"] == "no-cache", path


def test_dashboard_amounts_beyond_2_53_are_sent_as_exact_digit_strings(tmp_path) -> None:
    """The dashboard parses its answer with JSON.parse, which rounds integers past 2^53: such
    amounts come as digit strings (the page's formatters read them exactly), smaller ones as numbers."""
    from ledgerlog.engine.chain import init_chain, open_chain
    from ledgerlog.engine.config import Config
    from ledgerlog.ops.devtools.histgen import make_genesis
    from ledgerlog.ops.query.queries import Queries
    from ledgerlog.streams.runner import Runner

    genesis, _keys = make_genesis(3, wallets=2)
    rich, poor = sorted(genesis["allocations"])[:2]
    genesis["allocations"][rich], genesis["allocations"][poor] = 123456789012345678, 5
    cfg = Config(data_dir=str(tmp_path / "d"))
    init_chain(cfg, genesis)
    with open_chain(cfg, read_only=True) as chain:
        runner = Runner(chain.log, chain.codec, chain.genesis, cfg.projections_dir)
        try:
            runner.catch_up()
            richest = {a["address"]: a["balance"] for a in Queries(runner, chain.genesis.chain_id).dashboard()["richest"]}
            assert richest[rich] == "123456789012345678" and richest[poor] == 5
        finally:
            runner.close()
