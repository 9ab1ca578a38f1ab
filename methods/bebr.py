"""BEBR, training-free variant: recurrent (residual) binarization with symmetric distance calculation.

Paper: Gan, Ge, Zhou, Su, Xu, Xu, Hui, Chen, Wang, Shan, "Binary Embedding-based Retrieval at
Tencent", KDD 2023 (arXiv:2302.08714).

BEBR writes an embedding as a composition of binary vectors produced recurrently: step t binarizes
the residual left by steps 0..t-1, and the reconstruction is ``sum_t scale_t * code_t``; the number
of steps (and bits per step) sets the bits per dimension. Queries are binarized the same way and
scored against documents by *symmetric distance calculation* (SDC): the inner product of two
recurrent codes ``<sum_s a_s b_s, sum_t c_t e_t> = sum_{s,t} a_s c_t (d - 2 popcount(b_s xor e_t))``
decomposes into popcounts of bit-plane pairs weighted by the step scales.

This module is the training-free variant (the learned one is ``methods/bebr_learned.py``):

* vectors are centred on the training mean; step t quantizes the residual ``r`` with ``bits`` bits
  per dimension on a symmetric odd grid ``a * c``, ``c in {±1, ±3, .., ±(2^bits - 1)}``, with a
  per-vector scale ``a`` fitted by least squares (for 1 bit: ``c = sign(r)``, ``a = mean|r|``,
  the optimum); a multi-bit step is stored as ``bits`` ±1 planes with weights ``a * 2^p``;
* per vector we keep the ``u * bits`` packed planes, ``u`` fp16 scales and one float32 auxiliary
  scalar: ``<mean, x - mean>`` for ``ip`` (so the centred SDC score plus it is the inner product
  of the reconstructions, un-centred), ``|x̂ - mean|^2`` for ``l2`` (SDC distance
  ``|q̂ - x̂|^2 = |q̂|^2 + |x̂|^2 - 2 q̂.x̂``);
* search computes SDC exactly, by one of two equivalent kernels (search param ``kernel``):
  ``popcount`` (faiss Hamming between every query plane and base plane, ``(u·bits)^2`` pairs,
  combined with the scales in cache-sized tiles) or ``gemm`` (decode a block of base codes to
  ``sum_t a_t b_t`` and multiply by the binarized queries' reconstructions with BLAS: the same
  integer-weighted sums). Popcount work grows with the square of the number of planes, the
  GEMM's does not; ``auto`` (default) takes popcount for one plane or at most 4 queries and GEMM
  otherwise; up to ``_kernels.SMALL_BATCH`` queries (codes of a multiple of 64 bits) take
  ``compiled``, a numba kernel doing all plane pairs of a vector on 64-bit words with scalar
  ``popcnt``, the plane weights from the fp16 scales and the top-k heap inside the kernel. Its
  work per vector is ``(u·bits)^2`` popcount rows against ``u·bits`` for faiss's
  ``IndexBinaryFlat`` on the same bytes, so from 2 planes on it cannot match that kernel's
  single-query latency by construction (about ``u·bits`` times the popcounts). Measured before
  that kernel by ``benchmarks/scan_speed.py`` (20000 x 384, 1000 queries, one thread, timed
  alternately with faiss ``IndexBinaryFlat`` on the same number of bits): one plane,
  popcount 0.90x and GEMM 0.56x faiss's QPS; 2 planes (GEMM) 0.71x; 4 planes (GEMM) 1.06-1.20x;
* optional float re-rank (build param ``rerank`` = candidate multiplier, 0 = off, the default):
  float32 vectors are then kept in RAM and counted.

Bytes per vector: ``u·bits·ceil(d/8) + 2u + 4`` (+ ``4d`` with re-rank) ``+ 4d/n`` (mean).

Post-hoc: this is the training-free stand-in for BEBR, not its recipe: no MLP (the paper learns
the binarization and its reconstruction; ``bebr-learned`` does); the per-vector least-squares
step scales (fp16) are our choice. Variants: none. SDC is computed by popcount/GEMM rather than
with the paper's SIMD kernels, with identical scores.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from harness.method import MemoryAccount, Method, nbytes
from harness.registry import register
from methods import _bits, _kernels

#: per-vector scale that minimises the error of a uniform odd grid on a unit Gaussian
_GAUSS_STEP = {1: 0.7979, 2: 0.4979, 3: 0.2930, 4: 0.1676}


def quantize_step(r: np.ndarray, bits: int, iters: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One residual step: odd-integer codes c (n, d) int8 and fp16 scales a (n,) with r ≈ a·c.

    For ``bits == 1`` this is ``c = sign(r)``, ``a = mean|r|`` (the least-squares optimum).
    For more bits, a few alternations of nearest-grid coding and least-squares scaling.
    """
    top = (1 << bits) - 1
    if bits == 1:
        c = np.where(r >= 0, 1, -1).astype(np.int8)
        a = np.abs(r).mean(axis=1)
    else:
        rms = np.sqrt((r * r).mean(axis=1))
        a = rms * _GAUSS_STEP.get(bits, 2.0 ** (1 - bits))
        for _ in range(iters):
            safe = np.where(a > 0, a, 1.0)[:, None]
            c = np.clip(2 * np.floor(r / safe / 2) + 1, -top, top).astype(np.int8)
            cc = (c.astype(np.float32) ** 2).sum(axis=1)
            a = np.maximum((r * c).sum(axis=1) / np.maximum(cc, 1), 0.0)
        c = np.clip(2 * np.floor(r / np.where(a > 0, a, 1.0)[:, None] / 2) + 1, -top, top).astype(np.int8)
        cc = (c.astype(np.float32) ** 2).sum(axis=1)
        a = np.maximum((r * c).sum(axis=1) / np.maximum(cc, 1), 0.0)
    return c, a.astype(np.float16)


