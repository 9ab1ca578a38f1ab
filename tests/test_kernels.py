"""Compiled small-batch scan kernels: same top-k as the numpy reference scans, on tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from harness.registry import get_method
from methods import _bits, _fastscan, _kernels

pytestmark = pytest.mark.skipif(not _kernels.AVAILABLE, reason="numba is not installed")

CASES = [
    ("osq", {"bits_per_vector": 150}),  # variable widths, groups across byte boundaries
    ("osq", {"bits_per_vector": 48}),  # fewer bits than dimensions: zero-width dimensions
    ("nupes", {"bits": 3}),
    ("nupes", {"bits": 8}),
    ("nupes", {"bits": 4}),  # fast-scan layout (1-, 2-, 4-bit codes)
    ("nupes", {"bits": 2}),
    ("nupes", {"bits": 1}),
    ("kvquant-nuq", {"bits": 2, "outlier_frac": 0.05}),
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
    if isinstance(getattr(index, "_codes", None), _fastscan.NibbleCodes) and _fastscan.AVAILABLE:
        d_fs, i_fs = index.search(q, 10, kernel="fastscan")
        _same_topk(d_ref, i_ref, d_fs, i_fs)


@pytest.mark.parametrize("n", [1, 2, 5, 301])  # the 64-bit window kernel reads the last row by bytes
def test_lut_kernel_matches_numpy_reference(n: int) -> None:
    rng = np.random.default_rng(0)
    widths = rng.integers(0, 9, 37)
    groups = _kernels.lut_groups(widths)
    assert np.all(groups["mask"] <= 255) and groups["size"].max() <= 256
    nbytes = _bits.code_bytes(widths)
    codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
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


# ----- fast-scan (methods/_fastscan.py) ------------------------------------------------------------------
needs_avx2 = pytest.mark.skipif(not _fastscan.AVAILABLE, reason="the shuffle kernel needs AVX2")


@pytest.mark.parametrize("n", [0, 5, 32, 75, 130])
def test_nibble_layout_is_a_permutation_of_the_packed_rows(n: int) -> None:
    rng = np.random.default_rng(n)
    packed = rng.integers(0, 256, (n, 7), dtype=np.uint8)
    codes = _fastscan.NibbleCodes(packed)
    assert len(codes) == n and codes.nbytes == packed.nbytes  # no byte more than the packed codes
    np.testing.assert_array_equal(codes.packed(), packed)
    for b0, b1 in [(0, n), (3, 40), (31, 33), (64, 75), (n - 1, n)]:
        np.testing.assert_array_equal(codes.rows(max(b0, 0), b1), packed[max(b0, 0) : b1])
    ids = rng.permutation(n)[: max(n // 2, 1)] if n else np.zeros(0, np.int64)
    np.testing.assert_array_equal(codes.take(ids), packed[ids])
    grown = _fastscan.NibbleCodes(packed[:0])
    for part in np.array_split(packed, 4):  # appended in pieces: the same layout
        grown.append(part)
    np.testing.assert_array_equal(grown.blocks, codes.blocks)
    np.testing.assert_array_equal(grown.tail, codes.tail)


def test_half_floats_are_decoded_exactly() -> None:
    if not _kernels.AVAILABLE:
        pytest.skip("numba")
    import numba

    @numba.njit
    def decode(h: np.ndarray, out: np.ndarray) -> None:
        for i in range(h.size):
            out[i] = _fastscan._half(h[i])

    bits = np.arange(1 << 16, dtype=np.uint16)
    out = np.empty(bits.size, np.float32)
    decode(bits, out)
    ref = bits.view(np.float16).astype(np.float32)
    assert np.all((out == ref) | (np.isnan(out) & np.isnan(ref)))


@needs_avx2
@pytest.mark.parametrize("nb", [3, 24, 300])  # 300 bytes: 300 nibble pairs, more than one 16-bit flush
def test_shuffle_kernel_sums_the_uint8_tables(nb: int) -> None:
    rng = np.random.default_rng(nb)
    packed = rng.integers(0, 256, (96, nb), dtype=np.uint8)
    codes = _fastscan.NibbleCodes(packed)
    nib = _fastscan._nibbles(packed)
    for lq in (rng.integers(0, 256, (2 * nb, 16), dtype=np.uint8), np.full((2 * nb, 16), 255, np.uint8)):
        approx = np.empty(codes.nfull)
        none = np.zeros((96, 0), np.uint16)
        _fastscan._scan(codes.blocks, lq.ravel(), 1.0, 0.0, none, none, np.zeros(1, np.float32),
                        np.zeros(1, np.float32), np.zeros(1, np.int64), 4, True, approx)
        ref = lq[np.arange(2 * nb)[None, :], nib].sum(axis=1, dtype=np.int64)
        np.testing.assert_array_equal(approx, ref)


def test_quantized_tables_bound_the_error() -> None:
    rng = np.random.default_rng(5)
    lut = (rng.standard_normal((40, 16)) * rng.uniform(0.01, 3, (40, 1))).astype(np.float32)
    lq, a, bias, err = _fastscan.quantize(lut)
    nib = rng.integers(0, 16, (5000, 40))
    exact = lut.astype(np.float64)[np.arange(40)[None, :], nib].sum(axis=1)
    approx = lq.astype(np.float64)[np.arange(40)[None, :], nib].sum(axis=1) / a + bias
    assert np.abs(approx - exact).max() <= err * (1 + 1e-9)
    assert err <= 40 * 0.5 / a + 1e-12  # at most half a step per table
    if _kernels.AVAILABLE:
        lq2 = np.empty(40 * 16, np.uint8)
        a2, bias2, err2, mag = _fastscan._quantize(lut, lq2)
        np.testing.assert_array_equal(lq2, lq.ravel())
        np.testing.assert_allclose([a2, bias2, err2], [a, bias, err], rtol=1e-9)
        assert mag == pytest.approx(float(np.abs(lut.astype(np.float64)).max(axis=1).sum()), rel=1e-9)


@needs_avx2
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("name,params", [("nupes", {"bits": 4}), ("kvquant-nuq", {"bits": 4, "outlier_frac": 0.03})])
def test_fastscan_is_exact_on_hard_data(name: str, params: dict, metric: str) -> None:
    """Flat score distributions (isotropic data, many near-ties) and exact duplicates: the
    certified candidate bound must keep every true neighbour; brute force on the decoded vectors."""
    rng = np.random.default_rng(11)
    dim = 64
    x = rng.standard_normal((2000, dim)).astype(np.float32)
    x[1000:1100] = x[:100]  # duplicates: tied scores
    q = rng.standard_normal((30, dim)).astype(np.float32)
    index = get_method(name)(dim, metric, **params)
    index.fit(x)
    index.add(x)
    d_ref, _ = index.search(q, 10, kernel="numpy")
    d_fs, i_fs = index.search(q, 10, kernel="fastscan")
    rec = index.reconstruct()
    brute = q @ rec.T if metric == "ip" else ((q[:, None, :] - rec[None]) ** 2).sum(-1)
    best = np.sort(brute, axis=1)[:, ::-1][:, :10] if metric == "ip" else np.sort(brute, axis=1)[:, :10]
    tol = 1e-4 * float(np.abs(best).max())
    np.testing.assert_allclose(d_fs, best, rtol=1e-4, atol=tol)
    np.testing.assert_allclose(d_fs, d_ref, rtol=1e-4, atol=tol)
    # every returned id has the returned score (ties at the k-th place may pick either duplicate)
    np.testing.assert_allclose(np.take_along_axis(brute, i_fs, 1), d_fs, rtol=1e-4, atol=tol)
    assert all(len(set(row)) == 10 for row in i_fs.tolist())


def test_fast_layout_keeps_the_bytes_per_vector() -> None:
    x, _ = _data(40)
    for bits in (1, 2, 4):
        index = get_method("nupes")(40, "ip", bits=bits)
        index.fit(x)
        index.add(x)
        assert isinstance(index._codes, _fastscan.NibbleCodes)
        assert index.memory().codes == x.shape[0] * _bits.code_bytes(index.widths)
        assert index.codes.shape == (x.shape[0], _bits.code_bytes(index.widths))


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("n,bits,u", [(300, 1, 1), (300, 1, 2), (300, 2, 1), (300, 2, 2), (6, 1, 3)])  # n < k: -1
def test_sdc_topk_matches_brute_force(n: int, bits: int, u: int, metric: str) -> None:
    rng = np.random.default_rng(n + bits + u)
    p, m = u * bits, 192
    planes = rng.integers(0, 256, (n, p, m // 8), dtype=np.uint8)
    qplanes = rng.integers(0, 256, (3, p, m // 8), dtype=np.uint8)
    scales = rng.uniform(0.01, 1, (n, u)).astype(np.float16)
    qw = rng.uniform(0.01, 1, (3, p)).astype(np.float32)
    aux = rng.standard_normal(n).astype(np.float32)
    qsq = rng.uniform(1, 2, 3).astype(np.float32)
    xw = (scales.astype(np.float64)[:, :, None] * 2.0 ** np.arange(bits)).reshape(n, p)
    sx = _bits.unpack_signs(planes, m).astype(np.float64)  # (n, p, m) of +-1
    sq = _bits.unpack_signs(qplanes, m).astype(np.float64)
    sdc = np.einsum("qa,qam,nb,nbm->qn", qw.astype(np.float64), sq, xw, sx)
    ref = sdc + aux if metric == "ip" else qsq[:, None] - 2 * sdc + aux
    k = 10
    d, i = _kernels.sdc_topk(planes, scales, aux, qplanes, qw, bits, m, k, metric, qsq)
    order = np.argsort(-ref if metric == "ip" else ref, axis=1, kind="stable")[:, :k]
    kk = min(k, n)
    np.testing.assert_allclose(d[:, :kk], np.take_along_axis(ref, order, 1)[:, :kk], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.take_along_axis(ref, i[:, :kk], 1), d[:, :kk], rtol=1e-4, atol=1e-3)
    assert np.all(i[:, kk:] == -1)


@pytest.mark.parametrize("u", [1, 2, 4])
def test_bebr_one_bit_encoding_shortcut_is_the_general_step(u: int) -> None:
    from methods.bebr import odd_to_planes, quantize_step

    x, _ = _data(128)
    index = get_method("bebr-residual")(128, "ip", u=u, bits=1)
    xc = x - x.mean(axis=0)
    planes, scales = index._encode_centred(xc)
    r = xc.astype(np.float32, copy=True)
    for t in range(u):  # the general recurrence of _encode_centred
        c, a = quantize_step(r, 1)
        r -= a.astype(np.float32)[:, None] * c
        np.testing.assert_array_equal(planes[:, t : t + 1], odd_to_planes(c, 1))
        np.testing.assert_array_equal(scales[:, t], a)


def test_fast_layout_survives_pickling_and_old_pickles() -> None:
    import pickle

    x, q = _data(40)
    index = get_method("nupes")(40, "ip", bits=4)
    index.fit(x)
    index.add(x)
    d_ref, i_ref = index.search(q, 10, kernel="numpy")
    again = pickle.loads(pickle.dumps(index))
    np.testing.assert_array_equal(again.codes, index.codes)
    old = pickle.loads(pickle.dumps(index))  # the state an index had before the layout: packed codes
    state = dict(old.__dict__)
    state["codes"] = state.pop("_codes").packed()
    del state["nibble_layout"]
    restored = object.__new__(type(index))
    restored.__setstate__(state)
    assert isinstance(restored._codes, _fastscan.NibbleCodes)
    for idx in (again, restored):
        _same_topk(d_ref, i_ref, *idx.search(q, 10))
