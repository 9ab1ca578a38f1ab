"""LVQ: exact error bounds of the codec, packing, sizes, and recall on tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from harness.groundtruth import exact_knn, pair_scores
from harness.registry import get_method
from methods._lvq_codec import LVQStore, f16_ceil, f16_floor, lvq_encode, pack, unpack
from tests.conftest import recall_at


def test_f16_directed_rounding():
    v = np.random.default_rng(0).normal(size=1000) * 10
    lo, hi = f16_floor(v), f16_ceil(v)
    assert lo.dtype == np.float16 and hi.dtype == np.float16
    assert np.all(lo.astype(np.float64) <= v) and np.all(hi.astype(np.float64) >= v)
    # one float16 ulp at most
    assert np.all(np.nextafter(lo, np.float16(np.inf)).astype(np.float64) > v)
    assert np.all(np.nextafter(hi, np.float16(-np.inf)).astype(np.float64) < v)


@pytest.mark.parametrize("bits,d", [(4, 7), (4, 32), (8, 5)])
def test_pack_roundtrip(bits, d):
    codes = np.random.default_rng(1).integers(0, 1 << bits, size=(50, d), dtype=np.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (50, -(-d * bits // 8))
    np.testing.assert_array_equal(unpack(packed, bits, d), codes)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_lvq8_reconstruction_error_bound(tiny, metric):
    """8-bit LVQ: every coordinate within Δ/2 of the original (Δ the stored float16 step), and
    the stored Δ is (max−min)/255 up to the float16 rounding of ℓ (down) and Δ (up)."""
    base, _ = tiny.data(metric)
    store = LVQStore(tiny.d, 8)
    store.fit(base)
    store.add(base)
    recon = store.rows(np.arange(base.shape[0]))
    step = store.step.astype(np.float64)
    err = np.abs(recon.astype(np.float64) - base)
    tol = 1e-6 * np.abs(base).max()  # float32 arithmetic of the decoder
    assert np.all(err <= step[:, None] / 2 + tol)
    xc = base.astype(np.float64) - store.mean
    lo, hi = xc.min(1), xc.max(1)
    ideal = (hi - lo) / 255
    lo_gap = lo - store.lower.astype(np.float64)  # ℓ rounded down by < 1 float16 ulp
    assert np.all(lo_gap >= 0) and np.all(lo_gap <= np.abs(lo) * 2.0**-10 + 1e-7)
    assert np.all(step >= ideal)
    assert np.all(step <= (ideal + lo_gap / 255) * (1 + 2.0**-10) + 1e-12)


def test_lvq_codes_use_full_range():
    x = np.random.default_rng(2).normal(size=(200, 16))
    codes, _, _ = lvq_encode(x - x.mean(0), 8)
    assert codes.min(axis=1).max() == 0  # the minimum maps to code 0
    assert codes.max(axis=1).min() >= 254  # the maximum to the top code (ceil of Δ may cost 1)


@pytest.mark.parametrize("bits1,bits2", [(4, 4), (4, 8), (8, 8)])
def test_two_level_error_bound(tiny, bits1, bits2):
    base, _ = tiny.data("l2")
    store = LVQStore(tiny.d, bits1, bits2)
    store.fit(base)
    store.add(base)
    step = store.step.astype(np.float64)[:, None]
    e1 = np.abs(store.rows(np.arange(len(base)), level=1) - base)
    e2 = np.abs(store.rows(np.arange(len(base)), level=2) - base)
    tol = 1e-5 * np.abs(base).max()
    assert np.all(e1 <= step / 2 + tol)
    assert np.all(e2 <= step / (2 * ((1 << bits2) - 1)) + tol)
    assert (e2**2).sum() < (e1**2).sum() / 4


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_lvq_scores_are_those_of_the_reconstruction(tiny, metric):
    base, queries = tiny.data(metric)
    m = get_method("lvq")(tiny.d, metric, bits1=8)
    m.fit(base)
    m.add(base)
    dist, ids = m.search(queries, 10)
    recon = m.store.rows(np.arange(len(base)))
    ref_d, ref_i = exact_knn(recon, queries, 10, metric)
    np.testing.assert_allclose(dist, pair_scores(recon, queries, ids, metric), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-3)


def test_lvq8_recall_l2(tiny):
    base, queries = tiny.data("l2")
    m = get_method("lvq")(tiny.d, "l2", bits1=8)
    m.fit(base)
    m.add(base)
    _, ids = m.search(queries, 10)
    assert recall_at(ids, tiny.gt("l2", 10), 10) >= 0.97


def test_lvq8_recall_ip_at_least_faiss_sq8(tiny):
    """On the unit-normalised tiny set (d=32, near-tied neighbours) LVQ-8 reaches 0.966, not
    0.97; the same holds for exact LVQ with float64 constants (0.956). We check it matches or
    beats faiss's 8-bit scalar quantizer (per-dimension ranges) on the same data."""
    import faiss

    base, queries = tiny.data("ip")
    gt = tiny.gt("ip", 10)
    m = get_method("lvq")(tiny.d, "ip", bits1=8)
    m.fit(base)
    m.add(base)
    r_lvq = recall_at(m.search(queries, 10)[1], gt, 10)
    sq = faiss.IndexScalarQuantizer(
        tiny.d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    sq.train(base)
    sq.add(base)
    assert r_lvq >= 0.95
    assert r_lvq >= recall_at(sq.search(queries, 10)[1], gt, 10)


@pytest.mark.slow
def test_lvq8_recall_bigann10k(shared_data):
    base = np.load(shared_data / "bigann10k" / "base.npy").astype(np.float32)
    queries = np.load(shared_data / "bigann10k" / "queries.npy").astype(np.float32)
    gt = exact_knn(base, queries, 10, "l2")[1]
    m = get_method("lvq")(base.shape[1], "l2", bits1=8)
    m.fit(base)
    m.add(base)
    assert recall_at(m.search(queries, 10)[1], gt, 10) >= 0.97


@pytest.mark.parametrize("bits1", [4, 8])
def test_two_level_beats_one_level(tiny, bits1):
    base, queries = tiny.data("ip")
    gt = tiny.gt("ip", 10)
    one = get_method("lvq")(tiny.d, "ip", bits1=bits1)
    two = get_method("lvq")(tiny.d, "ip", bits1=bits1, bits2=8)
    for m in (one, two):
        m.fit(base)
        m.add(base)
    r1 = recall_at(one.search(queries, 10)[1], gt, 10)
    r2 = recall_at(two.search(queries, 10, rerank_factor=4)[1], gt, 10)
    assert r2 > r1 or r1 == 1.0
    assert r2 >= r1


@pytest.mark.parametrize(
    "name,params",
    [("lvq", {"bits1": 4}), ("lvq", {"bits1": 8}), ("lvq", {"bits1": 4, "bits2": 8})],
)
def test_memory_matches_formula(name, params):
    d, n = 33, 500  # odd d exercises the nibble padding
    x = np.random.default_rng(3).normal(size=(n, d)).astype(np.float32)
    cls = get_method(name)
    m = cls(d, "l2", **params)
    m.fit(x)
    m.add(x)
    assert m.memory().ram == pytest.approx(cls.bytes_per_vector(d, n, **params) * n, abs=1e-6)


def test_grids_and_validity():
    cls = get_method("lvq")
    pairs = {(c["bits1"], c["bits2"]) for c in cls.build_configs(384)}
    assert pairs == {(4, 0), (8, 0), (4, 4), (4, 8), (8, 8)}
    assert cls.search_configs(bits1=8, bits2=0) == [{}]
    assert [c["rerank_factor"] for c in cls.search_configs(bits1=4, bits2=8)] == [1, 2, 4, 8]
    assert cls.bytes_per_vector(384, 10**9, bits1=8) == pytest.approx(388, abs=1e-3)
    assert cls.bytes_per_vector(384, 10**9, bits1=4, bits2=8) == pytest.approx(
        192 + 384 + 4, abs=1e-3
    )


def test_k_larger_than_n_pads():
    x = np.random.default_rng(4).normal(size=(5, 8)).astype(np.float32)
    m = get_method("lvq")(8, "ip", bits1=4, bits2=4)
    m.fit(x)
    m.add(x)
    _, ids = m.search(x[:2], 7, rerank_factor=2)
    assert (
        ids.shape == (2, 7)
        and (ids[:, 5:] == -1).all()
        and set(ids[0, :5].tolist()) == set(range(5))
    )
