"""Bootstrap intervals and paired tests (harness.uncertainty); the report site and REPORT.md
(harness.report), built from synthetic result rows written through the real ResultStore."""

from __future__ import annotations

import json
import re
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import registry
from harness import uncertainty as unc
from harness.errors import VecbudgetError
from harness.method import MemoryAccount, Method
from harness.report import build_report, declares_departures, departures
from harness.store import ResultStore

# ---------------------------------------------------------------------------------------------
# uncertainty


def test_ci_contains_mean_and_matches_normal_theory():
    x = np.random.default_rng(1).binomial(1, 0.5, size=1000).astype(float)
    ci = unc.bootstrap_ci(x)
    assert ci.low < ci.mean < ci.high
    assert ci.mean == pytest.approx(x.mean())
    # percentile bootstrap of a mean ≈ mean ± 1.96·sd/√n
    expected = 1.96 * x.std() / np.sqrt(x.size)
    assert ci.half_width == pytest.approx(expected, rel=0.15)


def test_ci_shrinks_with_more_queries():
    rng = np.random.default_rng(2)
    small = unc.bootstrap_ci(rng.uniform(size=100))
    large = unc.bootstrap_ci(rng.uniform(size=1600))
    # width ∝ 1/√n: 16× the queries → about a quarter of the width
    assert large.half_width < small.half_width / 3
    assert large.half_width > small.half_width / 6


def test_ci_is_seeded_and_drops_nans():
    x = np.random.default_rng(3).uniform(size=300)
    assert unc.bootstrap_ci(x) == unc.bootstrap_ci(x)
    with_nan = np.concatenate([x, [np.nan, np.nan]])
    assert unc.bootstrap_ci(with_nan) == unc.bootstrap_ci(x)
    assert unc.bootstrap_ci([]).n == 0 and np.isnan(unc.bootstrap_ci([]).mean)
    const = unc.bootstrap_ci(np.ones(50))
    assert (const.low, const.mean, const.high) == (1.0, 1.0, 1.0)


def test_paired_identical_arrays_not_significant():
    x = np.random.default_rng(4).uniform(size=300)
    res = unc.paired_test(x, x.copy())
    assert res.p_value == 1.0 and not res.significant and res.diff == 0.0


def test_paired_clearly_different_is_significant():
    rng = np.random.default_rng(5)
    x = rng.uniform(size=300)
    res = unc.paired_test(x, x - 0.1)
    assert res.significant
    assert res.p_value == pytest.approx(1 / (unc.RESAMPLES + 1))
    assert res.low <= 0.1 <= res.high + 1e-12


def test_pairing_detects_a_shift_the_intervals_cannot():
    """Per-query spread hides a consistent small gain from two separate intervals; pairing sees it."""
    rng = np.random.default_rng(6)
    a = rng.uniform(size=300)
    b = np.clip(a - 0.02 + rng.normal(0, 0.005, size=300), 0, 1)
    ca, cb = unc.bootstrap_ci(a), unc.bootstrap_ci(b)
    assert ca.low < cb.high  # the intervals overlap
    assert unc.paired_test(a, b).significant


def test_paired_test_is_calibrated_under_the_null():
    rng = np.random.default_rng(7)
    pvals = [unc.paired_test(rng.normal(size=40), rng.normal(size=40), resamples=500, seed=i).p_value
             for i in range(200)]
    rate = np.mean(np.array(pvals) < 0.05)
    assert 0.01 <= rate <= 0.10
    assert pvals[0] > 0


def test_paired_test_needs_the_same_queries():
    with pytest.raises(ValueError, match="same queries"):
        unc.paired_test(np.ones(10), np.ones(11))


def test_as_array_accepts_row_cells():
    assert unc.as_array(None).size == 0
    assert unc.as_array(float("nan")).size == 0
    assert unc.as_array([0.5, 1.0]).tolist() == [0.5, 1.0]
    assert unc.as_array(np.array([0.25], dtype=np.float32)).dtype == np.float64


# ---------------------------------------------------------------------------------------------
# report fixtures: synthetic rows shaped like harness.worker's

NQ = 120
FP = "f" * 16


