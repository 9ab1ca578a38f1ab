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
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount
from harness.registry import register
from methods import _faiss

EF_CONSTRUCTION = 100


@register
class HNSWSQ8(_faiss.FaissMethod):
    name = "hnsw-sq8"
    family = "graph"
    paper = ("Malkov & Yashunin, 'Efficient and robust approximate nearest neighbor search using HNSW graphs', "
             "IEEE TPAMI 2020, with SQ8 storage (faiss IndexHNSWSQ)")
    bytes_formula = "d + 4·(2·M + M/(M−1)) + 12 + 8·d/n (SQ8 code, links, offset + level, SQ ranges)"
    build_grid = {"M": [8, 16, 32]}
    search_grid = {"ef": [10, 20, 40, 80, 160, 320, 640]}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, M: int = 16, **_: Any) -> float:
        M = int(M)
        return dim + 4.0 * (2 * M + _faiss.hnsw_expected_upper_links(M)) + 12.0 + (8.0 * dim + 8.0) / n

    def make_index(self, n: int) -> faiss.Index:
        index = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_8bit, int(self.params.get("M", 16)),
                                  _faiss.faiss_metric(self.metric))
        index.hnsw.efConstruction = EF_CONSTRUCTION
        return index

    def search(self, queries: np.ndarray, k: int, ef: int = 64,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        return super().search(queries, k, efSearch=max(int(ef), int(k)))

    def memory(self) -> MemoryAccount:
        return _faiss.account(self.index, codes=self.ntotal * self.dim,
                              structure=_faiss.hnsw_link_bytes(self.index.hnsw))
