"""CRISP, post hoc: each document's token vectors clustered into C centroids, Chamfer over centroids.

Paper: Veneroso et al., "CRISP: Clustering Multi-Vector Representations for Denoising and
Pruning", 2025. The paper *trains* the encoder with clustering in the loop, so its centroids are
what the model learned to score. That cannot run here (a frozen all-MiniLM-L6-v2, no fine-tuning
on a CPU), so this is the **post-hoc** variant the paper compares against: k-means of each
document's tokens, applied to a model that was not trained for it.

Recipe here: per document, Lloyd's k-means (squared L2, ``iters`` = 10 iterations, deterministic
initialisation at evenly spaced token positions; an emptied cluster keeps its previous centroid)
into C centroids; a document with at most C tokens keeps its tokens (``C ≥ tokens``: exact
Chamfer). Centroids are the plain means (not re-normalised). Queries keep all their tokens.
Stored as float32, float16 or int8 (faiss 8-bit scalar quantizer trained on the centroids).
Bytes per document: min(C, tokens)·d·(4 | 2 | 1) + 8 (offsets) (+ 8·d/n for int8's ranges).
Search: exact Chamfer of the query tokens against every document's centroids.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from harness.chamfer import chamfer_topk
from harness.method import MemoryAccount
from harness.multivector import RaggedVectors
from harness.registry import register
from methods._multivector import NOMINAL_TOKENS_PER_DOC, OFFSET_BYTES, MultiVectorMethod, TokenStore

DTYPES = {"fp32": "fp32", "fp16": "fp16", "int8": "sq8"}


@numba.njit(cache=True)
def _kmeans_docs(flat: np.ndarray, offsets: np.ndarray, c: int, iters: int) -> tuple[np.ndarray, np.ndarray]:
    n = offsets.shape[0] - 1
    d = flat.shape[1]
    out_off = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        out_off[i + 1] = out_off[i] + min(c, offsets[i + 1] - offsets[i])
    cent = np.zeros((out_off[n], d), dtype=np.float32)
    for i in range(n):
        a = offsets[i]
        t = offsets[i + 1] - a
        o = out_off[i]
        if t <= c:
            for j in range(t):
                cent[o + j] = flat[a + j]
            continue
        for j in range(c):
            cent[o + j] = flat[a + (j * t) // c]
        assign = np.zeros(t, dtype=np.int64)
        for _ in range(iters):
            changed = False
            for u in range(t):
                best, arg = np.inf, 0
                for j in range(c):
                    s = 0.0
                    for z in range(d):
                        diff = flat[a + u, z] - cent[o + j, z]
                        s += diff * diff
                    if s < best:
                        best, arg = s, j
                if arg != assign[u]:
                    changed = True
                assign[u] = arg
            sums = np.zeros((c, d), dtype=np.float64)
            counts = np.zeros(c, dtype=np.int64)
            for u in range(t):
                counts[assign[u]] += 1
                for z in range(d):
                    sums[assign[u], z] += flat[a + u, z]
            for j in range(c):
                if counts[j] > 0:
                    for z in range(d):
                        cent[o + j, z] = sums[j, z] / counts[j]
            if not changed and _ > 0:
                break
    return cent, out_off


def cluster_documents(docs: RaggedVectors, c: int, iters: int = 10) -> RaggedVectors:
    """Each document's tokens k-means-clustered into at most ``c`` centroids."""
    flat = np.ascontiguousarray(np.asarray(docs.flat), dtype=np.float32)
    cent, off = _kmeans_docs(flat, np.asarray(docs.offsets, dtype=np.int64), int(c), int(iters))
    return RaggedVectors(off, cent, {"crisp_clusters": int(c)})


@register
class CRISP(MultiVectorMethod):
    name = "crisp"
    family = "multivector"
    paper = "Veneroso et al., 'CRISP: Clustering Multi-Vector Representations for Denoising and Pruning', 2025"
    bytes_formula = "min(C, tokens/doc)·d·(4 | 2 | 1) + 8 (+ 8·d/n for int8)"
    build_grid = {"C": [8, 4, 2, 1], "dtype": ["fp32", "fp16", "int8"]}  # more centroids first on equal sizes
    post_hoc = ("post-hoc k-means of each document's tokens from the frozen all-MiniLM-L6-v2 (the paper trains "
                "the encoder with the clustering in the loop)")

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, tokens_per_doc: float = NOMINAL_TOKENS_PER_DOC,
                         **p: Any) -> float:
        per = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}[p.get("dtype", "fp32")]
        shared = 8.0 * dim / max(n, 1) if p.get("dtype") == "int8" else 0.0
        c = float(p.get("C", 4))
        lengths = p.get("lengths")  # the track passes the documents' token counts: exact mean of min(C, t)
        kept = float(np.minimum(lengths, c).mean()) if lengths is not None else min(c, tokens_per_doc)
        return kept * dim * per + OFFSET_BYTES + shared

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.c = int(build_params.get("C", 4))
        self.iters = int(build_params.get("iters", 10))
        self.store = TokenStore(dim, DTYPES[build_params.get("dtype", "fp32")])

    def warm_up(self) -> None:
        _kmeans_docs(np.zeros((3, 2), np.float32), np.array([0, 3], np.int64), 2, 1)

    def add(self, vectors: RaggedVectors) -> None:
        cent = cluster_documents(vectors, self.c, self.iters)
        self.store.train(cent.flat)
        self.store.add(cent)
        self.ntotal = len(vectors)

    def search(self, queries: RaggedVectors, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        return chamfer_topk(queries.flat, queries.offsets, self.store.codes, self.store.offsets, k,
                            self.store.decode)

    def memory(self) -> MemoryAccount:
        return self.store.memory()
