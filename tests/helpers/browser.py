"""Headless Chromium for the tests of pages dlas writes (Debian chromium + chromium-driver).

Chromium starts with the flags this machine's closed network needs and a fresh profile; no
browser is ever downloaded. Console errors and any request that leaves ``file://`` fail a test.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["assert_offline_and_clean", "browser_missing", "open_page", "start_chromium"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


def browser_missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    if CHROMIUM is None:
        return "Debian package chromium is not installed"
    if CHROMEDRIVER is None:
        return "Debian package chromium-driver is not installed"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed"
    return None


def start_chromium(profile: Path) -> Any:
    """A headless Chromium driver logging the console and the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in _ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def open_page(driver: Any, page: Path) -> None:
    """Load a local page from ``file://`` and wait until it is complete."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    driver.get_log("browser")  # drop what the start page logged
    driver.get_log("performance")
    driver.get(page.as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def assert_offline_and_clean(driver: Any) -> None:
    """No console error, and no request beyond the page's own file and data: URIs."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    leaving = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.requestWillBeSent":
            continue
        url = message["params"]["request"]["url"]
        document = message["params"].get("documentURL", "")
        network = url.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")
        from_page = document.startswith("file:") and not url.startswith(("file:", "data:"))
        if network or from_page:
            leaving.append(url)
    assert leaving == []
