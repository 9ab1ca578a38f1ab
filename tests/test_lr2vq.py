"""LR²VQ (PCA / OPQ-rotated PCA projection + PQ): sizes, rotation, exactness limits, save."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from harness.groundtruth import exact_knn, pair_scores
from harness.registry import get_method
from tests.conftest import recall_at


def build(tiny, metric, **params):
    base, _ = tiny.data(metric)
    m = get_method("lr2vq")(tiny.d, metric, **params)
    m.fit(base)
    m.add(base)
    return m


@pytest.mark.parametrize("rotation", ["pca", "opq"])
def test_memory_matches_formula(tiny, rotation):
    params = {"d_proj": 16, "m": 8, "rotation": rotation}
    m = build(tiny, "l2", **params)
    n = tiny.base.shape[0]
    assert m.memory().ram == pytest.approx(
        get_method("lr2vq").bytes_per_vector(tiny.d, n, **params) * n, abs=1e-6
    )
    assert m.memory().codes == n * 8


def test_opq_rotation_is_orthonormal(tiny):
    m = build(tiny, "ip", d_proj=16, m=4, rotation="opq")
    a = m.rot.astype(np.float64)
    assert a.shape == (16, 16)
    np.testing.assert_allclose(a @ a.T, np.eye(16), atol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("rotation", ["pca", "opq"])
def test_adc_scores_are_exact_on_the_reconstructions(tiny, metric, rotation):
    """The flat ADC scan returns the exact top-k of the (projected, rotated) query against the
    PQ reconstructions of the projected vectors."""
    _, queries = tiny.data(metric)
    m = build(tiny, metric, d_proj=16, m=8, rotation=rotation)
    zhat = m.index.reconstruct_n(0, m.ntotal)
    qz = m._map(m.proj.queries(queries))
    dist, ids = m.search(queries, 10)
    ref_d, _ = exact_knn(zhat, qz, 10, metric)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dist, pair_scores(zhat, qz, ids, metric), rtol=1e-4, atol=1e-4)


def test_more_subquantizers_better(tiny):
    base, queries = tiny.data("l2")
    gt = tiny.gt("l2", 10)
    r = {
        mm: recall_at(
            build(tiny, "l2", d_proj=32, m=mm, rotation="pca").search(queries, 10)[1], gt, 10
        )
        for mm in (4, 16)
    }
    assert r[16] > r[4]


def test_projection_drops_dimensions(tiny):
    """With d' = 4 the codes can only rank by the top-4 principal components: recall is lower
    than with d' = 32 at the same precision (2 dims per sub-quantizer)."""
    _, queries = tiny.data("l2")
    gt = tiny.gt("l2", 10)
    low = recall_at(build(tiny, "l2", d_proj=4, m=2, rotation="pca").search(queries, 10)[1], gt, 10)
    full = recall_at(
        build(tiny, "l2", d_proj=32, m=16, rotation="pca").search(queries, 10)[1], gt, 10
    )
    assert full > low


def test_save_roundtrip(tiny, tmp_path):
    _, queries = tiny.data("ip")
    m = build(tiny, "ip", d_proj=16, m=8, rotation="opq")
    size = m.save(os.fspath(tmp_path / "idx.pkl"))
    assert size > 0
    with open(tmp_path / "idx.pkl", "rb") as f:
        m2 = pickle.load(f)
    np.testing.assert_array_equal(m2.search(queries, 10)[1], m.search(queries, 10)[1])
    assert m2.memory() == m.memory()


def test_validity():
    cls = get_method("lr2vq")
    assert cls.is_valid(384, d_proj=256, m=32, rotation="opq")
    assert not cls.is_valid(128, d_proj=256, m=32, rotation="opq")  # d' > d
    assert not cls.is_valid(384, d_proj=64, m=24, rotation="pca")  # m does not divide d'
    assert not cls.is_valid(384, d_proj=256, m=4, rotation="pca")  # 64 dims per sub-quantizer
    assert not cls.is_valid(384, d_proj=64, m=64, rotation="pca")  # 1 dim: a scalar quantizer
    configs = cls.build_configs(32)
    assert configs and all(c["d_proj"] <= 32 and c["d_proj"] % c["m"] == 0 for c in configs)
