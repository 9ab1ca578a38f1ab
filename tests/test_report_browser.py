"""The report site in a real browser: headless Debian Chromium driven by Selenium.

Builds a report from a small real sweep (bigann10k from ../shared/data, a few cheap methods, a
temporary results folder), opens the data set page from disk and checks that it loads without
console errors, that clicking a column header reorders the leaderboard, and that the interactive
plots work: hovering a point shows its configuration, a legend entry hides its method, clicking a
point opens its row on the method page. A second, synthetic report as wide as the published
SciFact one (judgments, long build parameters) checks that the leaderboard fits a 1400-pixel
window and that its optional columns toggle. A full-page screenshot is saved under the test's
temporary folder, and copied to ``results/report_screenshot.png`` when ``VECBUDGET_SAVE_SCREENSHOT``
is set.

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
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = _driver(tmp_path / "profile")
    try:
        page = small_report.site / "datasets" / "bigann10k.html"
        driver.get(page.as_uri())
        assert "bigann10k" in driver.title

        # the interactive plots: hover a point, its tooltip names its method and configuration
        plots = driver.find_elements(By.CSS_SELECTOR, "svg.pareto")
        assert len(plots) == 2
        for svg in plots:
            assert driver.execute_script("return arguments[0].getBoundingClientRect().width;", svg) > 300
        point = driver.find_element(By.CSS_SELECTOR, "#plot-quality_vs_bytes .series:not([data-method='exact']) .pt")
        method = point.find_element(By.XPATH, "../..").get_attribute("data-method")
        tip = driver.find_element(By.CSS_SELECTOR, "#fig-quality_vs_bytes .plot-tip")
        assert not tip.is_displayed()
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", point)
        ActionChains(driver).move_to_element(point).perform()
        assert tip.is_displayed()
        assert method in tip.text and "bytes/vector" in tip.text and "QPS" in tip.text, tip.text
        ActionChains(driver).move_to_element(driver.find_element(By.CSS_SELECTOR, "#fig-quality_vs_bytes figcaption")).perform()
        assert not tip.is_displayed()
        # the legend hides a method in both plots, and shows it again
        series = f"svg.pareto .series[data-method='{method}']"
        driver.find_element(By.CSS_SELECTOR, f"#fig-quality_vs_bytes .legend-item[data-method='{method}']").click()
        assert not any(g.is_displayed() for g in driver.find_elements(By.CSS_SELECTOR, series))
        driver.find_element(By.CSS_SELECTOR, f"#fig-quality_vs_qps .legend-item[data-method='{method}']").click()
        assert all(g.is_displayed() for g in driver.find_elements(By.CSS_SELECTOR, series))
        # a click on a point opens its configuration's row on the method page
        target, anchor = point.find_element(By.XPATH, "..").get_dom_attribute("href").split("#", 1)
        ActionChains(driver).move_to_element(point).click().perform()
        assert driver.current_url == (page.parent / target).resolve().as_uri() + "#" + anchor
        assert anchor.startswith("cfg-")
        row = driver.find_element(By.ID, anchor)
        assert "best" in row.get_attribute("class")  # highlighted
        driver.get(page.as_uri())

        # clicking a header sorts the table by that column, both ways
        headers = driver.find_elements(By.CSS_SELECTOR, "#leaderboard thead th")
        labels = [h.get_attribute("textContent").strip() for h in headers]
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


#: build parameters as long as the longest published ones (SciFact's mrl-funnel, leanvec-id)
WIDE_METHODS = {
    "mrl-funnel": ({"basis": "pca", "d_c": 64, "d_s": 384, "dtype": "float32", "nlist": 256},
                   {"k": 192, "primary": "fp16", "secondary": "float32"}),
    "leanvec-id": ({"k": 192, "primary": "lvq8", "secondary": "fp16"}, {"rerank_factor": 1}),
    "adanns-opq": ({"basis": "pca", "d_p": 64, "m": 16}, {"d0": 16, "shortlist_factor": 64}),
    "binary-rescore": ({"rescore": "bits", "variant": "centred"}, {"factor": 8}),
    "bebr-residual": ({"bits": 1, "u": 2}, {}),
    "kvquant-nuq": ({"bits": 2, "outlier_frac": 0.01}, {}),
    "rabitq": ({"nb_bits": 1, "nlist_c": 0, "rotate": False}, {"qb": 4}),
    "pq": ({"m": 96, "nbits": 4}, {}),
}


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory):
    """A synthetic report as wide as the published SciFact page: judgments, long parameters."""
    import numpy as np

    from harness.report import build_report
    from harness.store import ResultStore
    from tests.test_report import NQ, _row

    rng = np.random.default_rng(0)
    rows = [_row("exact", "e" * 16, 1536.0, np.ones(NQ), dataset="wide", ndcg=np.full(NQ, 0.65),
                 qrels=np.full(NQ, 0.93))]
    for i, (method, (build, search)) in enumerate(WIDE_METHODS.items()):
        for j, bpv in enumerate((12.0, 28.0, 60.0, 120.0, 250.0, 500.0, 1000.0)):
            q = np.clip(rng.uniform(0.2, 0.9, size=NQ) + 0.05 * j, 0, 1)
            rows.append(_row(method, f"{i:02d}{j:02d}" + "a" * 12, bpv, q, dataset="wide", build=build,
                             search=search, qps=12345.0 * (i + 1), ndcg=q * 0.7, qrels=np.clip(q + 0.1, 0, 1),
                             memory_flag=(i == 0)))
    root = tmp_path_factory.mktemp("wide-results")
    ResultStore(root).append(rows)
    return build_report(root, budgets=(16, 32, 64, 128, 256, 512, 1024, 2048), resamples=200, plots=False)


def test_leaderboard_fits_a_laptop_window(wide_report, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _driver(tmp_path / "profile")
    try:
        driver.set_window_size(1400, 1000)
        driver.get((wide_report.site / "datasets" / "wide.html").as_uri())
        overflow = ("var t = document.getElementById('leaderboard'), w = t.parentElement;"
                    " return [t.scrollWidth, w.clientWidth, document.documentElement.scrollWidth, window.innerWidth];")
        table_w, box_w, page_w, window_w = driver.execute_script(overflow)
        assert table_w <= box_w, (table_w, box_w)  # no horizontal scroll bar in the leaderboard
        assert page_w <= window_w, (page_w, window_w)  # nor on the page
        for label in ("recall@10", "nDCG@10", "Recall@100", "QPS", "measured B/vec"):
            th = driver.find_element(By.XPATH, f"//table[@id='leaderboard']/thead//th[normalize-space()='{label}']")
            assert th.is_displayed(), label
            right = driver.execute_script(
                "var r = arguments[0].getBoundingClientRect(), w = document.getElementById('leaderboard')"
                ".parentElement.getBoundingClientRect(); return [r.right, w.right];", th)
            assert right[0] <= right[1] + 0.5, (label, right)

        # optional columns: shown and hidden with their check boxes
        def shown(key: str) -> bool:
            return driver.find_element(By.CSS_SELECTOR, f"#leaderboard th[data-col='{key}']").is_displayed()

        assert not shown("config") and shown("ci")
        driver.find_element(By.CSS_SELECTOR, "input.col-toggle[data-col='config']").click()
        driver.find_element(By.CSS_SELECTOR, "input.col-toggle[data-col='ci']").click()
        assert shown("config") and not shown("ci")
        hidden_cells = driver.execute_script(
            "var i = Array.from(document.querySelectorAll('#leaderboard thead th')).findIndex(h => h.dataset.col === 'ci');"
            " return Array.from(document.querySelectorAll('#leaderboard tbody tr')).filter(r => r.cells[i].offsetParent !== null).length;")
        assert hidden_cells == 0
        # every column on: the table scrolls in its own box, never the page
        for box in driver.find_elements(By.CSS_SELECTOR, "input.col-toggle"):
            if not box.is_selected():
                box.click()
        assert driver.execute_script(overflow)[2] <= window_w
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
