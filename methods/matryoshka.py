"""Matryoshka prefixes: truncation (raw or PCA basis) and MRL funnel retrieval.

Paper: A. Kusupati, G. Bhatt, A. Rege, M. Wallingford, A. Sinha, V. Ramanujan, W. Howard-Snyder,
K. Chen, S. Kakade, P. Jain, A. Farhadi, "Matryoshka Representation Learning", NeurIPS 2022.
Reference code: RAIVNLab/MRL (adaptive retrieval / funnel).

* ``mrl-prefix``: keep the first d' coordinates of each embedding as they are (Matryoshka
  truncation); for inner product the prefix is L2-normalised (Matryoshka models are scored by
  cosine on each prefix). This is only meaningful for a model trained with the Matryoshka loss.
* ``pca-prefix``: **PCA-prefix variant, not the paper's method**: truncation in the PCA basis of
  the data (first d' principal components), the post-hoc stand-in for a model not trained with
  Matryoshka loss (e.g. all-MiniLM-L6-v2).
* ``mrl-funnel``: the paper's funnel ("adaptive retrieval"): shortlist K0 = k·shortlist_factor
  candidates with a d0-dim prefix over all vectors, then re-rank through a cascade of prefixes
  d0, 2·d0, 4·d0, … up to the stored D dims, halving the shortlist at each stage (never below
  k). ``basis`` in ("pca", "raw"), default grid: "pca" (PCA-prefix, as the model used here is not
  Matryoshka-trained).

Storage: float32 or float16 (build param ``dtype``); the scan decodes blocks to float32 and
uses BLAS (``faiss.knn``). Every stored dimension counts.

Bytes per vector: d'·s (s = 4 for float32, 2 for float16) + shared/n with shared = 4·d·d' + 4·d
for the PCA basis (projection matrix and mean), 0 for the raw basis. The funnel stores D dims.

Post-hoc: MRL trains the encoder with the Matryoshka loss; the encoders here (all-MiniLM-L6-v2)
are not Matryoshka-trained, so the recipe cannot run. ``mrl-prefix`` truncates the frozen
embeddings as MRL does (without the loss that makes prefixes good), ``pca-prefix`` and the
funnel's default ``basis="pca"`` take prefixes in the data's PCA basis, the closest post-hoc
stand-in. Variants: none. Prefixes are scanned exhaustively (exact search, as the paper's
retrieval evaluation).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from harness.method import MemoryAccount, Method
from harness.registry import register
from methods._lvq_codec import PrefixBasis, blocked_knn, rerank, set_threads

PAPER = (
    "Kusupati, Bhatt, Rege, Wallingford, Sinha, Ramanujan, Howard-Snyder, Chen, Kakade, Jain, "
    "Farhadi, 'Matryoshka Representation Learning', NeurIPS 2022"
)
DTYPES = {"float32": (np.float32, 4), "fp16": (np.float16, 2)}


class PrefixStore:
    """The stored prefix vectors (n, D) in float32 or float16."""

    def __init__(self, dims: int, dtype: str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, not {dtype!r}")
        self.dims, self.dtype = dims, dtype
        self.array = np.zeros((0, dims), DTYPES[dtype][0])

    def add(self, z: np.ndarray) -> None:
        self.array = np.ascontiguousarray(
            np.concatenate([self.array, z.astype(DTYPES[self.dtype][0])])
        )

    @property
    def ntotal(self) -> int:
        return int(self.array.shape[0])

    def block(
        self, b0: int, b1: int, dims: int | None = None, normalise: bool = False
    ) -> np.ndarray:
        z = self.array[b0:b1, :dims].astype(np.float32)
        return _normalise(z) if normalise else z

    def rows(self, ids: np.ndarray, dims: int | None = None, normalise: bool = False) -> np.ndarray:
        z = self.array[ids, :dims].astype(np.float32)
        return _normalise(z) if normalise else z


def _normalise(z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norms > 0, norms, 1.0)


class _Prefix(Method):
    family = "dim-reduction"
    paper = PAPER
    basis: ClassVar[str] = "raw"
    build_grid = {"dims": [16, 32, 64, 96, 128, 192, 256, 384], "dtype": ["fp16", "float32"]}

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.dims = int(build_params.get("dims", min(dim, 64)))
        self.dtype = build_params.get("dtype", "float32")
        self.proj = PrefixBasis(dim, self.dims, self._basis(build_params), metric, normalise=True)
        self.store = PrefixStore(self.dims, self.dtype)

    @classmethod
    def _basis(cls, params: dict[str, Any]) -> str:
        return cls.basis

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        return (
            1 <= int(build_params.get("dims", 64)) <= dim
            and build_params.get("dtype", "float32") in DTYPES
        )

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        dims = int(build_params.get("dims", min(dim, 64)))
        s = DTYPES[build_params.get("dtype", "float32")][1]
        return dims * s + PrefixBasis.shared_bytes(dim, dims, cls._basis(build_params)) / max(n, 1)

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        self.proj.fit(train)

    def add(self, vectors: np.ndarray) -> None:
        if self.proj.basis == "pca" and self.proj.matrix is None:
            self.proj.fit(vectors)
        self.store.add(self.proj.docs(vectors))
        self.ntotal = self.store.ntotal

    def search(
        self, queries: np.ndarray, k: int, **search_params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        q = self.proj.queries(queries)
        return blocked_knn(q, self.ntotal, self.store.block, k, self.metric, self.dims)

    def memory(self) -> MemoryAccount:
        return MemoryAccount(
            codes=int(self.store.array.nbytes), structure=0, shared=self.proj.shared_nbytes()
        )

    def set_num_threads(self, n: int) -> None:
        set_threads(n)


@register
class MRLPrefix(_Prefix):
    """Matryoshka truncation: the first d' raw coordinates (cosine on the prefix for IP)."""

    name = "mrl-prefix"
    bytes_formula = "d'·s (s = 4 float32 | 2 float16)"
    basis = "raw"
    post_hoc = ("the encoder is not Matryoshka-trained (all-MiniLM-L6-v2): its raw prefixes are truncated "
                "as MRL does, without the Matryoshka loss that makes prefixes good")


