"""Optimized product quantization: a learned orthogonal rotation R decorrelates the data and
balances variance across the m sub-spaces before product quantization.

Paper: Ge, He, Ke & Sun, "Optimized Product Quantization", IEEE TPAMI 36(4), 2014 (CVPR 2013),
non-parametric variant: alternate (i) PQ codebook training on R·x and (ii) the orthogonal
Procrustes update R = argmin ‖R·x − decode(encode(R·x))‖ (an SVD of d×d).
Search: faiss ``IndexPreTransform(OPQMatrix, IndexPQ)`` — 8-bit codes — or ``IndexPQFastScan``
for 4-bit codes (André et al., VLDB 2015).

Bytes per vector: m·nbits/8 + (4·d² + 2^nbits·d·4)/n — the d×d float32 rotation and the
codebooks are shared (4-bit codes padded to blocks of 32 vectors, as in ``pq``).

Departures: the rotation is learned with our own loop (identity start, i.e. from plain PQ; 10
alternations, 4 warm-started k-means iterations per alternation after a first 10, ≤ 8 192
training vectors) instead of faiss's ``OPQMatrix.train`` (50 alternations), whose sub-vector
encoder is 10–50× slower on one core; the final codebooks are then refined from the loop's last
ones by 10 k-means iterations on the whole training sample. The paper's parametric
initialisation (eigenvalue allocation) is not used.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount
from harness.registry import register
from methods import _faiss
from methods.pq import FASTSCAN_BLOCK, flat_code_bytes, pq_code_bytes

OPQ_ITERATIONS = 10
OPQ_PQ_ITERATIONS = 4
OPQ_FIRST_PQ_ITERATIONS = 10
OPQ_FINAL_PQ_ITERATIONS = 10
OPQ_MAX_TRAIN = 8192


def encode_decode(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Reconstruction of x by its nearest sub-centroids; centroids has shape (m, ksub, dsub)."""
    m, _, dsub = centroids.shape
    out = np.empty_like(x)
    for j in range(m):  # m BLAS-sized nearest-centroid searches (not a per-vector loop)
        sl = slice(j * dsub, (j + 1) * dsub)
        _, assign = faiss.knn(np.ascontiguousarray(x[:, sl]), np.ascontiguousarray(centroids[j]), 1)
        out[:, sl] = centroids[j][assign[:, 0]]
    return out


def train_opq_rotation(x: np.ndarray, m: int, nbits: int, niter: int = OPQ_ITERATIONS,
                       niter_pq: int = OPQ_PQ_ITERATIONS, max_train: int = OPQ_MAX_TRAIN,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-parametric OPQ (Ge et al. 2013): the d×d orthogonal R, applied as y = R·x, and the
    last sub-codebooks (m, 2^nbits, d/m), a warm start for the final codebook training.

    Starts from R = I, so the first alternation is plain PQ and each Procrustes step lowers
    the training distortion (faiss's OPQMatrix starts from a random rotation instead).
    """
    x = _faiss.train_sample(x, max_train, seed)
    d = x.shape[1]
    rot = np.eye(d, dtype=np.float32)  # start from plain PQ: each alternation can only help
    pq = _faiss.quiet_pq(faiss.ProductQuantizer(d, m, nbits))
    pq.cp.niter = OPQ_FIRST_PQ_ITERATIONS
    with _faiss.blas_distances():
        for it in range(niter):
            xr = np.ascontiguousarray(x @ rot.T)
            if it > 0:  # warm start from the previous codebooks
                pq.train_type = faiss.ProductQuantizer.Train_hot_start
                pq.cp.niter = niter_pq
            pq.train(xr)
            cents = faiss.vector_to_array(pq.centroids).reshape(m, pq.ksub, pq.dsub)
            y = encode_decode(xr, cents)
            # orthogonal Procrustes: min_R ‖x Rᵀ − y‖  ⇒  Rᵀ = U Vᵀ with U S Vᵀ = svd(xᵀ y)
            u, _, vt = np.linalg.svd((x.T @ y).astype(np.float64))
            rot = (u @ vt).T.astype(np.float32)
    return rot, cents


@register
class OPQProductQuantizer(_faiss.FaissMethod):
    name = "opq-pq"
    family = "pq"
    paper = "Ge, He, Ke, Sun, 'Optimized Product Quantization', IEEE TPAMI 2014 (CVPR 2013), non-parametric OPQ"
    bytes_formula = "m·nbits/8 + (4·d² + 2^nbits·d·4)/n (rotation + codebooks); 4-bit codes padded to blocks of 32"
    build_grid = {"m": [8, 16, 32, 48, 64, 96, 128], "nbits": [4, 8]}

    @classmethod
    def is_valid(cls, dim: int, m: int = 8, nbits: int = 8, **_: Any) -> bool:
        return nbits in (4, 8) and m <= dim and dim % m == 0

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, m: int = 8, nbits: int = 8, **_: Any) -> float:
        return pq_code_bytes(n, m, nbits) + (4.0 * dim * dim + _faiss.pq_codebook_bytes(dim, nbits)) / n

    def make_index(self, n: int) -> faiss.Index:
        m, nbits = int(self.params.get("m", 8)), int(self.params.get("nbits", 8))
        fm = _faiss.faiss_metric(self.metric)
        if nbits == 4:
            pq_index = faiss.IndexPQFastScan(self.dim, m, 4, fm, FASTSCAN_BLOCK)
        else:
            pq_index = faiss.IndexPQ(self.dim, m, nbits, fm)
        _faiss.quiet_pq(pq_index.pq)
        self.opq = faiss.OPQMatrix(self.dim, m)
        index = faiss.IndexPreTransform(self.opq, pq_index)
        index.own_fields = False
        self._parts = (self.opq, pq_index)  # the pre-transform does not own them
        return index

    def train_index(self, x: np.ndarray) -> None:
        m, nbits = int(self.params.get("m", 8)), int(self.params.get("nbits", 8))
        rot, cents = train_opq_rotation(x, m, nbits)
        faiss.copy_array_to_vector(rot.ravel(), self.opq.A)
        self.opq.is_trained = True
        pq = faiss.downcast_index(self.index.index).pq  # final codebooks: warm-started k-means
        faiss.copy_array_to_vector(cents.ravel(), pq.centroids)
        pq.train_type = faiss.ProductQuantizer.Train_hot_start
        pq.cp.niter = OPQ_FINAL_PQ_ITERATIONS
        with _faiss.blas_distances():
            self.index.train(x)  # trains only the final codebooks, on R·x

    def memory(self) -> MemoryAccount:
        inner = faiss.downcast_index(faiss.downcast_index(self.index).index)
        return _faiss.account(self.index, codes=flat_code_bytes(inner), structure=0)
