"""Numbers users can trust (issue 8): data identity, one operating point per row, validated
results, one row schema, the memory cross-check, ranks with ties, bytes at the user's scale and
BLAS provenance. Test-only methods are registered for one test and removed after it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness import leaderboard as lb
from harness import registry, schema
from harness.dataset import RawDataset, prepare
from harness.executor import InlineExecutor
from harness.method import MemoryAccount, Method, nbytes
from harness.metrics import recall_with_ties
from harness.store import ResultStore
from harness.sweep import SweepConfig, run_sweep
from tests.conftest import clustered


@pytest.fixture
def plugin():
    """Register test-only method classes for one test; remove them afterwards."""
    added: list[str] = []

    def add(cls: type[Method]) -> type[Method]:
        registry.discover()
        registry.register(cls)
        added.append(cls.name)
        return cls

    yield add
    for name in added:
        registry._REGISTRY.pop(name, None)


class _Flat(Method):
    """Exact inner-product/L2 scan in numpy (a base for the test plugins)."""

    family = "test"
    paper = "test-only"
    bytes_formula = "4·d"

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **_: Any) -> float:
        return 4.0 * dim

    def add(self, vectors: np.ndarray) -> None:
        self.x = np.array(vectors, dtype=np.float32)
        self.ntotal = len(self.x)

    def _scores(self, queries: np.ndarray) -> np.ndarray:
        if self.metric == "l2":
            return -(((queries[:, None, :] - self.x[None]) ** 2).sum(-1))
        return queries @ self.x.T

    def search(self, queries: np.ndarray, k: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        s = self._scores(np.asarray(queries, np.float32))
        ids = np.argsort(-s, axis=1)[:, :k]
        return np.take_along_axis(s, ids, 1), ids

    def memory(self) -> MemoryAccount:
        return MemoryAccount(codes=nbytes(self.x))


def _toy(tmp_path, n=400, d=16, nq=30, name="toy", qrels=None):
    base, queries = clustered(n, d, nq)
    raw = RawDataset(name, base, queries, "l2")
    if qrels is not None:
        raw.doc_ids = [f"d{i}" for i in range(n)]
        raw.query_ids = [f"q{i}" for i in range(nq)]
        raw.qrels = qrels
    return prepare(raw, tmp_path / "cache", progress=False)


def _sweep(ds, tmp_path, methods, **kw):
    store = ResultStore(tmp_path / "results")
    cfg = SweepConfig(methods=methods, budgets=(4096,), latency_queries=5, **kw)
    return run_sweep(ds, cfg, store, InlineExecutor(), progress=False), store


# --- 1. data identity ------------------------------------------------------------------------


def test_identity_covers_judgments_and_ids_but_not_the_name(tmp_path):
    qrels = {"q0": {"d1": 1}, "q1": {"d2": 1}}
    a = _toy(tmp_path, qrels=qrels)
    b = _toy(tmp_path, qrels={"q0": {"d1": 1}, "q1": {"d3": 1}})
    copy = _toy(tmp_path, name="copy", qrels=qrels)
    assert a.fingerprint != b.fingerprint  # an edited judgment is another data set
    assert a.path != b.path and b.qrels["q1"] == {"d3": 1}  # and gets its own prepared folder
    assert copy.fingerprint == a.fingerprint and copy.name == "copy"  # same content, any name


def test_a_copy_under_another_name_is_skipped_and_shown_under_its_own_name(tmp_path):
    ds = _toy(tmp_path)
    first, store = _sweep(ds, tmp_path, ["exact"])
    copy = _toy(tmp_path, name="copy")
    again, _ = _sweep(copy, tmp_path, ["exact"])
    assert again.empty and again.attrs["skipped"] == 1  # keyed by content: not measured twice
    board = lb.leaderboard(store.load(), "copy", (4096,), fingerprint=copy.fingerprint)
    assert list(board["method"]) == ["exact"]  # ... and shown under the name the user gave


# --- 2. quality and speed from the same operating point --------------------------------------


class _GrowsWithK(_Flat):
    """Re-ranks a candidate list of k items drawn from a noisy first pass, like binary codes
    re-scored with factor 1: asking for more results improves the first ones."""

    name = "test-grows-with-k"

    def search(self, queries: np.ndarray, k: int, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        s = self._scores(np.asarray(queries, np.float32))
        # noise that depends on the query alone, not on the batch it came in
        phase = np.asarray(queries, np.float64).sum(axis=1, keepdims=True) * 1e3
        noisy = s + s.std() * 2 * np.sin(phase + 7.1 * np.arange(s.shape[1])[None, :])
        cand = np.argsort(-noisy, axis=1)[:, :k]  # candidates: k from the noisy pass
        exact = np.take_along_axis(s, cand, 1)
        order = np.argsort(-exact, axis=1)
        return np.take_along_axis(exact, order, 1), np.take_along_axis(cand, order, 1)


def test_recall_at_10_comes_from_the_timed_k10_search(tmp_path, plugin):
    plugin(_GrowsWithK)
    ds = _toy(tmp_path)
    rows, _ = _sweep(ds, tmp_path, ["test-grows-with-k"])
    row = rows.iloc[0]
    index = _GrowsWithK(ds.dim, "l2")
    index.add(np.asarray(ds.base))
    _, ids10 = index.search(ds.queries, 10)
    _, ids100 = index.search(ds.queries, 100)
    at_k10 = recall_with_ties(ds.gt_ids, ds.gt_dist, ids10, 10).mean()
    from_k100 = recall_with_ties(ds.gt_ids, ds.gt_dist, ids100, 10).mean()
    assert from_k100 > at_k10 + 0.05  # the two operating points really differ
    assert row["recall_at_10"] == pytest.approx(at_k10)  # the stored figure is the timed search's
    assert row["recall_at_100"] == pytest.approx(recall_with_ties(ds.gt_ids, ds.gt_dist, ids100, 100).mean())
    assert row["k100_qps_1t"] > 0 and row["k"] == 10


class _OnceFlat(_Flat):
    name = "test-once-flat"


@pytest.mark.parametrize(("cls", "source"), [(_OnceFlat, "k100-prefix"), (_GrowsWithK, "k-search")])
def test_each_query_is_searched_once_where_the_first_k_do_not_depend_on_k(tmp_path, plugin, monkeypatch,
                                                                          cls, source):
    """The k-result search is timed on a sample; quality at 10 is read from the k=100 search only
    where the sample proved its first 10 equal the k-result search, else every query is searched
    for 10 (the queries outside the sample too): quality at 10 is always the k=10 search's."""
    from harness import worker

    plugin(cls)
    monkeypatch.setattr(worker, "QPS_1T_QUERIES", 7)
    ds = _toy(tmp_path)
    rows, _ = _sweep(ds, tmp_path, [cls.name])
    row = rows.iloc[0]
    index = cls(ds.dim, "l2")
    index.add(np.asarray(ds.base))
    _, ids10 = index.search(ds.queries, 10)
    assert row["quality_source"] == source and row["qps_queries"] == 7 and row["nq"] == 30
    assert row["recall_at_10"] == pytest.approx(recall_with_ties(ds.gt_ids, ds.gt_dist, ids10, 10).mean())
    assert row["k100_qps_1t"] > 0 and row["qps_1t"] > 0


