import numpy as np
import pytest

from harness.groundtruth import (
    canonical_order,
    exact_knn,
    pair_scores,
    same_up_to_ties,
    true_distance,
)
from tests.conftest import clustered


def brute(base, queries, k, metric):
    if metric == "l2":
        d = ((queries[:, None, :].astype(np.float64) - base[None].astype(np.float64)) ** 2).sum(-1)
        order = np.lexsort((np.broadcast_to(np.arange(len(base)), d.shape), d), axis=1)[:, :k]
    else:
        d = queries.astype(np.float64) @ base.T.astype(np.float64)
        order = np.lexsort((np.broadcast_to(np.arange(len(base)), d.shape), -d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_exact_knn_matches_brute_force_with_chunked_merge(metric):
    base, queries = clustered(1000, 16, 30, seed=3)
    want_d, want_i = brute(base, queries, 50, metric)
    got_d, got_i = exact_knn(base, queries, 50, metric, base_chunk=137, query_chunk=7)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-4, atol=1e-3)
    assert same_up_to_ties(got_i, want_i, got_d).all()
    assert (got_i == want_i).mean() > 0.99


def test_exact_knn_k_larger_than_a_chunk_and_than_n():
    base, queries = clustered(40, 8, 5)
    d, i = exact_knn(base, queries, 60, "l2", base_chunk=16)
    assert i.shape == (5, 40)  # k is capped at n
    assert sorted(i[0].tolist()) == list(range(40))
    assert (np.diff(d, axis=1) >= 0).all()


def test_canonical_order_breaks_ties_by_id():
    d = np.array([[1.0, 0.5, 0.5, 2.0]], np.float32)
    i = np.array([[7, 9, 3, 1]])
    cd, ci = canonical_order(d, i, "l2")
    assert ci.tolist() == [[3, 9, 7, 1]]
    cd, ci = canonical_order(d, i, "ip")
    assert ci.tolist() == [[1, 7, 3, 9]]


def test_same_up_to_ties_detects_real_differences():
    dist = np.array([[0.0, 1.0, 1.0, 2.0, 3.0]])
    a = np.array([[5, 6, 7, 8, 9]])
    assert same_up_to_ties(a, np.array([[5, 7, 6, 8, 9]]), dist).all()
    assert not same_up_to_ties(a, np.array([[5, 6, 8, 7, 9]]), dist).any()


def test_pair_scores_and_true_distance():
    base, queries = clustered(100, 4, 3)
    ids = np.array([[0, 5, -1], [1, 2, 3], [99, 98, 0]])
    s = pair_scores(base, queries, ids, "l2")
    assert np.isnan(s[0, 2])
    np.testing.assert_allclose(s[1, 1], ((base[2] - queries[1]) ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(true_distance(np.array([4.0]), "l2"), [2.0])
    np.testing.assert_allclose(true_distance(np.array([0.25]), "ip", cosine=True), [0.75])


def test_bigann10k_ground_truth_equals_shipped(shared_data):
    base = np.load(shared_data / "bigann10k" / "base.npy").astype(np.float32)
    queries = np.load(shared_data / "bigann10k" / "queries.npy").astype(np.float32)
    shipped = np.load(shared_data / "bigann10k" / "neighbors.npy")
    d, i = exact_knn(base, queries, 100, "l2", base_chunk=2500)
    # identical lists, up to the order of neighbours at exactly equal distance
    assert same_up_to_ties(i, shipped, d).all()
    assert (i[:, 0] == np.arange(100)).all()  # self-queries