def odd_to_planes(c: np.ndarray, bits: int) -> np.ndarray:
    """Odd codes c (n, d) in [-(2^b-1), 2^b-1] -> bool planes (n, bits, d), c = sum_p 2^p (2·plane_p - 1)."""
    k = (c.astype(np.int16) + (1 << bits) - 1) >> 1
    return np.stack([(k >> p) & 1 for p in range(bits)], axis=1).astype(bool)


class RecurrentBinaryIndex(Method):
    """Storage and SDC search shared by both BEBR variants (subclasses define the encoder)."""

    family = "binary"
    default_bits: ClassVar[int] = 1

    def warm_up(self) -> None:
        _kernels.warm_up()  # compiled before the harness measures RSS around add()

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.u = int(build_params.get("u", 1))
        self.bits = int(build_params.get("bits", self.default_bits))
        self.rerank = int(build_params.get("rerank", 0))
        if self.u < 1 or not 1 <= self.bits <= 4:
            raise ValueError("bebr needs u >= 1 and 1 <= bits <= 4")
        self.planes_n = self.u * self.bits
        self.mean: np.ndarray | None = None
        self.planes = np.zeros((0, self.planes_n, self._code_width()), dtype=np.uint8)
        self.scales = np.zeros((0, self.u), dtype=np.float16)
        self.aux = np.zeros(0, dtype=np.float32)
        self.vectors: np.ndarray | None = None  # float32 copy, only with re-rank

    # ----- sizes ---------------------------------------------------------------------------
    @classmethod
    def per_vector_bytes(cls, dim: int, u: int, bits: int, rerank: int = 0) -> float:
        code_dim = cls.code_dim(dim)
        return u * bits * -(-code_dim // 8) + 2.0 * u + 4.0 + (4.0 * dim if rerank else 0.0)

    @classmethod
    def code_dim(cls, dim: int) -> int:
        return dim

    def _code_width(self) -> int:
        return -(-self.code_dim(self.dim) // 8)

    # ----- encoder (overridden by the learned variant) ----------------------------------------
    def _fit_encoder(self, xc: np.ndarray, qc: np.ndarray | None) -> None:
        """Learn whatever the encoder needs from centred training vectors (nothing here)."""

    def _encode_centred(self, xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centred vectors -> (planes bool (n, u·bits, code_dim), scales fp16 (n, u))."""
        if self.bits == 1:  # quantize_step's 1-bit steps in fewer numpy calls (same arithmetic)
            r = xc.astype(np.float32, copy=True)
            planes = np.empty((r.shape[0], self.u, r.shape[1]), dtype=bool)
            scales = np.empty((r.shape[0], self.u), dtype=np.float16)
            for t in range(self.u):
                planes[:, t] = r >= 0
                scales[:, t] = np.abs(r).mean(axis=1)
                if t + 1 < self.u:
                    r -= scales[:, t].astype(np.float32)[:, None] * np.where(planes[:, t], 1, -1).astype(np.int8)
            return planes, scales
        r = xc.astype(np.float32, copy=True)
        planes, scales = [], []
        for _ in range(self.u):
            c, a = quantize_step(r, self.bits)
            r -= a.astype(np.float32)[:, None] * c
            planes.append(odd_to_planes(c, self.bits))
            scales.append(a)
        return np.concatenate(planes, axis=1), np.stack(scales, axis=1)

    def _shared_bytes(self) -> int:
        return nbytes(self.mean)

    # ----- plane weights and reconstructions -----------------------------------------------------
    def plane_weights(self, scales: np.ndarray) -> np.ndarray:
        """(n, u) step scales -> (n, u·bits) float32 plane weights a_t · 2^p."""
        pw = (2.0 ** np.arange(self.bits)).astype(np.float32)
        return (scales.astype(np.float32)[:, :, None] * pw[None, None, :]).reshape(scales.shape[0], -1)

    def reconstruct_codes(self, planes: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """Packed planes (n, P, nb) + scales -> sum_t w_t b_t (n, code_dim) float32 (code space)."""
        w = self.plane_weights(scales)
        signs = _bits.unpack_signs(planes, self.code_dim(self.dim))  # (n, P, m)
        return np.einsum("np,npm->nm", w, signs, optimize=True).astype(np.float32, copy=False)

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xc = np.asarray(x, dtype=np.float32) - self.mean
        planes, scales = self._encode_centred(xc)
        return _bits.pack_signs(planes), scales, xc

    # ----- lifecycle ---------------------------------------------------------------------------
    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        train = np.asarray(train, dtype=np.float32)
        self.mean = train.mean(axis=0).astype(np.float32)
        qc = None if train_queries is None else np.asarray(train_queries, np.float32) - self.mean
        self._fit_encoder(train - self.mean, qc)

    def add(self, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.mean is None:
            self.fit(vectors)
        parts = [self._encode_with_aux(vectors[r0 : r0 + _bits.ADD_CHUNK])
                 for r0 in range(0, vectors.shape[0], _bits.ADD_CHUNK)]
        self.planes = np.concatenate([self.planes, *(p[0] for p in parts)])
        self.scales = np.concatenate([self.scales, *(p[1] for p in parts)])
        self.aux = np.concatenate([self.aux, *(p[2] for p in parts)])
        if self.rerank:
            self.vectors = vectors.copy() if self.vectors is None else np.vstack([self.vectors, vectors])
        self.ntotal = self.planes.shape[0]
        _kernels.warm_up()  # compile the scan kernels here, not in a timed search

    def _encode_with_aux(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        planes, scales, xc = self._encode(x)
        if self.metric == "ip":
            aux = xc @ self.mean
        else:
            rec = self.reconstruct_codes(planes, scales)
            aux = np.einsum("ij,ij->i", rec, rec)
        return planes, scales, aux.astype(np.float32)

    def search(self, queries: np.ndarray, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        queries = np.asarray(queries, dtype=np.float32)
        kernel = search_params.get("kernel", "auto")
        kc = min(k * self.rerank, self.ntotal) if self.rerank else k
        dist, ids = self.sdc_search(queries, max(kc, k), kernel)
        if self.rerank:
            dist, ids = _bits.rerank_exact(self.vectors, queries, ids, k, self.metric)
        return dist[:, :k], ids[:, :k]

    def sdc_search(self, queries: np.ndarray, k: int, kernel: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Top-k by symmetric distance between the binarized queries and the stored codes."""
        qplanes, qscales, qc = self._encode(queries)
        qw = self.plane_weights(qscales)
        # per-query constant making the score the (un-centred) inner product of reconstructions
        qconst = queries @ self.mean if self.metric == "ip" else None
        if kernel == "auto":
            small = queries.shape[0] <= _kernels.SMALL_BATCH
            if small and _kernels.popcount_ready(self.planes.shape[2]):
                kernel = "compiled"
            else:
                kernel = "popcount" if self.planes_n == 1 or queries.shape[0] <= 4 else "gemm"
        if kernel == "compiled":
            dist, ids = self._compiled_search(qplanes, qw, k)
        elif kernel == "gemm":
            qrec = self.reconstruct_codes(qplanes, qscales)

            def decode(b0: int, b1: int) -> tuple[np.ndarray, np.ndarray]:
                return self.reconstruct_codes(self.planes[b0:b1], self.scales[b0:b1]), self.aux[b0:b1]

            dist, ids = _bits.blocked_search(qrec, self.ntotal, k, self.metric, decode)
        elif kernel == "popcount":
            dist, ids = self._popcount_search(qplanes, qw, k)
        else:
            raise ValueError(f"unknown kernel {kernel!r} (auto, compiled, gemm, popcount)")
        if qconst is not None:
            dist = dist + qconst[:, None].astype(np.float32)
        return dist, ids

    def _compiled_search(self, qplanes: np.ndarray, qw: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """SDC by the compiled popcount kernel (64-bit words, all plane pairs per vector, plane
        weights from the fp16 scales and the top-k heap inside the kernel)."""
        if not _kernels.popcount_ready(self.planes.shape[2]):
            raise ValueError("the compiled kernel needs numba and codes of a multiple of 64 bits")
        qsq = self._query_sq_norms(qplanes, qw) if self.metric == "l2" else None
        return _kernels.sdc_topk(self.planes, self.scales, self.aux, qplanes, qw, self.bits,
                                 self.code_dim(self.dim), k, self.metric, qsq)

    def _popcount_search(self, qplanes: np.ndarray, qw: np.ndarray, k: int,
                         block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """SDC by popcount: sum_{a,b} qw_a xw_b (m - 2 Hamming(q_a, x_b)) (+ aux), in blocks of
        base vectors small enough for the (nq, block) score tiles to stay in cache."""
        m = self.code_dim(self.dim)
        nq = qplanes.shape[0]
        top = _bits.TopK(nq, k, self.metric)
        qsq = self._query_sq_norms(qplanes, qw) if self.metric == "l2" else None
        qa = [np.ascontiguousarray(qplanes[:, a, :]) for a in range(self.planes_n)]
        if self.planes_n == 1:
            return self._popcount_one_plane(qa[0], qw[:, 0], qsq, top, 4 * block)
        for b0 in range(0, self.ntotal, block):
            b1 = min(b0 + block, self.ntotal)
            xw = self.plane_weights(self.scales[b0:b1])
            s = np.zeros((nq, b1 - b0), dtype=np.float32)
            for b in range(self.planes_n):
                xb = self.planes[b0:b1, b, :]
                for a in range(self.planes_n):
                    t = _bits.hamming_matrix(qa[a], xb).astype(np.float32)
                    t *= -2.0
                    t += m  # <b_a, e_b> = m - 2 Hamming
                    t *= qw[:, a, None]
                    t *= xw[None, :, b]
                    s += t
            if self.metric == "ip":
                s += self.aux[b0:b1][None, :]
            else:
                s *= -2.0
                s += qsq[:, None]
                s += self.aux[b0:b1][None, :]
            top.add(s, b0)
        return top.result()

    def _popcount_one_plane(self, qcode: np.ndarray, qw: np.ndarray, qsq: np.ndarray | None,
                            top: _bits.TopK, block: int) -> tuple[np.ndarray, np.ndarray]:
        """One plane per side: score = qw·xw·(m - 2H) + aux, in five in-cache passes per tile."""
        m = self.code_dim(self.dim)
        sign = 1.0 if self.metric == "ip" else -2.0  # l2: |q̂|^2 + |x̂|^2 - 2 q̂.x̂
        xw_all = self.scales[:, 0].astype(np.float32) * sign
        for b0 in range(0, self.ntotal, block):
            b1 = min(b0 + block, self.ntotal)
            xw = xw_all[b0:b1]
            t = _bits.hamming_matrix(qcode, self.planes[b0:b1, 0, :]).astype(np.float32)
            t *= -2.0 * xw
            t += m * xw  # xw·(m - 2H)
            t *= qw[:, None]
            t += self.aux[b0:b1]
            if qsq is not None:
                t += qsq[:, None]
            top.add(t, b0)
        return top.result()

    def _query_sq_norms(self, qplanes: np.ndarray, qw: np.ndarray) -> np.ndarray:
        signs = _bits.unpack_signs(qplanes, self.code_dim(self.dim))
        rec = np.einsum("np,npm->nm", qw, signs)
        return np.einsum("ij,ij->i", rec, rec).astype(np.float32)

    def memory(self) -> MemoryAccount:
        codes = nbytes(self.planes, self.scales, self.aux, self.vectors)
        return MemoryAccount(codes=codes, structure=0, shared=self._shared_bytes())


@register
class BEBRResidual(RecurrentBinaryIndex):
    name = "bebr-residual"
    paper = ("Gan et al., 'Binary Embedding-based Retrieval at Tencent', KDD 2023 (arXiv:2302.08714); "
             "training-free recurrent residual binarization with symmetric distance calculation")
    bytes_formula = "u·bits·ceil(d/8) + 2u (fp16 step scales) + 4 (aux) [+ 4d re-rank] + 4d/n (mean)"
    post_hoc = ("training-free stand-in for BEBR: residual (recurrent) binarization with least-squares step "
                "scales and no learned MLP; the learned recipe is bebr-learned")
    build_grid: ClassVar[dict[str, list[Any]]] = {"u": [1, 2, 4], "bits": [1, 2]}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        u = int(build_params.get("u", 1))
        bits = int(build_params.get("bits", 1))
        return cls.per_vector_bytes(dim, u, bits, int(build_params.get("rerank", 0))) + 4.0 * dim / n
