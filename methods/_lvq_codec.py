"""Shared helpers for the LVQ / LeanVec / Matryoshka / AdANNS / LR²VQ plugins.

* :class:`LVQStore` — the LVQ codec of Aguerrebere et al. (VLDB 2023): global mean-centring,
  per-vector min/max scalar codes with the two per-vector constants stored as float16, optional
  second level that quantises the residual in the per-vector range [-Δ/2, Δ/2].
* :func:`blocked_knn` — exhaustive top-k over vectors that are decoded block by block to float32
  and scored with faiss's BLAS kernel (``faiss.knn``), merged in a faiss ``ResultHeap``.
* :func:`rerank` — re-scores a candidate list with another representation of the vectors.
* :func:`fit_pca` — PCA basis (eigenvectors of the covariance, by decreasing variance).
* :class:`PrefixBasis` — first d' coordinates in the raw or the PCA basis (Matryoshka / AdANNS /
  LR²VQ projections).
* :func:`set_threads` — limits faiss's OpenMP pool and the BLAS pools (via threadpoolctl).
* :class:`faiss_blas_always` — temporarily lets faiss use BLAS for small query batches.

float16 constants: the lower bound ℓ is rounded *down* and the step Δ *up* to float16 before
encoding, and the codes are computed with those rounded constants. Every coordinate then lies in
[ℓ16, ℓ16 + (2^B−1)·Δ16], and the reconstruction error of each coordinate is at most Δ16/2 for
the *stored* step. (Intel's SVS computes the codes with the float32 constants and rounds them to
float16 afterwards, which adds up to (2^B−1)·ulp(Δ)/2 of error; ours is the same format with a
provable bound.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from harness.errors import DataError
from methods import _kernels

F16_MAX = float(np.finfo(np.float16).max)


# --------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------
_LIMITERS: list[Any] = []


def set_threads(n: int) -> None:
    """Limit faiss's OpenMP pool and every BLAS pool (numpy's and faiss's) to ``n`` threads."""
    faiss.omp_set_num_threads(int(n))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return
    _LIMITERS.append(threadpool_limits(limits=int(n), user_api="blas"))


# --------------------------------------------------------------------------------------------
# float16 rounding with a direction
# --------------------------------------------------------------------------------------------
def f16_floor(v: np.ndarray) -> np.ndarray:
    """Largest float16 ≤ v (elementwise)."""
    v = np.asarray(v, dtype=np.float64)
    h = v.astype(np.float16)
    over = h.astype(np.float64) > v
    if over.any():
        h[over] = np.nextafter(h[over], np.float16(-np.inf))
    return h


def f16_ceil(v: np.ndarray) -> np.ndarray:
    """Smallest float16 ≥ v (elementwise)."""
    v = np.asarray(v, dtype=np.float64)
    h = v.astype(np.float16)
    under = h.astype(np.float64) < v
    if under.any():
        h[under] = np.nextafter(h[under], np.float16(np.inf))
    return h


# --------------------------------------------------------------------------------------------
# nibble packing
# --------------------------------------------------------------------------------------------
def code_bytes(dim: int, bits: int) -> int:
    """Bytes of one packed code row: ceil(dim·bits/8)."""
    return -(-dim * bits // 8)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack (n, d) codes of 4 or 8 bits into (n, ceil(d·bits/8)) uint8."""
    codes = np.asarray(codes, dtype=np.uint8)
    if bits == 8:
        return np.ascontiguousarray(codes)
    if bits != 4:
        raise ValueError(f"LVQ codes are 4 or 8 bits, not {bits}")
    n, d = codes.shape
    if d % 2:
        codes = np.hstack([codes, np.zeros((n, 1), np.uint8)])
    return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4))


