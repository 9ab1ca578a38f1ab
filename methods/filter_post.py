"""Post-filter: search k·f candidates in an unfiltered HNSW graph, keep those that pass.

The filter is applied after an ordinary approximate search (hnswlib HNSW, M = 16,
ef_construction 100 as in :mod:`methods.hnsw`), asking for ``factor``·k candidates (ef = that
many): a query whose filter lets few ids through finds fewer than k of them among its
candidates (padded with -1), so recall falls with selectivity unless f grows about as 1/s.
Paper: none (the "post-filtering" baseline, e.g. Iff et al. 2025; big-ann-benchmarks NeurIPS'23
filter track). Bytes per vector: those of the HNSW graph (:func:`methods.hnsw.hnswlib_bytes_per_vector`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.filters import FAMILIES, Allowed, keep_passing
from harness.method import MemoryAccount, Method
from harness.registry import register
from methods.hnsw import HNSW, hnswlib_bytes_per_vector


@register
class FilterPost(Method):
    name = "filter-post"
    family = "filtered"
    input_kind = "filtered"
    paper = ("Post-filtering over an unfiltered index: hnswlib HNSW (Malkov & Yashunin, TPAMI 2020), "
             "k·factor candidates then the filter")
    bytes_formula = "HNSW: 4·d + 8·M + 16 + (4·M + 4)/(M−1) + 96/n"
    build_grid = {"M": [16]}
    search_grid = {"factor": [1, 8, 64], "filter": FAMILIES}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, M: int = 16, **_: Any) -> float:
        return hnswlib_bytes_per_vector(dim, n, int(M))

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.inner = HNSW(dim, metric, M=int(build_params.get("M", 16)))

    def set_num_threads(self, n: int) -> None:
        super().set_num_threads(n)
        self.inner.set_num_threads(n)

    def add(self, vectors: np.ndarray) -> None:
        self.inner.add(vectors)
        self.ntotal = self.inner.ntotal

    def search(self, queries: np.ndarray, k: int, allowed: Allowed | None = None, factor: int = 1,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            raise ValueError("filter-post searches with a filter (allowed=...)")
        kk = min(int(k) * int(factor), self.ntotal)
        scores, ids = self.inner.search(queries, kk, ef=kk)
        return keep_passing(scores, ids, allowed.mask, int(k), self.metric)

    def memory(self) -> MemoryAccount:
        return self.inner.memory()

    def save(self, path: str) -> int:
        return self.inner.save(path)