def test_prefix_agreement_allows_ties_broken_the_other_way_and_nothing_else():
    from harness.worker import prefix_agrees

    ids_long = np.array([[3, 1, 2, 7]])
    scores_long = np.array([[0.9, 0.5, 0.5, 0.1]], np.float32)
    assert prefix_agrees(np.array([[3, 1]]), scores_long[:, :2], ids_long, scores_long)
    assert prefix_agrees(np.array([[3, 2]]), np.array([[0.9, 0.5]], np.float32), ids_long, scores_long)  # a tie
    assert not prefix_agrees(np.array([[3, 7]]), np.array([[0.9, 0.1]], np.float32), ids_long, scores_long)
    assert not prefix_agrees(np.array([[3, -1]]), scores_long[:, :2], ids_long, scores_long)  # padding


# --- 3. validated results --------------------------------------------------------------------


class _Duplicates(_Flat):
    name = "test-duplicates"

    def search(self, queries, k, **_):
        s, ids = super().search(queries, k)
        ids[:, 1] = ids[:, 0]
        return s, ids


class _Short(_Flat):
    name = "test-short"

    def search(self, queries, k, **_):
        s, ids = super().search(queries, k)
        return s[:, : k - 1], ids[:, : k - 1]


class _Padded(_Flat):
    name = "test-padded"

    def search(self, queries, k, **_):
        s, ids = super().search(queries, k)
        ids[:, -2:] = -1  # fewer than k found: trailing padding is allowed
        return s, ids


