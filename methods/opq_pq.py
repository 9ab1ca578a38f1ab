"""Optimized product quantization: a learned orthogonal rotation R decorrelates the data and
balances variance across the m sub-spaces before product quantization.

Paper: Ge, He, Ke & Sun, "Optimized Product Quantization", IEEE TPAMI 36(4), 2014 (CVPR 2013),
non-parametric variant: alternate (i) PQ codebook training on R·x and (ii) the orthogonal
Procrustes update R = argmin ‖R·x − decode(encode(R·x))‖ (an SVD of d×d).
Search: faiss ``IndexPreTransform(OPQMatrix, IndexPQ)`` — 8-bit codes — or ``IndexPQFastScan``
for 4-bit codes (André et al., VLDB 2015).

Bytes per vector: m·nbits/8 + (4·d² + 2^nbits·d·4)/n — the d×d float32 rotation and the
codebooks are shared (4-bit codes padded to blocks of 32 vectors, as in ``pq``).

The recipe (default, ``variant="paper"``): the non-parametric alternation initialised by the
paper's parametric solution (PCA axes grouped into sub-spaces by eigenvalue allocation, which
balances the products of their eigenvalues). Variants: ``variant="identity-init"`` starts from
R = I (plain PQ) instead, so every Procrustes step improves on PQ.

Training budget (not part of the recipe, which iterates to convergence): 10 alternations with
4 warm-started k-means iterations each after a first 10, on at most 8,192 vectors and at most
256 per centroid (faiss's ``max_points_per_centroid``), run by our own loop (faiss's
``OPQMatrix.train`` sub-vector encoder is 10–50× slower on one core; the d×d SVD runs on one
BLAS thread); the final codebooks are refined from the loop's last ones by 10 k-means
iterations. With fewer than 39 training vectors per centroid (faiss's threshold) the codebooks
fit noise: only 2 alternations run and ``training_notes`` says so.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import PAPER_VARIANT, MemoryAccount
from harness.registry import register
from methods import _faiss
from methods.pq import FASTSCAN_BLOCK, flat_code_bytes, pq_code_bytes

OPQ_ITERATIONS = 10
OPQ_PQ_ITERATIONS = 4
OPQ_FIRST_PQ_ITERATIONS = 10
OPQ_FINAL_PQ_ITERATIONS = 10
OPQ_MAX_TRAIN = 8192
#: alternations when the training set has fewer than 39 vectors per centroid: a rotation fitted
#: to codebooks that fit noise is not worth ten Procrustes steps
OPQ_NOISE_ITERATIONS = 2
IDENTITY_INIT = "identity-init"


def encode_decode(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Reconstruction of x by its nearest sub-centroids; centroids has shape (m, ksub, dsub)."""
    m, _, dsub = centroids.shape
    out = np.empty_like(x)
    for j in range(m):  # m BLAS-sized nearest-centroid searches (not a per-vector loop)
        sl = slice(j * dsub, (j + 1) * dsub)
        _, assign = faiss.knn(np.ascontiguousarray(x[:, sl]), np.ascontiguousarray(centroids[j]), 1)
        out[:, sl] = centroids[j][assign[:, 0]]
    return out


def eigenvalue_allocation(x: np.ndarray, m: int) -> np.ndarray:
    """Parametric OPQ (Ge et al., Sec. "A Parametric Solution"): the d×d orthogonal R (y = R·x)
    whose rows are the principal axes, grouped into m sub-spaces by *eigenvalue allocation*: the
    m largest eigenvalues seed one sub-space each, then every next eigenvalue (descending) goes
    to the non-full sub-space with the smallest product of eigenvalues so far, balancing the
    products (the optimum for Gaussian data)."""
    d = x.shape[1]
    xc = (x - x.mean(axis=0)).astype(np.float64)
    with _faiss.single_blas_thread():
        evals, evecs = np.linalg.eigh(xc.T @ xc / max(x.shape[0] - 1, 1))
    order = np.argsort(evals)[::-1]
    logs = np.log(np.maximum(evals[order], 1e-12 * max(float(evals.max()), 1e-30)))
    dsub = d // m
    buckets: list[list[int]] = [[] for _ in range(m)]
    prod = np.zeros(m)
    for rank, axis in enumerate(order):
        if rank < m:
            j = rank
        else:
            open_ = [b for b in range(m) if len(buckets[b]) < dsub]
            j = min(open_, key=lambda b: prod[b])
        buckets[j].append(int(axis))
        prod[j] += logs[rank]
    rows = [a for b in buckets for a in b]
    return np.ascontiguousarray(evecs[:, rows].T, dtype=np.float32)


