"""hnswlib's filtered search: ``knn_query(..., filter=callback)``, an HNSW graph traversal that
keeps only nodes for which the callback says yes (hnswlib ≥ 0.7).

The graph is built on the whole base (M from the build grid, ef_construction 100 as in
:mod:`methods.hnsw`); at search time the callback is a Python function over the filter's mask,
called by hnswlib for every candidate it would return, so the cost includes a Python call per
visited candidate: that is the library's interface, measured as it is.
hnswlib raises instead of returning fewer than k results ("Cannot return the results in a
contiguous 2D array"); when it does, this plugin asks again query by query for k, k/2, ... 1
results and pads with -1 (the retries are inside the timed search).
Paper: Malkov & Yashunin, TPAMI 2020 (hnswlib, filter callback of hnswlib 0.7+).
Bytes per vector: :func:`methods.hnsw.hnswlib_bytes_per_vector`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.filters import FAMILIES, Allowed, pad_results
from harness.method import MemoryAccount, Method
from harness.registry import register
from methods.hnsw import HNSW, hnswlib_bytes_per_vector


@register
class FilterHnswlib(Method):
    name = "filter-hnswlib"
    family = "filtered"
    input_kind = "filtered"
    paper = "Malkov & Yashunin, TPAMI 2020; hnswlib's knn_query filter callback"
    bytes_formula = "4·d + 8·M + 16 + (4·M + 4)/(M−1) + 96/n"
    build_grid = {"M": [16]}
    search_grid = {"ef": [64], "filter": FAMILIES}

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

    def _query(self, q: np.ndarray, k: int, accept: Any) -> tuple[np.ndarray, np.ndarray]:
        labels, dist = self.inner.index.knn_query(q, k=k, num_threads=self.inner.threads, filter=accept)
        scores = dist if self.metric == "l2" else 1.0 - dist
        return scores.astype(np.float32), labels.astype(np.int64)

    def search(self, queries: np.ndarray, k: int, allowed: Allowed | None = None, ef: int = 64,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            raise ValueError("filter-hnswlib searches with a filter (allowed=...)")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        kk = min(int(k), allowed.count)
        if kk == 0:
            return pad_results(np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64), k, self.metric)
        self.inner.index.set_ef(max(int(ef), kk))
        bits = allowed.mask.tobytes()  # bytes index to 0/1: the cheapest Python predicate

        def accept(label: int) -> int:
            return bits[label]

        try:
            return pad_results(*self._query(q, kk, accept), k, self.metric)
        except RuntimeError:
            rows = []
            for i in range(q.shape[0]):
                want = kk
                while True:
                    try:
                        rows.append(pad_results(*self._query(q[i : i + 1], want, accept), k, self.metric))
                        break
                    except RuntimeError:
                        if want == 1:
                            rows.append(pad_results(np.empty((1, 0), np.float32), np.empty((1, 0), np.int64),
                                                    k, self.metric))
                            break
                        want = max(1, want // 2)
            return np.vstack([r[0] for r in rows]), np.vstack([r[1] for r in rows])

    def memory(self) -> MemoryAccount:
        return self.inner.memory()

    def save(self, path: str) -> int:
        return self.inner.save(path)
