"""LeanVec-ID / LeanVec-OOD: projections, the OOD loss and optimiser, sizes, OOD advantage."""

from __future__ import annotations

import numpy as np
import pytest

from harness.registry import get_method
from methods.leanvec import eigenvector_search, frank_wolfe_bcd, leanvec_ood_matrices, ood_loss
from tests.conftest import recall_at


def ood_setup(seed: int = 0, n: int = 3000, d: int = 64, nq: int = 60, ntrain_q: int = 600):
    """Documents spread over dims 0..47 (most variance in 0..15); queries concentrated on dims
    16..31, where the documents have less variance than in 0..15."""
    rng = np.random.default_rng(seed)
    sx = np.r_[np.full(16, 3.0), np.full(32, 1.0), np.full(d - 48, 0.1)]
    sq = np.r_[np.full(16, 0.05), np.full(16, 1.0), np.full(d - 32, 0.05)]
    base = (rng.normal(size=(n, d)) * sx).astype(np.float32)
    queries = (rng.normal(size=(nq, d)) * sq).astype(np.float32)
    train_q = (rng.normal(size=(ntrain_q, d)) * sq).astype(np.float32)
    return base, queries, train_q


def exact_ids(base, queries, k, metric="ip"):
    from harness.groundtruth import exact_knn

    return exact_knn(base, queries, k, metric)[1]


def test_ood_loss_matches_definition():
    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(200, 12)), rng.normal(size=(80, 12))
    a, b = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    kx, kq = x.T @ x / len(x), q.T @ q / len(q)
    direct = np.linalg.norm(q @ x.T - q @ a @ b.T @ x.T) ** 2 / (len(x) * len(q))
    assert ood_loss(kq, kx, kx @ kq, a, b, float(np.sum(kq * kx))) == pytest.approx(
        direct, rel=1e-9
    )


def test_frank_wolfe_feasible_and_better_than_start():
    base, _, train_q = ood_setup()
    x, q = base.astype(np.float64), train_q.astype(np.float64)
    kx, kq = x.T @ x / len(x), q.T @ q / len(q)
    a, b, loss, steps = frank_wolfe_bcd(kq, kx, 16)
    const = float(np.sum(kq * kx))  # the loss at A = B = 0
    assert loss < 0.5 * const and steps >= 3
    assert np.linalg.norm(a, 2) <= 1 + 1e-9 and np.linalg.norm(b, 2) <= 1 + 1e-9
    assert loss == pytest.approx(ood_loss(kq, kx, kx @ kq, a, b, const))


def test_eigenvector_search_beta_zero_is_data_pca_direction():
    base, _, train_q = ood_setup()
    x, q = base.astype(np.float64), train_q.astype(np.float64)
    kx, kq = x.T @ x / len(x), q.T @ q / len(q)
    p, _, beta = eigenvector_search(kq, kx, 16)
    np.testing.assert_allclose(p.T @ p, np.eye(16), atol=1e-8)
    assert beta > 0  # the queries pull the subspace away from the data's top directions


def test_id_projection_is_pca(tiny):
    base, _ = tiny.data("l2")
    m = get_method("leanvec-id")(tiny.d, "l2", k=8, primary="fp16", secondary="float32")
    m.fit(base)
    p = m.query_matrix.astype(np.float64)
    np.testing.assert_allclose(p.T @ p, np.eye(8), atol=1e-5)
    cov = np.cov(base.T)
    proj = p.T @ cov @ p
    np.testing.assert_allclose(proj, np.diag(np.diag(proj)), atol=1e-3 * np.abs(proj).max())
    assert np.all(np.diff(np.diag(proj)) <= 1e-6)
    assert np.trace(proj) == pytest.approx(
        np.sort(np.linalg.eigvalsh(cov))[::-1][:8].sum(), rel=1e-4
    )


def test_ood_beats_id_on_ood_queries():
    base, queries, train_q = ood_setup()
    gt = exact_ids(base, queries, 10)
    recalls = {}
    for name in ("leanvec-id", "leanvec-ood"):
        m = get_method(name)(base.shape[1], "ip", k=16, primary="fp16", secondary="fp16")
        m.fit(base, train_q)
        m.add(base)
        recalls[name] = recall_at(m.search(queries, 10, rerank_factor=1)[1], gt, 10)
        assert recall_at(m.search_primary(queries, 10)[1], gt, 10) == pytest.approx(recalls[name])
    assert recalls["leanvec-ood"] >= recalls["leanvec-id"]
    assert recalls["leanvec-ood"] >= recalls["leanvec-id"] + 0.2  # a real gap in this setup


def test_ood_matrices_chosen_by_loss():
    base, _, train_q = ood_setup()
    a, b, info = leanvec_ood_matrices(base, train_q, 16)
    assert info["chosen"] in ("frank-wolfe", "eigenvector-search")
    assert min(info["loss_fw"], info["loss_es"]) == pytest.approx(
        info["loss_fw"] if info["chosen"] == "frank-wolfe" else info["loss_es"]
    )
    assert a.shape == b.shape == (base.shape[1], 16) and a.dtype == np.float32


def test_ood_without_queries_falls_back_to_id(tiny):
    base, queries = tiny.data("ip")
    ood = get_method("leanvec-ood")(tiny.d, "ip", k=16, primary="lvq8", secondary="fp16")
    idm = get_method("leanvec-id")(tiny.d, "ip", k=16, primary="lvq8", secondary="fp16")
    for m in (ood, idm):
        m.fit(base, None)
        m.add(base)
    assert any("fell back" in note for note in ood.notes)
    np.testing.assert_array_equal(ood.search(queries, 10)[1], idm.search(queries, 10)[1])


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_rerank_recovers_recall(tiny, metric):
    base, queries = tiny.data(metric)
    gt = tiny.gt(metric, 10)
    m = get_method("leanvec-id")(tiny.d, metric, k=16, primary="lvq8", secondary="float32")
    m.fit(base)
    m.add(base)
    r1 = recall_at(m.search(queries, 10, rerank_factor=1)[1], gt, 10)
    r16 = recall_at(m.search(queries, 10, rerank_factor=16)[1], gt, 10)
    assert r16 >= r1 and r16 >= 0.97
    dist, ids = m.search(queries, 10, rerank_factor=16)
    from harness.groundtruth import pair_scores

    np.testing.assert_allclose(dist, pair_scores(base, queries, ids, metric), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["leanvec-id", "leanvec-ood"])
@pytest.mark.parametrize(
    "primary,secondary", [("lvq8", "lvq8"), ("fp16", "float32"), ("lvq8", "fp16")]
)
def test_memory_matches_formula(name, primary, secondary):
    rng = np.random.default_rng(5)
    base = rng.normal(size=(700, 24)).astype(np.float32)
    train_q = rng.normal(size=(100, 24)).astype(np.float32)
    cls = get_method(name)
    params = {"k": 8, "primary": primary, "secondary": secondary}
    m = cls(24, "ip", **params)
    m.fit(base, train_q)
    m.add(base)
    assert m.memory().ram == pytest.approx(
        cls.bytes_per_vector(24, len(base), **params) * len(base), abs=1e-6
    )


def test_grid_validity():
    assert all(c["k"] < 128 for c in get_method("leanvec-id").build_configs(128))
    assert {c["k"] for c in get_method("leanvec-ood").build_configs(32)} == {16}
    assert (
        get_method("leanvec-ood").uses_train_queries
        and not get_method("leanvec-id").uses_train_queries
    )
