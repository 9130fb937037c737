"""The dashboard in a real browser (tests/browsertools.py's headless Chromium) against
`ledgerlog run --simulate` on 127.0.0.1. Tiles show numbers, charts are full on the first
answer (the series comes from the node, not from polls the page kept), amounts are coins with their base units on hover, the figures are the ones /v1/dashboard
answers, /docs renders Swagger UI, the favicon loads, and the console stays free of errors.
Skips, saying why, where no Chromium or chromedriver is installed (.ci/run installs both)."""
from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from clitools import LEDGERLOG, cli_env, running_node, terminate, wait_node_url
from nodetools import TX_COUNT

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from browsertools import chromium, needs_browser  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = needs_browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium()


DASH = "\u2013"
DECIMALS = 8
TILES = ("height", "tip-hash", "bpm", "since-block", "tps", "total-txs", "mempool", "pool-workers", "pool-shares",
         "pool-credited", "pool-paid", "pool-pending", "en-providers", "en-credited", "en-traded", "en-unsettled",
         "en-amount", "en-price")
CHARTS = ("spark-txs", "spark-interval", "spark-fees", "spark-mempool", "spark-energy")
COIN_TILES = ("pool-credited", "pool-paid", "pool-pending", "en-amount", "en-price")

# what the page shows, read in one go: tiles, hover titles, chart points, table cells, renders
READ_PAGE = """
const txt = id => document.getElementById(id).textContent;
const out = {renders: Number(document.body.getAttribute('data-renders') || 0), tiles: {}, titles: {}, points: {}};
for (const id of arguments[0]) out.tiles[id] = txt(id);
for (const id of arguments[1]) out.titles[id] = document.getElementById(id).title;
for (const id of arguments[2]) out.points[id] = Number(document.getElementById(id).getAttribute('data-points') || 0);
out.richest = [...document.querySelectorAll('#richest-body tr')].map(r => [...r.cells].map(c => [c.textContent, c.title]));
return out;
"""


def coins(base: int) -> str:
    """Base units as the page writes coins: grouped whole part, fraction without trailing zeros."""
    whole, frac = divmod(base, 10**DECIMALS)
    f = str(frac).rjust(DECIMALS, "0").rstrip("0")
    return f"{whole:,}" + (f".{f}" if f else "")


def kwh(milli: int) -> str:
    return f"{milli // 1000:,}.{milli % 1000:03d}"


def base_of(title: str) -> int:
    """The base units a hover title names ("1,234 base units (1 coin = 10^8)")."""
    assert title.endswith(f" base units (1 coin = 10^{DECIMALS})"), title
    return int(title.split(" ")[0].replace(",", ""))


