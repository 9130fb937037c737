"""The headless browser of the browser tests: Debian's ``chromium`` and ``chromium-driver``,
driven by selenium, with every host but 127.0.0.1 unresolvable (nothing may come from the
network). ``needs_browser`` skips, saying why, where none is installed (.ci/run installs both);
a module's ``browser`` fixture yields from ``chromium()``."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(BROWSER is None or DRIVER is None,
                                   reason="no headless browser: apt-get install chromium chromium-driver")


def chromium() -> Iterator[Any]:
    """A headless Chromium (a selenium driver), quit after."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
