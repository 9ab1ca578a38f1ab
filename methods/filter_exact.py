"""Exact pre-filter: brute force over the ids that pass the query's filter (filtered track).

The reference of filtered search: the passing rows are gathered from the float32 base and
scanned exactly (faiss ``knn``, BLAS), so its recall against the filtered ground truth is 1 up
to distance ties; its cost grows with the number of passing ids, not with n.
Paper: none (brute force; the "pre-filtering" baseline of filtered ANN search, e.g. Iff et al.,
"Benchmarking Filtered Approximate Nearest Neighbor Search Algorithms on Transformer-based
Embedding Vectors", 2025). Bytes per vector: 4·d (the float32 vectors).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.filters import FAMILIES, Allowed, knn_in_subset
from harness.method import MemoryAccount, Method
from harness.registry import register


@register
class FilterExact(Method):
    name = "filter-exact"
    family = "filtered"
    input_kind = "filtered"
    paper = "Brute force over the passing ids (pre-filtering); faiss knn"
    bytes_formula = "4·d"
    search_grid = {"filter": FAMILIES}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **_: Any) -> float:
        return 4.0 * dim

    def add(self, vectors: np.ndarray) -> None:
        self.x = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ntotal = self.x.shape[0]

    def search(self, queries: np.ndarray, k: int, allowed: Allowed | None = None,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            raise ValueError("filter-exact searches with a filter (allowed=...)")
        return knn_in_subset(self.x[allowed.ids], queries, allowed.ids, k, self.metric)

    def memory(self) -> MemoryAccount:
        return MemoryAccount(codes=int(self.x.nbytes))