@pytest.mark.parametrize(("cls", "message"), [(_Duplicates, "more than once"), (_Short, "shape")])
def test_malformed_results_become_an_invalid_row(tmp_path, plugin, cls, message):
    plugin(cls)
    rows, _ = _sweep(_toy(tmp_path), tmp_path, [cls.name])
    row = rows.iloc[0]
    assert row["status"] == "invalid" and message in row["error"]
    assert pd.isna(row.get("recall_at_10", np.nan))


def test_trailing_padding_is_valid(tmp_path, plugin):
    plugin(_Padded)
    rows, _ = _sweep(_toy(tmp_path), tmp_path, ["test-padded"])
    assert rows.iloc[0]["status"] == "ok" and rows.iloc[0]["recall_at_10"] <= 0.8 + 1e-9


def test_validation_rules():
    from harness.validation import InvalidResults, validate_results

    ids = np.array([[0, 1, -1], [2, -1, -1]])
    assert validate_results(np.zeros((2, 3)), ids, 2, 3, 5).dtype == np.int64
    for bad in ([[0, -1, 1], [2, 3, 4]], [[0, 5, 1], [2, 3, 4]], [[0, -2, 1], [2, 3, 4]]):
        with pytest.raises(InvalidResults):
            validate_results(np.zeros((2, 3)), np.array(bad), 2, 3, 5)


# --- 4. one owner for the row ----------------------------------------------------------------


def test_rows_hold_only_declared_columns_and_are_stamped_at_append(tmp_path):
    ds = _toy(tmp_path)
    store = ResultStore(tmp_path / "results")
    cfg = SweepConfig(methods=["exact", "sq8"], budgets=(4096,), latency_queries=5)
    rows = run_sweep(ds, cfg, store, InlineExecutor(), progress=False)
    assert set(rows.columns) <= set(schema.COLUMNS)
    assert rows["created_utc"].nunique() == 2  # one stamp per build, at the time it was stored
    assert (rows["store_id"] == store.store_id).all()
    r = rows.iloc[0]
    assert r["ratio_to_float32"] == pytest.approx(r["bytes_per_vector"] / (4 * ds.dim))
    with pytest.raises(schema.SchemaError):
        store.append([{"config_hash": "x", "status": "ok", "ratio": 1.0}])
    board = lb.leaderboard(store.load(), ds.name, (4096,))
    assert board["budget_ratio"].iloc[0] == pytest.approx(4096 / (4 * ds.dim))


def test_a_long_error_keeps_its_first_line():
    text = "ValueError: the real cause\n" + "x" * 10_000 + "\nlast frame"
    kept = schema.error_text(text)
    assert kept.startswith("ValueError: the real cause") and kept.endswith("last frame") and len(kept) < 2200


# --- 6. an independent memory check -----------------------------------------------------------


class _UnderReports(_Flat):
    name = "test-under-reports"

    def memory(self) -> MemoryAccount:
        return MemoryAccount(codes=1000)  # holds 6 MB of floats, says 1 kB


class _Honest(_Flat):
    name = "test-honest"


def test_memory_the_plugin_does_not_report_is_flagged(tmp_path, plugin):
    plugin(_UnderReports)
    plugin(_Honest)
    ds = _toy(tmp_path, n=4000, d=384, nq=10)
    rows, _ = _sweep(ds, tmp_path, ["test-under-reports", "test-honest"])
    by = rows.set_index("method")
    assert by.loc["test-under-reports", "memory_flag"]
    assert not by.loc["test-honest", "memory_flag"]
    assert by.loc["test-honest", "rss_growth_bytes"] >= 0.8 * 4000 * 384 * 4


# --- 7. ranks with ties, quality columns -----------------------------------------------------


