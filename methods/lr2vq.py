"""LR²VQ-style low-rank projection followed by product quantization.

Idea (issue 4, item 7, "Low-rank + VQ"): project the vectors to d' ≤ d dimensions with PCA —
optionally followed by an OPQ rotation of the projected space (Ge, He, Ke, Sun, "Optimized
Product Quantization", TPAMI 2014) — and product-quantize the result with m sub-quantizers of
256 centroids (Jégou, Douze, Schmid, "Product quantization for nearest neighbor search", TPAMI
2011). Sweeping d' against m trades the information kept by the projection against the bits
spent per kept dimension.

Pipeline: z = Pᵀ(x − μ) (P: top-d' principal directions), z ← z·R for ``rotation="opq"``
(R orthonormal, learned by OPQ's non-parametric alternation: PQ on zR, then R from the
orthogonal Procrustes problem min‖zR − decode(encode(zR))‖), then PQ codes of z (8 bits per
sub-quantizer). Queries are mapped the same way (for inner product without centring, which
changes no ranking) and scored by asymmetric distance computation (ADC, faiss ``IndexPQ``)
over all codes.

Training is done here with faiss k-means per sub-space (sub-vectors shorter than 8 dims are
zero-padded to 8, which leaves k-means unchanged and avoids a slow faiss code path for small
dimensions): OPQ starts from a random rotation, runs 10 alternations (faiss default 50) on at
most 16,384 vectors, with 10 k-means iterations the first time and 2 warm-started ones after
(faiss: 40 and 4); the final PQ runs 20 k-means iterations on at most 16,384 vectors.

Bytes per vector: m + shared/n, shared = 4·d·d' + 4·d (PCA matrix, mean) + 4·d'² (OPQ rotation,
if any) + 4·256·d' (PQ centroids).

Post-hoc: the low-rank projection and the quantizer are learned on frozen embeddings (no encoder
training). Variants: none. No re-ranking and no inverted index (flat ADC scan). Training work is
capped by what the data support (``training_notes``): at most 256 vectors per centroid and
16,384 in all; with fewer than 39 per centroid (under 9,984 vectors for 256 centroids) the
codebooks fit noise and OPQ runs only 2 alternations.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount, Method
from harness.registry import register
from methods._faiss import codebook_training, single_blas_thread, underfitted
from methods._lvq_codec import PrefixBasis, faiss_blas_always, set_threads
from methods.opq_pq import OPQ_NOISE_ITERATIONS

KSUB = 256  # 8-bit sub-quantizers
OPQ_NITER = 10
OPQ_KMEANS_NITER0 = 10
OPQ_KMEANS_NITER = 2
KMEANS_NITER = 20
MAX_TRAIN = 16384
PAD = 8  # faiss's k-means / nearest-centroid kernels are fast from 8 dims up


def _pad(z: np.ndarray) -> np.ndarray:
    if z.shape[1] >= PAD:
        return np.ascontiguousarray(z, dtype=np.float32)
    out = np.zeros((z.shape[0], PAD), np.float32)
    out[:, : z.shape[1]] = z
    return out


def pq_train(
    z: np.ndarray, m: int, niter: int, seed: int = 1234, init: np.ndarray | None = None
) -> np.ndarray:
    """Sub-quantizer centroids (m, 256, d/m) by k-means on each sub-space."""
    n, d = z.shape
    dsub = d // m
    cent = np.empty((m, KSUB, dsub), np.float32)
    for j in range(m):
        sub = _pad(z[:, j * dsub : (j + 1) * dsub])
        km = faiss.Kmeans(
            sub.shape[1],
            KSUB,
            niter=niter,
            seed=seed + j,
            min_points_per_centroid=1,
            max_points_per_centroid=1 << 20,
        )
        km.train(sub, init_centroids=_pad(init[j]) if init is not None else None)
        cent[j] = km.centroids[:, :dsub]
    return cent


def pq_encode(z: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """(n, m) uint8 codes: the nearest centroid of each sub-vector."""
    m, _, dsub = cent.shape
    codes = np.empty((z.shape[0], m), np.uint8)
    for j in range(m):
        _, idx = faiss.knn(_pad(z[:, j * dsub : (j + 1) * dsub]), _pad(cent[j]), 1)
        codes[:, j] = idx[:, 0]
    return codes


def pq_decode(codes: np.ndarray, cent: np.ndarray) -> np.ndarray:
    m = cent.shape[0]
    return np.concatenate([cent[j][codes[:, j]] for j in range(m)], axis=1)


def opq_train(z: np.ndarray, m: int, seed: int = 1234, niter: int = OPQ_NITER) -> np.ndarray:
    """OPQ (non-parametric) rotation R, d×d orthonormal, applied as z·R."""
    d = z.shape[1]
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.normal(size=(d, d)))
    cent = None
    z64 = z.astype(np.float64)
    for it in range(niter):
        x = (z64 @ r).astype(np.float32)
        cent = pq_train(x, m, OPQ_KMEANS_NITER0 if it == 0 else OPQ_KMEANS_NITER, seed, init=cent)
        y = pq_decode(pq_encode(x, cent), cent).astype(np.float64)
        u, _, vt = np.linalg.svd(z64.T @ y)
        r = u @ vt
    return np.ascontiguousarray(r, dtype=np.float32)


class ProjectedPQ(Method):
    """PCA / raw-prefix projection to d' dims, optional OPQ rotation, PQ with m bytes."""

    family = "pq"
    #: name of the build parameter holding the projected dimension
    dims_key = "d_proj"

    @classmethod
    def _parse(cls, dim: int, params: dict[str, Any]) -> tuple[int, int, str, str]:
        """(projected dims, m, basis, rotation)."""
        d_proj = int(params.get(cls.dims_key, min(dim, 64)))
        m = int(params.get("m", 8))
        return d_proj, m, params.get("basis", "pca"), params.get("rotation", "opq")

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.d_proj, self.m, basis, self.rotation = self._parse(dim, build_params)
        if not self.is_valid(dim, **build_params):
            raise ValueError(f"{self.name}: invalid configuration {build_params} for d={dim}")
        self.proj = PrefixBasis(dim, self.d_proj, basis, metric, normalise=True)
        self.rot: np.ndarray | None = None
        self.index = faiss.IndexPQ(
            self.d_proj,
            self.m,
            8,
            faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT,
        )

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        d_proj, m, basis, rotation = cls._parse(dim, build_params)
        return (
            1 <= d_proj <= dim
            and 1 <= m <= d_proj
            and d_proj % m == 0
            and 2 <= d_proj // m <= 16
            and basis in ("pca", "raw")
            and rotation in ("pca", "opq")
        )

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        d_proj, m, basis, rotation = cls._parse(dim, build_params)
        shared = PrefixBasis.shared_bytes(dim, d_proj, basis) + 4 * KSUB * d_proj
        if rotation == "opq":
            shared += 4 * d_proj * d_proj
        return m + shared / max(n, 1)

    def _map(self, z: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(z @ self.rot) if self.rot is not None else z

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        self.proj.fit(train)
        z = self.proj.docs(train)
        if z.shape[0] < KSUB:
            raise ValueError(
                f"{self.name} needs at least {KSUB} training vectors, got {z.shape[0]}"
            )
        n_train = z.shape[0]
        sample, self.training_notes = codebook_training(n_train, KSUB, MAX_TRAIN)
        if n_train > sample:
            z = z[np.random.default_rng(0).choice(n_train, sample, replace=False)]
        self.train_sample = int(sample)
        niter = min(OPQ_NITER, OPQ_NOISE_ITERATIONS) if underfitted(n_train, KSUB) else OPQ_NITER
        with faiss_blas_always(), single_blas_thread():  # spinning BLAS threads starve faiss's OpenMP
            if self.rotation == "opq":
                self.rot = opq_train(z, self.m, niter=niter)
                self.training_notes += f"; {niter} OPQ alternations"
            cent = pq_train(self._map(z), self.m, KMEANS_NITER)
        faiss.copy_array_to_vector(cent.ravel(), self.index.pq.centroids)
        self.index.is_trained = True

    def _centroids(self) -> np.ndarray:
        pq = self.index.pq
        return faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)

    def add(self, vectors: np.ndarray) -> None:
        if not self.index.is_trained:
            self.fit(vectors)
        z = self._map(self.proj.docs(vectors))
        cent = self._centroids()
        for i in range(0, z.shape[0], 65536):
            with faiss_blas_always():
                codes = np.ascontiguousarray(pq_encode(z[i : i + 65536], cent))
            self.index.add_sa_codes(codes)
        self.ntotal = int(self.index.ntotal)

    def search(
        self, queries: np.ndarray, k: int, **search_params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(self._map(self.proj.queries(queries)), k)

    def memory(self) -> MemoryAccount:
        codes = int(self.index.codes.size())
        shared = self.proj.shared_nbytes() + int(self.index.pq.centroids.size()) * 4
        if self.rot is not None:
            shared += int(self.rot.nbytes)
        return MemoryAccount(codes=codes, structure=0, shared=shared)

    def set_num_threads(self, n: int) -> None:
        set_threads(n)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["index"] = faiss.serialize_index(self.index)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["index"] = faiss.deserialize_index(state["index"])
        self.__dict__.update(state)


@register
class LR2VQ(ProjectedPQ):
    """Low-rank (PCA, optionally OPQ-rotated) projection to d' dims, then PQ with m bytes."""

    name = "lr2vq"
    paper = (
        "Low-rank projection + PQ (LR²VQ idea): PCA/OPQ (Ge et al., TPAMI 2014) to d' dims then "
        "PQ (Jégou, Douze, Schmid, TPAMI 2011)"
    )
    bytes_formula = "m + (4·d·d' + 4·d + [4·d'² OPQ] + 4·256·d')/n"
    post_hoc = "projection and PQ are learned on the frozen embeddings (no encoder training)"
    build_grid = {"d_proj": [32, 64, 128, 256], "m": [4, 8, 16, 32, 64], "rotation": ["pca", "opq"]}
    search_grid: dict[str, list[Any]] = {}
