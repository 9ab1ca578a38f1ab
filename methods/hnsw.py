"""Hierarchical Navigable Small World graph over float32 vectors (hnswlib).

Paper: Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", IEEE TPAMI 42(4), 2020 (arXiv:1603.09320).
Library: hnswlib 0.8 (the authors' implementation).

Bytes per vector, as hnswlib lays an element out (and as its saved index file holds it):
  4·d                the float32 vector (level-0 block)
  + 8·M + 4          level-0 links: M0 = 2·M neighbour ids (uint32) + their count
  + 8                the label (size_t) stored beside the links
  + 4                the element's upper-link-list size
  + (4·M + 4)/(M−1)  upper levels: M ids + count per level, E[#levels above 0] = 1/(M−1)
                     (level = ⌊−ln U / ln M⌋, so P(level ≥ l) = M^−l)
  + 96/n             the file/index header.
Measured: ``index_file_size()`` (= the bytes ``save_index`` writes: header, the level-0 block
of exactly n elements since max_elements = n, and every upper link list), split into codes
(n·4·d) and structure (the rest).

Variants: none; this is the recipe, with the authors' library. What is not counted: hnswlib's process bookkeeping outside that data structure —
one std::mutex per element (40 B), the label→id hash map (~40 B per element), a pointer per
element to its upper links (8 B), a visited-list pool (2 B per element per concurrent search)
and 65 536 label-operation mutexes (2.6 MB) — is allocator/implementation overhead, about
+90 B per vector; like the faiss methods (measured as their serialised structure), it is left out
so that methods are compared on their data structures. ef_construction is fixed at 100 (hnswlib's
default is 200) to keep a 20 000 × 384 build near 10–20 s on one core.

Insertion order (build parameter ``insertion_order``, not in the default grid). HNSW's graph
depends on the order points are inserted (Elliott & Clark, "The Impacts of Data, Ordering, and
Intrinsic Dimensionality on Recall in Hierarchical Navigable Small Worlds", 2024):

* ``data`` (default, the behaviour before this parameter existed): the order ``add`` is given;
* ``random``: a permutation drawn from build parameter ``seed`` (default 0);
* ``lid-asc`` / ``lid-desc``: by pointwise MLE LID (:func:`harness.intrinsic.pointwise_lid`,
  k = 20, the estimator of ``vecbudget datasets info``), ties and NaN estimates last, in data order;
* ``category``: grouped by a k-means cluster label of the vectors (``categories`` clusters,
  default 32; clusters in label order, data order inside a cluster). The method sees no per-vector
  labels through the contract, so this is a data-derived stand-in for the paper's known
  categories; ``benchmarks/insertion_order.py`` uses WordNet's real lexicographer files instead.

The ids stay the harness's: vectors are inserted in the chosen order with label = their position
in ``add`` (hnswlib stores a label per element anyway, so no byte is added). None of these is a
departure from the HNSW paper's recipe (which fixes no order); they are a build parameter.
"""

from __future__ import annotations

import os
from typing import Any

import hnswlib
import numpy as np

from harness.method import MemoryAccount, Method
from harness.registry import register

EF_CONSTRUCTION = 100
HEADER_BYTES = 96
SPACES = {"l2": "l2", "ip": "ip"}


INSERTION_ORDERS = ("data", "random", "lid-asc", "lid-desc", "category")
LID_K = 20
DEFAULT_CATEGORIES = 32


