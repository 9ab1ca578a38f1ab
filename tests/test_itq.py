"""ITQ: orthogonal rotation, monotone quantization loss, Hamming search, re-rank, memory."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from methods import _bits
from methods.itq import ITQ, itq_rotation, pca_basis
from tests.conftest import recall_at


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Single-threaded BLAS: tiny matrices on a busy machine are much slower with a thread pool."""
    with threadpool_limits(1):
        yield


def built(tiny, metric: str = "l2", **params) -> ITQ:
    base, _ = tiny.data(metric)
    index = ITQ(tiny.d, metric, **params)
    index.fit(base)
    index.add(base)
    return index


def test_rotation_is_orthogonal_and_loss_non_increasing(tiny) -> None:
    base, _ = tiny.data("l2")
    xc = base - base.mean(0)
    for c in (8, 16, 32):
        v = xc @ pca_basis(xc, c)
        r, losses = itq_rotation(v, n_iter=50, seed=c)
        assert r.shape == (c, c)
        np.testing.assert_allclose(r.T @ r, np.eye(c), atol=1e-5)
        np.testing.assert_allclose(r @ r.T, np.eye(c), atol=1e-5)
        assert len(losses) == 51
        steps = np.diff(losses)
        assert np.all(steps <= 1e-6 * losses[0])  # non-increasing (up to float32 rounding)
        assert losses[-1] < losses[0]
        # the recorded loss is |sign(V R) - V R|^2 for the returned R
        z = v @ r
        assert losses[-1] == pytest.approx(((np.where(z >= 0, 1.0, -1.0) - z) ** 2).sum(), rel=1e-5)


def test_fitted_projection_has_orthonormal_columns(tiny) -> None:
    index = built(tiny, bits=16)
    p = index.projection.astype(np.float64)
    np.testing.assert_allclose(p.T @ p, np.eye(16), atol=1e-5)
    assert np.all(np.diff(index.losses) <= 1e-6 * index.losses[0])


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_hamming_search_matches_brute_force(tiny, metric: str) -> None:
    index = built(tiny, metric, bits=32)
    base, queries = tiny.data(metric)
    dist, ids = index.search(queries, 10)
    qc = _bits.unpack_signs(index.encode(queries), 32)
    bc = _bits.unpack_signs(index.encode(base), 32)
    ham = (32 - qc @ bc.T) / 2  # Hamming distance from ±1 inner products
    kth = np.sort(ham, axis=1)[:, 9]
    got = ham[np.arange(len(ids))[:, None], ids]
    assert np.all(got <= kth[:, None])  # the 10 returned codes are Hamming-nearest (ties arbitrary)
    expect = (32 - 2 * got) if metric == "ip" else got
    np.testing.assert_array_equal(dist, expect)


def test_codes_are_signs_of_the_projection(tiny) -> None:
    index = built(tiny, bits=24)
    base, _ = tiny.data("l2")
    z = (base - index.mean) @ index.projection
    np.testing.assert_array_equal(_bits.unpack_signs(index.encode(base), 24) > 0, z >= 0)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_float_rerank_scores_are_exact_and_help(tiny, metric: str) -> None:
    base, queries = tiny.data(metric)
    gt = tiny.gt(metric, 10)
    plain = built(tiny, metric, bits=32)
    rr = built(tiny, metric, bits=32, rerank=10)
    dist, ids = rr.search(queries, 10)
    vecs = base[ids]
    exact = ((vecs - queries[:, None]) ** 2).sum(-1) if metric == "l2" else np.einsum("qkd,qd->qk", vecs, queries)
    np.testing.assert_allclose(dist, exact, rtol=1e-4, atol=1e-4)
    assert recall_at(ids, gt, 10) > recall_at(plain.search(queries, 10)[1], gt, 10) + 0.2


def test_memory_matches_formula_and_validity(tiny) -> None:
    for params in ({"bits": 32}, {"bits": 16, "rerank": 10}):
        index = built(tiny, **params)
        per_vec = index.memory().ram / index.ntotal
        assert per_vec == pytest.approx(ITQ.bytes_per_vector(tiny.d, index.ntotal, **params), rel=1e-9)
    assert not ITQ.is_valid(32, bits=64)  # more bits than PCA dimensions
    assert not ITQ.is_valid(64, bits=20)  # not whole bytes
    assert [c["bits"] for c in ITQ.build_configs(32) if not c["rerank"]] == [32]
    with pytest.raises(ValueError):
        ITQ(16, "l2", bits=32)


def test_save_round_trip(tiny, tmp_path) -> None:
    index = built(tiny, bits=32)
    _, queries = tiny.data("l2")
    path = tmp_path / "itq.pkl"
    assert index.save(str(path)) > 0
    with open(path, "rb") as f:
        loaded = pickle.load(f)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
