"""Bootstrap intervals and paired tests (harness.uncertainty); the report site and REPORT.md
(harness.report), built from synthetic result rows written through the real ResultStore."""

from __future__ import annotations

import html
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
         ndcg: np.ndarray | None = None, status: str = "ok", created: str = "2026-01-01T00:00:00+00:00",
         qrels: np.ndarray | None = None, memory_flag: bool = False, shared: int = 0) -> dict:
    dim, n = 16, 1000
    row = {
        "config_hash": chash, "dataset": dataset, "dataset_fingerprint": (dataset + FP)[:16], "metric": "l2", "n": n,
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
        "ram_bytes": int(bpv * n), "codes_bytes": int(bpv * n) - shared, "structure_bytes": 0, "shared_bytes": shared,
        "memory_flag": memory_flag,
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
    if qrels is not None:
        row["qrels_recall_at_100"] = float(qrels.mean())
        row["per_query_qrels_recall_at_100"] = qrels.astype(np.float32).tolist()
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
    store.append(rows[-1:])  # the store stamps created_utc as it appends: the superseded run first
    store.append(rows[:4])
    store.append(rows[4:-1])
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
    assert ranks["gamma"]["cells"][vs][1] == "p<0.001"  # the leaderboard's test: 2,000 sign flips
    assert "#1 (≈ #2)" in top["cells"][vs][1]
    # the ranks are the leaderboard's: entries the paired test cannot separate share a rank
    assert ranks["alpha"]["attrs"]["data-rank"] == ranks["beta"]["attrs"]["data-rank"] == "1"
    assert ranks["gamma"]["attrs"]["data-rank"] == "3"  # 1 + the two entries significantly better
    assert top["attrs"].get("data-top") == "1" and other["attrs"].get("data-top") is None


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


def test_method_page_provenance_and_failures(toy_results, toy_report):
    page = (toy_report.site / "methods" / "gamma.html").read_text()
    assert "Test CPU 9000" in page and "0123456789ab" in page
    _, df = toy_results
    current = df[(df["config_hash"] == "c1" * 8)].sort_values("created_utc")
    assert str(current["created_utc"].iloc[-1]) in page  # the newest run's time, not the superseded one's
    assert str(current["created_utc"].iloc[0]) not in page
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


# ---------------------------------------------------------------------------------------------
# issue 14: restricted reports, placeholders, interactive plots; issue 8: the leaderboard's verdicts


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def _prose(page: str) -> list[str]:
    """Sentences of a page: its paragraphs and list items (tables left out: a dash is a cell's blank)."""
    body = page.split("<main>", 1)[1].split("</main>", 1)[0]
    return [_text(m) for m in re.findall(r"<(?:p|li)\b[^>]*>(.*?)</(?:p|li)>", body, flags=re.S)]


PLACEHOLDER = re.compile(r"(^|[\s(;:,])[–-]($|[\s);:,.])")


def test_restricted_report_keeps_the_other_data_sets(tmp_path):
    rng = np.random.default_rng(11)
    base = rng.uniform(0.4, 0.9, size=NQ)
    store = ResultStore(tmp_path)
    store.append([_row("exact", "e1" * 8, 64.0, np.ones(NQ), dataset="one"),
                  _row("alpha", "a1" * 8, 16.0, base, dataset="one", build={"m": 16}),
                  _row("exact", "e2" * 8, 64.0, np.ones(NQ), dataset="two"),
                  _row("beta", "b2" * 8, 16.0, base, dataset="two", build={"bits": 4})])
    site, md = tmp_path / "site", tmp_path / "R.md"
    build_report(tmp_path, site, markdown=md, budgets=(16, 64), resamples=100)
    two_page = (site / "datasets" / "two.html").read_bytes()
    two_plots = sorted(p.name for p in (site / "plots" / "two").iterdir())
    assert two_plots  # the static figures exist before the restricted build

    store.append([_row("alpha", "a3" * 8, 32.0, np.clip(base + 0.05, 0, 1), dataset="one", build={"m": 32})])
    paths = build_report(tmp_path, site, markdown=md, budgets=(16, 32, 64), resamples=100, datasets=["one"])
    assert paths.rebuilt == ["one"] and paths.datasets == ["one", "two"]
    # the data set not asked for keeps its page and plots exactly; the one asked for is updated
    assert (site / "datasets" / "two.html").read_bytes() == two_page
    assert sorted(p.name for p in (site / "plots" / "two").iterdir()) == two_plots
    assert "a3" * 8 in (site / "datasets" / "one.html").read_text()
    # the index lists both, with counts that add up to what it lists
    index = (site / "index.html").read_text()
    assert 'href="datasets/one.html"' in index and 'href="datasets/two.html"' in index
    assert "5 stored result rows; the 5 current configurations of these 2 data set(s)" in index
    for link in re.findall(r'href="([^"#]+\.html)', index):
        assert (site / link).is_file(), link
    # the method pages keep the other data set's runs, REPORT.md keeps its section
    assert "b2" * 8 in (site / "methods" / "beta.html").read_text()
    text = md.read_text()
    assert "## one" in text and "## two" in text and "`b2b2b2b2b2b2b2b2`" in text


def test_restricted_report_into_a_new_folder_links_nothing_missing(tmp_path):
    rng = np.random.default_rng(12)
    ResultStore(tmp_path).append([_row("exact", "e1" * 8, 64.0, np.ones(NQ), dataset="one"),
                                  _row("exact", "e2" * 8, 64.0, rng.uniform(size=NQ), dataset="two")])
    paths = build_report(tmp_path, tmp_path / "elsewhere", markdown=tmp_path / "R.md", budgets=(64,),
                         resamples=100, plots=False, datasets=["two"])
    index = (paths.site / "index.html").read_text()
    for link in re.findall(r'href="([^"#]+\.html)', index):
        assert (paths.site / link).is_file(), link
    assert 'href="datasets/one.html"' in index


def test_no_placeholder_dash_in_sentences(tmp_path):
    rng = np.random.default_rng(13)
    base = rng.uniform(0.2, 0.6, size=NQ)
    # 'plain' has no build or search parameters and is the cheapest configuration above 95% and 99%
    ResultStore(tmp_path).append([
        _row("exact", "e1" * 8, 64.0, np.ones(NQ)),
        _row("plain", "p1" * 8, 20.0, np.full(NQ, 0.995), qps=5000.0),
        _row("alpha", "a1" * 8, 8.0, base, build={"m": 8}),
    ])
    paths = build_report(tmp_path, budgets=(4, 8, 32, 64), resamples=100, plots=False)
    sentences = []
    for page in (paths.site / "datasets" / "toy.html", paths.site / "index.html", paths.site / "methods" / "plain.html"):
        sentences += _prose(page.read_text())
    md = paths.markdown.read_text()
    sentences += [line.removeprefix("- ") for line in md.splitlines() if line and not line.startswith("|")]
    assert any("cheapest is plain at 20.0 B/vector" in s for s in sentences), sentences
    assert any("Nothing fits 4 B/vector: the smallest stored configuration is alpha (m=8), 8.0 B/vector" in s
               for s in sentences), sentences
    bad = [s for s in sentences if PLACEHOLDER.search(s)]
    assert not bad, bad


def test_interactive_plots_are_inline_and_link_their_rows(toy_results, toy_report):
    _, df = toy_results
    page = (toy_report.site / "datasets" / "toy.html").read_text()
    assert "<script src" not in page and "http://" not in page and "https://" not in page
    current = df[df["status"] == "ok"].sort_values("created_utc").drop_duplicates("config_hash", keep="last")
    for plot in ("plot-quality_vs_bytes", "plot-quality_vs_qps"):
        svg = page.split(f'id="{plot}"', 1)[1].split("</svg>", 1)[0]
        links = re.findall(r'<a href="([^"]+)" aria-label="([^"]+)"><path class="pt[^"]*" d="[^"]+" data-tip=\'([^\']+)\'', svg)
        assert len(links) == current["config_hash"].nunique()  # one point per current configuration
        for href, label, tip in links:
            data = json.loads(html.unescape(tip))
            assert set(data) >= {"method", "build", "quality", "bytes", "qps", "hash"}
            assert href == f"../methods/{data['method']}.html#cfg-{data['hash']}"
            target = (toy_report.site / "datasets" / href.split("#")[0]).resolve()
            assert f'id="cfg-{data["hash"]}"' in target.read_text()
            assert html.unescape(label).startswith(data["method"])
            run = current[current["config_hash"] == data["hash"]].iloc[0]
            assert float(data["quality"]) == pytest.approx(run["recall_at_10"], abs=5e-5)
            assert float(data["bytes"]) == pytest.approx(run["bytes_per_vector"], abs=0.05)
    legend = re.findall(r'<button type="button" class="legend-item" data-method="([^"]+)"', page)
    assert sorted(set(legend)) == ["alpha", "beta", "exact", "gamma"]
    # the static figures stay, linked from the page
    assert 'href="../plots/toy/quality_vs_bytes.png"' in page and 'href="../plots/toy/quality_vs_bytes.svg"' in page


def test_leaderboard_columns_can_be_hidden_and_parameters_wrap(toy_report):
    page = (toy_report.site / "datasets" / "toy.html").read_text()
    toggles = dict(re.findall(r'class="col-toggle" data-table="leaderboard" data-col="([^"]+)"( checked)?', page))
    assert {"ratio", "ci", "p99", "build_s", "config"} <= set(toggles)
    assert toggles["config"] == "" and toggles["ci"] == " checked"  # config hidden by default, CI shown
    table = page.split('id="leaderboard"', 1)[1].split("</thead>", 1)[0]
    assert re.search(r'<th [^>]*data-col="config" data-default="hidden"', table)
    assert '<div class="table-wrap"><table class="sortable" id="leaderboard">' in page
    assert '<span class="kv">m=60</span>' in page  # wraps between parameters, not inside one


def test_recall_at_100_beside_ndcg_memory_flag_and_nothing_fits(tmp_path):
    rng = np.random.default_rng(14)
    rec = rng.uniform(size=NQ)
    ResultStore(tmp_path).append([
        _row("exact", "e1" * 8, 64.0, np.ones(NQ), dataset="judged", ndcg=rec, qrels=np.full(NQ, 0.9)),
        _row("alpha", "a1" * 8, 16.0, rec, dataset="judged", ndcg=rec * 0.9, qrels=np.full(NQ, 0.75),
             memory_flag=True),
    ])
    paths = build_report(tmp_path, budgets=(8, 16, 64), resamples=100, plots=False)
    page = (paths.site / "datasets" / "judged.html").read_text()
    headers = _headers(page, "leaderboard")
    assert headers.index("Recall@100") == headers.index("nDCG@10") + 5  # after CI, vs #1, %, recall@10
    parser = _Rows("leaderboard")
    parser.feed(page)
    r100 = headers.index("Recall@100")
    by_hash = {(r["attrs"]["data-hash"], r["attrs"]["data-budget"]): r for r in parser.rows}
    alpha = by_hash[("a1" * 8, "16.0")]
    assert float(alpha["cells"][r100][0]) == pytest.approx(0.75)
    assert alpha["attrs"].get("data-memory-flag") == "1"
    assert "⚠" in alpha["cells"][headers.index("measured B/vec")][1]
    exact = by_hash[("e1" * 8, "64.0")]
    assert exact["attrs"].get("data-memory-flag") is None
    assert "Nothing fits 8 B/vector" in page
    md = paths.markdown.read_text()
    assert "Recall@100" in md and "16.0 ⚠" in md and "Nothing fits 8 B/vector" in md


def test_bytes_projected_at_n(tmp_path):
    rng = np.random.default_rng(15)
    # 60 B/vector at n=1000, of which 50,000 shared bytes: 10.05 B/vector at n=1,000,000
    ResultStore(tmp_path).append([
        _row("exact", "e1" * 8, 64.0, np.ones(NQ)),
        _row("alpha", "a1" * 8, 60.0, rng.uniform(size=NQ), build={"m": 60}, shared=50_000),
    ])
    paths = build_report(tmp_path, budgets=(16, 64), resamples=100, plots=False, at_n=1_000_000)
    page = (paths.site / "datasets" / "toy.html").read_text()
    headers = _headers(page, "leaderboard")
    col = headers.index("B/vec at n=1,000,000")
    parser = _Rows("leaderboard")
    parser.feed(page)
    at16 = [r for r in parser.rows if r["attrs"]["data-budget"] == "16.0"]
    assert [r["attrs"]["data-hash"] for r in at16] == ["a1" * 8]  # fits 16 B/vector only when projected
    assert float(at16[0]["cells"][col][0]) == pytest.approx(10.05)
    assert "projected to n=1,000,000" in page
    assert "B/vec at n=1,000,000" in paths.markdown.read_text()
    with pytest.raises(VecbudgetError, match="at_n"):
        build_report(tmp_path, tmp_path / "x", markdown=tmp_path / "x.md", plots=False, at_n=0)


def test_report_reuses_the_leaderboards_verdicts(toy_results, tmp_path, monkeypatch):
    """Ranks, ties and p-values come from harness.leaderboard, not from a second test in the report."""
    import harness.report as report

    real = report.leaderboard

    def doctored(*args, **kwargs):
        board = real(*args, **kwargs)
        gamma = board["method"] == "gamma"
        board.loc[gamma, "tied_with_best"] = True
        board.loc[gamma, "p_vs_best"] = 0.4242
        board.loc[gamma, "rank"] = 1
        return board

    monkeypatch.setattr(report, "leaderboard", doctored)
    root, _ = toy_results
    paths = build_report(root, tmp_path / "site", markdown=tmp_path / "R.md", budgets=(16,), resamples=100, plots=False)
    page = (paths.site / "datasets" / "toy.html").read_text()
    parser = _Rows("leaderboard")
    parser.feed(page)
    vs = _headers(page, "leaderboard").index("vs #1")
    gamma = next(r for r in parser.rows if r["attrs"]["data-method"] == "gamma")
    assert gamma["cells"][vs][1] == "≈#1 p=0.424" and gamma["attrs"]["data-rank"] == "1"


def _fake_method(name: str, module_name: str, doc: str, **attrs) -> type:
    class Fake(Method):
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

    Fake.name = name
    for key, value in attrs.items():
        setattr(Fake, key, value)
    module = types.ModuleType(module_name)
    module.__doc__ = doc
    Fake.__module__ = module_name
    return Fake, module


def test_variants_and_post_hoc_replace_the_departure_regex(toy_results, tmp_path, monkeypatch):
    doc = "Fake.\n\nDepartures from the paper: post-hoc on frozen embeddings.\n"
    alpha, mod_a = _fake_method("alpha", "vecbudget_fake_alpha", doc,
                                post_hoc="the encoder is not Matryoshka-trained: prefixes of a frozen model",
                                variants={"centred": "subtracts the mean first; not in the paper"})
    beta, mod_b = _fake_method("beta", "methods.vecbudget_fake_beta", doc)  # this repository's: faithful
    registry.discover()
    for cls, mod in ((alpha, mod_a), (beta, mod_b)):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        monkeypatch.setitem(registry._REGISTRY, cls.name, cls)
    root, _ = toy_results
    paths = build_report(root, tmp_path / "site", markdown=tmp_path / "R.md", budgets=(16,), resamples=100, plots=False)
    page = (paths.site / "methods" / "alpha.html").read_text()
    assert 'id="post-hoc"' in page and "prefixes of a frozen model" in page
    assert "alpha[centred]" in page and "subtracts the mean first" in page
    assert "Departs from its paper" not in page
    beta_page = (paths.site / "methods" / "beta.html").read_text()
    assert "Departs from its paper" not in beta_page and "Runs the paper's recipe" in beta_page
    index = (paths.site / "index.html").read_text()
    rows = dict(re.findall(r'methods/([a-z]+)\.html">[a-z]+</a></td>.*?<td>([^<]*)</td></tr>', index))
    assert rows["alpha"] == "post-hoc; variants: centred"
    assert rows["beta"] == ""
    assert "departs" not in index
