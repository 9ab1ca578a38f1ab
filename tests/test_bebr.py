"""BEBR: recurrent residual binarization, SDC kernels, memory, and the learned variant."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from harness.errors import VecbudgetError
from harness.groundtruth import exact_knn
from methods import _bits
from methods.bebr import BEBRResidual, odd_to_planes, quantize_step
from tests.conftest import recall_at


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Single-threaded BLAS: tiny matrices on a busy machine are much slower with a thread pool."""
    with threadpool_limits(1):
        yield


def build(cls, base: np.ndarray, metric: str, train_queries: np.ndarray | None = None, **params):
    index = cls(base.shape[1], metric, **params)
    index.fit(base, train_queries)
    index.add(base)
    return index


def sdc_reference(index, queries: np.ndarray) -> np.ndarray:
    """SDC scores by brute force: reconstructions of binarized queries vs stored codes."""
    qplanes, qscales, _ = index._encode(queries)
    q_rec = index.reconstruct_codes(qplanes, qscales)
    x_rec = index.reconstruct_codes(index.planes, index.scales)
    if index.metric == "ip":
        return q_rec @ x_rec.T + index.aux[None, :] + (queries @ index.mean)[:, None]
    return ((q_rec[:, None, :] - x_rec[None, :, :]) ** 2).sum(-1)


def anisotropic(n: int, d: int, nq: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Variance concentrated in a few native coordinates (spectrum 1/i), like embeddings with
    dominant dimensions: 1 bit per native coordinate wastes bits, a learned rotation does not."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n + nq, d)) / np.sqrt(np.arange(1, d + 1))).astype(np.float32)
    return x[:n], x[n:]


# ----- the binarization steps --------------------------------------------------------------------
def test_one_bit_step_is_sign_with_least_squares_scale() -> None:
    r = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    c, a = quantize_step(r, 1)
    np.testing.assert_array_equal(c, np.where(r >= 0, 1, -1))
    np.testing.assert_allclose(a.astype(np.float32), np.abs(r).mean(1), rtol=1e-3)
    # least squares: no other scale does better
    err = ((r - a.astype(np.float32)[:, None] * c) ** 2).sum(1)
    for f in (0.9, 1.1):
        assert np.all(err <= ((r - f * a.astype(np.float32)[:, None] * c) ** 2).sum(1) + 1e-6)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_odd_codes_decompose_into_weighted_planes(bits: int) -> None:
    top = (1 << bits) - 1
    c = np.arange(-top, top + 1, 2, dtype=np.int8)[None, :]
    planes = odd_to_planes(c, bits)
    rebuilt = sum((2**p) * (2 * planes[:, p].astype(int) - 1) for p in range(bits))
    np.testing.assert_array_equal(rebuilt, c)


def test_residual_steps_reduce_the_error(tiny) -> None:
    base, _ = tiny.data("l2")
    errs = []
    for u, bits in [(1, 1), (2, 1), (3, 1), (4, 1), (4, 2)]:
        index = build(BEBRResidual, base, "l2", u=u, bits=bits)
        rec = index.reconstruct_codes(index.planes, index.scales) + index.mean
        errs.append(float(((rec - base) ** 2).sum(1).mean()))
    assert all(b < 0.8 * a for a, b in zip(errs, errs[1:], strict=False))


# ----- SDC search --------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("u,bits", [(1, 1), (2, 2), (3, 1)])
def test_sdc_kernels_agree_with_brute_force(tiny, metric: str, u: int, bits: int) -> None:
    base, queries = tiny.data(metric)
    index = build(BEBRResidual, base, metric, u=u, bits=bits)
    ref = sdc_reference(index, queries)
    for kernel in ("popcount", "gemm"):
        dist, ids = index.search(queries, 10, kernel=kernel)
        np.testing.assert_allclose(dist, np.take_along_axis(ref, ids, 1), rtol=1e-4, atol=1e-3)
        best = np.sort(ref, axis=1)[:, ::-1] if metric == "ip" else np.sort(ref, axis=1)
        np.testing.assert_allclose(dist, best[:, :10], rtol=1e-4, atol=1e-3)


def test_popcount_identity() -> None:
    """<b, e> = d - 2·Hamming(b, e) for ±1 vectors, the identity behind SDC."""
    rng = np.random.default_rng(1)
    a = rng.random((7, 45)) > 0.5
    b = rng.random((9, 45)) > 0.5
    dot = _bits.unpack_signs(_bits.pack_signs(a), 45) @ _bits.unpack_signs(_bits.pack_signs(b), 45).T
    ham = _bits.hamming_matrix(_bits.pack_signs(a), _bits.pack_signs(b))
    np.testing.assert_array_equal(dot, 45 - 2 * ham)


def test_self_query_is_its_own_nearest_code(tiny) -> None:
    base, _ = tiny.data("l2")
    index = build(BEBRResidual, base, "l2", u=2, bits=1)
    dist, ids = index.search(base[:40], 1)
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-3)  # SDC: same codes, distance 0


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_recall_rises_with_steps_and_bits(tiny, metric: str) -> None:
    base, queries = tiny.data(metric)
    gt = tiny.gt(metric, 10)
    rec = {ub: recall_at(build(BEBRResidual, base, metric, u=ub[0], bits=ub[1]).search(queries, 10)[1], gt, 10)
           for ub in [(1, 1), (2, 1), (4, 1), (4, 2)]}
    assert rec[(1, 1)] < rec[(2, 1)] < rec[(4, 1)] < rec[(4, 2)]
    assert rec[(4, 2)] >= 0.7


