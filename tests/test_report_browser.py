"""The report site in a real browser: headless Debian Chromium driven by Selenium.

Builds a report from a small real sweep (bigann10k from ../shared/data, a few cheap methods, a
temporary results folder), opens the data set page from disk and checks that it loads without
console errors, that clicking a column header reorders the leaderboard, and that the plots render
(``naturalWidth > 0``). A full-page screenshot is saved under the test's temporary folder, and
copied to ``results/report_screenshot.png`` when ``VECBUDGET_SAVE_SCREENSHOT`` is set.

Install the browser with ``bash scripts/setup_browser.sh`` (called by scripts/setup.sh); without
it the test skips and says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = Path(os.environ.get("VECBUDGET_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("VECBUDGET_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")
#: cheap methods (little or no training) tried in this order; exact is required
PREFERRED = ("sq4", "sq8", "fp16", "ivf-flat", "lvq", "bebr-residual")

pytestmark = pytest.mark.slow


def _driver(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: run scripts/setup_browser.sh")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} not found: run scripts/setup_browser.sh (Debian chromium, chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


@pytest.fixture(scope="module")
def small_report(tmp_path_factory, shared_data):
    from harness.executor import InlineExecutor
    from harness.loaders import load_dataset
    from harness.registry import all_methods
    from harness.report import build_report
    from harness.store import ResultStore
    from harness.sweep import SweepConfig, run_sweep

    if not (shared_data / "bigann10k" / "base.npy").exists():
        pytest.skip("bigann10k not found in ../shared/data")
    registered = all_methods()
    methods = ["exact"] + [m for m in PREFERRED if m in registered][:2]
    root = tmp_path_factory.mktemp("browser-results")
    ds = load_dataset("bigann10k", progress=False)
    cfg = SweepConfig(methods=methods, budgets=(32, 64, 128, 256, 512), per_budget=1,
                      latency_queries=50, threads=1)
    rows = run_sweep(ds, cfg, ResultStore(root), InlineExecutor(), progress=False)
    assert (rows["status"] == "ok").all(), rows.loc[rows["status"] != "ok", "error"].tolist()
    paths = build_report(root, budgets=cfg.budgets, resamples=500)
    return paths


def _rows(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => r.dataset.hash + '@' + r.dataset.budget);")


def _column(driver, index: int) -> list[float | None]:
    return driver.execute_script(
        "var i = arguments[0]; return Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(function (r) {"
        " var v = r.cells[i].getAttribute('data-v'); return v === null || v === '' ? null : Number(v); });",
        index)


def test_report_renders_in_chromium(small_report, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _driver(tmp_path / "profile")
    try:
        page = small_report.site / "datasets" / "bigann10k.html"
        driver.get(page.as_uri())
        assert "bigann10k" in driver.title

        # the plots rendered
        images = driver.find_elements(By.CSS_SELECTOR, ".plots img")
        assert len(images) == 2
        for img in images:
            ok = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", img)
            assert ok, img.get_attribute("src")

        # clicking a header sorts the table by that column, both ways
        headers = driver.find_elements(By.CSS_SELECTOR, "#leaderboard thead th")
        labels = [h.text.strip() for h in headers]
        qps = labels.index("QPS")
        before = _rows(driver)
        assert len(before) >= 5
        headers[qps].click()
        ascending, after_asc = _column(driver, qps), _rows(driver)
        assert ascending == sorted(ascending)
        headers[qps].click()
        descending, after_desc = _column(driver, qps), _rows(driver)
        assert descending == sorted(descending, reverse=True)
        assert sorted(after_asc) == sorted(before)  # same rows, reordered
        assert after_asc != before or after_desc != before
        assert headers[qps].get_attribute("aria-sort") == "descending"
        method = labels.index("method")
        headers[method].click()
        names = [r.split()[-1] for r in driver.execute_script(
            "var i = arguments[0]; return Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => r.cells[i].textContent.trim());",
            method)]
        assert names == sorted(names)

        # the budget filter hides the other budgets' rows
        driver.execute_script("var s = document.getElementById('budget-filter'); s.value = s.options[1].value;"
                              " s.dispatchEvent(new Event('change'));")
        visible = driver.execute_script(
            "return Array.from(document.querySelectorAll('#leaderboard tbody tr')).filter(r => r.offsetParent !== null).length;")
        assert 0 < visible < len(before)
        driver.execute_script("var s = document.getElementById('budget-filter'); s.value = '';"
                              " s.dispatchEvent(new Event('change'));")

        # the other pages load too, and the links between them resolve
        driver.find_element(By.CSS_SELECTOR, "#leaderboard tbody tr td.method a").click()
        assert "method" in driver.title
        assert driver.find_elements(By.CSS_SELECTOR, "tr[id^='cfg-']")
        driver.get((small_report.site / "index.html").as_uri())
        assert driver.find_elements(By.CSS_SELECTOR, "#datasets tbody tr")

        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors

        # full-page screenshot of the leaderboard page
        driver.get(page.as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 40, 8000))
        shot = tmp_path / "report_screenshot.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
    if os.environ.get("VECBUDGET_SAVE_SCREENSHOT"):
        dest = REPO / "results" / "report_screenshot.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)
