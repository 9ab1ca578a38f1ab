"""`vecbudget check`: the statistics, the comparison rules, the suite file, and end to end on
bigann10k: a baseline written with --update-baseline passes three checks in a row, and PQ at
half the bytes (the test-only VECBUDGET_TEST_DEGRADE switch) fails with a diff naming pq."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from harness import check as chk
from harness.errors import UnknownNameError, VecbudgetError
from tests.conftest import REPO

# ---------------------------------------------------------------------------------------------
# Mann-Whitney U


def test_mann_whitney_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n1, n2, shift in ((3, 3, 0.0), (5, 5, 1.0), (6, 6, -0.5), (4, 7, 2.0)):
        x, y = rng.normal(size=n1), rng.normal(shift, size=n2)
        want = stats.mannwhitneyu(x, y, alternative="less", method="exact").pvalue
        assert chk.mann_whitney_less(list(x), list(y)) == pytest.approx(want)
    x, y = rng.normal(size=40), rng.normal(0.5, size=40)  # normal approximation
    want = stats.mannwhitneyu(x, y, alternative="less", method="asymptotic").pvalue
    assert chk.mann_whitney_less(list(x), list(y)) == pytest.approx(want, rel=1e-6)


def test_mann_whitney_extremes():
    assert chk.mann_whitney_less([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(1 / 252)
    assert chk.mann_whitney_less([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == 1.0
    assert chk.mann_whitney_less([1.0] * 4, [1.0] * 4) == 1.0  # all tied: no evidence
    assert chk.mann_whitney_less([], [1.0]) == 1.0


# ---------------------------------------------------------------------------------------------
# comparison rules

TOL = chk.Tolerances()


def _measure(method: str, recall: list[float], bpv: list[float], ratios: list[float], **extra) -> chk.Measurement:
    m = chk.Measurement(chk.Entry("ds", method, {"m": 8}, {}))
    m.figures = {"recall_at_10": list(recall), chk.BYTES_FIGURE: list(bpv), chk.SPEED_FIGURE: list(ratios), **extra}
    return m


def _baseline(*ms: chk.Measurement, ratios: list[float] | None = None) -> dict:
    entries = {}
    for m in ms:
        entries[m.entry.key] = {"recall_at_10": m.figures["recall_at_10"][0],
                                chk.BYTES_FIGURE: m.figures[chk.BYTES_FIGURE][0],
                                chk.SPEED_FIGURE: ratios or m.figures[chk.SPEED_FIGURE]}
    return {"format": chk.BASELINE_FORMAT, "entries": entries}


def _status(findings, figure):
    return [f.status for f in findings if f.figure == figure]


def test_identical_figures_pass():
    m = _measure("pq", [0.8, 0.8], [16.0, 16.0], [2.0, 2.1, 1.9, 2.0, 2.05, 1.95])
    findings = chk.compare({m.entry.key: m}, _baseline(m), TOL)
    assert all(f.status == "ok" for f in findings)
    assert {f.figure for f in findings} == {"recall_at_10", chk.BYTES_FIGURE, "QPS / exact QPS"}


def test_quality_rules():
    base = _measure("pq", [0.800], [16.0], [1.0] * 6)
    for recall, status in ((0.796, "ok"), (0.804, "ok"), (0.790, "regression"), (0.810, "improved")):
        cur = _measure("pq", [recall], [16.0], [1.0] * 6)
        assert _status(chk.compare({cur.entry.key: cur}, _baseline(base), TOL), "recall_at_10") == [status]


def test_bytes_rules():
    base = _measure("pq", [0.8], [1000.0], [1.0] * 6)
    for bpv, status in ((1000.5, "ok"), (1002.0, "regression"), (990.0, "improved")):
        cur = _measure("pq", [0.8], [bpv], [1.0] * 6)
        assert _status(chk.compare({cur.entry.key: cur}, _baseline(base), TOL), chk.BYTES_FIGURE) == [status]


def test_speed_needs_factor_and_significance():
    base = [2.0, 2.1, 1.9, 2.0, 2.05, 1.95]
    key = _measure("pq", [0.8], [16.0], base)

    def finding(current: list[float]) -> chk.Finding:
        cur = _measure("pq", [0.8], [16.0], current)
        found = chk.compare({cur.entry.key: cur}, _baseline(key, ratios=base), TOL)
        return next(f for f in found if f.figure == "QPS / exact QPS")

    assert finding([0.6, 0.7, 0.65, 0.62, 0.68, 0.66]).status == "regression"  # 3× slower, every sample
    assert finding([1.3, 1.4, 1.35, 1.3, 1.45, 1.4]).status == "ok"  # clearly slower but under 2×
    # load on the machine slowed most samples 3×, not the best one: no regression (the median would be)
    assert finding([0.6, 0.65, 0.7, 0.6, 0.62, 2.0]).status == "ok"
    assert finding([6.0, 6.2, 5.9, 6.1, 6.0, 6.3]).status == "improved"
    f = finding([0.6, 0.7, 0.65, 0.62, 0.68, 0.66])
    assert "2.100" in f.baseline and "0.700" in f.current and "×0.33" in f.change
    # too few samples for the test to reach p < 0.05: the factor alone decides, and the rule says so
    cur = _measure("pq", [0.8], [16.0], [0.5])
    f = [f for f in chk.compare({cur.entry.key: cur}, _baseline(key, ratios=[2.0]), TOL) if f.figure == "QPS / exact QPS"][0]
    assert f.status == "regression" and "too few" in f.rule


def test_speed_factor_without_significance_is_not_a_regression():
    base = [4.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # one lucky fast baseline sample
    key = _measure("pq", [0.8], [16.0], base)
    cur = _measure("pq", [0.8], [16.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    f = next(f for f in chk.compare({cur.entry.key: cur}, _baseline(key, ratios=base), TOL)
             if f.figure == "QPS / exact QPS")
    assert f.status == "ok"  # best sample 4× lower, but the samples do not differ (p ≈ 0.5)


def test_exact_is_not_compared_with_itself():
    m = _measure("exact", [1.0], [512.0], [1.0] * 6)
    assert "QPS / exact QPS" not in {f.figure for f in chk.compare({m.entry.key: m}, _baseline(m), TOL)}


def test_unstable_missing_and_failed_are_regressions():
    base = _measure("pq", [0.8], [16.0], [1.0] * 6)
    unstable = _measure("pq", [0.8, 0.7], [16.0, 16.0], [1.0] * 6)
    assert "regression" in _status(chk.compare({unstable.entry.key: unstable}, _baseline(base), TOL), "recall_at_10")
    new = chk.Measurement(chk.Entry("ds", "sq8", {}, {}))
    new.figures = {"recall_at_10": [0.9], chk.BYTES_FIGURE: [128.0], chk.SPEED_FIGURE: [1.0]}
    findings = chk.compare({new.entry.key: new}, _baseline(base), TOL)
    assert any(f.failing and "update-baseline" in f.rule for f in findings)
    assert any(f.figure == "entry" and "dropped" in f.rule and not f.failing for f in findings)
    failed = chk.Measurement(base.entry, errors=["failed: RuntimeError: boom"])
    findings = chk.compare({failed.entry.key: failed}, _baseline(base), TOL)
    assert findings[0].failing and "boom" in findings[0].current


def test_findings_table_names_the_entry():
    base = _measure("pq", [0.8], [16.0], [1.0] * 6)
    cur = _measure("pq", [0.5], [8.0], [1.0] * 6)
    table = chk.findings_table([f for f in chk.compare({cur.entry.key: cur}, _baseline(base), TOL) if f.status != "ok"])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| status | data set | method |")
    assert "| **REGRESSION** | ds | pq | {\"m\": 8} | {} | recall_at_10 | 0.8000 | 0.5000 | -0.3000 |" in table


# ---------------------------------------------------------------------------------------------
# suite files


def _write(tmp_path, text: str):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    return path


def test_suite_errors_are_clear(tmp_path):
    with pytest.raises(UnknownNameError):
        chk.load_suite(_write(tmp_path, '[[run]]\ndataset = "bigann10k"\nmethod = "exact"\n'
                                        '[[run]]\ndataset = "bigann10k"\nmethod = "no-such-method"\n'))
    with pytest.raises(VecbudgetError, match="no build parameter"):
        chk.load_suite(_write(tmp_path, '[[run]]\ndataset = "bigann10k"\nmethod = "exact"\nbuild = { zzz = 1 }\n'))
    with pytest.raises(VecbudgetError, match="has no 'exact' entry"):
        chk.load_suite(_write(tmp_path, '[[run]]\ndataset = "bigann10k"\nmethod = "sq8"\n'))
    with pytest.raises(VecbudgetError, match="unknown key"):
        chk.load_suite(_write(tmp_path, 'repeat = 3\n[[run]]\ndataset = "bigann10k"\nmethod = "exact"\n'))
    with pytest.raises(VecbudgetError, match="not valid TOML"):
        chk.load_suite(_write(tmp_path, "[[run]\n"))
    with pytest.raises(VecbudgetError, match="no baseline"):
        chk.load_baseline(tmp_path / "absent.json")


def test_committed_suite_and_baseline_agree():
    """The committed suite is valid for the registered methods and its baseline covers it."""
    suite = chk.load_suite(chk.DEFAULT_SUITE)
    baseline = chk.load_baseline(chk.DEFAULT_BASELINE)
    assert {e.key for e in suite.entries} == set(baseline["entries"])
    for entry in baseline["entries"].values():
        assert len(entry[chk.SPEED_FIGURE]) == baseline["repeats"] * baseline["samples"]
        assert entry["bytes_per_vector"] > 0 and 0 <= entry["recall_at_10"] <= 1


# ---------------------------------------------------------------------------------------------
# end to end on bigann10k

TINY_SUITE = """
# a tiny suite for the test: 1 round, 5 speed samples, PQ trained on 2,000 vectors
repeats = 1
samples = 5
threads = 1
latency_queries = 20
train_size = 2000