def _row(h, method, quality, per_query, bpv=10.0, **extra):
    return {"config_hash": h, "dataset": "d", "dataset_fingerprint": "f", "status": "ok", "method": method,
            "build_params": "{}", "search_params": "{}", "recall_at_10": quality, "per_query_recall_at_10": per_query,
            "qps_1t": 100.0, "latency_p99_ms": 1.0, "bytes_per_vector": bpv, "float32_bytes": 512.0,
            "train_s": 0.0, "build_s": 0.0, "created_utc": "2026-01-01T00:00:00", "n": 1000,
            "codes_bytes": bpv * 1000 - 100, "structure_bytes": 0.0, "shared_bytes": 100.0, **extra}


def test_methods_the_paired_test_cannot_separate_share_a_rank():
    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.60).astype(float)
    b = a.copy()
    b[:2] = 1 - b[:2]  # differs on 2 of 200 queries: a tie
    c = (rng.random(200) < 0.2).astype(float)  # clearly worse
    df = pd.DataFrame([_row("1", "a", a.mean(), a.tolist()), _row("2", "b", b.mean(), b.tolist()),
                       _row("3", "c", c.mean(), c.tolist())])
    board = lb.leaderboard(df, "d", (64,)).set_index("method")
    assert board.loc["a", "rank"] == board.loc["b", "rank"] == 1
    assert board.loc["c", "rank"] == 3
    assert bool(board.loc["a", "tied_with_best"]) != bool(board.loc["b", "tied_with_best"])
    text = lb.to_markdown(board.reset_index())
    assert "≈1" in text and "recall@10" in text  # the quality column is kept on a recall-only set


def test_recall_at_100_against_judgments_is_shown_beside_ndcg():
    q = [1.0, 0.0]
    df = pd.DataFrame([_row("1", "a", 0.5, q, ndcg_at_10=0.4, per_query_ndcg_at_10=q, qrels_recall_at_100=0.9)])
    text = lb.to_markdown(lb.leaderboard(df, "d", (64,)))
    header, _, row = text.splitlines()
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")], strict=True))
    assert cells["ndcg@10"] == "0.4" and cells["Recall@100 (judged)"] == "0.9"


# --- 8. bytes at the user's scale ------------------------------------------------------------


def test_at_n_projects_shared_parts_and_empty_budgets_say_so():
    q = [1.0, 0.0]
    df = pd.DataFrame([_row("1", "opq", 0.5, q, bpv=20.0)])  # 19.9 B codes + 100 kB shared at n=1000
    board = lb.leaderboard(df, "d", (8, 32))
    assert not board.iloc[0]["fits"] and "nothing fits" in board.iloc[0]["note"]
    assert "20.0 B/vector" in board.iloc[0]["note"]
    projected = lb.leaderboard(df, "d", (20,), at_n=1_000_000)
    assert projected.iloc[0]["fits"] and projected.iloc[0]["bytes_per_vector"] == pytest.approx(19.9 + 1e-4)
    assert "projected B/vec" in lb.to_markdown(projected) and "(nothing fits)" in lb.to_markdown(board)


# --- 9. BLAS provenance ----------------------------------------------------------------------


def test_rows_record_the_blas_kernel(tmp_path):
    rows, _ = _sweep(_toy(tmp_path), tmp_path, ["exact"])
    blas = json.loads(rows.iloc[0]["blas"])
    assert blas["libraries"] and all("architecture" in lib for lib in blas["libraries"])
    assert "env" in blas


def test_wordnet_default_has_5000_test_queries_disjoint_from_training():
    from harness.loaders import manifest_for, text_collection
    from harness.wordnet import DEBIAN_DIR

    m = manifest_for("wordnet")
    assert m.options["queries"] >= 5000 and m.options["train_queries"] >= 1000
    if not DEBIAN_DIR.joinpath("data.noun").exists():
        pytest.skip("wordnet-base not installed")
    col = text_collection(m, progress=False)
    assert len(col.query_ids) == m.options["queries"]
    test_synsets = {next(iter(col.qrels[q])) for q in col.query_ids}
    assert not set(col.train_query_texts) & set(col.query_texts)
    assert len(test_synsets) == len(col.query_ids)  # one query per synset
