"""OSQ (SQUASH): bit allocation, Lloyd-Max quantizers, bit packing, ADC search, memory."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from harness.groundtruth import exact_knn
from methods import _bits
from methods.osq import OSQ, greedy_allocation
from tests.conftest import recall_at


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Single-threaded BLAS: tiny matrices on a busy machine are much slower with a thread pool."""
    with threadpool_limits(1):
        yield


def _samples(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 4000
    return {
        "gauss": rng.standard_normal(n),
        "laplace": rng.laplace(size=n),
        "bimodal": np.concatenate([rng.normal(-3, 0.3, n // 2), rng.normal(2, 1.0, n // 2)]),
        "student3": rng.standard_t(3, size=n),
    }


@pytest.mark.parametrize("budget", [1, 37, 64, 100, 128, 255, 256])
def test_allocation_sums_exactly_to_the_budget(budget: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1500, 32)) * np.linspace(3.0, 0.1, 32)
    bits, levels, mse = greedy_allocation(x, budget)
    assert bits.sum() == budget
    assert bits.min() >= 0 and bits.max() <= 8
    assert [len(lv) for lv in levels] == [1 << int(b) for b in bits]
    assert np.all(mse <= x.var(axis=0) + 1e-12)


def test_allocation_rejects_more_than_eight_bits_per_dimension() -> None:
    with pytest.raises(ValueError):
        greedy_allocation(np.zeros((10, 4)), 33)
    assert not OSQ.is_valid(16, bits_per_vector=129)
    assert OSQ.is_valid(16, bits_per_vector=128)


def test_allocation_favours_high_variance_dimensions() -> None:
    rng = np.random.default_rng(2)
    scales = 2.0 ** -np.arange(8)  # variances 1, 1/4, 1/16, ...: one bit buys a factor ~4
    x = rng.standard_normal((4000, 8)) * scales
    bits, _, _ = greedy_allocation(x, 16)
    assert np.all(np.diff(bits) <= 0)  # never more bits to a lower-variance dimension
    assert bits[0] > bits[-1]


@pytest.mark.parametrize("name", ["gauss", "laplace", "bimodal", "student3"])
@pytest.mark.parametrize("levels", [2, 4, 8, 16])
def test_lloyd_max_levels_sorted_and_beat_uniform(name: str, levels: int) -> None:
    x = _samples()[name]
    lv, mse = _bits.lloyd_max_1d(x, levels)
    assert lv.shape == (levels,)
    assert np.all(np.diff(lv) >= 0)
    # reported MSE is the true nearest-level error on the sample
    err = np.min(np.abs(x[:, None] - lv[None, :].astype(np.float64)), axis=1) ** 2
    assert mse == pytest.approx(err.mean(), rel=1e-4)
    uniform = np.linspace(x.min(), x.max(), levels)
    u_err = (np.min(np.abs(x[:, None] - uniform[None, :]), axis=1) ** 2).mean()
    assert mse <= u_err * (1 + 1e-9)
    if name != "bimodal" or levels > 2:
        assert mse < 0.95 * u_err  # non-uniform levels are strictly better on these shapes


def test_lloyd_max_error_decreases_with_levels() -> None:
    x = _samples()["laplace"]
    errs = [_bits.lloyd_max_1d(x, 1 << b)[1] for b in range(1, 7)]
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))
    # Gaussian 1-bit Lloyd-Max: levels ±sqrt(2/pi), MSE 1 - 2/pi
    lv, mse = _bits.lloyd_max_1d(np.random.default_rng(0).standard_normal(200_000), 2)
    assert lv[1] == pytest.approx(np.sqrt(2 / np.pi), abs=0.01)
    assert mse == pytest.approx(1 - 2 / np.pi, abs=0.01)


@pytest.mark.parametrize("widths", [[3, 0, 5, 7, 8, 1, 2, 4, 6], [4] * 10, [8] * 5, [1] * 13, [2] * 7, [3] * 11])
def test_pack_unpack_round_trip(widths: list[int]) -> None:
    rng = np.random.default_rng(4)
    w = np.array(widths)
    codes = np.stack([rng.integers(0, 1 << b, size=300) for b in w], axis=1)
    packed = _bits.pack_codes(codes, w)
    assert packed.dtype == np.uint8
    assert packed.shape == (300, -(-int(w.sum()) // 8))
    np.testing.assert_array_equal(_bits.unpack_codes(packed, w), codes)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_adc_search_is_exact_search_over_the_reconstruction(tiny, metric: str) -> None:
    base, queries = tiny.data(metric)
    index = OSQ(tiny.d, metric, bits_per_vector=96)
    index.fit(base)
    index.add(base)
    dist, ids = index.search(queries, 10)
    rec = index.reconstruct(index.codes)
    ref_d, ref_i = exact_knn(rec, queries, 10, metric)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-4)
    assert (ids == ref_i).mean() > 0.99  # equal up to float ties


def test_codes_and_memory(tiny) -> None:
    base, queries = tiny.data("l2")
    for b in (64, 100, 256):
        index = OSQ(tiny.d, "l2", bits_per_vector=b)
        index.fit(base)
        index.add(base)
        assert index.allocation.sum() == b
        assert index.codes.shape == (base.shape[0], -(-b // 8))
        mem = index.memory()
        assert mem.codes == base.shape[0] * -(-b // 8)
        per_vec = mem.ram / index.ntotal
        assert per_vec == pytest.approx(OSQ.bytes_per_vector(tiny.d, index.ntotal, bits_per_vector=b), rel=0.05)


def test_recall_grows_with_the_budget(tiny) -> None:
    base, queries = tiny.data("l2")
    gt = tiny.gt("l2", 10)
    recalls = []
    for b in (32, 64, 128, 256):
        index = OSQ(tiny.d, "l2", bits_per_vector=b)
        index.fit(base)
        index.add(base)
        recalls.append(recall_at(index.search(queries, 10)[1], gt, 10))
    assert all(b > a for a, b in zip(recalls, recalls[1:], strict=False))
    assert recalls[-1] >= 0.95  # 8 bits per dimension


def test_chunked_add(tiny, monkeypatch) -> None:
    base, _ = tiny.data("l2")
    whole = OSQ(tiny.d, "l2", bits_per_vector=100)
    whole.fit(base)
    whole.add(base)
    monkeypatch.setattr(_bits, "ADD_CHUNK", 333)
    parts = OSQ(tiny.d, "l2", bits_per_vector=100)
    parts.fit(base)
    parts.add(base[:1234])
    parts.add(base[1234:])
    np.testing.assert_array_equal(parts.codes, whole.codes)
