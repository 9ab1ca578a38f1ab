"""Matryoshka prefixes, MRL funnel, AdANNS-IVF and AdANNS-OPQ: exact limits and sizes."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from harness.groundtruth import exact_knn, pair_scores
from harness.registry import get_method
from methods.matryoshka import funnel_schedule
from tests.conftest import recall_at


def build(name, tiny, metric, **params):
    base, _ = tiny.data(metric)
    m = get_method(name)(tiny.d, metric, **params)
    m.fit(base)
    m.add(base)
    return m


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return recall_at(a, b, a.shape[1])


# ---------------------------------------------------------------- prefixes
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_full_pca_prefix_is_exact(tiny, metric):
    """All d principal components in float32: a rotation, so the search is exact."""
    _, queries = tiny.data(metric)
    m = build("pca-prefix", tiny, metric, dims=tiny.d, dtype="float32")
    assert overlap(m.search(queries, 10)[1], tiny.gt(metric, 10)) >= 0.99


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_mrl_prefix_scores_are_truncated_scores(tiny, metric):
    base, queries = tiny.data(metric)
    m = build("mrl-prefix", tiny, metric, dims=8, dtype="float32")
    bt, qt = base[:, :8].copy(), queries[:, :8].copy()
    if metric == "ip":  # cosine on the prefix
        bt /= np.linalg.norm(bt, axis=1, keepdims=True)
        qt /= np.linalg.norm(qt, axis=1, keepdims=True)
    dist, ids = m.search(queries, 10)
    ref_d, _ = exact_knn(bt, qt, 10, metric)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dist, pair_scores(bt, qt, ids, metric), rtol=1e-4, atol=1e-4)


def test_pca_prefix_recall_grows_with_dims(tiny):
    _, queries = tiny.data("l2")
    gt = tiny.gt("l2", 10)
    r = [
        recall_at(
            build("pca-prefix", tiny, "l2", dims=dd, dtype="fp16").search(queries, 10)[1], gt, 10
        )
        for dd in (4, 16, 32)
    ]
    assert r[0] < r[1] <= r[2] and r[2] >= 0.97


@pytest.mark.parametrize(
    "name,params",
    [
        ("mrl-prefix", {"dims": 8, "dtype": "fp16"}),
        ("pca-prefix", {"dims": 8, "dtype": "float32"}),
        ("mrl-funnel", {"dims": 16, "dtype": "fp16", "basis": "pca"}),
        ("adanns-ivf", {"d_c": 8, "d_s": 16, "dtype": "fp16", "nlist": 32, "basis": "pca"}),
        ("adanns-ivf", {"d_c": 16, "d_s": 8, "dtype": "float32", "nlist": 32, "basis": "raw"}),
        ("adanns-opq", {"d_p": 16, "m": 8, "basis": "pca"}),
    ],
)
def test_memory_matches_formula(tiny, name, params):
    m = build(name, tiny, "ip", **params)
    n = tiny.base.shape[0]
    assert m.memory().ram == pytest.approx(
        get_method(name).bytes_per_vector(tiny.d, n, **params) * n, abs=1e-6
    )


# ---------------------------------------------------------------- funnel
def test_funnel_schedule():
    assert funnel_schedule(16, 384, 10, 200) == [
        (16, 200),
        (32, 100),
        (64, 50),
        (128, 25),
        (256, 12),
        (384, 10),
    ]
    assert funnel_schedule(64, 64, 10, 40) == [(64, 10)]
    assert funnel_schedule(8, 20, 10, 12) == [(8, 12), (16, 10), (20, 10)]


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_funnel_limits(tiny, metric):
    base, queries = tiny.data(metric)
    m = build("mrl-funnel", tiny, metric, dims=tiny.d, dtype="float32", basis="pca")
    flat = build("pca-prefix", tiny, metric, dims=tiny.d, dtype="float32")
    # one stage (d0 = D): the flat scan of the D-dim prefix
    np.testing.assert_array_equal(m.search(queries, 10, d0=tiny.d)[1], flat.search(queries, 10)[1])
    # a first-stage shortlist holding every vector: the final stage re-ranks everything exactly
    full = m.search(queries, 10, d0=4, shortlist_factor=len(base))
    assert overlap(full[1], tiny.gt(metric, 10)) >= 0.99
    # a longer shortlist can only help here
    small = recall_at(m.search(queries, 10, d0=4, shortlist_factor=1)[1], tiny.gt(metric, 10), 10)
    big = recall_at(m.search(queries, 10, d0=4, shortlist_factor=16)[1], tiny.gt(metric, 10), 10)
    assert big >= small


# ---------------------------------------------------------------- AdANNS-IVF
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ivf_all_lists_is_exact_on_the_scan_prefix(tiny, metric):
    """nprobe = nlist scans every list: the result is the exact top-k on the d_s prefix."""
    base, queries = tiny.data(metric)
    m = build("adanns-ivf", tiny, metric, d_c=8, d_s=16, dtype="float32", nlist=16, basis="pca")
    dist, ids = m.search(queries, 10, nprobe=16)
    ref_d, ref_i = exact_knn(
        m.proj.docs(base)[:, :16].copy(), m.proj.queries(queries)[:, :16].copy(), 10, metric
    )
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)
    assert overlap(ids, ref_i) >= 0.99


def test_ivf_lists_follow_the_construct_prefix(tiny):
    base, _ = tiny.data("l2")
    m = build("adanns-ivf", tiny, "l2", d_c=4, d_s=16, dtype="fp16", nlist=16, basis="pca")
    z = m.proj.docs(base)[:, :4].copy()
    cent = m.coarse.reconstruct_n(0, 16)
    expect = ((z[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
    inv = m.ivf.invlists
    for lst in range(16):
        ids = faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy()
        assert np.all(expect[ids] == lst)


def test_ivf_recall_grows_with_nprobe(tiny):
    _, queries = tiny.data("ip")
    gt = tiny.gt("ip", 10)
    m = build("adanns-ivf", tiny, "ip", d_c=16, d_s=32, dtype="fp16", nlist=32, basis="pca")
    r = [recall_at(m.search(queries, 10, nprobe=p)[1], gt, 10) for p in (1, 4, 32)]
    assert r[0] <= r[1] <= r[2] and r[2] >= 0.97


def test_ivf_raw_basis_normalises_prefixes(tiny):
    base, queries = tiny.data("ip")
    m = build("adanns-ivf", tiny, "ip", d_c=8, d_s=16, dtype="float32", nlist=8, basis="raw")
    dist, ids = m.search(queries, 5, nprobe=8)
    bt = base[:, :16] / np.linalg.norm(base[:, :16], axis=1, keepdims=True)
    qt = queries[:, :16] / np.linalg.norm(queries[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(dist, exact_knn(bt, qt, 5, "ip")[0], rtol=1e-4, atol=1e-4)


def test_ivf_save_roundtrip(tiny, tmp_path):
    import pickle

    _, queries = tiny.data("l2")
    m = build("adanns-ivf", tiny, "l2", d_c=8, d_s=16, dtype="fp16", nlist=16, basis="pca")
    m.save(str(tmp_path / "ivf.pkl"))
    with open(tmp_path / "ivf.pkl", "rb") as f:
        m2 = pickle.load(f)
    np.testing.assert_array_equal(
        m2.search(queries, 10, nprobe=4)[1], m.search(queries, 10, nprobe=4)[1]
    )


# ---------------------------------------------------------------- AdANNS-OPQ
def test_adanns_opq_more_dims_or_bytes_help(tiny):
    _, queries = tiny.data("l2")
    gt = tiny.gt("l2", 10)
    r_small = recall_at(build("adanns-opq", tiny, "l2", d_p=32, m=4).search(queries, 10)[1], gt, 10)
    r_big = recall_at(build("adanns-opq", tiny, "l2", d_p=32, m=16).search(queries, 10)[1], gt, 10)
    assert r_big > r_small


def test_grids_cover_budgets():
    """Every method has configurations at d = 32, 128 and 384, and the analytic sizes at
    d = 384 span several rungs of the budget ladder."""
    for name in ("mrl-prefix", "pca-prefix", "mrl-funnel", "adanns-ivf", "adanns-opq"):
        cls = get_method(name)
        for d in (32, 128, 384):
            assert cls.build_configs(d), (name, d)
        sizes = [cls.bytes_per_vector(384, 20000, **c) for c in cls.build_configs(384)]
        rungs = {
            min(b for b in (16, 32, 64, 128, 256, 512, 1024, 2048) if b >= s)
            for s in sizes
            if s <= 2048
        }
        assert len(rungs) >= 3, (name, sorted(rungs))