def _row(method: str, chash: str, bpv: float, pq_recall: np.ndarray, *, dataset: str = "toy",
         build: dict | None = None, search: dict | None = None, qps: float = 1000.0,
         ndcg: np.ndarray | None = None, status: str = "ok", created: str = "2026-01-01T00:00:00+00:00") -> dict:
    dim, n = 16, 1000
    row = {
        "config_hash": chash, "dataset": dataset, "dataset_fingerprint": FP, "metric": "l2", "n": n,
        "dim": dim, "nq": NQ, "method": method, "family": "test",
        "build_params": json.dumps(build or {}, sort_keys=True), "search_params": json.dumps(search or {}, sort_keys=True),
        "k": 10, "bytes_analytic": bpv, "float32_bytes": 4.0 * dim, "status": status, "error": "",
        "versions": json.dumps({"python": "3.11", "numpy": "2.0"}), "cpu_model": "Test CPU 9000", "cpu_count": 2,
        "git_revision": "0123456789abcdef0123456789abcdef01234567", "protocol_version": 1, "created_utc": created,
    }
    if status != "ok":
        row["error"] = "RuntimeError: boom"
        return row
    row.update({
        "ram_bytes": int(bpv * n), "codes_bytes": int(bpv * n), "structure_bytes": 0, "shared_bytes": 0,
        "disk_only_bytes": 0, "disk_bytes": int(bpv * n), "bytes_per_vector": bpv, "ratio_to_float32": bpv / (4.0 * dim),
        "bytes_mismatch": False, "latency_p50_ms": 1000 / qps, "latency_p95_ms": 1.5 * 1000 / qps,
        "latency_p99_ms": 2 * 1000 / qps, "qps_1t": qps, "qps_all": 2 * qps, "threads_all": 2,
        "train_s": 0.25, "build_s": 0.5, "peak_rss_mb": 100.0,
        "recall_at_1": float(pq_recall.mean()), "recall_at_10": float(pq_recall.mean()),
        "recall_at_100": float(pq_recall.mean()),
        "per_query_recall_at_10": pq_recall.astype(np.float32).tolist(),
    })
    if ndcg is not None:
        row["ndcg_at_10"] = float(ndcg.mean())
        row["per_query_ndcg_at_10"] = ndcg.astype(np.float32).tolist()
    return row


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, size=NQ)
    rows = [
        _row("exact", "e" * 16, 64.0, np.ones(NQ), qps=500.0),
        # 'alpha' and 'beta' tie at 16 B/vec (same per-query values); 'gamma' is far worse
        _row("alpha", "a1" * 8, 16.0, base, build={"m": 16}, qps=4000.0),
        _row("beta", "b1" * 8, 15.5, base.copy(), build={"bits": 4}, qps=3000.0),
        _row("gamma", "c1" * 8, 8.0, base - 0.3, build={"m": 8}, qps=9000.0),
        _row("alpha", "a2" * 8, 32.0, np.clip(base + 0.2, 0, 1), build={"m": 32}, qps=2000.0),
        _row("alpha", "a3" * 8, 60.0, np.full(NQ, 0.99), build={"m": 60}, search={"rerank": 2}, qps=1500.0),
        _row("gamma", "c9" * 8, 30.0, base, build={"m": 99}, status="failed"),
        # an older run of a config, superseded by a newer one with the same hash
        _row("gamma", "c1" * 8, 8.0, base - 0.35, build={"m": 8}, qps=1.0, created="2025-01-01T00:00:00+00:00"),
    ]
    root = tmp_path_factory.mktemp("results")
    store = ResultStore(root)
    store.append(rows[:4])
    store.append(rows[4:])
    return root, store.load()


@pytest.fixture(scope="module")
def toy_report(toy_results):
    root, _ = toy_results
    return build_report(root, budgets=(8, 16, 32, 64), resamples=500)


