"""2D Matryoshka (layers × dimensions), post hoc: PCA prefixes of a layer's embedding, fp16 or int8.

Papers: X. Li, Z. Li, J. Li, H. Xie, Q. Li, "2D Matryoshka Sentence Embeddings" (2DMSE), 2024
(arXiv:2402.14776); S. Zhuang, S. Wang, B. Koopman, G. Zuccon, "Starbucks: Improved Training for
2D Matryoshka Embeddings", 2024 (arXiv:2410.13230).

Both papers train an encoder so that every (layer L, dimension d') sub-network yields a usable
embedding: the pooled hidden state of layer L truncated to its first d' coordinates. The cost
axes are encoder depth (query encoding time) and bytes per vector.

**Post-hoc, not the papers' method.** all-MiniLM-L6-v2 was not 2D-Matryoshka trained, and no
training runs here. The layer axis is a property of the *data set*: ``NAME@L<L>`` holds the
mean-pooled, L2-normalised hidden state of layer L of the frozen encoder (:mod:`harness.layers`,
which also measures the query encoding time of a model truncated to L layers; rows carry it as
``encoder_layer`` / ``query_encode_ms_per_query``). This method is the dimension and storage
axis: the first d' coordinates in the data's PCA basis (as ``pca-prefix``: the post-hoc stand-in
for Matryoshka prefixes, since raw prefixes of a non-Matryoshka model are poor), stored as

* ``fp16``: half floats, 2·d' bytes per vector;
* ``int8``: one signed byte per coordinate, each dimension mapped linearly from its [min, max]
  over the training vectors onto [-128, 127] (sentence-transformers' ``quantize_embeddings``
  int8 calibration), d' bytes per vector plus 2·4·d' shared bytes (the ranges).

Queries stay float32 (asymmetric scoring); stored codes are decoded block by block and scanned
exhaustively with BLAS, as the papers' retrieval evaluation (exact search). Variants: none.

Bytes per vector: d'·s (s = 2 fp16 | 1 int8) + (4·d·d' + 4·d [+ 8·d' for int8]) / n.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.method import MemoryAccount
from harness.registry import register
from methods._lvq_codec import PrefixBasis
from methods.matryoshka import PrefixStore, _normalise, _Prefix

PAPER = ("Li, Li, Li, Xie, Li, '2D Matryoshka Sentence Embeddings' (2DMSE), 2024; Zhuang, Wang, Koopman, "
         "Zuccon, 'Starbucks: Improved Training for 2D Matryoshka Embeddings', 2024")
STORAGE = {"fp16": 2, "int8": 1}


class Int8Store:
    """PCA coordinates as int8 codes with per-dimension [min, max] ranges from calibration vectors."""

    def __init__(self, dims: int):
        self.dims = dims
        self.start: np.ndarray | None = None
        self.step: np.ndarray | None = None
        self.array = np.zeros((0, dims), np.int8)

    def calibrate(self, z: np.ndarray) -> None:
        lo, hi = z.min(axis=0).astype(np.float32), z.max(axis=0).astype(np.float32)
        self.start = lo
        self.step = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)

    def encode(self, z: np.ndarray) -> np.ndarray:
        assert self.start is not None and self.step is not None
        codes = np.rint((z - self.start) / self.step) - 128.0
        return np.clip(codes, -128, 127).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        assert self.start is not None and self.step is not None
        return (codes.astype(np.float32) + 128.0) * self.step + self.start

    def add(self, z: np.ndarray) -> None:
        if self.start is None:
            self.calibrate(z)
        self.array = np.ascontiguousarray(np.concatenate([self.array, self.encode(z)]))

    @property
    def ntotal(self) -> int:
        return int(self.array.shape[0])

    def shared_nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.start, self.step) if a is not None))

    def block(self, b0: int, b1: int, dims: int | None = None, normalise: bool = False) -> np.ndarray:
        z = self.decode(self.array[b0:b1])[:, :dims]
        return _normalise(z) if normalise else z

    def rows(self, ids: np.ndarray, dims: int | None = None, normalise: bool = False) -> np.ndarray:
        z = self.decode(self.array[ids])[:, :dims]
        return _normalise(z) if normalise else z


@register
class Starbucks2D(_Prefix):
    """2DMSE / Starbucks post hoc: PCA prefix of a layer's embedding, stored fp16 or int8."""

    name = "starbucks-2d"
    family = "dim-reduction"
    paper = PAPER
    basis = "pca"
    bytes_formula = "d'·s (s = 2 fp16 | 1 int8) + (4·d·d' + 4·d [+ 8·d' int8 ranges])/n"
    build_grid = {"dims": [16, 32, 64, 128, 256, 384], "dtype": ["fp16", "int8"]}
    post_hoc = ("not the papers' method: the encoder is not 2D-Matryoshka trained; the layer axis is the "
                "frozen model's mean-pooled layer-L hidden state (data sets NAME@L<L>) and the dimension axis "
                "the first d' PCA coordinates, stored fp16 or int8")

    def __init__(self, dim: int, metric: str, **build_params: Any):
        params = dict(build_params)
        self.storage = params.get("dtype", "fp16")
        if self.storage not in STORAGE:
            raise ValueError(f"dtype must be one of {list(STORAGE)}, not {self.storage!r}")
        super().__init__(dim, metric, **{**params, "dtype": "fp16"})
        self.dtype = self.storage
        if self.storage == "int8":
            self.store = Int8Store(self.dims)  # type: ignore[assignment]
        else:
            self.store = PrefixStore(self.dims, "fp16")

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        return 1 <= int(build_params.get("dims", 64)) <= dim and build_params.get("dtype", "fp16") in STORAGE

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        dims = int(build_params.get("dims", min(dim, 64)))
        storage = build_params.get("dtype", "fp16")
        shared = PrefixBasis.shared_bytes(dim, dims, "pca") + (8 * dims if storage == "int8" else 0)
        return dims * STORAGE[storage] + shared / max(n, 1)

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        self.proj.fit(train)
        if isinstance(self.store, Int8Store):
            self.store.calibrate(self.proj.docs(train))

    def memory(self) -> MemoryAccount:
        ranges = self.store.shared_nbytes() if isinstance(self.store, Int8Store) else 0
        return MemoryAccount(codes=int(self.store.array.nbytes), structure=0,
                             shared=self.proj.shared_nbytes() + ranges)
