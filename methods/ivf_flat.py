"""Inverted file over exact float32 vectors (IVF-Flat): k-means splits the base into nlist
cells; a query scans the vectors of its nprobe nearest cells exhaustively.

Paper: Sivic & Zisserman, "Video Google: a text retrieval approach to object matching in
videos", ICCV 2003 (inverted file); Jégou, Douze & Schmid, "Product Quantization for Nearest
Neighbor Search", IEEE TPAMI 2011 (IVF with a k-means coarse quantizer for ANN search).
faiss ``IndexIVFFlat``.

nlist = clamp(round(c·√n), 1, n/39) with c from the build grid (n: the base size the harness
announces in ``expected_n``, else the training-set size).
Bytes per vector: 4·d + 8 (int64 id in its list) + nlist·(4·d + 8)/n (centroids, list sizes).

Variants: none; this is the recipe. nprobe larger than nlist is clamped to nlist (exhaustive,
exact search).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount
from harness.registry import register
from methods import _faiss


@register
class IVFFlat(_faiss.FaissMethod):
    name = "ivf-flat"
    family = "ivf"
    paper = ("Sivic & Zisserman, 'Video Google', ICCV 2003 (inverted file); Jégou, Douze, Schmid, "
             "'Product Quantization for Nearest Neighbor Search', IEEE TPAMI 2011 (IVF for ANN)")
    bytes_formula = "4·d + 8 (id) + nlist·(4·d + 8)/n,  nlist = clamp(round(c·√n), 1, n/39)"
    build_grid = {"nlist_c": [1, 4]}
    search_grid = {"nprobe": [1, 2, 4, 8, 16, 32, 64, 128, 256]}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, nlist_c: float = 4, **_: Any) -> float:
        return _faiss.ivf_bytes_per_vector(dim, n, nlist_c, 4.0 * dim)

    def make_index(self, n: int) -> faiss.Index:
        fm = _faiss.faiss_metric(self.metric)
        nlist = _faiss.nlist_for(n, float(self.params.get("nlist_c", 4)))
        self.quantizer = faiss.IndexFlat(self.dim, fm)
        return faiss.IndexIVFFlat(self.quantizer, self.dim, nlist, fm)

    def search(self, queries: np.ndarray, k: int, nprobe: int = 1,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        return super().search(queries, k, nprobe=min(int(nprobe), self.index.nlist))

    def memory(self) -> MemoryAccount:
        return _faiss.ivf_account(self.index)