[[run]]
dataset = "bigann10k"
method = "exact"

[[run]]
dataset = "bigann10k"
method = "sq8"

[[run]]
dataset = "bigann10k"
method = "pq"
build = { m = 16, nbits = 4 }
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_data):
    from harness.registry import all_methods

    if not (shared_data / "bigann10k" / "base.npy").exists():
        pytest.skip("bigann10k not found in ../shared/data")
    missing = {"exact", "sq8", "pq"} - set(all_methods())
    if missing:
        pytest.skip(f"methods {sorted(missing)} not registered")
    folder = tmp_path_factory.mktemp("check")
    suite, baseline = folder / "suite.toml", folder / "baseline.json"
    suite.write_text(TINY_SUITE)
    result = chk.run_check(suite, baseline, update_baseline=True, report_path=None, progress=False)
    assert result.updated and baseline.exists()
    return suite, baseline, folder


@pytest.mark.slow
def test_unchanged_tree_passes_three_times(tiny, monkeypatch):
    monkeypatch.delenv("VECBUDGET_TEST_DEGRADE", raising=False)
    suite, baseline, folder = tiny
    base = chk.load_baseline(baseline)
    for i in range(3):
        result = chk.run_check(suite, baseline, report_path=folder / f"pass{i}.md", progress=False)
        assert result.ok, result.markdown
        # deterministic figures are identical, not merely within tolerance
        for f in result.findings:
            if f.figure in ("recall_at_10", "bytes_per_vector"):
                assert f.baseline == f.current, f
        assert "Nothing moved" in result.markdown or "no regression" in result.markdown
    pq = next(e for e in base["entries"].values() if e["method"] == "pq")
    # 16 sub-quantizers of 4 bits, plus 16 centroids of 128 floats amortised over 10,000 vectors
    assert pq["bytes_per_vector"] == pytest.approx(8.0 + 16 * 128 * 4 / 10_000, abs=0.05)