def unpack(packed: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """Inverse of :func:`pack`: (n, bytes) uint8 → (n, dim) uint8 codes."""
    if bits == 8:
        return packed
    n, nb = packed.shape
    out = np.empty((n, 2 * nb), dtype=np.uint8)
    np.bitwise_and(packed, 15, out=out[:, 0::2])
    np.right_shift(packed, 4, out=out[:, 1::2])
    return out[:, :dim]


# --------------------------------------------------------------------------------------------
# LVQ
# --------------------------------------------------------------------------------------------
def lvq_encode(xc: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-level LVQ of mean-centred rows ``xc``.

    Returns unpacked codes (n, d) uint8, lower bounds ℓ (n,) float16 and steps Δ (n,) float16 with
    ``x ≈ ℓ + Δ·c`` and ``|x − (ℓ + Δ·c)| ≤ Δ/2`` coordinate-wise.
    """
    x = np.asarray(xc, dtype=np.float64)
    levels = (1 << bits) - 1
    lo = x.min(axis=1)
    hi = x.max(axis=1)
    if x.size and (np.abs(lo).max() > F16_MAX / 2 or np.abs(hi).max() > F16_MAX / 2):
        raise DataError(
            "LVQ stores per-vector bounds as float16: centred values beyond ±32752 do not fit"
        )
    lo16 = f16_floor(lo)
    step16 = f16_ceil((hi - lo16.astype(np.float64)) / levels)
    step = step16.astype(np.float64)
    safe = np.where(step > 0, step, 1.0)
    c = np.rint((x - lo16.astype(np.float64)[:, None]) / safe[:, None])
    np.clip(c, 0, levels, out=c)
    return c.astype(np.uint8), lo16, step16


def lvq_residual_encode(
    xc: np.ndarray, codes: np.ndarray, lo16: np.ndarray, step16: np.ndarray, bits2: int
) -> np.ndarray:
    """Second LVQ level: the residual r = x − Q(x) lies in [−Δ/2, Δ/2] and is quantised uniformly
    with ``bits2`` bits over that per-vector range (step Δ/(2^B2 − 1)). Returns unpacked codes."""
    step = step16.astype(np.float64)[:, None]
    recon = lo16.astype(np.float64)[:, None] + step * codes
    r = np.asarray(xc, dtype=np.float64) - recon
    levels = (1 << bits2) - 1
    step2 = step / levels
    safe = np.where(step2 > 0, step2, 1.0)
    c2 = np.rint((r + step / 2) / safe)
    np.clip(c2, 0, levels, out=c2)
    return c2.astype(np.uint8)


#: float64 bytes of input encoded at a time by :meth:`LVQStore.add`
ENCODE_CHUNK_BYTES = 2 << 20


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` with room for ``rows`` rows (existing rows copied; one allocation)."""
    out = np.empty((rows, *a.shape[1:]), a.dtype)
    out[: a.shape[0]] = a
    return out


class LVQStore:
    """LVQ-B1 or LVQ-B1×B2 codes of a growing set of vectors, with float32 decoding."""

    def __init__(self, dim: int, bits1: int, bits2: int = 0):
        if bits1 not in (4, 8) or bits2 not in (0, 4, 8):
            raise ValueError(f"LVQ supports B1 in (4, 8) and B2 in (0, 4, 8), not {bits1}x{bits2}")
        self.dim, self.bits1, self.bits2 = int(dim), int(bits1), int(bits2)
        self.mean: np.ndarray | None = None
        self.codes1 = np.zeros((0, code_bytes(dim, bits1)), np.uint8)
        self.codes2 = np.zeros((0, code_bytes(dim, bits2)), np.uint8) if bits2 else None
        self.lower = np.zeros(0, np.float16)
        self.step = np.zeros(0, np.float16)

    # ---- sizes -------------------------------------------------------------------------
    @staticmethod
    def bytes_per_vector(dim: int, bits1: int, bits2: int = 0) -> int:
        """Per-vector bytes: ceil(d·B1/8) + ceil(d·B2/8) + 2 float16 constants."""
        return code_bytes(dim, bits1) + (code_bytes(dim, bits2) if bits2 else 0) + 4

    @staticmethod
    def shared_bytes(dim: int) -> int:
        return 4 * dim  # the float32 mean

    @property
    def ntotal(self) -> int:
        return int(self.codes1.shape[0])

    def code_nbytes(self) -> int:
        n = self.codes1.nbytes + self.lower.nbytes + self.step.nbytes
        return int(n + (self.codes2.nbytes if self.codes2 is not None else 0))

    def shared_nbytes(self) -> int:
        return int(self.mean.nbytes) if self.mean is not None else 0

    # ---- build -------------------------------------------------------------------------
    def fit(self, train: np.ndarray) -> None:
        # float64 accumulation without a float64 copy of the sample (307 MB at 100k × 384): same values
        self.mean = np.mean(train, axis=0, dtype=np.float64).astype(np.float32)

    def add(self, x: np.ndarray, chunk: int | None = None) -> None:
        """Encode ``x`` in chunks of about :data:`ENCODE_CHUNK_BYTES` of float64 into arrays
        allocated once (no list of pieces concatenated at the end), so the transient memory
        stays a small multiple of one chunk, not of the base (469 MB peak for a 78 MB index
        at 200k × 384 before)."""
        if self.mean is None:
            self.fit(x)
        n0, n = self.ntotal, x.shape[0]
        chunk = chunk or max(256, ENCODE_CHUNK_BYTES // (8 * max(self.dim, 1)))
        self.codes1 = _grown(self.codes1, n0 + n)
        self.lower = _grown(self.lower, n0 + n)
        self.step = _grown(self.step, n0 + n)
        if self.bits2:
            self.codes2 = _grown(self.codes2, n0 + n)
        for i in range(0, n, chunk):
            xc = np.asarray(x[i : i + chunk], dtype=np.float64) - self.mean
            j0, j1 = n0 + i, n0 + i + xc.shape[0]
            codes, lo16, step16 = lvq_encode(xc, self.bits1)
            self.codes1[j0:j1] = pack(codes, self.bits1)
            self.lower[j0:j1] = lo16
            self.step[j0:j1] = step16
            if self.bits2:
                self.codes2[j0:j1] = pack(
                    lvq_residual_encode(xc, codes, lo16, step16, self.bits2), self.bits2
                )
        _kernels.warm_up()  # compile the scan kernels here, not in a timed search

    # ---- decode ------------------------------------------------------------------------
    def _decode(self, rows: slice | np.ndarray, level: int, centred: bool) -> np.ndarray:
        codes = unpack(self.codes1[rows], self.bits1, self.dim)
        lo = self.lower[rows].astype(np.float32)[:, None]
        step = self.step[rows].astype(np.float32)[:, None]
        out = codes.astype(np.float32)
        out *= step
        out += lo
        if level == 2:
            if not self.bits2:
                raise ValueError("this LVQ store has a single level")
            c2 = unpack(self.codes2[rows], self.bits2, self.dim).astype(np.float32)
            c2 *= step / np.float32((1 << self.bits2) - 1)
            out += c2
            out -= step / 2
        if not centred:
            out += self.mean
        return out

    def decode_block(self, b0: int, b1: int, level: int = 1, centred: bool = True) -> np.ndarray:
        """float32 reconstruction of rows b0:b1 (mean-centred unless ``centred=False``)."""
        return self._decode(slice(b0, b1), level, centred)

    def rows(self, ids: np.ndarray, level: int = 1, centred: bool = False) -> np.ndarray:
        """float32 reconstruction of the given rows (with the mean added back by default)."""
        return self._decode(np.asarray(ids, dtype=np.int64), level, centred)

    # ---- search ------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, metric: str, kernel: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive top-k of float queries against the first-level codes.

        With q' = q (inner product) or q − μ (L2) and x̂' = ℓ + Δ·c the centred reconstruction,
        q'·x̂' = ℓ·Σq' + Δ·(q'·c): each block of codes is converted to float32 once, q'·c is
        one BLAS GEMM, and the per-vector constants are applied to the (nq, block) result.
        L2 uses ‖q' − x̂'‖² = ‖q'‖² − 2 q'·x̂' + ‖x̂'‖² with ‖x̂'‖² = d·ℓ² + 2ℓΔ·Σc + Δ²·Σc²
        computed from the same block. Inner-product scores get q·μ added back, so every score
        is that of the one-level reconstruction. Blocks are merged in a faiss heap.

        Up to ``_kernels.SMALL_BATCH`` queries (``kernel="auto"``; ``"compiled"`` always,
        ``"numpy"`` never) skip the float conversion: q'·c, Σc and Σc² come from a compiled
        integer-code dot product over the packed codes, with the same affine terms.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        nq = q.shape[0]
        ip = metric == "ip"
        qs = q if ip else np.ascontiguousarray(q - self.mean)
        qsum = qs.sum(axis=1, dtype=np.float32)[:, None]
        qnorm = None if ip else np.einsum("ij,ij->i", qs, qs)[:, None]
        heap = faiss.ResultHeap(nq, k, keep_max=ip)
        subset = np.arange(nq, dtype=np.int64)
        compiled = _kernels.use_kernels(nq, kernel)
        step = _kernels.BLOCK if compiled else block_rows(self.dim)
        for b0 in range(0, self.ntotal, step):
            b1 = min(self.ntotal, b0 + step)
            lo = self.lower[b0:b1].astype(np.float32)
            st = self.step[b0:b1].astype(np.float32)
            if compiled:
                scores, csum, csq = _kernels.dot_codes(self.codes1[b0:b1], qs, self.bits1, self.dim, not ip)
            else:
                c = unpack(self.codes1[b0:b1], self.bits1, self.dim).astype(np.float32)
                scores = qs @ c.T  # q'·c
            scores *= st
            scores += qsum * lo  # q'·x̂'
            if not ip:
                if not compiled:
                    csum = c.sum(axis=1)
                    csq = np.einsum("ij,ij->i", c, c)
                csum = csum.astype(np.float32)
                csq = csq.astype(np.float32)
                xnorm = self.dim * lo * lo + 2 * lo * st * csum + st * st * csq
                scores *= -2
                scores += xnorm
                scores += qnorm
            ids = np.arange(b0, b1, dtype=np.int64)
            heap.add_result_subset(subset, scores, ids)
        heap.finalize()
        dist, ids = heap.D, heap.I
        if ip:
            dist += (q @ self.mean)[:, None]
        dist[ids < 0] = -np.inf if ip else np.inf
        return dist, ids


# --------------------------------------------------------------------------------------------
# scans
# --------------------------------------------------------------------------------------------
def block_rows(dim: int) -> int:
    """Rows per decoded block: about 16 MB of float32."""
    return max(1024, (4 << 20) // max(dim, 1))


def blocked_knn(
    queries: np.ndarray,
    n: int,
    decode: Callable[[int, int], np.ndarray],
    k: int,
    metric: str,
    dim: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` against n vectors produced block-wise by ``decode(b0, b1)``.

    Each block is scored with faiss's BLAS kernel and merged in a heap. Scores follow faiss
    (squared L2 ascending / inner product descending); missing results have id -1.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    nq = q.shape[0]
    keep_max = metric == "ip"
    fm = faiss.METRIC_INNER_PRODUCT if keep_max else faiss.METRIC_L2
    heap = faiss.ResultHeap(nq, k, keep_max=keep_max)
    step = block_rows(dim)
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        xb = np.ascontiguousarray(decode(b0, b1), dtype=np.float32)
        kb = min(k, b1 - b0)
        dist, ids = faiss.knn(q, xb, kb, metric=fm)
        heap.add_result(dist, np.where(ids >= 0, ids + b0, -1))
    heap.finalize()
    dist, ids = heap.D, heap.I
    dist[ids < 0] = -np.inf if keep_max else np.inf
    return dist, ids


def rerank(
    queries: np.ndarray,
    candidates: np.ndarray,
    rows: Callable[[np.ndarray], np.ndarray],
    k: int,
    metric: str,
    chunk_vectors: int = 1 << 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate ids (nq, r) with the vectors returned by ``rows(ids)`` and keep the
    best k. Candidates equal to -1 are ignored; missing results are id -1."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    nq, r = candidates.shape
    keep_max = metric == "ip"
    worst = -np.inf if keep_max else np.inf
    out_d = np.full((nq, k), worst, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    if r == 0 or nq == 0:
        return out_d, out_i
    qstep = max(1, chunk_vectors // r)
    for q0 in range(0, nq, qstep):
        cand = candidates[q0 : q0 + qstep]
        b = cand.shape[0]
        valid = cand >= 0
        vec = rows(np.where(valid, cand, 0).reshape(-1)).reshape(b, r, -1)
        qq = q[q0 : q0 + b]
        ip = np.matmul(vec, qq[:, :, None])[:, :, 0]
        if keep_max:
            s = ip
        else:
            s = np.einsum("brd,brd->br", vec, vec) - 2 * ip + np.einsum("bd,bd->b", qq, qq)[:, None]
        s = np.where(valid, s, worst).astype(np.float32)
        order = np.argsort(-s if keep_max else s, axis=1, kind="stable")[:, :k]
        kk = order.shape[1]
        out_d[q0 : q0 + b, :kk] = np.take_along_axis(s, order, 1)
        ids = np.take_along_axis(cand, order, 1)
        out_i[q0 : q0 + b, :kk] = np.where(np.isfinite(out_d[q0 : q0 + b, :kk]), ids, -1)
    return out_d, out_i


# --------------------------------------------------------------------------------------------
# PCA
# --------------------------------------------------------------------------------------------
def fit_pca(train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (d,), the top-k principal directions as columns (d, k) and all eigenvalues, from
    the covariance of ``train`` (float64 eigendecomposition, decreasing variance)."""
    x = np.asarray(train, dtype=np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(x.shape[0] - 1, 1)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    # fix the sign of each direction (largest |entry| positive) so results are reproducible
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])])
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    return mean.astype(np.float32), np.ascontiguousarray(vecs[:, :k], dtype=np.float32), vals


class PrefixBasis:
    """Maps vectors to their first ``dims`` coordinates in the raw basis or the PCA basis.

    * ``basis="pca"``: documents → Pᵀ(x − μ) with P the top-``dims`` principal directions;
      queries → Pᵀ(q − μ) for L2 and Pᵀq for inner product (the omitted −q·PPᵀμ is the same for
      every document, so rankings are those of the centred form). Shared: P and μ (float32).
    * ``basis="raw"``: the first ``dims`` coordinates as they are; with ``normalise`` (used for
      inner product, as Matryoshka models are scored by cosine on each prefix) rows are
      L2-normalised after truncation. Nothing shared.
    """

    def __init__(self, dim: int, dims: int, basis: str, metric: str, normalise: bool = False):
        if basis not in ("pca", "raw"):
            raise ValueError(f"basis must be 'pca' or 'raw', not {basis!r}")
        if not 1 <= dims <= dim:
            raise ValueError(f"prefix of {dims} dims does not fit dimension {dim}")
        self.dim, self.dims, self.basis, self.metric = dim, int(dims), basis, metric
        self.normalise = bool(normalise and basis == "raw" and metric == "ip")
        self.mean: np.ndarray | None = None
        self.matrix: np.ndarray | None = None

    @staticmethod
    def shared_bytes(dim: int, dims: int, basis: str) -> int:
        return 4 * dim * dims + 4 * dim if basis == "pca" else 0

    def shared_nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.mean, self.matrix) if a is not None))

    def fit(self, train: np.ndarray) -> None:
        if self.basis == "pca":
            self.mean, self.matrix, _ = fit_pca(train, self.dims)

    def _norm(self, z: np.ndarray) -> np.ndarray:
        if self.normalise:
            norms = np.linalg.norm(z, axis=1, keepdims=True)
            z = z / np.where(norms > 0, norms, 1.0).astype(np.float32)
        return np.ascontiguousarray(z, dtype=np.float32)

    def docs(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.basis == "pca":
            return np.ascontiguousarray((x - self.mean) @ self.matrix)
        return self._norm(x[:, : self.dims])

    def queries(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float32)
        if self.basis == "pca":
            return np.ascontiguousarray(
                ((q - self.mean) if self.metric == "l2" else q) @ self.matrix
            )
        return self._norm(q[:, : self.dims])


class faiss_blas_always:
    """Context manager: let faiss use its BLAS distance kernel for any number of queries.

    faiss 1.15 scores fewer than ``distance_compute_blas_threshold`` (128,000) query×dim
    values with a per-query SIMD loop that is ~10× slower for the k-means / nearest-centroid
    calls made while training small sub-quantizers; the global setting is restored on exit.
    """

    def __enter__(self) -> faiss_blas_always:
        self.saved = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 20
        return self

    def __exit__(self, *exc: object) -> None:
        faiss.cvar.distance_compute_blas_threshold = self.saved
