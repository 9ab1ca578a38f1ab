"""Chamfer (late-interaction, "sum of MaxSim") similarity, exhaustively and over candidates.

For a query with token vectors ``q_1..q_m`` and a document with ``d_1..d_t``

    Chamfer(Q, D) = sum_i max_j <q_i, d_j>

(ColBERT's MaxSim; MUVERA's and CRISP's target). With L2-normalised tokens each term is a
cosine. Every query and document must have at least one token.

Everything here is vectorised over blocks: one GEMM of a block of query tokens against a block of
document tokens, ``np.maximum.reduceat`` over each document's token columns, ``np.add.reduceat``
over each query's token rows. Top-k lists are merged with faiss's ``ResultHeap`` and put in the
harness's canonical order (:func:`harness.groundtruth.canonical_order`), as the dense ground
truth is. Token storage may be compressed: ``decode(flat_rows)`` turns stored rows (fp16, SQ or
PQ codes, ...) into float32 vectors block by block, so nothing is decoded whole.

:func:`ground_truth` computes the exact top-``GT_K`` Chamfer neighbours of a prepared data set's
token-level queries and caches them beside the tokens (``multivector/chamfer-gt-<key>.npz``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from harness.errors import DataError
from harness.groundtruth import canonical_order
from harness.io import atomic_path

GT_K = 128  # as the dense ground truth: recall@100 plus room to extend ties
#: document tokens per block of the exhaustive scan (a block's similarity matrix is
#: query-block tokens x DOC_BLOCK_TOKENS float32)
DOC_BLOCK_TOKENS = 16384
#: query tokens per block of the exhaustive scan
QUERY_BLOCK_TOKENS = 4096

Decoder = Callable[[np.ndarray], np.ndarray]


def _as_float(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def check_nonempty(offsets: np.ndarray, what: str) -> None:
    """DataError if a text of a ragged collection has no token (Chamfer needs at least one)."""
    lengths = np.diff(np.asarray(offsets))
    if (lengths == 0).any():
        i = int(np.argmax(lengths == 0))
        raise DataError(f"{what}: text {i} has no token vectors ({int((lengths == 0).sum())} empty in all); "
                        f"Chamfer similarity needs at least one token per text")


def maxsim_matrix(q_tok: np.ndarray, q_off: np.ndarray, d_tok: np.ndarray, d_off: np.ndarray) -> np.ndarray:
    """Chamfer scores (nq, nd) between queries ``q_tok`` split at ``q_off`` (nq + 1 offsets from 0)
    and documents ``d_tok`` split at ``d_off`` (nd + 1 offsets from 0); all texts non-empty."""
    sims = q_tok @ d_tok.T  # (query tokens, doc tokens)
    per_token = np.maximum.reduceat(sims, d_off[:-1], axis=1)  # (query tokens, nd)
    return np.add.reduceat(per_token, q_off[:-1], axis=0)  # (nq, nd)


def _blocks(offsets: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive text ranges [a, b) of at most ``max_tokens`` tokens (a longer text alone)."""
    n = len(offsets) - 1
    out = []
    a = 0
    while a < n:
        b = int(np.searchsorted(offsets, offsets[a] + max_tokens, side="right")) - 1
        b = min(max(b, a + 1), n)
        out.append((a, b))
        a = b
    return out


