"""Helpers shared by faiss-backed methods: metric mapping, measured memory, native save,
the IVF ``nlist`` rule, training samples and search parameters."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount, Method

#: faiss's own floor on k-means training points per centroid (below it faiss warns)
MIN_POINTS_PER_CENTROID = 39
#: faiss's ceiling (``ClusteringParameters.max_points_per_centroid``): k-means subsamples to
#: 256 points per centroid, more training vectors only cost time
MAX_POINTS_PER_CENTROID = 256


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def serialized_bytes(index: faiss.Index) -> int:
    """Bytes of the index's serialised form: its codes, structure and shared parts, as held."""
    return int(faiss.serialize_index(index).size)


def invlists_bytes(ivf: faiss.IndexIVF) -> tuple[int, int]:
    """(code bytes, id bytes) held by an IVF index's inverted lists."""
    invlists = ivf.invlists
    sizes = np.array([invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
    n = int(sizes.sum())
    return n * int(invlists.code_size), n * 8


def hnsw_link_bytes(hnsw: faiss.HNSW) -> int:
    """Bytes of an faiss HNSW graph: neighbour table, offsets and levels."""
    return int(
        hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
    )


def _vec_bytes(v: Any, itemsize: int) -> int:
    """Bytes of a faiss std::vector (0 when absent)."""
    return int(v.size()) * itemsize if v is not None else 0


def _transform_bytes(vt: faiss.VectorTransform) -> int:
    vt = faiss.downcast_VectorTransform(vt)
    if isinstance(vt, faiss.LinearTransform):
        return _vec_bytes(vt.A, 4) + _vec_bytes(vt.b, 4)
    return 0  # normalisation, centring: a few floats at most


def held_bytes(index: faiss.Index) -> int:
    """Bytes a faiss index holds in RAM, from its arrays' sizes — no serialisation.

    ``faiss.serialize_index`` copies the whole index into a growing buffer (twice the index at
    its peak, plus the copy handed to Python), which inflated the worker's peak RSS (exact at 200k
    × 384: 931 MB peak for a 324 MB index). This walks the index instead: codes (padded fast-scan
    blocks as allocated), inverted lists (codes, ids, one size per list), graph links, and the
    shared parts (coarse quantizer, PQ centroids, scalar-quantizer ranges, RaBitQ centre,
    linear transforms). It agrees with the serialised size up to the file's headers (checked in
    tests/test_scale_speed.py); an index type it does not know is measured by serialising that
    part alone.
    """
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        chain = sum(_transform_bytes(index.chain.at(i)) for i in range(index.chain.size()))
        return chain + held_bytes(index.index)
    if isinstance(index, faiss.IndexRefine):
        return held_bytes(index.base_index) + held_bytes(index.refine_index)
    if isinstance(index, faiss.IndexHNSW):
        hnsw = index.hnsw
        extra = _vec_bytes(hnsw.assign_probas, 8) + _vec_bytes(hnsw.cum_nneighbor_per_level, 4)
        return hnsw_link_bytes(hnsw) + extra + held_bytes(index.storage)
    if isinstance(index, faiss.IndexIVF):
        code_bytes, id_bytes = invlists_bytes(index)
        total = code_bytes + id_bytes + 8 * index.nlist + held_bytes(index.quantizer)
        return total + _shared_bytes(index)
    if isinstance(index, faiss.IndexFastScan):
        return int(index.codes.size()) + _shared_bytes(index)
    if isinstance(index, faiss.IndexFlatCodes):
        return int(index.codes.size()) + _shared_bytes(index)
    return serialized_bytes(index)


def _shared_bytes(index: faiss.Index) -> int:
    """Trained parameters of a codes index: PQ centroids, SQ ranges, RaBitQ centre."""
    total = 0
    pq = getattr(index, "pq", None)
    if isinstance(pq, faiss.ProductQuantizer):
        total += _vec_bytes(pq.centroids, 4)
    sq = getattr(index, "sq", None)
    if isinstance(sq, faiss.ScalarQuantizer):
        total += _vec_bytes(sq.trained, 4)
    center = getattr(index, "center", None)
    if center is not None and hasattr(center, "size"):
        total += _vec_bytes(center, 4)
    return total


def account(index: faiss.Index, codes: int, structure: int) -> MemoryAccount:
    """Memory account whose total is what the index holds (:func:`held_bytes`); what is not
    codes or structure is shared (codebooks, centroids, rotations)."""
    total = held_bytes(index)
    return MemoryAccount(codes=codes, structure=structure, shared=max(total - codes - structure, 0))


def write(index: faiss.Index, path: str) -> int:
    faiss.write_index(index, path)
    return os.path.getsize(path)


def as_float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


# ----- additions for the baseline plugins ---------------------------------------------------


def nlist_for(n: int, c: float) -> int:
    """The IVF list count rule ``nlist = clamp(round(c·√n), 1, n // 39)``.

    ``c·√n`` is faiss's usual guideline (c between 1 and 16); the upper clamp keeps at least
    39 training points per centroid, faiss's own minimum, so tiny sets do not degenerate.
    """
    return int(max(1, min(round(c * math.sqrt(max(n, 1))), max(n, 1) // MIN_POINTS_PER_CENTROID)))


def ivf_bytes_per_vector(dim: int, n: int, c: float, code_size: float) -> float:
    """Analytic bytes/vector of a faiss IVF index: codes + 8-byte id per vector, plus
    ``nlist`` float centroids and one 8-byte list size per list, amortised over n."""
    nlist = nlist_for(n, c)
    return code_size + 8.0 + nlist * (4.0 * dim + 8.0) / n


def ivf_account(ivf: faiss.IndexIVF, whole: faiss.Index | None = None, extra_codes: int = 0) -> MemoryAccount:
    """Measured account of an IVF index (``whole`` wraps it, e.g. a pre-transform or refine).

    codes = inverted-list codes (+ ``extra_codes``, e.g. re-ranking floats), structure = ids
    and list sizes, shared = the rest of the serialised index (centroids, codebooks, headers).
    """
    code_bytes, id_bytes = invlists_bytes(ivf)
    return account(whole if whole is not None else ivf, codes=code_bytes + extra_codes,
                   structure=id_bytes + 8 * ivf.nlist)


def train_sample(x: np.ndarray, max_n: int, seed: int = 0) -> np.ndarray:
    """A deterministic random subset of at most ``max_n`` rows (all rows if fewer)."""
    if x.shape[0] <= max_n:
        return as_float32(x)
    rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_n, replace=False))
    return as_float32(x[rows])


def codebook_training(n_train: int, ksub: int, cap: int | None = None) -> tuple[int, str]:
    """What the data support for codebooks of ``ksub`` centroids: (sample size, note).

    The sample is capped at faiss's 256 points per centroid (and ``cap``); with fewer than 39
    per centroid (faiss's warning threshold) the note says that the codebooks fit noise. The note
    is meant for the run's row (a method's ``training_notes``).
    """
    sample = min(int(n_train), MAX_POINTS_PER_CENTROID * ksub, int(cap) if cap else int(n_train))
    per = n_train / max(ksub, 1)
    note = f"codebooks of {ksub} centroids trained on {sample} of {n_train} vectors ({min(per, sample / ksub):.1f} per centroid)"
    if n_train < MIN_POINTS_PER_CENTROID * ksub:
        note += (f"; under faiss's {MIN_POINTS_PER_CENTROID} per centroid: the codebooks fit noise "
                 f"(needs n ≥ {MIN_POINTS_PER_CENTROID * ksub})")
    return sample, note


def underfitted(n_train: int, ksub: int) -> bool:
    """True when ``n_train`` vectors are fewer than faiss's 39 per centroid of ``ksub``."""
    return n_train < MIN_POINTS_PER_CENTROID * ksub


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """One BLAS thread for loops of small dense algebra between faiss calls (OPQ's d×d SVDs and
    rotations): OpenBLAS threads spin after each call and starve faiss's OpenMP threads; a
    384×384 SVD was measured at 1.5 s instead of 0.05 s, an OPQ training (1,460 × 384, m = 128,
    4-bit) at 33.5 s instead of 2.4 s on 2 cores — the cause of minute-long OPQ trainings."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


@contextlib.contextmanager
def blas_distances() -> Iterator[None]:
    """Make faiss compute k-means / assignment distances with BLAS for any batch size.

    faiss 1.15 sets ``distance_compute_blas_threshold`` to 128 000 queries; below it the
    sequential kernel is used, which is ~10× slower for sub-vector dimensions ≤ 6 (PQ with
    d/m ≤ 6). Training PQ codebooks inside this context keeps builds fast; results are the same
    up to float rounding.
    """
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 20
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def hnsw_expected_upper_links(M: int) -> float:
    """Expected upper-level neighbour slots per element of an HNSW graph with level
    multiplier 1/ln(M): P(level ≥ l) = M^-l, so E[#upper levels] = 1/(M-1), each with M slots."""
    return M / (M - 1.0)


def quiet_pq(pq: faiss.ProductQuantizer) -> faiss.ProductQuantizer:
    """Silence faiss's per-sub-space "please provide at least N training points" warning (it
    only warns; training is unchanged). With 256 centroids it fires for any sample < 9 984."""
    pq.cp.min_points_per_centroid = 1
    return pq


def pq_codebook_bytes(dim: int, nbits: int) -> int:
    """Bytes of PQ codebooks: 2^nbits centroids of d/m floats for each of m sub-spaces."""
    return (1 << nbits) * dim * 4


#: transient bytes one ``add`` call may allocate for PQ distance tables
ADD_TABLE_BYTES = 32 << 20


def _innermost(index: faiss.Index) -> faiss.Index:
    """The index under any pre-transforms (OPQ) and re-ranking tiers (IndexRefine)."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexPreTransform, faiss.IndexRefine)):
        index = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index.base_index)
    return index


def _find_pq(index: faiss.Index) -> faiss.ProductQuantizer | None:
    pq = getattr(_innermost(index), "pq", None)
    return pq if isinstance(pq, faiss.ProductQuantizer) else None


def add_chunk_rows(index: faiss.Index, n: int) -> int:
    """Rows per ``add`` call so that encoding stays within :data:`ADD_TABLE_BYTES`.

    faiss's ``ProductQuantizer::compute_codes`` with 16 or more dimensions per sub-vector builds
    the distance tables of the whole batch at once, n·2^nbits·m floats (1.64 GB for 200k
    vectors at m = 8, 8 bits); adding in chunks bounds them. The codes are the same. Indexes
    without a product quantizer are added in one call.
    """
    pq = _find_pq(index)
    if pq is None or int(pq.dsub) < 16:
        return max(int(n), 1)
    per_row = 4 * int(pq.ksub) * int(pq.M)
    return max(1024, ADD_TABLE_BYTES // per_row)


#: transient bytes one ``search`` call may allocate for PQ distance tables
SEARCH_TABLE_BYTES = 64 << 20


def search_chunk_rows(index: faiss.Index, nq: int) -> int:
    """Queries per ``search`` call so that a flat PQ scan stays within :data:`SEARCH_TABLE_BYTES`.

    faiss's ``IndexPQ::search`` (``ProductQuantizer::search``) computes the distance tables of
    every query of the batch before scanning: nq·2^nbits·m floats, 6.1 GB for 30,877 queries at
    m = 192, 8 bits (measured: a 6.4 GB worker peak on 117k WordNet). Searching in blocks bounds
    them; each query's results are the same. IVF-PQ builds its tables per query and is searched
    in one call, as is every index without a product quantizer.
    """
    inner = _innermost(index)
    if not isinstance(inner, faiss.IndexPQ):
        return max(int(nq), 1)
    per_query = 4 * int(inner.pq.ksub) * int(inner.pq.M)
    return max(64, SEARCH_TABLE_BYTES // per_query)


def search_params_for(index: faiss.Index, **kw: Any) -> faiss.SearchParameters | None:
    """Wrap ``kw`` in the faiss SearchParameters class that suits ``index`` (None if empty).

    Handles IndexPreTransform (params forwarded to the inner index), IndexRefine
    (``k_factor`` + inner params), IVF (``nprobe``), HNSW (``efSearch``) and RaBitQ (``qb``).
    The returned object keeps references to the nested parameter objects alive.
    """
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_params_for(index.index, **kw)
        if inner is None:
            return None
        p = faiss.SearchParametersPreTransform(index_params=inner)
        p._keep = inner  # keep the nested object alive as long as p
        return p
    if isinstance(index, faiss.IndexRefine):
        k_factor = kw.pop("k_factor", None)
        inner = search_params_for(index.base_index, **kw)
        p = faiss.IndexRefineSearchParameters()
        if k_factor is not None:
            p.k_factor = float(k_factor)
        if inner is not None:
            p.base_index_params = inner
            p._keep = inner
        return p
    kw = {k: v for k, v in kw.items() if v is not None}
    if not kw:
        return None
    if isinstance(index, faiss.IndexIVFRaBitQ):
        return faiss.IVFRaBitQSearchParameters(**kw)
    if isinstance(index, faiss.IndexRaBitQ):
        kw.pop("nprobe", None)
        return faiss.RaBitQSearchParameters(**kw) if kw else None
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(**kw)
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(**kw)
    raise TypeError(f"no search parameters for {type(index).__name__}: {sorted(kw)}")


class FaissMethod(Method):
    """Shared plumbing of faiss-backed plugins: build the index in :meth:`fit` (where the
    training size fixes data-dependent choices such as ``nlist``), add, search with per-call
    faiss SearchParameters, native save. Subclasses implement :meth:`make_index` and
    :meth:`memory` (and the class-level declarations)."""

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.index: faiss.Index | None = None

    def make_index(self, n: int) -> faiss.Index:
        """A fresh untrained index for a base of ``n`` vectors."""
        raise NotImplementedError

    def train_index(self, x: np.ndarray) -> None:
        """Train ``self.index`` on ``x`` (override for custom training, e.g. OPQ)."""
        with blas_distances():
            self.index.train(x)

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        x = as_float32(train)
        # the harness sets expected_n (the size add() will see); the training set may be a sample
        self.index = self.make_index(int(self.expected_n or x.shape[0]))
        self.train_index(x)
        self.note_pq_training(x.shape[0])

    def note_pq_training(self, n_train: int) -> None:
        """Set ``train_sample`` / ``training_notes`` for the index's product quantizer, if any
        (faiss k-means subsamples to 256 points per centroid itself); other indexes: no note."""
        if getattr(self, "training_notes", ""):
            return  # the subclass said what it did
        inner = faiss.downcast_index(self.index)
        while isinstance(inner, (faiss.IndexPreTransform, faiss.IndexRefine)):
            inner = faiss.downcast_index(inner.index if isinstance(inner, faiss.IndexPreTransform) else inner.base_index)
        pq = getattr(inner, "pq", None)
        if pq is None:
            return
        self.train_sample, self.training_notes = codebook_training(n_train, int(pq.ksub))

    def add(self, vectors: np.ndarray) -> None:
        x = as_float32(vectors)
        if self.index is None:  # used without fit: train on the vectors themselves
            self.fit(x)
        rows = add_chunk_rows(self.index, x.shape[0])
        for r0 in range(0, x.shape[0], rows):
            self.index.add(x[r0:r0 + rows])
        self.ntotal = int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        params = search_params_for(self.index, **search_params)
        queries = as_float32(queries)
        step = search_chunk_rows(self.index, queries.shape[0])
        if step >= queries.shape[0]:
            return self.index.search(queries, int(k), params=params)
        parts = [self.index.search(queries[i : i + step], int(k), params=params)
                 for i in range(0, queries.shape[0], step)]
        return np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])

    def save(self, path: str) -> int:
        return write(self.index, path)


class ScalarQuantizerMethod(FaissMethod):
    """faiss ``IndexScalarQuantizer`` with a fixed quantizer type (set ``qtype``)."""

    qtype: int

    def make_index(self, n: int) -> faiss.Index:
        return faiss.IndexScalarQuantizer(self.dim, self.qtype, faiss_metric(self.metric))

    def memory(self) -> MemoryAccount:
        return account(self.index, codes=self.ntotal * int(self.index.code_size), structure=0)
