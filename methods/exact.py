"""Exact search over float32 vectors: the reference every other method is measured against.

Paper: none (brute force). faiss ``IndexFlat``.
Bytes per vector: 4·d.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount, Method
from harness.registry import register
from methods import _faiss


@register
class ExactFloat32(Method):
    name = "exact"
    family = "exact"
    paper = "Brute-force k-NN (faiss IndexFlat; Johnson, Douze, Jégou, 'Billion-scale similarity search with GPUs', 2017)"
    bytes_formula = "4·d"

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        return 4.0 * dim

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.index = faiss.IndexFlat(dim, _faiss.faiss_metric(metric))

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(_faiss.as_float32(vectors))
        self.ntotal = self.index.ntotal

    def search(self, queries: np.ndarray, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(_faiss.as_float32(queries), k)

    def memory(self) -> MemoryAccount:
        return _faiss.account(self.index, codes=self.ntotal * self.index.code_size, structure=0)

    def save(self, path: str) -> int:
        return _faiss.write(self.index, path)
