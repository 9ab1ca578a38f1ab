"""Helpers shared by the bit-level methods (BEBR, ITQ, OSQ, KVQuant-NUQ, NUPES).

* bit planes: ``pack_signs`` / ``unpack_signs`` (little bit order, 1 = positive) and
  ``hamming_matrix`` (all-pairs popcount through ``faiss.hammings``);
* variable-width codes: ``pack_codes`` / ``unpack_codes`` concatenate per-dimension codes of
  ``widths[j]`` bits into one bit stream per vector, ``ceil(sum(widths)/8)`` bytes;
* ``LevelTable``: per-dimension reconstruction levels (scalar quantizers with a lookup table);
* ``blocked_search``: exact top-k of queries against vectors decoded block by block, scored by
  one BLAS GEMM per block, with the top-k kept by faiss's C++ heaps (no Python loop per vector).

Asymmetric distance with per-dimension lookup tables, ``sum_j LUT_j[q, code_j]`` with
``LUT_j[q, c] = (q_j - level_j[c])^2``, equals ``|q|^2 + |r|^2 - 2 q.r`` with ``r_j = level_j[code_j]``;
the decoders here gather ``r`` through the level table and use the second form, which turns the
per-vector table look-ups into one dense matrix product per block of vectors. That decode is
shared by a large batch of queries but paid in full by a single query, so small batches
(``methods/_kernels.py``: :data:`~methods._kernels.SMALL_BATCH`) take ``lut_search`` instead: the
first form, summed over groups of packed dimensions by a compiled kernel, with no decoding.
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from methods import _kernels

#: byte value -> its 8 bits as ±1 floats, least significant bit first
SIGN_LUT = (((np.arange(256)[:, None] >> np.arange(8)) & 1) * 2 - 1).astype(np.float32)

DEFAULT_BLOCK = 4096
QUERY_CHUNK = 2048
ADD_CHUNK = 32768  # vectors encoded at a time by ``add`` (bounds the temporary arrays)


def encode_chunked(encode: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                   rows: int | None = None) -> np.ndarray:
    """``encode`` applied to consecutive row blocks of x (``ADD_CHUNK`` rows), results stacked."""
    rows = rows or ADD_CHUNK
    if not x.shape[0]:
        return encode(x)
    return np.concatenate([encode(x[r0 : r0 + rows]) for r0 in range(0, x.shape[0], rows)])


# ----- bit planes ------------------------------------------------------------------------------
def pack_signs(positive: np.ndarray) -> np.ndarray:
    """Pack a boolean array (..., d) into uint8 (..., ceil(d/8)), little bit order."""
    return np.packbits(np.asarray(positive, dtype=bool), axis=-1, bitorder="little")


def unpack_signs(packed: np.ndarray, d: int) -> np.ndarray:
    """Inverse of :func:`pack_signs` as float32 ±1 of shape (..., d)."""
    out = SIGN_LUT[packed]
    return out.reshape(*packed.shape[:-1], -1)[..., :d]


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances (na, nb) int32 between packed codes of equal byte width."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    b = np.ascontiguousarray(b, dtype=np.uint8)
    if a.shape[1] != b.shape[1]:
        raise ValueError("codes must have the same number of bytes")
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    if a.size and b.size:
        faiss.hammings(faiss.swig_ptr(a), faiss.swig_ptr(b), a.shape[0], b.shape[0], a.shape[1],
                       faiss.swig_ptr(out))
    return out


# ----- variable-width codes --------------------------------------------------------------------
def code_bytes(widths: np.ndarray) -> int:
    """Bytes of one packed vector: ceil(sum(widths) / 8)."""
    return int(-(-int(np.sum(widths)) // 8))


def _uniform_width(widths: np.ndarray) -> int:
    """The common width if every dimension has the same width in {1, 2, 4, 8}, else 0."""
    if widths.size and np.all(widths == widths[0]) and int(widths[0]) in (1, 2, 4, 8):
        return int(widths[0])
    return 0


def _byte_lut(w: int) -> np.ndarray:
    """byte -> its 8/w codes of w bits each, lowest bits first, uint8 (256, 8 // w)."""
    shifts = np.arange(0, 8, w)
    return ((np.arange(256)[:, None] >> shifts) & ((1 << w) - 1)).astype(np.uint8)


_LUTS = {w: _byte_lut(w) for w in (1, 2, 4)}


def pack_codes(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Pack integer codes (n, m), code j < 2**widths[j], into (n, ceil(sum(widths)/8)) uint8.

    Dimension j occupies bits ``offset[j] .. offset[j] + widths[j] - 1`` of the vector's bit stream
    (its least significant bit first); zero-width dimensions take no bits.
    """
    codes = np.asarray(codes)
    widths = np.asarray(widths, dtype=np.int64)
    n, m = codes.shape
    if m != widths.size:
        raise ValueError("codes and widths disagree on the number of dimensions")
    nbytes = code_bytes(widths)
    w = _uniform_width(widths)
    if w == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    if w:  # 1, 2 or 4 bits: 8/w codes per byte, the first in the lowest bits
        per = 8 // w
        padded = np.zeros((n, nbytes * per), dtype=np.uint8)
        padded[:, :m] = codes
        grouped = padded.reshape(n, nbytes, per)
        out = np.zeros((n, nbytes), dtype=np.uint8)
        for i in range(per):
            out |= grouped[:, :, i] << np.uint8(i * w)
        return out
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
    bits = np.zeros((n, nbytes * 8), dtype=np.uint8)
    for width in np.unique(widths[widths > 0]):
        dims = np.flatnonzero(widths == width)
        pos = offsets[dims][:, None] + np.arange(width)  # (k, width)
        vals = (codes[:, dims, None].astype(np.int64) >> np.arange(width)) & 1
        bits[:, pos.reshape(-1)] = vals.reshape(n, -1).astype(np.uint8)
    return np.packbits(bits, axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_codes`: (n, m) integer codes (uint8 when every width <= 8)."""
    widths = np.asarray(widths, dtype=np.int64)
    n = packed.shape[0]
    m = widths.size
    w = _uniform_width(widths)
    dtype = np.uint8 if widths.max(initial=0) <= 8 else np.int64
    if w == 8:
        return packed[:, :m]
    if w:
        return _LUTS[w][packed].reshape(n, -1)[:, :m]
    offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
    bits = np.unpackbits(packed, axis=1, bitorder="little")
    out = np.zeros((n, m), dtype=dtype)
    for width in np.unique(widths[widths > 0]):
        dims = np.flatnonzero(widths == width)
        pos = offsets[dims][:, None] + np.arange(width)
        sel = bits[:, pos.reshape(-1)].reshape(n, dims.size, width)
        val = np.zeros((n, dims.size), dtype=np.int64 if dtype == np.int64 else np.uint16)
        for b in range(width):  # at most 8 passes over (n, k): vectorised over vectors
            val |= sel[:, :, b].astype(val.dtype) << b
        out[:, dims] = val.astype(dtype)
    return out


# ----- per-dimension level tables --------------------------------------------------------------
class LevelTable:
    """Reconstruction levels of m scalar quantizers, dimension j having 2**widths[j] levels.

    Levels are stored flat (float32, ``sum_j 2**widths[j]`` entries); ``offsets[j]`` is where
    dimension j's levels start. A zero-width dimension has one level (its constant).
    """

    def __init__(self, levels: list[np.ndarray]):
        self.widths = np.array([int(np.log2(len(lv))) for lv in levels], dtype=np.int64)
        if any(len(lv) != 1 << int(w) for lv, w in zip(levels, self.widths, strict=True)):
            raise ValueError("each dimension needs a power-of-two number of levels")
        sizes = np.array([len(lv) for lv in levels], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.flat = np.concatenate([np.asarray(lv, dtype=np.float32) for lv in levels])

    @classmethod
    def uniform(cls, levels: np.ndarray) -> LevelTable:
        """The table of m quantizers with the same number of levels, from an (m, 2**w) array
        (vectorised: a search that rebuilds its table pays microseconds, not a Python loop)."""
        lv = np.asarray(levels, dtype=np.float32)
        m, size = lv.shape
        w = int(np.log2(size))
        if size != 1 << w:
            raise ValueError("each dimension needs a power-of-two number of levels")
        table = cls.__new__(cls)
        table.widths = np.full(m, w, dtype=np.int64)
        table.offsets = np.arange(m, dtype=np.int64) * size
        table.flat = np.ascontiguousarray(lv).ravel()
        return table

    @property
    def nbytes(self) -> int:
        return int(self.flat.nbytes + self.offsets.nbytes + self.widths.nbytes)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (n, m) -> reconstruction (n, m) float32."""
        return self.flat[codes.astype(np.int64) + self.offsets]

    def encode_nearest(self, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """Nearest level per coordinate (levels of each dimension must be sorted), (n, m) codes.

        One ``searchsorted`` per chunk of vectors: every dimension's cell boundaries are laid end
        to end in disjoint ranges (dimension j shifted by j·span), and so are the coordinates.
        """
        n, m = x.shape
        sizes = 1 << self.widths
        lo = np.array([self.flat[o] for o in self.offsets], dtype=np.float64)
        hi = np.array([self.flat[o + s - 1] for o, s in zip(self.offsets, sizes, strict=True)])
        span = float(np.max(hi - lo, initial=0.0)) + 1.0
        shift = np.arange(m) * span - lo
        mids, starts = [], np.zeros(m, dtype=np.int64)
        count = 0
        for j in range(m):  # tiny: builds the boundary table, no per-vector work
            lv = self.flat[self.offsets[j] : self.offsets[j] + sizes[j]].astype(np.float64)
            starts[j] = count
            mids.append((lv[1:] + lv[:-1]) * 0.5 + shift[j])
            count += sizes[j] - 1
        table = np.concatenate(mids) if count else np.zeros(0)
        dtype = np.uint8 if self.widths.max(initial=0) <= 8 else np.int64
        codes = np.empty((n, m), dtype=dtype)
        for r0 in range(0, n, chunk):
            key = np.clip(x[r0 : r0 + chunk].astype(np.float64), lo, hi) + shift
            codes[r0 : r0 + chunk] = (np.searchsorted(table, key.ravel(), side="left").reshape(key.shape)
                                      - starts).astype(dtype)
        return codes


# ----- 1-D k-means (Lloyd-Max) -------------------------------------------------------------------
class ColumnSamples:
    """The columns of a training sample, sorted, with prefix sums: Lloyd-Max on all at once.

    Every Lloyd iteration on m columns and L levels is one ``searchsorted`` of the m·(L-1) cell
    boundaries into the m sorted columns laid end to end (each column shifted into its own
    disjoint range), then prefix-sum differences: O(m·L·log(m·n)), no loop over columns.
    """

    def __init__(self, samples: np.ndarray):
        s = np.sort(np.asarray(samples, dtype=np.float64).T, axis=1)  # (m, n)
        self.m, self.n = s.shape
        self.x = s
        lo, hi = s[:, 0], s[:, -1]
        span = float(hi.max() - lo.min()) + 1.0 if s.size else 1.0
        self.shift = np.arange(self.m) * span - (lo.min() if s.size else 0.0)
        self.flat = (s + self.shift[:, None]).ravel()
        zeros = np.zeros((self.m, 1))
        self.c1 = np.hstack([zeros, np.cumsum(s, axis=1)])
        self.c2 = np.hstack([zeros, np.cumsum(s * s, axis=1)])
        self.base = (np.arange(self.m) * self.n)[:, None]

    def cells(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per column and level (sorted levels (m, L)): count, sum, sum of squares of its cell."""
        m, n_levels = levels.shape
        cuts = np.empty((m, n_levels + 1), dtype=np.int64)
        cuts[:, 0], cuts[:, -1] = 0, self.n
        if n_levels > 1:
            mids = (levels[:, 1:] + levels[:, :-1]) * 0.5 + self.shift[:, None]
            found = np.searchsorted(self.flat, mids.ravel()).reshape(m, n_levels - 1) - self.base
            cuts[:, 1:-1] = np.clip(found, 0, self.n)
        c1 = np.take_along_axis(self.c1, cuts, 1)
        c2 = np.take_along_axis(self.c2, cuts, 1)
        return np.diff(cuts, axis=1), np.diff(c1, axis=1), np.diff(c2, axis=1)

    def sse(self, levels: np.ndarray) -> np.ndarray:
        """Sum of squared errors per column of nearest-level quantization."""
        cnt, s1, s2 = self.cells(levels)
        return np.sum(s2 - 2 * levels * s1 + cnt * levels * levels, axis=1)

    def lloyd(self, levels: np.ndarray, iters: int = 30, tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
        """Lloyd iterations on every column from sorted ``levels`` (m, L): (levels, SSE per column)."""
        levels = np.sort(np.asarray(levels, dtype=np.float64), axis=1)
        prev = np.full(self.m, np.inf)
        for _ in range(iters):
            cnt, s1, s2 = self.cells(levels)
            err = np.sum(s2 - 2 * levels * s1 + cnt * levels * levels, axis=1)
            if np.all(np.isfinite(prev) & (prev - err <= tol * np.maximum(prev, 1e-300))):
                break
            prev = err
            # empty cells keep their level; the update is a mean per cell, so it stays sorted
            levels = np.sort(np.where(cnt > 0, s1 / np.maximum(cnt, 1), levels), axis=1)
        return levels, self.sse(levels)

    def quantile_grid(self, n_levels: int) -> np.ndarray:
        pos = ((np.arange(n_levels) + 0.5) / n_levels * (self.n - 1)).astype(np.int64)
        return self.x[:, pos]

    def uniform_grid(self, n_levels: int) -> np.ndarray:
        lo, hi = self.x[:, :1], self.x[:, -1:]
        return lo + (hi - lo) * (np.arange(n_levels) / max(n_levels - 1, 1))[None, :]

    def lloyd_max(self, n_levels: int, init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lloyd-Max quantizers (1-D k-means) of every column: (levels float32 (m, L), MSE (m,)).

        Starts from ``init`` (e.g. :meth:`split` of the quantizers with half as many levels) or
        from the centres of L equal-mass bins; a column whose result is worse than the uniform
        (min/max) grid is redone from that grid. Lloyd iterations never increase the error, so
        each quantizer is at least as good as the uniform one on the sample.
        """
        start = self.quantile_grid(n_levels) if init is None else init
        levels, err = self.lloyd(start)
        uniform = self.uniform_grid(n_levels)
        worse = self.sse(uniform) < err
        if np.any(worse):
            sub = ColumnSamples.__new__(ColumnSamples)
            sub.__dict__.update(self._rows(worse))
            lv2, err2 = sub.lloyd(uniform[worse])
            levels[worse], err[worse] = lv2, err2
        return levels.astype(np.float32), np.maximum(err, 0.0) / max(self.n, 1)

    def _rows(self, mask: np.ndarray) -> dict[str, object]:
        idx = np.flatnonzero(mask)
        return {"m": idx.size, "n": self.n, "x": self.x[idx], "shift": self.shift[idx],
                "flat": self.flat, "c1": self.c1[idx], "c2": self.c2[idx], "base": self.base[idx]}

    def split(self, levels: np.ndarray) -> np.ndarray:
        """LBG split: each level becomes two, half-way to the edges of its cell (sorted (m, 2L))."""
        lv = np.asarray(levels, dtype=np.float64)
        edges = np.hstack([self.x[:, :1], (lv[:, 1:] + lv[:, :-1]) * 0.5, self.x[:, -1:]])
        lower = lv - (lv - edges[:, :-1]) * 0.5
        upper = lv + (edges[:, 1:] - lv) * 0.5
        return np.sort(np.hstack([lower, upper]), axis=1)


def lloyd_max_1d(values: np.ndarray, n_levels: int) -> tuple[np.ndarray, float]:
    """Lloyd-Max quantizer of one sample: sorted levels (L,) float32 and its mean squared error."""
    levels, mse = ColumnSamples(np.asarray(values).reshape(-1, 1)).lloyd_max(n_levels)
    return levels[0], float(mse[0])


# ----- top-k over decoded blocks -----------------------------------------------------------------
class TopK:
    """Best-k accumulator over blocks of scores (faiss C++ heaps; best first at the end)."""

    def __init__(self, nq: int, k: int, metric: str):
        self.metric, self.k = metric, k
        self.heap = faiss.ResultHeap(nq, k, keep_max=(metric == "ip"))

    def add(self, scores: np.ndarray, j0: int) -> None:
        s = np.ascontiguousarray(scores, dtype=np.float32)
        self.heap.heaps.addn(s.shape[1], faiss.swig_ptr(s), int(j0), 0, s.shape[0])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self.heap.finalize()
        ids = self.heap.I
        dist = self.heap.D
        dist[ids < 0] = -np.inf if self.metric == "ip" else np.inf
        return dist, ids


#: decode(start, stop) -> (reconstruction (b, m) float32, extra (b,) float32 or None)
Decoder = Callable[[int, int], tuple[np.ndarray, "np.ndarray | None"]]


def blocked_search(queries: np.ndarray, n: int, k: int, metric: str, decode: Decoder,
                   block: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` (nq, m) against n vectors decoded block by block.

    For ``ip`` the score is ``q.r + extra`` (extra: a per-vector additive term, or 0); for ``l2``
    it is ``|q|^2 + extra - 2 q.r`` with extra the squared norm to use for ``r`` (default |r|^2).
    """
    q_all = np.ascontiguousarray(queries, dtype=np.float32)
    nq = q_all.shape[0]
    out_d = np.empty((nq, k), dtype=np.float32)
    out_i = np.empty((nq, k), dtype=np.int64)
    chunks = [(q0, min(q0 + QUERY_CHUNK, nq)) for q0 in range(0, nq, QUERY_CHUNK)]
    tops = [TopK(q1 - q0, k, metric) for q0, q1 in chunks]
    qnorms = (q_all * q_all).sum(1) if metric == "l2" else None
    for b0 in range(0, n, block):  # decode each block once for all query chunks
        b1 = min(b0 + block, n)
        rec, extra = decode(b0, b1)
        if metric == "l2" and extra is None:
            extra = np.einsum("ij,ij->i", rec, rec)
        for (q0, q1), top in zip(chunks, tops, strict=True):
            s = q_all[q0:q1] @ rec.T
            if metric == "ip":
                if extra is not None:
                    s += extra[None, :]
            else:
                s *= -2.0
                s += qnorms[q0:q1, None]
                s += extra[None, :]
            top.add(s, b0)
    for (q0, q1), top in zip(chunks, tops, strict=True):
        out_d[q0:q1], out_i[q0:q1] = top.result()
    return out_d, out_i


class LUTLayout:
    """The lookup-table groups of a code layout (:func:`methods._kernels.lut_groups`): a few
    integers per group and per dimension, kept with the index and counted in its memory."""

    def __init__(self, widths: np.ndarray):
        self.widths = np.asarray(widths, dtype=np.int64)
        self.groups = _kernels.lut_groups(self.widths)
        self.groups["bytewise"] = _kernels.bytewise(self.groups, code_bytes(self.widths))

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.groups.values() if isinstance(a, np.ndarray)))


def dim_scores(queries: np.ndarray, table: LevelTable, metric: str) -> np.ndarray:
    """Per query, every level's score on its dimension (nq, L) float32: ``q_j·level`` (ip) or
    ``(q_j - level)^2`` (l2), in the flat layout of ``table``."""
    qrep = np.repeat(np.asarray(queries, dtype=np.float32), 1 << table.widths, axis=1)
    if metric == "ip":
        return qrep * table.flat
    qrep -= table.flat
    qrep *= qrep
    return qrep


#: fix(scores (nq, b), b0, b1, per-level scores (nq, L)) -> None: in-place per-vector corrections
Fix = Callable[[np.ndarray, int, int, np.ndarray], None]


def lut_search(queries: np.ndarray, codes: np.ndarray, table: LevelTable, layout: LUTLayout, k: int,
               metric: str, fix: Fix | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by per-query lookup tables: score ``sum_j LUT_j[q, code_j]`` with the LUT of
    :func:`dim_scores` (inner product, or squared L2 to the reconstruction), summed by the
    compiled kernel over bit groups of the packed codes. Same scores as :func:`blocked_search`
    on the decoded levels, up to float rounding."""
    ds = dim_scores(queries, table, metric)
    luts = _kernels.build_luts(ds, table.offsets, table.widths, layout.groups)
    zero = np.flatnonzero(table.widths == 0)
    const = ds[:, table.offsets[zero]].sum(axis=1, dtype=np.float32)[:, None] if zero.size else None
    n = codes.shape[0]
    top = TopK(ds.shape[0], k, metric)
    for b0 in range(0, n, _kernels.BLOCK):
        b1 = min(b0 + _kernels.BLOCK, n)
        s = _kernels.lut_scores(codes[b0:b1], luts, layout.groups)
        if const is not None:
            s += const
        if fix is not None:
            fix(s, b0, b1, ds)
        top.add(s, b0)
    return top.result()


def rerank_exact(vectors: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int,
                 metric: str, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-scoring of candidate ids (nq, kc), -1 padded, with float vectors; best k first."""
    nq, kc = ids.shape
    k_out = min(k, kc)
    out_d = np.empty((nq, k_out), dtype=np.float32)
    out_i = np.empty((nq, k_out), dtype=np.int64)
    for q0 in range(0, nq, chunk):
        q1 = min(q0 + chunk, nq)
        idc = ids[q0:q1]
        cand = vectors[np.where(idc >= 0, idc, 0)]  # (c, kc, d)
        q = queries[q0:q1]
        s = np.einsum("qd,qcd->qc", q, cand)
        if metric == "ip":
            s[idc < 0] = -np.inf
            order = np.argsort(-s, axis=1, kind="stable")[:, :k_out]
        else:
            s = np.einsum("qcd,qcd->qc", cand, cand) - 2 * s + np.einsum("qd,qd->q", q, q)[:, None]
            s[idc < 0] = np.inf
            order = np.argsort(s, axis=1, kind="stable")[:, :k_out]
        out_d[q0:q1] = np.take_along_axis(s, order, 1)
        out_i[q0:q1] = np.take_along_axis(idc, order, 1)
    return out_d, out_i
