"""Synthetic generators: Gaussian mixtures of known intrinsic dimension and LIMIT free embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.groundtruth import exact_knn
from harness.intrinsic import dataset_stats
from harness.synthetic import (
    all_topk_sets,
    critical_n,
    fit_free_embeddings,
    gaussian_mixture,
    limit_dataset,
    realised,
    relevance_matrix,
)

# ------------------------------------------------------------------------------ Gaussian mixtures


def test_mixture_shapes_and_determinism() -> None:
    b1, q1 = gaussian_mixture(500, 20, 32, 5, clusters=4, seed=1)
    b2, q2 = gaussian_mixture(500, 20, 32, 5, clusters=4, seed=1)
    b3, _ = gaussian_mixture(500, 20, 32, 5, clusters=4, seed=2)
    assert b1.shape == (500, 32) and q1.shape == (20, 32)
    assert b1.dtype == np.float32 and q1.dtype == np.float32
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(q1, q2)
    assert not np.array_equal(b1, b3)
    with pytest.raises(ValueError):
        gaussian_mixture(10, 1, 8, 9)


@pytest.mark.parametrize("r", [1, 3, 7])
def test_noiseless_points_span_exactly_the_intrinsic_dimension(r: int) -> None:
    base, queries = gaussian_mixture(400, 30, 20, r, clusters=3, seed=r, noise=0.0)
    assert np.linalg.matrix_rank(base.astype(np.float64), tol=1e-3) == r
    assert np.linalg.matrix_rank(np.vstack([base, queries]).astype(np.float64), tol=1e-3) == r


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
def test_query_shift_moves_that_energy_fraction_off_the_document_subspace(shift: float) -> None:
    base, queries = gaussian_mixture(400, 30, 24, 4, clusters=3, seed=0, noise=0.0, query_shift=shift)
    u = np.linalg.svd(base.astype(np.float64), full_matrices=False)[2][:4].T  # the docs' span
    q = queries.astype(np.float64)
    inside = ((q @ u) ** 2).sum(1) / (q**2).sum(1)
    np.testing.assert_allclose(inside, 1.0 - shift, atol=1e-5)


def test_lid_estimate_tracks_intrinsic_dimension() -> None:
    lid = {}
    for r in (4, 32):
        base, queries = gaussian_mixture(3000, 100, 64, r, clusters=10, seed=0)
        lid[r] = dataset_stats(base, queries, "l2", sample=500)["lid"]["base_mean"]
    assert 3.0 < lid[4] < 6.0
    assert lid[32] > 12 and lid[32] > 2.5 * lid[4]


# ------------------------------------------------------------------------------ LIMIT


@pytest.mark.parametrize("n,k", [(5, 2), (8, 2), (6, 3), (4, 1)])
def test_all_topk_sets(n: int, k: int) -> None:
    sets = all_topk_sets(n, k)
    assert sets.shape == (math.comb(n, k), k) and sets.dtype == np.int64
    assert (np.diff(sets, axis=1) > 0).all() and sets.min() == 0 and sets.max() == n - 1
    assert len({tuple(row) for row in sets.tolist()}) == sets.shape[0]
    a = relevance_matrix(sets, n)
    assert (a.sum(1) == k).all() and (a.sum(0) == math.comb(n - 1, k - 1)).all()


def test_realised_checks_exact_topk_sets_strictly() -> None:
    n = 6
    qrels = all_topk_sets(n, 2)
    docs = np.eye(n)
    queries = relevance_matrix(qrels, n).astype(np.float64)  # e_i + e_j scores 1 on i, j; 0 elsewhere
    assert realised(queries, docs, qrels).all()
    tied = queries.copy()
    tied[0, qrels[0, 1]] = 0.0  # one relevant doc now ties with the rest
    assert realised(tied, docs, qrels).tolist() == [False] + [True] * (len(qrels) - 1)
    assert not realised(queries[::-1], docs, qrels)[0]


@pytest.mark.parametrize("n", [3, 4, 8])
def test_one_dimension_realises_at_most_two_pairs(n: int) -> None:
    """In d=1 the score q·d_j orders documents by d_j (q > 0) or by -d_j (q < 0): at most two
    top-2 sets exist, fewer than the C(n, 2) >= 3 needed for n >= 3."""
    qrels = all_topk_sets(n, 2)
    rng = np.random.default_rng(n)
    for _ in range(20):
        ok = realised(rng.normal(size=(len(qrels), 1)), rng.normal(size=(n, 1)), qrels)
        assert len({tuple(qrels[i]) for i in np.flatnonzero(ok)}) <= 2
    fit = fit_free_embeddings(qrels, n, 1, steps=400)
    assert fit.solved_fraction <= 2 / len(qrels) and not fit.solved


def test_critical_n_in_one_dimension_is_three() -> None:
    assert critical_n(1, k=2, n_max=6, steps=300) == 3


def test_free_embeddings_realise_all_pairs_when_dim_is_large_enough() -> None:
    """dim >= n always suffices (one-hot documents); the optimiser must find a solution."""
    n = 8
    ds = limit_dataset(n, k=2, dim=8, seed=0)
    assert ds.n_queries == 28 and ds.solved_fraction == 1.0
    assert ds.docs.shape == (8, 8) and ds.queries.shape == (28, 8)
    np.testing.assert_allclose(np.linalg.norm(ds.docs, axis=1), 1.0, rtol=1e-5)
    # exact inner-product search over the fitted vectors returns each query's pair
    _, ids = exact_knn(ds.docs, ds.queries, 2, "ip")
    assert (np.sort(ids, axis=1) == ds.qrels).all()
    qd = ds.qrels_dict()
    assert qd["q0"] == {"d0": 1, "d1": 1} and qd["q27"] == {"d6": 1, "d7": 1}


def test_limit_without_dim_has_only_qrels() -> None:
    ds = limit_dataset(10)
    assert ds.docs is None and ds.queries is None and ds.n_queries == 45