def chamfer_topk(q_flat: np.ndarray, q_offsets: np.ndarray, d_flat: Any, d_offsets: np.ndarray, k: int,
                 decode: Decoder = _as_float, *, progress: bool = False,
                 doc_block_tokens: int = DOC_BLOCK_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` documents by Chamfer for every query: (scores float32 (nq, k), ids int64),
    best first, ties by ascending id. Document blocks are decoded once each."""
    q_offsets = np.asarray(q_offsets, dtype=np.int64)
    d_offsets = np.asarray(d_offsets, dtype=np.int64)
    nq, n = len(q_offsets) - 1, len(d_offsets) - 1
    k_eff = min(k, n)
    heap = faiss.ResultHeap(nq, k_eff, keep_max=True)
    q_blocks = _blocks(q_offsets, QUERY_BLOCK_TOKENS)
    q_all = _as_float(q_flat)
    d_blocks = _blocks(d_offsets, doc_block_tokens)
    for a, b in tqdm(d_blocks, desc="chamfer scan", unit="block", disable=not progress):
        t0, t1 = int(d_offsets[a]), int(d_offsets[b])
        tok = decode(d_flat[t0:t1])
        off = d_offsets[a : b + 1] - t0
        scores = np.empty((nq, b - a), dtype=np.float32)
        for qa, qb in q_blocks:
            s0, s1 = int(q_offsets[qa]), int(q_offsets[qb])
            scores[qa:qb] = maxsim_matrix(q_all[s0:s1], q_offsets[qa : qb + 1] - s0, tok, off)
        ids = np.broadcast_to(np.arange(a, b, dtype=np.int64), scores.shape)
        heap.add_result(scores, np.ascontiguousarray(ids))
    heap.finalize()
    dist, ids = canonical_order(heap.D, heap.I, "ip")
    return dist.astype(np.float32), ids.astype(np.int64)


def gather_rows(offsets: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the tokens of texts ``ids`` (concatenated in that order) and their offsets."""
    ids = np.asarray(ids, dtype=np.int64)
    starts = offsets[ids]
    lengths = offsets[ids + 1] - starts
    seg = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=seg[1:])
    rows = np.arange(int(seg[-1]), dtype=np.int64) - np.repeat(seg[:-1] - starts, lengths)
    return rows, seg


def chamfer_candidates(q: np.ndarray, d_flat: Any, d_offsets: np.ndarray, ids: np.ndarray,
                       decode: Decoder = _as_float) -> np.ndarray:
    """Chamfer scores (float32, len(ids)) of one query's tokens ``q`` (m, d) against documents
    ``ids``; ids of -1 score -inf."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.full(len(ids), -np.inf, dtype=np.float32)
    valid = ids >= 0
    if not valid.any():
        return out
    rows, seg = gather_rows(d_offsets, ids[valid])
    tok = decode(d_flat[rows])
    out[valid] = maxsim_matrix(_as_float(q), np.array([0, q.shape[0]]), tok, seg)[0]
    return out


def rerank(queries: Any, d_flat: Any, d_offsets: np.ndarray, cand: np.ndarray, k: int,
           decode: Decoder = _as_float) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate lists ``cand`` (nq, c) of ragged ``queries`` by Chamfer: top-k (scores, ids),
    best first, ties by ascending id, -1 padding where fewer than k candidates."""
    nq = len(queries)
    scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out = np.full((nq, k), -1, dtype=np.int64)
    for i in range(nq):
        c = cand[i][cand[i] >= 0]
        s = chamfer_candidates(queries[i], d_flat, d_offsets, c, decode)
        order = np.lexsort((c, -s))[:k]
        scores[i, : len(order)], out[i, : len(order)] = s[order], c[order]
    return scores, out


def true_scores(queries: Any, docs: Any, ids: np.ndarray) -> np.ndarray:
    """Exact float32 Chamfer scores of returned ``ids`` (nq, k) (NaN for -1): the run's own
    scores in the ground truth's convention, for recall's open-tie rule."""
    out = np.full(ids.shape, np.nan, dtype=np.float32)
    for i in range(ids.shape[0]):
        s = chamfer_candidates(queries[i], docs.flat, docs.offsets, ids[i])
        out[i] = np.where(ids[i] >= 0, s, np.nan)
    return out


# ------------------------------------------------------------------------------------------
# ground truth of a prepared data set


def _gt_file(ds: Any, k: int) -> Any:
    index = ds.path / ds.MULTIVECTOR_DIR / "index.json"
    key = hashlib.sha256(json.dumps({"index": json.loads(index.read_text()), "k": k, "v": 1},
                                    sort_keys=True).encode()).hexdigest()[:16]
    return ds.path / ds.MULTIVECTOR_DIR / f"chamfer-gt-{key}.npz"


def ground_truth(ds: Any, k: int = GT_K, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` Chamfer (scores, ids) of ``ds``'s token-level queries over its documents,
    computed in blocks on first use and cached (atomically) beside the tokens."""
    docs, queries = ds.multivector("document"), ds.multivector("query")
    if docs is None or queries is None:
        raise DataError(f"{ds.name}: no token-level embeddings (vecbudget datasets prepare NAME --multivector)")
    f = _gt_file(ds, k)
    if f.exists():
        try:
            with np.load(f) as z:
                scores, ids = z["scores"], z["ids"]
            if ids.shape == (len(queries), min(k, len(docs))):
                return scores, ids
        except (OSError, ValueError, KeyError, EOFError):
            pass
    check_nonempty(docs.offsets, f"{ds.name} documents")
    check_nonempty(queries.offsets, f"{ds.name} queries")
    scores, ids = chamfer_topk(queries.flat, queries.offsets, docs.flat, docs.offsets, k, progress=progress)
    with atomic_path(f, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, scores=scores, ids=ids)
    return scores, ids
