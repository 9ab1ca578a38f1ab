"""Exact k-nearest-neighbour ground truth with faiss, in memory-bounded chunks.

Distances are returned in faiss convention (squared L2 ascending, inner product descending);
:func:`true_distance` converts them into the distance used by the ann-benchmarks recall
(Euclidean, cosine distance ``1 - ip``, or ``-ip``).
"""

from __future__ import annotations

import faiss
import numpy as np
from tqdm import tqdm

#: bytes of base rows per chunk when ``base_chunk`` is not given (file-backed pages of a
#: memory-mapped base; nothing is copied)
BASE_CHUNK_BYTES = 256 << 20


def exact_knn(
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    *,
    base_chunk: int | None = None,
    query_chunk: int = 4096,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` against ``base`` for metric ``"l2"`` or ``"ip"``.

    The base is read once, in chunks of ``base_chunk`` rows (default: about
    :data:`BASE_CHUNK_BYTES` of it), so a memory-mapped base larger than RAM works: each chunk is
    scored against every query with ``faiss.knn`` (no copy of a contiguous float32 chunk, blocked
    distance computations) and merged into one running top-k per query chunk with faiss's
    ``ResultHeap``. Memory: one base chunk plus the (nq, k) results, whatever n is.
    Returns (distances float32 (nq, k), ids int64 (nq, k)), best first.
    """
    if metric not in ("l2", "ip"):
        raise ValueError(f"exact_knn takes metric 'l2' or 'ip', not {metric!r}")
    n, d = base.shape
    k_eff = min(k, n)
    nq = queries.shape[0]
    if base_chunk is None:
        base_chunk = max(1024, BASE_CHUNK_BYTES // (4 * max(d, 1)))
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    q_starts = list(range(0, nq, query_chunk))
    heaps = [faiss.ResultHeap(min(query_chunk, nq - q0), k_eff, keep_max=(metric == "ip")) for q0 in q_starts]
    qs = [np.ascontiguousarray(queries[q0 : q0 + query_chunk], dtype=np.float32) for q0 in q_starts]
    bar = tqdm(total=n, desc="ground truth", unit="vec", disable=not progress)
    for b0 in range(0, n, base_chunk):
        chunk = np.ascontiguousarray(base[b0 : b0 + base_chunk], dtype=np.float32)
        kk = min(k_eff, chunk.shape[0])
        for q, heap in zip(qs, heaps, strict=True):
            dist, ids = faiss.knn(q, chunk, kk, metric=faiss_metric)
            if kk < k_eff:  # a chunk shorter than k: pad with sentinels
                pad = k_eff - kk
                fill = -np.inf if metric == "ip" else np.inf
                dist = np.hstack([dist, np.full((dist.shape[0], pad), fill, np.float32)])
                ids = np.hstack([ids, np.full((ids.shape[0], pad), -1, np.int64)])
            ids = np.where(ids >= 0, ids + b0, -1)
            heap.add_result(np.ascontiguousarray(dist, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        bar.update(chunk.shape[0])
        del chunk
    bar.close()
    out_d = np.empty((nq, k_eff), dtype=np.float32)
    out_i = np.empty((nq, k_eff), dtype=np.int64)
    for q0, heap in zip(q_starts, heaps, strict=True):
        heap.finalize()
        out_d[q0 : q0 + heap.D.shape[0]], out_i[q0 : q0 + heap.D.shape[0]] = canonical_order(heap.D, heap.I, metric)
    return out_d, out_i


def canonical_order(dist: np.ndarray, ids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row best first, breaking exact ties by ascending id (a fixed, documented order)."""
    key = dist if metric == "l2" else -dist
    order = np.lexsort((ids, key), axis=1) if key.size else np.zeros_like(ids)
    return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)


def same_up_to_ties(ids_a: np.ndarray, ids_b: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Per row: whether two neighbour lists agree, allowing any order within exact-distance ties.

    ``dist`` holds the (shared) sorted distances of list ``a``; positions with equal distance form
    one tie group, and the two lists must hold the same set of ids in each group. A trailing group
    cut off by k is compared only on its common part being tied, so both rows are accepted.
    """
    ok = np.ones(ids_a.shape[0], dtype=bool)
    for r in range(ids_a.shape[0]):
        start = 0
        k = ids_a.shape[1]
        while start < k:
            end = start + 1
            while end < k and dist[r, end] == dist[r, start]:
                end += 1
            if end < k and set(ids_a[r, start:end].tolist()) != set(ids_b[r, start:end].tolist()):
                ok[r] = False
                break
            start = end
    return ok


def true_distance(faiss_scores: np.ndarray, metric: str, *, cosine: bool = False) -> np.ndarray:
    """Convert faiss scores into a distance (smaller is closer) as ann-benchmarks measures it."""
    if metric == "l2":
        return np.sqrt(np.maximum(faiss_scores, 0.0))
    return (1.0 - faiss_scores) if cosine else -faiss_scores


def pair_scores(base: np.ndarray, queries: np.ndarray, ids: np.ndarray, metric: str,
                chunk: int = 64) -> np.ndarray:
    """Exact faiss-convention scores between each query and the listed base ids (-1 → NaN).

    Works on ``chunk`` queries at a time, so memory stays at chunk·k·d floats.
    """
    nq, k = ids.shape
    out = np.empty((nq, k), dtype=np.float32)
    for q0 in range(0, nq, chunk):
        idx = ids[q0 : q0 + chunk]
        vecs = np.asarray(base[np.where(idx >= 0, idx, 0)], dtype=np.float32)  # (c, k, d)
        q = np.asarray(queries[q0 : q0 + chunk], dtype=np.float32)[:, None, :]
        out[q0 : q0 + chunk] = ((vecs - q) ** 2).sum(-1) if metric == "l2" else (vecs * q).sum(-1)
    return np.where(ids >= 0, out, np.nan).astype(np.float32)
