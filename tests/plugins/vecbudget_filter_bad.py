"""Test-only filtered method that ignores its filter (returns the unfiltered exact top-k), so the
filtered track must mark its rows invalid. Never registered in production: tests name this file
in ``VECBUDGET_PLUGINS``."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.filters import FAMILIES
from harness.method import MemoryAccount, Method
from harness.registry import register


@register
class FilterIgnored(Method):
    name = "test-filter-ignored"
    family = "test"
    input_kind = "filtered"
    paper = "none (test: a filtered method that returns ids failing the filter)"
    bytes_formula = "4·d"
    search_grid = {"filter": FAMILIES[:2]}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        return 4.0 * dim

    def add(self, vectors: np.ndarray) -> None:
        self.index = faiss.IndexFlat(self.dim, faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.ntotal = self.index.ntotal

    def search(self, queries: np.ndarray, k: int, allowed: Any = None, **_: Any):
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def memory(self) -> MemoryAccount:
        return MemoryAccount(codes=self.ntotal * 4 * self.dim)
