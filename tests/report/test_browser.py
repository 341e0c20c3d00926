"""The HTML report and the contour viewer in a real browser (headless Chromium via Selenium).

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the ``selenium`` package;
skipped, with the reason, when one is missing. No browser is ever downloaded. Screenshots are
written to ``$DLAS_SCREENSHOT_DIR`` when it is set, for a person to look at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from helpers.browser import assert_offline_and_clean, open_page

pytestmark = pytest.mark.browser


def _open(driver: Any, page: Path) -> None:
    open_page(driver, page)


def _check_clean(driver: Any) -> None:
    assert_offline_and_clean(driver)


def _screenshot(driver: Any, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DLAS_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def test_report_opens_offline_with_tables_and_figures(
    browser: Any, report: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, report / "index.html")
    _check_clean(browser)
    assert browser.title == "Auto-segmentation study report"
    for table in ("table1", "table2", "volume-table"):
        rows = browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
        assert len(rows) >= 2, table
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 13
    for image in images:
        assert browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image
        )
    summary = browser.find_element(By.ID, "summary").text
    assert "LFT against VPM" in summary
    _screenshot(browser, "report-top", tmp_path)
    browser.execute_script("document.getElementById('figures').scrollIntoView()")
    _screenshot(browser, "report-figures", tmp_path)


def _slice(driver: Any) -> int:
    from selenium.webdriver.common.by import By

    return int(driver.find_element(By.ID, "slice-view").get_attribute("data-slice"))


def test_viewer_arrow_keys_move_through_slices(browser: Any, report: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(browser, report / "viewer" / "ExVal.html")
    _check_clean(browser)
    image = browser.find_element(By.ID, "ct-image")
    start, href = _slice(browser), image.get_attribute("href")
    label = browser.find_element(By.ID, "slice-label").text
    browser.find_element(By.TAG_NAME, "body").click()
    ActionChains(browser).send_keys(Keys.ARROW_UP).perform()
    assert _slice(browser) == start + 1
    assert image.get_attribute("href") != href
    assert browser.find_element(By.ID, "slice-label").text != label
    ActionChains(browser).send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN).perform()
    assert _slice(browser) == start - 1
    slider = browser.find_element(By.ID, "slice-slider")
    assert int(slider.get_attribute("value")) == start - 1
    _screenshot(browser, "viewer", tmp_path)
    _check_clean(browser)


def test_viewer_toggle_hides_a_model(browser: Any, report: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, report / "viewer" / "ExVal.html")

    def groups(source: str) -> list[Any]:
        return browser.find_elements(By.CSS_SELECTOR, f'g.contour[data-source="{source}"]')

    assert groups("VPM") and groups("GT") and groups("LFT")
    assert all(g.is_displayed() for g in groups("VPM"))
    before = browser.find_element(By.ID, "slice-view").screenshot_as_png
    browser.find_element(By.CSS_SELECTOR, '#source-toggles input[data-source="VPM"]').click()
    assert groups("VPM") and not any(g.is_displayed() for g in groups("VPM"))
    assert all(g.is_displayed() for g in groups("GT") + groups("LFT"))
    after = browser.find_element(By.ID, "slice-view").screenshot_as_png
    assert before != after  # the blue contour is gone from the picture too
    _screenshot(browser, "viewer-without-VPM", tmp_path)
    # The choice holds on other slices.
    browser.find_element(By.TAG_NAME, "body").click()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()
    assert not any(g.is_displayed() for g in groups("VPM"))
    browser.find_element(By.CSS_SELECTOR, '#structure-toggles input[data-structure="CTV"]').click()
    ctv = browser.find_elements(By.CSS_SELECTOR, 'g.contour[data-structure="CTV"]')
    assert ctv and not any(g.is_displayed() for g in ctv)
    _check_clean(browser)


def test_viewer_case_picker_shows_the_case_and_its_metrics(browser: Any, report: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _open(browser, report / "viewer" / "GenEva.html")
    Select(browser.find_element(By.ID, "case-select")).select_by_visible_text("GE004")
    view = browser.find_element(By.ID, "slice-view")
    assert view.get_attribute("data-case-id") == "GE004"
    table = browser.find_element(By.ID, "case-metrics")
    assert "GE004" in table.find_element(By.TAG_NAME, "caption").text
    assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == 5 * 2
    _check_clean(browser)