class _Rows(HTMLParser):
    """Collect <tr> attributes and their cells' (data-v, text) in the table with a given id."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.depth, self.rows, self._cell = table_id, 0, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.depth = self.depth + 1 if self.depth or a.get("id") == self.table_id else 0
        elif self.depth and tag == "tr" and "data-hash" in a:
            self.rows.append({"attrs": a, "cells": []})
        elif self.depth and tag == "td" and self.rows:
            self._cell = [a.get("data-v"), ""]
            self.rows[-1]["cells"].append(self._cell)

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data


def _headers(page: str, table_id: str) -> list[str]:
    table = page.split(f'id="{table_id}"', 1)[1].split("</thead>", 1)[0]
    return [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table)]


# ---------------------------------------------------------------------------------------------
# report


def test_report_writes_site_and_markdown(toy_report):
    site = toy_report.site
    assert (site / "index.html").is_file()
    assert (site / "datasets" / "toy.html").is_file()
    for m in ("exact", "alpha", "beta", "gamma"):
        assert (site / "methods" / f"{m}.html").is_file()
    for name in ("quality_vs_bytes", "quality_vs_qps"):
        for ext in ("png", "svg"):
            assert (site / "plots" / "toy" / f"{name}.{ext}").stat().st_size > 0
    assert toy_report.markdown.is_file()
    page = (site / "datasets" / "toy.html").read_text()
    # self-contained: no external fetch, inline script and style
    assert "<script>" in page and "<style>" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert not list(site.parent.glob(".report.*"))  # temporary folders were swapped away


def test_every_leaderboard_number_traces_to_a_stored_run(toy_report, toy_results):
    _, df = toy_results
    runs = df[df["status"] == "ok"].sort_values("created_utc").drop_duplicates("config_hash", keep="last")
    by_hash = runs.set_index("config_hash")
    page = (toy_report.site / "datasets" / "toy.html").read_text()
    parser = _Rows("leaderboard")
    parser.feed(page)
    assert len(parser.rows) >= 8
    headers = _headers(page, "leaderboard")
    col = {h: i for i, h in enumerate(headers)}
    for r in parser.rows:
        chash = r["attrs"]["data-hash"]
        assert chash in by_hash.index
        run = by_hash.loc[chash]
        cells = r["cells"]
        assert r["attrs"]["data-method"] == run["method"]
        assert float(cells[col["recall@10"]][0]) == pytest.approx(run["recall_at_10"])
        assert float(cells[col["QPS"]][0]) == pytest.approx(run["qps_1t"])
        assert float(cells[col["p99 ms"]][0]) == pytest.approx(run["latency_p99_ms"])
        assert float(cells[col["measured B/vec"]][0]) == pytest.approx(run["bytes_per_vector"])
        assert float(cells[col["build s"]][0]) == pytest.approx(run["train_s"] + run["build_s"])
        assert cells[col["config"]][1].strip() == chash
        assert float(r["attrs"]["data-budget"]) >= run["bytes_per_vector"] - 0.5
        # the method page carries the same config with its provenance
        mpage = (toy_report.site / "methods" / f"{run['method']}.html").read_text()
        assert f'id="cfg-{chash}"' in mpage
    # the superseded run's figures are nowhere
    assert "0.0001" not in page


def test_best_marked_and_ties_detected(toy_report):
    page = (toy_report.site / "datasets" / "toy.html").read_text()
    parser = _Rows("leaderboard")
    parser.feed(page)
    headers = _headers(page, "leaderboard")
    vs = headers.index("vs #1")
    at16 = [r for r in parser.rows if float(r["attrs"]["data-budget"]) == 16]
    ranks = {r["attrs"]["data-method"]: r for r in at16}
    assert set(ranks) == {"alpha", "beta", "gamma"}
    top = [r for r in at16 if r["attrs"]["data-rank"] == "1"][0]
    assert top["attrs"].get("class") == "best"
    assert "★" in "".join(c[1] for c in top["cells"])
    # alpha and beta have identical per-query values: not significantly different, whichever is #1
    other = ranks["beta"] if top["attrs"]["data-method"] == "alpha" else ranks["alpha"]
    assert other["cells"][vs][1].startswith("≈#1")
    assert not ranks["gamma"]["cells"][vs][1].startswith("≈#1")
    assert ranks["gamma"]["cells"][vs][1] == f"p={1 / 501:.3f}"  # the smallest p of 500 sign flips
    assert "#1 (≈ #2)" in top["cells"][vs][1]


def test_quality_interval_shown_and_contains_the_mean(toy_report):
    page = (toy_report.site / "datasets" / "toy.html").read_text()
    parser = _Rows("leaderboard")
    parser.feed(page)
    headers = _headers(page, "leaderboard")
    q, ci = headers.index("recall@10"), headers.index("95% CI")
    for r in parser.rows:
        lo, hi = (float(v) for v in re.findall(r"[0-9.]+", r["cells"][ci][1]))
        assert lo <= float(r["cells"][q][1]) <= hi


def test_recommendation_and_markdown(toy_report):
    md = toy_report.markdown.read_text()
    assert "## toy" in md and "### Which method at which budget" in md and "### Leaderboard" in md
    # ≥95% of exact recall (1.0) is first reached by alpha m=60 (0.99) at 60 B/vector
    line95 = next(line for line in md.splitlines() if "keeping ≥95%" in line)
    assert "**alpha**" in line95 and "m=60" in line95 and "60.0 B/vector" in line95 and "a3a3a3a3" in line95
    line99 = next(line for line in md.splitlines() if "keeping ≥99%" in line)
    assert "**alpha**" in line99
    for chash in ("eeeeeeeeeeeeeeee", "a1a1a1a1a1a1a1a1", "c1c1c1c1c1c1c1c1"):
        assert f"`{chash}`" in md
    # image and site links resolve relative to REPORT.md
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert any(link.endswith(".png") for link in links)
    for link in links:
        assert (toy_report.markdown.parent / link).exists(), link
    page = (toy_report.site / "datasets" / "toy.html").read_text()
    assert 'id="recommendation"' in page and "Smallest measured bytes per vector" in page


def test_method_page_provenance_and_failures(toy_report):
    page = (toy_report.site / "methods" / "gamma.html").read_text()
    assert "Test CPU 9000" in page and "0123456789ab" in page and "2026-01-01T00:00:00+00:00" in page
    assert "numpy 2.0" in page
    assert "failed run" in page and "RuntimeError: boom" in page
    assert "not registered in the current tree" in page
    exact = (toy_report.site / "methods" / "exact.html").read_text()
    assert "4·d" in exact and "IndexFlat" in exact  # formula and paper of the registered method


def test_rebuild_replaces_the_site_atomically(toy_results, tmp_path):
    root, _ = toy_results
    out = tmp_path / "site"
    build_report(root, out, markdown=tmp_path / "R.md", budgets=(16, 64), resamples=200, plots=False)
    stale = out / "stale.html"
    stale.write_text("old")
    first = (out / "datasets" / "toy.html").read_text()
    build_report(root, out, markdown=tmp_path / "R.md", budgets=(16, 64), resamples=200, plots=False)
    assert not stale.exists()
    assert (out / "datasets" / "toy.html").read_text() == first  # seeded: identical output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.md", "site"]


def test_report_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(VecbudgetError, match="no stored runs"):
        build_report(tmp_path)
    assert not (tmp_path / "report").exists()


def test_departures_are_flagged(toy_results, tmp_path, monkeypatch):
    module = types.ModuleType("vecbudget_fake_method")
    module.__doc__ = ("Fake method.\n\nPaper: Someone 2020.\n\n"
                      "Departures from the paper: post-hoc on frozen embeddings; no fine-tuning.\n")

    class Fake(Method):
        name = "alpha"
        family = "test"
        paper = "Someone, 'A paper', 2020"
        bytes_formula = "m bytes"

        @classmethod
        def bytes_per_vector(cls, dim, n, **p):
            return float(p.get("m", 0))

        def add(self, vectors):
            pass

        def search(self, queries, k, **s):
            raise NotImplementedError

        def memory(self):
            return MemoryAccount()

    Fake.__module__ = module.__name__
    monkeypatch.setitem(sys.modules, module.__name__, module)
    registry.discover()
    monkeypatch.setitem(registry._REGISTRY, "alpha", Fake)
    root, _ = toy_results
    paths = build_report(root, tmp_path / "site", markdown=tmp_path / "R.md", budgets=(16,), resamples=100, plots=False)
    page = (paths.site / "methods" / "alpha.html").read_text()
    assert "Departs from its paper" in page and "post-hoc on frozen embeddings" in page
    assert "m bytes" in page
    index = (paths.site / "index.html").read_text()
    assert "⚠ departs" in index


def test_departure_statement_parsing():
    doc = "Title.\n\nBody text.\n\nDepartures from the paper: none.\n"
    assert departures(doc) == "Departures from the paper: none."
    assert not declares_departures(departures(doc))
    assert declares_departures("Departures: flat scan instead of a graph.")
    assert not declares_departures("Departures: none. nprobe larger than nlist is clamped to nlist.")
    assert not declares_departures("Departures from the paper: none in the encoder; re-rank is ours.")
    assert declares_departures("Departures / what is not counted: allocator overhead.")
    assert departures("No such statement.") is None and not declares_departures(None)


def test_ndcg_is_the_quality_metric_when_judgments_exist(tmp_path):
    rng = np.random.default_rng(9)
    rec = rng.uniform(size=NQ)
    rows = [_row("exact", "e1" * 8, 64.0, np.ones(NQ), dataset="judged", ndcg=rec),
            _row("alpha", "a1" * 8, 16.0, rec, dataset="judged", ndcg=rec * 0.9)]
    ResultStore(tmp_path).append(rows)
    paths = build_report(tmp_path, budgets=(16, 64), resamples=200, plots=False)
    page = (paths.site / "datasets" / "judged.html").read_text()
    headers = _headers(page, "leaderboard")
    assert "nDCG@10" in headers and "recall@10" in headers
    assert "nDCG@10" in paths.markdown.read_text()