@register
class PCAPrefix(_Prefix):
    """PCA-prefix variant (not Matryoshka-trained): the first d' principal components."""

    name = "pca-prefix"
    bytes_formula = "d'·s (s = 4 float32 | 2 float16) + (4·d·d' + 4·d)/n (PCA matrix, mean)"
    basis = "pca"
    post_hoc = ("not the paper's method: the encoder is not Matryoshka-trained, so prefixes are taken in the "
                "data's PCA basis (first d' principal components), the post-hoc stand-in for MRL prefixes")


def funnel_schedule(d0: int, dims: int, k: int, shortlist: int) -> list[tuple[int, int]]:
    """[(prefix dims, candidates kept)] of the funnel: dims d0, 2·d0, … then D; the first stage
    keeps ``shortlist`` candidates, each later one half as many (≥ k), the last keeps k."""
    stages: list[tuple[int, int]] = []
    d, keep = min(d0, dims), max(shortlist, k)
    while d < dims:
        stages.append((d, keep))
        d, keep = min(2 * d, dims), max(k, keep // 2)
    stages.append((dims, k))
    return stages


@register
class MRLFunnel(_Prefix):
    """MRL funnel retrieval: low-d shortlist, cascade of re-rankings with longer prefixes."""

    name = "mrl-funnel"
    bytes_formula = "D·s (all stored dims) + (4·d·D + 4·d)/n for the PCA basis"
    post_hoc = ("the encoder is not Matryoshka-trained: the funnel's prefixes are taken in the data's PCA "
                "basis (basis='pca', the default grid); basis='raw' runs the paper's raw prefixes")
    build_grid = {
        "dims": [32, 64, 128, 192, 256, 384],
        "dtype": ["fp16", "float32"],
        "basis": ["pca"],
    }
    search_grid = {"d0": [16, 32, 64], "shortlist_factor": [4, 16, 64]}

    @classmethod
    def _basis(cls, params: dict[str, Any]) -> str:
        return params.get("basis", "pca")

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        return super().is_valid(dim, **build_params) and build_params.get("basis", "pca") in (
            "pca",
            "raw",
        )

    def search(
        self, queries: np.ndarray, k: int, **search_params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        d0 = int(search_params.get("d0", 16))
        factor = max(1, int(search_params.get("shortlist_factor", 16)))
        q = self.proj.queries(queries)
        # the raw basis with inner product scores each prefix by cosine, as MRL does
        norm = self.proj.basis == "raw" and self.metric == "ip"
        stages = funnel_schedule(d0, self.dims, k, k * factor)
        d, keep = stages[0]
        qd = np.ascontiguousarray(q[:, :d])
        dist, ids = blocked_knn(
            qd, self.ntotal, lambda b0, b1: self.store.block(b0, b1, d, norm), keep, self.metric, d
        )
        for d, keep in stages[1:]:
            dist, ids = rerank(
                np.ascontiguousarray(q[:, :d]),
                ids,
                lambda r, d=d: self.store.rows(r, d, norm),
                keep,
                self.metric,
            )
        return dist, ids