def train_opq_rotation(x: np.ndarray, m: int, nbits: int, niter: int = OPQ_ITERATIONS,
                       niter_pq: int = OPQ_PQ_ITERATIONS, max_train: int = OPQ_MAX_TRAIN,
                       seed: int = 0, info: dict | None = None,
                       init: str = "parametric") -> tuple[np.ndarray, np.ndarray]:
    """Non-parametric OPQ (Ge et al. 2013): the d×d orthogonal R, applied as y = R·x, and the
    last sub-codebooks (m, 2^nbits, d/m), a warm start for the final codebook training.

    ``init="parametric"`` (the paper's: the non-parametric alternation is initialised by the
    parametric solution, :func:`eigenvalue_allocation`) or ``"identity"`` (R = I: the first
    alternation is plain PQ; faiss's OPQMatrix starts from a random rotation instead).

    Training work is capped by what the data support: at most 256 vectors per centroid (faiss's
    ``max_points_per_centroid``) and ``max_train``; with fewer than 39 per centroid (the
    codebooks fit noise) only :data:`OPQ_NOISE_ITERATIONS` alternations run. ``info``, if
    given, receives ``sample``, ``iterations`` and ``note``.
    """
    ksub = 1 << nbits
    sample, note = _faiss.codebook_training(x.shape[0], ksub, max_train)
    if _faiss.underfitted(x.shape[0], ksub):
        niter = min(niter, OPQ_NOISE_ITERATIONS)
    note += f"; {niter} OPQ alternations"
    if info is not None:
        info.update(sample=sample, iterations=niter, note=note)
    x = _faiss.train_sample(x, sample, seed)
    d = x.shape[1]
    if init not in ("parametric", "identity"):
        raise ValueError(f"init must be 'parametric' or 'identity', not {init!r}")
    rot = eigenvalue_allocation(x, m) if init == "parametric" else np.eye(d, dtype=np.float32)
    pq = _faiss.quiet_pq(faiss.ProductQuantizer(d, m, nbits))
    pq.cp.niter = OPQ_FIRST_PQ_ITERATIONS
    # one BLAS thread for the whole loop: OpenBLAS threads left spinning after each small GEMM/SVD
    # starve faiss's OpenMP threads (measured 33.5 s vs 2.4 s, 1,460 x 384, m = 128, 2 cores)
    with _faiss.blas_distances(), _faiss.single_blas_thread():
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
    build_grid = {"variant": [PAPER_VARIANT, IDENTITY_INIT], "m": [8, 16, 32, 48, 64, 96, 128], "nbits": [4, 8]}
    variants = {IDENTITY_INIT: "the alternation starts from R = I (plain PQ) instead of the parametric "
                               "(eigenvalue-allocation) solution: every Procrustes step then improves on PQ"}

    @classmethod
    def is_valid(cls, dim: int, m: int = 8, nbits: int = 8, variant: str = PAPER_VARIANT, **_: Any) -> bool:
        return nbits in (4, 8) and m <= dim and dim % m == 0 and variant in (PAPER_VARIANT, IDENTITY_INIT)

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
        info: dict = {}
        init = "identity" if self.variant_of(self.params) == IDENTITY_INIT else "parametric"
        rot, cents = train_opq_rotation(x, m, nbits, info=info, init=init)
        self.train_sample, self.training_notes = int(info["sample"]), str(info["note"])
        self.opq_iterations = int(info["iterations"])
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