def insertion_permutation(x: np.ndarray, order: str = "data", metric: str = "l2", *, seed: int = 0,
                          categories: int = DEFAULT_CATEGORIES) -> np.ndarray | None:
    """The positions of ``x`` in the order HNSW inserts them (int64, a permutation of 0..n-1),
    or None for ``data`` (the given order). See the module doc for the orders."""
    if order not in INSERTION_ORDERS:
        raise ValueError(f"unknown insertion_order {order!r}; valid: {', '.join(INSERTION_ORDERS)}")
    n = x.shape[0]
    if order == "data":
        return None
    if order == "random":
        return np.random.default_rng(int(seed)).permutation(n).astype(np.int64)
    if order in ("lid-asc", "lid-desc"):
        from harness.intrinsic import pointwise_lid

        lid = pointwise_lid(x, k=min(LID_K, max(2, n // 3)), metric=metric)
        key = np.where(np.isnan(lid), np.inf, lid if order == "lid-asc" else -lid)
        return np.argsort(key, kind="stable").astype(np.int64)
    import faiss  # category: k-means labels

    c = int(max(1, min(int(categories), n // 39 or 1)))
    km = faiss.Kmeans(x.shape[1], c, niter=20, seed=int(seed) + 1234, verbose=False,
                      spherical=metric == "ip")
    km.train(x)
    _, labels = km.index.search(x, 1)
    return np.argsort(labels[:, 0], kind="stable").astype(np.int64)


def hnswlib_bytes_per_vector(dim: int, n: int, M: int) -> float:
    """Bytes per element of an hnswlib index (see the module docstring)."""
    level0 = 4 * dim + (2 * M * 4 + 4) + 8
    return level0 + 4 + (4 * M + 4) / (M - 1.0) + HEADER_BYTES / n


@register
class HNSW(Method):
    name = "hnsw"
    family = "graph"
    paper = ("Malkov & Yashunin, 'Efficient and robust approximate nearest neighbor search using "
             "Hierarchical Navigable Small World graphs', IEEE TPAMI 2020 (hnswlib)")
    bytes_formula = "4·d + 8·M + 16 + (4·M + 4)/(M−1) + 96/n (vector, level-0 links, label, upper levels)"
    build_grid = {"M": [8, 16, 32]}
    search_grid = {"ef": [10, 20, 40, 80, 160, 320, 640]}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, M: int = 16, **_: Any) -> float:
        return hnswlib_bytes_per_vector(dim, n, int(M))

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        return build_params.get("insertion_order", "data") in INSERTION_ORDERS

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.index: hnswlib.Index | None = None
        self.threads = -1  # hnswlib: -1 = all cores

    def set_num_threads(self, n: int) -> None:
        super().set_num_threads(n)
        self.threads = int(n) if n and n > 0 else -1
        if self.index is not None:
            self.index.set_num_threads(self.threads)

    def add(self, vectors: np.ndarray) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = hnswlib.Index(space=SPACES[self.metric], dim=self.dim)
        self.index.init_index(max_elements=x.shape[0], M=int(self.params.get("M", 16)),
                              ef_construction=EF_CONSTRUCTION, random_seed=100)
        self.index.set_num_threads(self.threads)
        perm = insertion_permutation(x, str(self.params.get("insertion_order", "data")), self.metric,
                                     seed=int(self.params.get("seed", 0)),
                                     categories=int(self.params.get("categories", DEFAULT_CATEGORIES)))
        if perm is None:
            self.index.add_items(x, np.arange(x.shape[0]), num_threads=self.threads)
        else:  # labels are the positions in `add`, so ids stay the harness's
            self.index.add_items(x[perm], perm, num_threads=self.threads)
        self.ntotal = x.shape[0]

    def search(self, queries: np.ndarray, k: int, ef: int = 64, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        kk = min(int(k), self.ntotal)
        self.index.set_ef(max(int(ef), kk))
        labels, dist = self.index.knn_query(q, k=kk, num_threads=self.threads)
        ids = labels.astype(np.int64)
        scores = dist.astype(np.float32) if self.metric == "l2" else (1.0 - dist).astype(np.float32)
        if kk < k:  # fewer vectors than k: pad like faiss
            pad = k - kk
            fill = np.float32(np.inf if self.metric == "l2" else -np.inf)
            ids = np.hstack([ids, np.full((q.shape[0], pad), -1, np.int64)])
            scores = np.hstack([scores, np.full((q.shape[0], pad), fill, np.float32)])
        return scores, ids

    def memory(self) -> MemoryAccount:
        total = int(self.index.index_file_size())
        codes = self.ntotal * 4 * self.dim
        return MemoryAccount(codes=codes, structure=total - codes - HEADER_BYTES, shared=HEADER_BYTES)

    def save(self, path: str) -> int:
        self.index.save_index(path)
        return os.path.getsize(path)
