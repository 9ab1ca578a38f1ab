"""HNSW graph over 8-bit scalar-quantized vectors (faiss ``IndexHNSWSQ``): graph traversal and
final ranking both use asymmetric distances to the SQ8 codes.

Paper: Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", IEEE TPAMI 2020; storage: per-dimension 8-bit
scalar quantization (Douze et al., "The Faiss library", arXiv:2401.08281, 2024).

Bytes per vector (faiss's HNSW layout):
  d                      SQ8 code
  + 4·(2·M + M/(M−1))    neighbour table: 2·M slots at level 0, M per upper level, with
                         E[#levels above 0] = 1/(M−1) (level multiplier 1/ln M)
  + 8 + 4                offset into the neighbour table (int64), level (int32)
  + 8·d/n                SQ8 per-dimension min/range (shared).
Measured: the serialised index (codes, ``hnsw.neighbors``/``offsets``/``levels``, the rest
shared).

Variants: none; this is the recipe. efConstruction is fixed at 100 (faiss default 40); efSearch is
the search grid.

Insertion order: build parameter ``insertion_order`` (``data`` by default, ``random`` with
``seed``, ``lid-asc``, ``lid-desc``, ``category`` with ``categories``), as in :mod:`methods.hnsw`.
faiss numbers vectors in insertion order, so any order but ``data`` keeps an id map (int32 while
n < 2³¹: faiss id → position in ``add``), applied to search results and counted in ``structure``
(+4 B per vector in the formula too); ``save`` writes it beside the index (``<path>.ids.npy``) and
counts its bytes.
"""

from __future__ import annotations

import os
from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount
from harness.registry import register
from methods import _faiss
from methods.hnsw import DEFAULT_CATEGORIES, INSERTION_ORDERS, insertion_permutation

EF_CONSTRUCTION = 100


@register
class HNSWSQ8(_faiss.FaissMethod):
    name = "hnsw-sq8"
    family = "graph"
    paper = ("Malkov & Yashunin, 'Efficient and robust approximate nearest neighbor search using HNSW graphs', "
             "IEEE TPAMI 2020, with SQ8 storage (faiss IndexHNSWSQ)")
    bytes_formula = ("d + 4·(2·M + M/(M−1)) + 12 + 8·d/n (SQ8 code, links, offset + level, SQ ranges; "
                     "+4 id map unless insertion_order=data)")
    build_grid = {"M": [8, 16, 32]}
    search_grid = {"ef": [10, 20, 40, 80, 160, 320, 640]}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, M: int = 16, **params: Any) -> float:
        M = int(M)
        id_map = 0.0 if params.get("insertion_order", "data") == "data" else 4.0 if n < 2**31 else 8.0
        return dim + 4.0 * (2 * M + _faiss.hnsw_expected_upper_links(M)) + 12.0 + id_map + (8.0 * dim + 8.0) / n

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        return build_params.get("insertion_order", "data") in INSERTION_ORDERS

    def add(self, vectors: np.ndarray) -> None:
        x = _faiss.as_float32(vectors)
        perm = insertion_permutation(x, str(self.params.get("insertion_order", "data")), self.metric,
                                     seed=int(self.params.get("seed", 0)),
                                     categories=int(self.params.get("categories", DEFAULT_CATEGORIES)))
        self.id_map: np.ndarray | None = None
        if perm is None:
            super().add(x)
            return
        super().add(x[perm])
        self.id_map = perm.astype(np.int32 if x.shape[0] < 2**31 else np.int64)

    def make_index(self, n: int) -> faiss.Index:
        index = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_8bit, int(self.params.get("M", 16)),
                                  _faiss.faiss_metric(self.metric))
        index.hnsw.efConstruction = EF_CONSTRUCTION
        return index

    def search(self, queries: np.ndarray, k: int, ef: int = 64,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = super().search(queries, k, efSearch=max(int(ef), int(k)))
        id_map = getattr(self, "id_map", None)
        if id_map is not None:
            ids = np.where(ids >= 0, id_map[np.maximum(ids, 0)], -1).astype(np.int64)
        return scores, ids

    def memory(self) -> MemoryAccount:
        acc = _faiss.account(self.index, codes=self.ntotal * self.dim,
                             structure=_faiss.hnsw_link_bytes(self.index.hnsw))
        id_map = getattr(self, "id_map", None)
        if id_map is None:
            return acc
        return MemoryAccount(codes=acc.codes, structure=acc.structure + int(id_map.nbytes), shared=acc.shared)

    def save(self, path: str) -> int:
        size = super().save(path)
        id_map = getattr(self, "id_map", None)
        if id_map is not None:
            ids_path = f"{path}.ids.npy"
            np.save(ids_path, id_map)
            size += os.path.getsize(ids_path)
        return size
