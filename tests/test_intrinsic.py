"""Data-set statistics: the LID estimator, exact k-NN distances, norms and shift measures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness.errors import DataError
from harness.formats import read_vectors
from harness.intrinsic import _positive_knn, _Space, dataset_stats, flatten_stats, lid_mle
from harness.synthetic import gaussian_mixture


def _embedded_cube(n: int, r: int, dim: int, seed: int) -> np.ndarray:
    """n uniform points of [0,1]^r, rotated into R^dim (exactly r-dimensional)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, r)))
    return (rng.random((n, r)) @ basis.T).astype(np.float32)


def test_lid_mle_formula() -> None:
    dist = np.array([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0], [0.5, 1.0, np.nan]])
    lid = lid_mle(dist)
    expect = -1.0 / np.mean(np.log([1 / 4, 2 / 4, 1.0]))  # = 1 / ((2 ln 2 + ln 2) / 3) = 1 / ln 2
    assert lid[0] == pytest.approx(expect) and lid[0] == pytest.approx(1 / math.log(2))
    assert np.isnan(lid[1]) and np.isnan(lid[2])  # all-equal distances; missing distances


def test_lid_follows_the_dimension_of_the_data() -> None:
    lids = {}
    for r in (2, 5, 10):
        x = _embedded_cube(4000, r, 24, seed=r)
        lids[r] = dataset_stats(x, None, "l2", sample=400)["lid"]["base_mean"]
    assert 1.6 < lids[2] < 2.4
    assert 3.8 < lids[5] < 6.0
    assert lids[2] < lids[5] < lids[10] and lids[10] > 6.5


def test_positive_knn_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(300, 8)).astype(np.float32)
    base[10] = base[3]  # an exact duplicate pair
    base[11] = base[3]
    pts_ids = np.array([3, 10, 50, 299])
    space = _Space(base, normalise=False)
    got, dup = _positive_knn(space, base[pts_ids], pts_ids, k=5)
    b64 = base.astype(np.float64)
    for row, i in enumerate(pts_ids):
        d = np.linalg.norm(b64 - b64[i], axis=1)
        d[i] = np.inf
        expect = np.sort(d[d > 0])[:5]
        np.testing.assert_allclose(got[row], expect, rtol=1e-12)
    assert dup.tolist() == [True, True, False, False]  # 3 and 10 have another copy at distance 0


def test_duplicates_do_not_break_lid() -> None:
    x = _embedded_cube(1000, 3, 10, seed=0)
    x = np.vstack([x, x[:500]])  # half the points twice
    lid = dataset_stats(x, x[:50], "l2", sample=300)["lid"]
    assert lid["base_skipped"] == 0 and lid["queries_skipped"] == 0
    assert 2.0 < lid["base_mean"] < 4.0


def test_shift_measures_on_a_hand_example() -> None:
    base = np.array([[11, 0], [9, 0], [10, 1], [10, -1]], dtype=np.float32)
    queries = np.array([[13, 4]], dtype=np.float32)
    s = dataset_stats(base, queries, "l2", k=2, sample=4)
    # base mean (10, 0), trace of its covariance 1 -> ||(3, 4)|| / 1
    assert s["shift"]["mean_shift"] == pytest.approx(5.0)
    assert s["shift"]["mean_shift_iid"] == pytest.approx(math.sqrt(1 + 1 / 4))
    assert s["shift"]["centroid_cosine_queries"] == pytest.approx(13 / math.sqrt(185))
    cos_base = np.mean([1.0, 1.0, 10 / math.sqrt(101), 10 / math.sqrt(101)])
    assert s["shift"]["centroid_cosine_base"] == pytest.approx(cos_base)
    # base 1-NN (leave-one-out): sqrt(2) for every point; the query's nearest: (10,1) at sqrt(18)
    assert s["shift"]["nn1_ratio"] == pytest.approx(3.0)
    norms = s["norms"]["base"]
    ref = np.linalg.norm(base, axis=1)
    assert norms["mean"] == pytest.approx(ref.mean()) and norms["max"] == pytest.approx(ref.max())
    assert s["norms"]["queries"]["min"] == pytest.approx(math.sqrt(185))


def test_in_distribution_vs_out_of_distribution_queries() -> None:
    kw = dict(n=3000, nq=200, dim=64, intrinsic_dim=8, clusters=10, seed=0)
    iid = dataset_stats(*gaussian_mixture(**kw), "l2", sample=500)
    ood = dataset_stats(*gaussian_mixture(**kw, query_shift=0.5), "l2", sample=500)
    assert 0.85 < iid["shift"]["nn1_ratio"] < 1.2 and 0.85 < iid["shift"]["nnk_ratio"] < 1.2
    assert abs(iid["shift"]["query_residual_90"] - iid["shift"]["base_residual_90"]) < 0.03
    assert iid["shift"]["mean_shift"] < 3 * iid["shift"]["mean_shift_iid"]
    assert ood["shift"]["nn1_ratio"] > 3 and ood["shift"]["nnk_ratio"] > 2
    assert ood["shift"]["query_residual_90"] > 0.4
    assert ood["lid"]["queries_mean"] > 5 * ood["lid"]["base_mean"]  # off-manifold queries
    assert iid["lid"]["base_mean"] == ood["lid"]["base_mean"]  # same documents, same seed


def test_cosine_statistics_ignore_vector_lengths() -> None:
    base, queries = gaussian_mixture(1500, 60, 32, 6, clusters=5, seed=3)
    rng = np.random.default_rng(0)
    scaled_b = base * rng.uniform(0.5, 4.0, size=(1500, 1)).astype(np.float32)
    scaled_q = queries * rng.uniform(0.5, 4.0, size=(60, 1)).astype(np.float32)
    a = dataset_stats(base, queries, "cosine", sample=300)
    b = dataset_stats(scaled_b, scaled_q, "cosine", sample=300)
    for key in ("lid", "shift"):
        for name, value in a[key].items():
            assert b[key][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert a["norms"]["base"]["std"] != pytest.approx(b["norms"]["base"]["std"])


def test_bad_inputs() -> None:
    x = np.ones((10, 4), np.float32)
    with pytest.raises(DataError, match="unknown metric 'hamming'"):
        dataset_stats(x, x, "hamming")
    with pytest.raises(DataError, match="dimension mismatch"):
        dataset_stats(x, np.ones((3, 5), np.float32), "l2")
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match="queries: 1 row of 10 contains NaN"):
        dataset_stats(x, bad, "l2")


def test_bigann10k_stats(shared_data: Path) -> None:
    base = read_vectors(shared_data / "bigann10k" / "base.npy")
    queries = read_vectors(shared_data / "bigann10k" / "queries.npy")
    s = dataset_stats(base, queries, "l2")
    flat = flatten_stats(s)
    assert flat["n_base"] == 10000 and flat["dim"] == 128 and flat["lid.k"] == 20
    ref = np.linalg.norm(np.asarray(base, dtype=np.float64), axis=1)
    assert flat["norms.base.mean"] == pytest.approx(ref.mean())
    assert flat["norms.base.min"] == pytest.approx(ref.min())
    assert flat["shift.queries_in_base"] == 1.0  # the queries are base rows 0-99
    # SIFT: LID well below the 128 ambient dimensions (literature: ~15-25 at k=20..100)
    assert 12 < flat["lid.base_mean"] < 25 and flat["lid.base_skipped"] == 0
    assert abs(flat["lid.queries_mean"] / flat["lid.base_mean"] - 1) < 0.15
    assert 0.9 < flat["shift.nn1_ratio"] < 1.1
