"""KVQuant-NUQ (dense-and-sparse) and NUPES (power-exponent companding)."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from harness.groundtruth import exact_knn
from methods.nonuniform import (
    NUPES,
    KVQuantNUQ,
    nupes_mse,
    outlier_positions,
    search_exponent,
)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Single-threaded BLAS: tiny matrices on a busy machine are much slower with a thread pool."""
    with threadpool_limits(1):
        yield


def heavy_tailed(n: int = 2000, d: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(3, size=(n, d)) * rng.uniform(0.5, 2.0, d) + rng.normal(0, 1, d)).astype(np.float32)


def build(cls, x: np.ndarray, metric: str = "l2", **params):
    index = cls(x.shape[1], metric, **params)
    index.fit(x)
    index.add(x)
    return index


# ----- KVQuant ---------------------------------------------------------------------------------
def test_outliers_are_stored_exactly_as_fp16() -> None:
    x = heavy_tailed()
    index = build(KVQuantNUQ, x, bits=3, outlier_frac=0.05)
    k = int(np.ceil(0.05 * x.shape[1]))
    assert index.out_idx.shape == (x.shape[0], k) and index.out_val.dtype == np.float16
    rec = index.reconstruct()
    pos = index.out_idx.astype(np.int64)
    got = np.take_along_axis(rec, pos, 1)
    want = np.take_along_axis(x, pos, 1).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    # every other value is one of its dimension's levels
    mask = np.ones_like(x, dtype=bool)
    np.put_along_axis(mask, pos, False, 1)
    for j in range(x.shape[1]):
        lv = index.table.flat[index.table.offsets[j] : index.table.offsets[j] + 8]
        assert np.isin(rec[mask[:, j], j], lv).all()


def test_outliers_are_the_largest_normalised_deviations() -> None:
    x = heavy_tailed()
    center, scale = np.median(x, 0), np.subtract(*np.percentile(x, [75, 25], 0))
    pos = outlier_positions(x, center, scale, 3)
    z = np.abs(x - center) / scale
    picked = np.take_along_axis(z, pos, 1)
    rest = z.copy()
    np.put_along_axis(rest, pos, -np.inf, 1)
    assert np.all(picked.min(1) >= rest.max(1))
    assert outlier_positions(x, center, scale, 0).shape == (x.shape[0], 0)


def test_dense_and_sparse_lowers_the_error_on_heavy_tails() -> None:
    x = heavy_tailed()
    errs = {}
    for frac in (0.0, 0.05):
        rec = build(KVQuantNUQ, x, bits=2, outlier_frac=frac).reconstruct()
        errs[frac] = float(((rec - x) ** 2).mean())
    assert errs[0.05] < 0.8 * errs[0.0]


def test_nuq_levels_sorted_and_better_than_uniform() -> None:
    x = heavy_tailed()
    index = build(KVQuantNUQ, x, bits=3, outlier_frac=0.0)
    rec = index.reconstruct()
    nuq = ((rec - x) ** 2).mean(0)
    lo, hi = x.min(0), x.max(0)
    step = (hi - lo) / 7
    uni = lo + np.clip(np.rint((x - lo) / step), 0, 7) * step
    for j in range(x.shape[1]):
        lv = index.table.flat[index.table.offsets[j] : index.table.offsets[j] + 8]
        assert np.all(np.diff(lv) >= 0)
    assert np.all(nuq <= ((uni - x) ** 2).mean(0) * (1 + 1e-6))


def test_kvquant_bytes() -> None:
    assert KVQuantNUQ.n_outliers(384, 0.01) == 4
    assert KVQuantNUQ.n_outliers(32, 0.01) == 1
    assert KVQuantNUQ.bytes_per_vector(384, 10**9, bits=4, outlier_frac=0.01) == pytest.approx(192 + 16)
    x = heavy_tailed(n=1500, d=40)
    for b in (2, 3, 8):
        index = build(KVQuantNUQ, x, bits=b, outlier_frac=0.01)
        assert index.memory().ram / index.ntotal == pytest.approx(
            KVQuantNUQ.bytes_per_vector(40, index.ntotal, bits=b, outlier_frac=0.01), rel=1e-9)


# ----- NUPES -----------------------------------------------------------------------------------
def test_nupes_with_exponent_one_is_uniform_quantization() -> None:
    x = heavy_tailed()
    index = build(NUPES, x, bits=4, exponent=1.0)
    mean = x.mean(0)
    xc = x - mean
    lo, hi = xc.min(0), xc.max(0)
    step = (hi - lo) / 15
    codes = np.clip(np.rint((xc - lo) / step), 0, 15)
    uniform = mean + lo + codes * step
    np.testing.assert_allclose(index.reconstruct(), uniform, rtol=1e-5, atol=1e-5)
    assert index.a == 1.0


def test_searched_exponent_reduces_error_on_heavy_tails() -> None:
    x = heavy_tailed()
    xc = x - x.mean(0)
    for bits in (2, 3, 4):
        a, errs = search_exponent(xc, bits)
        assert a < 1.0  # heavy tails call for compression of large values
        assert errs[a] < 0.9 * nupes_mse(xc, bits, 1.0)
    searched = build(NUPES, x, bits=3)
    plain = build(NUPES, x, bits=3, exponent=1.0)
    e_searched = ((searched.reconstruct() - x) ** 2).mean()
    e_plain = ((plain.reconstruct() - x) ** 2).mean()
    assert e_searched < 0.9 * e_plain


def test_nupes_keeps_exponent_one_on_uniform_data() -> None:
    x = np.random.default_rng(5).uniform(-1, 1, size=(3000, 8)).astype(np.float32)
    a, errs = search_exponent(x - x.mean(0), 4)
    assert abs(a - 1.0) <= 0.1
    assert errs[a] <= errs[1.0]


def test_nupes_bytes() -> None:
    x = heavy_tailed(n=1500, d=40)
    for b in (2, 3, 4, 8):
        index = build(NUPES, x, bits=b)
        assert index.codes.shape == (1500, -(-40 * b // 8))
        assert index.memory().ram / index.ntotal == pytest.approx(NUPES.bytes_per_vector(40, 1500, bits=b), rel=1e-9)


# ----- both: ADC search ------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [KVQuantNUQ, NUPES])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_search_is_exact_search_over_the_reconstruction(tiny, cls, metric: str) -> None:
    base, queries = tiny.data(metric)
    index = build(cls, base, metric, bits=3)
    dist, ids = index.search(queries, 10)
    ref_d, ref_i = exact_knn(index.reconstruct(), queries, 10, metric)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)
    assert (ids == ref_i).mean() > 0.99


@pytest.mark.parametrize("cls", [KVQuantNUQ, NUPES])
def test_error_falls_with_bits(cls) -> None:
    x = heavy_tailed()
    errs = [((build(cls, x, bits=b).reconstruct() - x) ** 2).mean() for b in (2, 3, 4, 8)]
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))


@pytest.mark.parametrize("cls", [KVQuantNUQ, NUPES])
def test_chunked_add(cls, monkeypatch) -> None:
    from methods import _bits

    x = heavy_tailed()
    whole = build(cls, x, bits=3)
    monkeypatch.setattr(_bits, "ADD_CHUNK", 300)
    parts = cls(x.shape[1], "l2", bits=3)
    parts.fit(x)
    parts.add(x[:1100])
    parts.add(x[1100:])
    np.testing.assert_array_equal(parts.reconstruct(), whole.reconstruct())
