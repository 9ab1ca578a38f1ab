"""Compiled small-batch scan kernels: same top-k as the numpy reference scans, on tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from harness.registry import get_method
from methods import _bits, _kernels

pytestmark = pytest.mark.skipif(not _kernels.AVAILABLE, reason="numba is not installed")

CASES = [
    ("osq", {"bits_per_vector": 150}),  # variable widths, groups across byte boundaries
    ("osq", {"bits_per_vector": 48}),  # fewer bits than dimensions: zero-width dimensions
    ("nupes", {"bits": 3}),
    ("nupes", {"bits": 8}),
    ("kvquant-nuq", {"bits": 4, "outlier_frac": 0.05}),
    ("kvquant-nuq", {"bits": 3, "outlier_frac": 0.05}),
    ("lvq", {"bits1": 8}),
    ("lvq", {"bits1": 4}),
    ("lvq", {"bits1": 4, "bits2": 8}),
    ("bebr-residual", {"u": 1, "bits": 1}),
    ("bebr-residual", {"u": 2, "bits": 2}),
]


def _data(dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, dim)).astype(np.float32) * np.linspace(2.0, 0.2, dim, dtype=np.float32)
    return x, rng.standard_normal((5, dim)).astype(np.float32)


def _same_topk(d_ref: np.ndarray, i_ref: np.ndarray, d_new: np.ndarray, i_new: np.ndarray) -> None:
    """Equal scores (float rounding) and equal ids except where the reference scores tie."""
    np.testing.assert_allclose(d_new, d_ref, rtol=1e-4, atol=1e-4 * float(np.abs(d_ref).max()))
    differ = i_ref != i_new
    if differ.any():  # only between near-equal scores
        gaps = np.abs(np.diff(d_ref, axis=1)).min(axis=1)
        assert np.all(gaps[differ.any(axis=1)] < 1e-4 * float(np.abs(d_ref).max()))


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{'-'.join(map(str, p.values()))}" for n, p in CASES])
def test_compiled_kernel_matches_numpy_scan(name: str, params: dict, metric: str) -> None:
    dim = 40 if name != "bebr-residual" else 128  # bebr's kernel reads 64-bit words
    x, q = _data(dim)
    index = get_method(name)(dim, metric, **params)
    index.fit(x)
    index.add(x)
    ref_kernel = "gemm" if name == "bebr-residual" else "numpy"
    d_ref, i_ref = index.search(q, 10, kernel=ref_kernel)
    d_new, i_new = index.search(q, 10, kernel="compiled")
    _same_topk(d_ref, i_ref, d_new, i_new)
    # auto takes the compiled kernel for a single query
    d_one, i_one = index.search(q[:1], 10)
    _same_topk(d_ref[:1], i_ref[:1], d_one, i_one)


def test_lut_kernel_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    widths = rng.integers(0, 9, 37)
    groups = _kernels.lut_groups(widths)
    assert np.all(groups["mask"] <= 255) and groups["size"].max() <= 256
    nbytes = _bits.code_bytes(widths)
    codes = rng.integers(0, 256, (301, nbytes), dtype=np.uint8)
    luts = rng.standard_normal((3, groups["byte"].size, 256)).astype(np.float32)
    np.testing.assert_allclose(_kernels.lut_scores(codes, luts, groups),
                               _kernels.lut_scores_numpy(codes, luts, groups), rtol=1e-5, atol=1e-4)


def test_group_values_decode_the_packed_codes() -> None:
    rng = np.random.default_rng(1)
    widths = rng.integers(1, 9, 29)
    codes = (rng.integers(0, 1 << 30, (50, widths.size)) & ((1 << widths) - 1)).astype(np.uint8)
    packed = _bits.pack_codes(codes, widths)
    groups = _kernels.lut_groups(widths)
    vals = _kernels.group_values(packed, groups)
    for j, w in enumerate(widths):  # each dimension's code sits at its position in its group
        got = (vals[:, groups["group"][j]] >> groups["pos"][j]) & ((1 << w) - 1)
        np.testing.assert_array_equal(got, codes[:, j])


def test_kernel_parameter_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown kernel"):
        _kernels.use_kernels(1, "fast")
    assert _kernels.use_kernels(1, "auto") and not _kernels.use_kernels(_kernels.SMALL_BATCH + 1, "auto")
    assert not _kernels.use_kernels(1, "numpy")


def test_layout_is_counted_in_memory() -> None:
    x, _ = _data(40)
    index = get_method("osq")(40, "ip", bits_per_vector=150)
    index.fit(x)
    before = index.table.nbytes
    index.add(x)
    assert index.memory().shared >= before + index.layout.nbytes > before