def test_float_rerank_is_exact(tiny) -> None:
    base, queries = tiny.data("ip")
    gt = tiny.gt("ip", 10)
    index = build(BEBRResidual, base, "ip", u=1, bits=1, rerank=10)
    dist, ids = index.search(queries, 10)
    np.testing.assert_allclose(dist, np.einsum("qkd,qd->qk", base[ids], queries), rtol=1e-5, atol=1e-5)
    plain = build(BEBRResidual, base, "ip", u=1, bits=1)
    assert recall_at(ids, gt, 10) > recall_at(plain.search(queries, 10)[1], gt, 10) + 0.3


@pytest.mark.parametrize("params", [{"u": 1, "bits": 1}, {"u": 3, "bits": 2}, {"u": 2, "bits": 1, "rerank": 5}])
def test_memory_matches_formula(tiny, params: dict) -> None:
    base, _ = tiny.data("l2")
    index = build(BEBRResidual, base, "l2", **params)
    per_vec = index.memory().ram / index.ntotal
    assert per_vec == pytest.approx(BEBRResidual.bytes_per_vector(tiny.d, index.ntotal, **params), rel=1e-12)
    u, bits = params["u"], params["bits"]
    assert index.planes.nbytes == index.ntotal * u * bits * tiny.d // 8


def test_k_larger_than_the_index_pads(tiny) -> None:
    base, queries = tiny.data("l2")
    index = build(BEBRResidual, base[:5], "l2", u=1, bits=1)
    dist, ids = index.search(queries[:3], 8)
    assert (ids[:, 5:] == -1).all() and np.isinf(dist[:, 5:]).all()
    assert sorted(ids[0, :5].tolist()) == list(range(5))


# ----- learned variant ---------------------------------------------------------------------------
def test_learned_needs_torch(monkeypatch) -> None:
    from methods.bebr_learned import BEBRLearned

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(VecbudgetError, match=r"pip install '\.\[learned\]'"):
        BEBRLearned(16, "l2", u=1)


def test_learned_beats_training_free_at_equal_bits() -> None:
    pytest.importorskip("torch")
    from methods.bebr_learned import BEBRLearned

    for seed, metric in [(0, "l2"), (1, "ip")]:
        base, queries = anisotropic(2000, 32, 100, seed)
        gt = exact_knn(base, queries, 10, metric)[1]
        for u in (1, 2):
            free = build(BEBRResidual, base, metric, u=u, bits=1)
            learned = build(BEBRLearned, base, metric, u=u, steps=40)
            assert learned.planes.shape == free.planes.shape  # equal bits per vector
            r_free = recall_at(free.search(queries, 10)[1], gt, 10)
            r_learned = recall_at(learned.search(queries, 10)[1], gt, 10)
            assert r_learned > r_free + 0.08, (seed, metric, u, r_free, r_learned)


def test_learned_codes_use_the_same_sdc(tiny) -> None:
    pytest.importorskip("torch")
    from methods.bebr_learned import BEBRLearned

    base, queries = tiny.data("ip")
    index = build(BEBRLearned, base, "ip", train_queries=queries[:20], u=2, steps=10)
    np.testing.assert_allclose(index.rotation.T @ index.rotation, np.eye(tiny.d), atol=1e-5)
    ref = sdc_reference(index, queries)
    d_pop, i_pop = index.search(queries, 10, kernel="popcount")
    d_gemm, i_gemm = index.search(queries, 10, kernel="gemm")
    np.testing.assert_allclose(d_pop, np.take_along_axis(ref, i_pop, 1), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(d_gemm, d_pop, rtol=1e-4, atol=1e-3)
    # P is orthogonal, so SDC in code space is the inner product of the centred reconstructions
    qp, qs, _ = index._encode(queries[:5])
    q_code = index.reconstruct_codes(qp, qs)
    x_code = index.reconstruct_codes(index.planes, index.scales)
    p = index.rotation
    np.testing.assert_allclose(q_code @ x_code.T, (q_code @ p.T) @ (x_code @ p.T).T, rtol=1e-4, atol=1e-4)
    per_vec = index.memory().ram / index.ntotal
    assert per_vec == pytest.approx(BEBRLearned.bytes_per_vector(tiny.d, index.ntotal, u=2), rel=1e-12)


def test_learned_is_deterministic() -> None:
    pytest.importorskip("torch")
    from methods.bebr_learned import BEBRLearned

    base, queries = anisotropic(800, 16, 20, 3)
    a = build(BEBRLearned, base, "l2", u=2, steps=15)
    b = build(BEBRLearned, base, "l2", u=2, steps=15)
    np.testing.assert_array_equal(a.planes, b.planes)
    np.testing.assert_array_equal(a.search(queries, 5)[1], b.search(queries, 5)[1])


def test_chunked_add_and_pickle(tiny, monkeypatch, tmp_path) -> None:
    import pickle

    base, queries = tiny.data("ip")
    whole = build(BEBRResidual, base, "ip", u=2, bits=2)
    monkeypatch.setattr(_bits, "ADD_CHUNK", 700)
    parts = BEBRResidual(tiny.d, "ip", u=2, bits=2)
    parts.fit(base)
    parts.add(base[:1000])
    parts.add(base[1000:])
    np.testing.assert_array_equal(parts.planes, whole.planes)
    np.testing.assert_array_equal(parts.aux, whole.aux)
    path = tmp_path / "bebr.pkl"
    parts.save(str(path))
    with open(path, "rb") as f:
        loaded = pickle.load(f)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], whole.search(queries, 5)[1])