@pytest.mark.slow
def test_degraded_pq_fails_with_a_clear_diff(tiny):
    suite, baseline, folder = tiny
    report = folder / "degraded.md"
    env = {**os.environ, "VECBUDGET_TEST_DEGRADE": "pq:m=0.5"}
    proc = subprocess.run([sys.executable, "cli.py", "check", "--suite", str(suite), "--baseline", str(baseline),
                           "--report-file", str(report), "-q"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "# vecbudget check: FAILED" in out
    moved = out.split("## What moved", 1)[1]
    regressions = [line for line in moved.splitlines() if line.startswith("| **REGRESSION**")]
    assert regressions and all("| pq |" in line for line in regressions)
    assert any("| recall_at_10 |" in line for line in regressions)
    # half the bytes is reported beside the recall drop, and nothing else moved
    assert any("| pq |" in line and "| bytes_per_vector |" in line and "improved" in line for line in moved.splitlines())
    assert "| sq8 |" not in moved and "| exact |" not in moved
    assert report.read_text().startswith("# vecbudget check: FAILED")


@pytest.mark.slow
def test_slower_search_is_a_speed_regression(tiny, monkeypatch):
    """sq8's search made 4× slower (it runs 4 times per call): a speed regression on sq8 alone."""
    from harness.registry import get_method

    suite, baseline, folder = tiny
    cls = get_method("sq8")
    original = cls.search

    def slow_search(self, queries, k, **params):
        for _ in range(3):
            original(self, queries, k, **params)
        return original(self, queries, k, **params)

    monkeypatch.setattr(cls, "search", slow_search)
    result = chk.run_check(suite, baseline, report_path=None, progress=False)
    assert not result.ok
    failing = [f for f in result.findings if f.failing]
    assert failing and all(f.figure == "QPS / exact QPS" and "| sq8 |" in f" | {f.entry} |" for f in failing)
    assert all(f.status == "ok" for f in result.findings if f.figure in ("recall_at_10", "bytes_per_vector"))
