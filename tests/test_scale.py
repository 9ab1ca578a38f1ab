"""Scale track (issue 13 §3): the fitted synthetic generator, chunked ground truth, per-phase times
and the build peak in the rows, PQ added in chunks."""

from __future__ import annotations

import json
import math

import faiss
import numpy as np
import pytest

import methods  # noqa: F401 - registers the plugins
from harness import fitted_synthetic as fs
from harness.dataset import PreparedDataset, RawDataset, prepare
from harness.errors import DataError
from harness.groundtruth import exact_knn
from harness.loaders import load_dataset
from harness.worker import Task, run_task
from methods import _faiss
from tests.conftest import write_vector_folder


def source_like(n: int = 6000, d: int = 32, seed: int = 0) -> np.ndarray:
    """A "real" set with what the generator must keep: clusters on low-dimensional local
    subspaces, a decaying global spectrum, unit norms."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.arange(1, d + 1) ** 0.7
    centres = rng.normal(size=(24, d)) * scales * 3
    local = rng.normal(size=(24, d, 3))
    comp = rng.integers(24, size=n)
    x = centres[comp] + np.einsum("ndk,nk->nd", local[comp], rng.normal(size=(n, 3))) * 0.4
    x += 0.05 * rng.normal(size=(n, d)) * scales
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ----- the fitted generator --------------------------------------------------------------------
def test_fitted_generator_matches_spectrum_norms_and_lid_of_its_source():
    real = source_like()
    model = fs.fit_model(real, clusters=48, local_dim=5, normalise=True, seed=0)
    rng = np.random.default_rng(1)
    synth = model.sample(real.shape[0], rng)
    np.testing.assert_allclose(np.linalg.norm(synth, axis=1), 1.0, atol=1e-5)  # cosine: unit vectors
    raw = np.linalg.norm(model.sample(2000, rng, raw=True), axis=1)
    assert abs(raw.mean() - 1.0) < 0.05 and raw.std() < 0.25, (raw.mean(), raw.std())  # before normalising

    err = fs.spectrum_error(fs.spectrum(real, True), fs.spectrum(synth, True))
    assert abs(err["total_variance_ratio"] - 1.0) < 0.05, err
    assert err["max_cum_energy_error"] < 0.03, err
    assert abs(err["dims90_synth"] - err["dims90_real"]) <= 2, err
    # the check can fail: an isotropic Gaussian of the same size is far off on both counts
    iso = np.random.default_rng(2).normal(size=real.shape).astype(np.float32)
    bad = fs.spectrum_error(fs.spectrum(real, True), fs.spectrum(iso, True))
    assert bad["max_cum_energy_error"] > 10 * err["max_cum_energy_error"] and bad["dims90_synth"] > err["dims90_real"] + 5

    from harness.intrinsic import dataset_stats

    lid = {name: dataset_stats(x, None, "cosine", k=20, sample=500)["lid"]["base_mean"]
           for name, x in (("real", real), ("synth", synth), ("iso", iso))}
    # LID (3.2 here; 4.0 synthetic, 25 isotropic): the local structure is kept, not the ambient dimension
    assert abs(lid["synth"] - lid["real"]) < 0.35 * lid["real"], lid
    assert lid["iso"] > 3 * lid["synth"], lid


def test_query_model_shares_components_and_keeps_the_query_shift():
    real = source_like(4000)
    queries = source_like(1500, seed=3) + np.float32(0.3) * np.eye(32, dtype=np.float32)[0]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    doc = fs.fit_model(real, clusters=24, local_dim=3, normalise=True)
    qm = fs.fit_queries(doc, queries)
    assert qm.loadings is doc.loadings and qm.weights.shape == doc.weights.shape
    sq = qm.sample(3000, np.random.default_rng(4))
    sd = doc.sample(3000, np.random.default_rng(5))
    real_shift = queries.mean(0) - real.mean(0)
    synth_shift = sq.mean(0) - sd.mean(0)
    cos = real_shift @ synth_shift / np.linalg.norm(real_shift) / np.linalg.norm(synth_shift)
    assert cos > 0.8, cos  # the queries move where the real queries moved


def test_generation_is_chunked_deterministic_and_atomic(tmp_path):
    model = fs.fit_model(source_like(2000, 16), clusters=8, local_dim=2, normalise=True)
    a = fs.generate(model, 1000, tmp_path / "a.npy", seed=7, role=0, chunk=300)
    b = fs.generate(model, 1000, tmp_path / "b.npy", seed=7, role=0, chunk=300)
    assert isinstance(a, np.memmap) and a.shape == (1000, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    c = fs.generate(model, 1000, tmp_path / "c.npy", seed=7, role=1, chunk=300)
    assert not np.array_equal(a, c)  # queries and documents are independent streams
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy", "c.npy"]  # no temporaries


def test_fitted_manifest_builds_a_prepared_data_set_from_a_prepared_source(tmp_path, monkeypatch):
    monkeypatch.setenv("VECBUDGET_CACHE", str(tmp_path / "cache"))
    real = source_like(3000)
    src = prepare(RawDataset(name="src", base=real, queries=source_like(600, seed=9), metric="cosine",
                             train_queries=source_like(200, seed=10)), tmp_path / "cache", progress=False)
    man = tmp_path / "fitted-tiny.toml"
    man.write_text(
        'name = "fitted-tiny"\nformat = "synthetic"\nmetric = "cosine"\ndim = 32\n[options]\nkind = "fitted"\n'
        f'source = "{src.path}"\nn = 2500\nnq = 40\ntrain_queries = 10\nclusters = 16\nlocal_dim = 3\n')
    ds = load_dataset(str(man), progress=False)
    assert (ds.n, ds.dim, ds.nq) == (2500, 32, 40) and ds.train_queries.shape == (10, 32)
    assert ds.meta["info"]["source_fingerprint"] == src.fingerprint
    assert ds.meta["phases"]["encode_s"] > 0 and ds.meta["phases"]["groundtruth_s"] > 0
    again = load_dataset(str(man), progress=False)  # cached model and vectors: the same data set
    assert again.fingerprint == ds.fingerprint
    man.write_text(man.read_text().replace("local_dim = 3", "local_dims = 3"))
    with pytest.raises(DataError, match="unknown fitted option"):
        load_dataset(str(man), progress=False)


# ----- chunked ground truth ----------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_chunked_ground_truth_equals_unchunked(metric):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3001, 24)).astype(np.float32)
    queries = rng.normal(size=(70, 24)).astype(np.float32)
    one_d, one_i = exact_knn(base, queries, 50, metric, base_chunk=10**6, query_chunk=10**6)
    many_d, many_i = exact_knn(base, queries, 50, metric, base_chunk=97, query_chunk=33)
    np.testing.assert_array_equal(one_i, many_i)
    np.testing.assert_allclose(one_d, many_d, rtol=1e-5, atol=1e-5)
    # and both are the brute-force answer
    scores = -((queries[:, None, :] - base[None]) ** 2).sum(-1) if metric == "l2" else queries @ base.T
    np.testing.assert_array_equal(one_i, np.argsort(-scores, axis=1, kind="stable")[:, :50])
    # a chunk shorter than k (the last one) is padded, never a source of wrong ids
    d_small, i_small = exact_knn(base[:60], queries, 50, metric, base_chunk=40)
    assert (i_small >= 0).all() and (i_small < 60).all()


# ----- phase times and the build peak in the rows --------------------------------------------------
def test_rows_carry_phase_times_and_build_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("VECBUDGET_CACHE", str(tmp_path / "cache"))
    ds = load_dataset(str(write_vector_folder(tmp_path / "vecs", n=20000, d=128, nq=30)), progress=False)
    task = Task.for_dataset(ds, "exact", {}, [{}], ["h-scale"], latency_queries=10, latency_seconds=0.1)
    (row,) = run_task(task)
    for col in ("encode_s", "groundtruth_s", "search_s", "train_s", "build_s", "build_peak_rss_mb",
                "build_peak_growth_mb"):
        assert col in row and math.isfinite(row[col]) and row[col] > 0, (col, row.get(col))
    assert row["build_peak_rss_mb"] <= row["peak_rss_mb"] + 1
    # the exact index holds the base: the build's peak growth sees it (and not much more)
    index_mb = row["ram_bytes"] / 2**20
    assert index_mb > 9
    assert 0.9 * index_mb <= row["build_peak_growth_mb"] <= 2 * index_mb + 24, (row["build_peak_growth_mb"], index_mb)
    # a data set prepared before the phases were recorded gives NaN, not a made-up number
    meta = json.loads((ds.path / "meta.json").read_text())
    meta.pop("phases")
    (ds.path / "meta.json").write_text(json.dumps(meta))
    (old,) = run_task(Task.for_dataset(PreparedDataset(ds.path), "exact", {}, [{}], ["h-old"], latency_queries=10,
                                       latency_seconds=0.1))
    assert math.isnan(old["encode_s"]) and math.isnan(old["groundtruth_s"])


# ----- PQ add in chunks ------------------------------------------------------------------------
def test_pq_add_in_chunks_gives_the_codes_of_one_add(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 64)).astype(np.float32)
    monkeypatch.setattr(_faiss, "ADD_TABLE_BYTES", 1024 * 4 * 256 * 4)  # 1,024-row chunks at m=4
    from harness.registry import get_method

    index = get_method("pq")(64, "l2", m=4, nbits=8)  # 16 dims per sub-vector: the chunked path
    index.set_num_threads(1)
    index.fit(x[:3000])
    assert _faiss.add_chunk_rows(index.index, x.shape[0]) == 1024
    index.add(x)
    one = faiss.clone_index(index.index)
    one.reset()
    one.add(x)  # one faiss call for the whole base
    assert index.index.ntotal == one.ntotal == 5000
    np.testing.assert_array_equal(faiss.vector_to_array(index.index.codes), faiss.vector_to_array(one.codes))


@pytest.mark.parametrize("method", ["pq", "opq-pq"])
def test_pq_search_in_blocks_gives_the_results_of_one_call(monkeypatch, method):
    """A flat PQ scan searches in blocks of queries (faiss builds every query's tables at once)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 64)).astype(np.float32)
    q = rng.normal(size=(700, 64)).astype(np.float32)
    from harness.registry import get_method

    index = get_method(method)(64, "l2", m=8, nbits=8)
    index.set_num_threads(1)
    index.fit(x)
    index.add(x)
    one_d, one_i = index.index.search(q, 10)  # one faiss call
    monkeypatch.setattr(_faiss, "SEARCH_TABLE_BYTES", 100 * 4 * 256 * 8)  # 100-query blocks
    assert _faiss.search_chunk_rows(index.index, q.shape[0]) == 100
    d, i = index.search(q, 10)
    np.testing.assert_array_equal(i, one_i)
    np.testing.assert_allclose(d, one_d, rtol=1e-6)
    ivf = get_method("ivf-pq")(64, "l2", m=8, nlist_c=1)
    ivf.fit(x)
    assert _faiss.search_chunk_rows(ivf.index, 700) == 700  # IVF-PQ builds tables per query


# ----- the scale table reads stored runs ---------------------------------------------------------
def _scale_module():
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("scale_bench", REPO / "benchmarks" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scale_table_takes_the_best_fitting_configuration_per_size_and_names_what_is_missing():
    import pandas as pd

    scale = _scale_module()

    def row(n, method, bpv, rec, h, when="2026-01-01", fp="f1"):
        return {"dataset": "wn", "n": n, "status": "ok", "method": method, "bytes_per_vector": bpv,
                "recall_at_10": rec, "qps_1t": 100.0, "build_params": "{}", "search_params": "{}", "train_s": 1.0,
                "build_s": 2.0, "search_s": 3.0, "build_peak_rss_mb": 50.0, "build_peak_growth_mb": 10.0,
                "peak_rss_mb": 60.0, "created_utc": when, "dataset_fingerprint": fp, "config_hash": h, "nq": 5,
                "encode_s": 7.0, "groundtruth_s": 8.0}

    df = pd.DataFrame([
        row(100, "pq", 30, 0.5, "a"), row(100, "pq", 60, 0.9, "b"), row(100, "pq", 20, 0.7, "c"),
        row(100, "sq8", 50, 0.8, "d"),
        row(1000, "pq", 30, 0.4, "e"),
        row(1000, "pq", 30, 0.99, "f", when="2025-01-01", fp="old"),  # an older identity at that size
        {**row(1000, "sq8", 50, 0.95, "g"), "status": "failed"},
    ])
    sizes = [("small", "wn", 100, "run small"), ("big", "wn", 1000, "run big"), ("huge", "wn", 10**6, "run huge")]
    table = scale.scale_table(df, sizes, [32.0], ["pq", "sq8"])
    assert table[["size", "method", "recall@10"]].values.tolist() == [["small", "pq", 0.7], ["big", "pq", 0.4]]
    assert table["build s"].tolist() == [3.0, 3.0] and table["build peak RSS MB"].tolist() == [50.0, 50.0]
    gaps = scale.missing(df, sizes, ["pq", "sq8"])
    assert gaps == ["- big: no runs of sq8 — run `run big`", "- huge: no stored runs of wn at n=1,000,000 — run `run huge`"]
    assert "encode 7 s, ground truth 8 s" in scale.dataset_phases(df, sizes)[0]
    small = scale.sweep_times(df, sizes, ["pq", "sq8"])[0]  # pq's three rows share build_params "{}"
    assert small.startswith("- small: 2 builds, 4 rows, 0.3 min") and "largest worker peak RSS 60 MB" in small