def _until(check: Callable[[], Any], what: str, limit: float = 60) -> Any:
    """``check()`` once it is truthy; fails naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} within {limit} s"
        time.sleep(0.3)


class SimulatedNode:
    """`ledgerlog run --simulate` on a fresh chain, until ``stop``."""

    def __init__(self, data: Path) -> None:
        self.data = data
        subprocess.run([LEDGERLOG, "--data-dir", str(data), "init"], check=True, capture_output=True, env=cli_env())
        # a user projection (docs/PROJECTIONS.md), which the dashboard shows in a card of its own
        (data.parent / "tx_count.py").write_text(TX_COUNT)
        subprocess.run([LEDGERLOG, "--data-dir", str(data), "projections", "add", "tx_count"], check=True,
                       capture_output=True, env=cli_env(), cwd=data.parent)
        self.log = open(f"{data}.sim.log", "wb")
        self.proc = subprocess.Popen([LEDGERLOG, "--data-dir", str(data), "run", "--simulate", "--seed", "5",
                                      "--host", "127.0.0.1", "--port", "0"],
                                     env=cli_env(), stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = wait_node_url(str(data), self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            terminate(self.proc)
            self.log.close()
            assert self.proc.returncode == 0, Path(f"{self.data}.sim.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[SimulatedNode]:
    """A simulated node that has made blocks, paid the pool and settled energy."""
    n = SimulatedNode(tmp_path_factory.mktemp("browser") / "data")
    try:
        def moved() -> bool:
            d = httpx.get(n.url + "/v1/dashboard", timeout=10).json()
            return (d["status"]["height"] >= 10 and bool(d["energy"]) and d["energy"]["settled_amount"] > 0
                    and bool(d["pool"]) and d["pool"]["paid"] > 0)
        _until(moved, "10 blocks, a pool payout and an energy settlement", limit=120)
        yield n
    finally:
        n.stop()


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser's console and network errors since the last call."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def first_render(driver: Any, url: str) -> dict[str, Any]:
    """Open the dashboard and read it as soon as the first /v1/dashboard answer is drawn."""
    console_errors(driver)  # start clean
    driver.get(url + "/")
    try:
        WebDriverWait(driver, 30, poll_frequency=0.05).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-renders"))
    except TimeoutException:
        raise AssertionError(f"the dashboard never rendered: {console_errors(driver)}") from None
    return driver.execute_script(READ_PAGE, TILES, COIN_TILES, CHARTS)


def test_tiles_and_charts_are_full_on_first_paint(node, browser):
    page = first_render(browser, node.url)
    assert {k: v for k, v in page["tiles"].items() if v.strip() in ("", DASH)} == {}
    # the charts draw the node's series: many blocks already on the first answer or two
    assert all(n >= 5 and n > page["renders"] for n in page["points"].values()), page
    for tile in COIN_TILES:
        text, base = page["tiles"][tile], base_of(page["titles"][tile])
        assert Decimal(text.replace(",", "")) == Decimal(base) / 10**DECIMALS, (tile, text, base)
    assert page["richest"] and all(coins(base_of(title)) == text for _, _, (text, title) in page["richest"])
    assert console_errors(browser) == []


def test_docs_render_swagger_ui_offline_and_the_favicon_loads(node, browser):
    console_errors(browser)
    browser.get(node.url + "/docs")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    ops = browser.execute_script("return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)")
    assert "/v1/dashboard" in ops and "/v1/status" in ops
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(node.url + "/") for u in loaded), loaded
    icon = browser.execute_async_script("""
        const done = arguments[arguments.length - 1], img = new Image();
        img.onload = () => done([img.naturalWidth, img.naturalHeight]);
        img.onerror = () => done(null);
        img.src = '/favicon.ico';""")
    assert icon == [32, 32]
    assert console_errors(browser) == []


def test_figures_are_the_answers_after_a_restart(node, browser):
    node.stop()  # the chain stands still, so the page and /v1/dashboard can be compared exactly
    with running_node(node.data) as url:
        d = httpx.get(url + "/v1/dashboard", timeout=10).json()
        page = first_render(browser, url)
        e, p = d["energy"], d["pool"]
        assert page["tiles"]["height"] == f"{d['status']['height']:,}"
        assert page["tiles"]["en-price"] == coins(e["average_price_per_kwh"])
        assert base_of(page["titles"]["en-price"]) == e["average_price_per_kwh"]
        assert page["tiles"]["en-traded"] == kwh(e["traded_milli_kwh"])
        assert page["tiles"]["en-credited"] == kwh(e["credited_milli_kwh"])
        assert page["tiles"]["en-unsettled"] == kwh(e["unsettled_milli_kwh"])
        assert page["tiles"]["en-amount"] == coins(e["settled_amount"])
        assert [page["tiles"][f"pool-{k}"] for k in ("credited", "paid", "pending")] == [
            coins(p[k]) for k in ("credited", "paid", "pending")]
        assert [(t, base_of(title)) for _, _, (t, title) in page["richest"]] == [
            (coins(a["balance"]), a["balance"]) for a in d["richest"]]
        # block figures come from the node's store: full charts on a fresh node's first answer
        assert page["points"]["spark-txs"] == len(d["series"]) >= 10
        # the user projection's card: its first keys, as GET /v1/projections/tx_count pages them
        first = httpx.get(url + "/v1/projections/tx_count", params={"limit": 8}, timeout=10).json()["items"]
        assert first and [p["name"] for p in d["user_projections"]] == ["tx_count"]
        shown = browser.execute_script("""return [...document.querySelectorAll('tbody[data-projection="tx_count"] tr')]
            .map(tr => [...tr.cells].map(c => c.textContent))""")
        assert shown == [[i["key"], str(i["value"])] for i in first]
        assert browser.find_element(By.ID, "card-user").is_displayed()
        assert console_errors(browser) == []
