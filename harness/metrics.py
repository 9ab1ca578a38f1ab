"""Quality metrics, per query, so that aggregates and bootstrap intervals come from one place.

* :func:`recall_with_ties` — big-ann-benchmarks' ID-based recall@k: the exact top-k set is
  extended by every further neighbour whose distance ties the k-th (|Δ| < 1e-6); when that tie
  runs past the stored ground truth, a returned item whose true distance ties the k-th counts.
* :func:`recall_by_distance` — ann-benchmarks' distance-threshold recall@k: a returned item counts
  when its true distance is at most the k-th exact distance + 1e-3.
* :func:`qrels_metrics` — nDCG@10 and Recall@100 against relevance judgments with pytrec_eval,
  as BEIR's ``EvaluateRetrieval.evaluate`` computes them (``ignore_identical_ids`` drops a
  returned document whose id equals the query id). The run is scored by *rank*, so a method's
  order is what is judged: pytrec_eval's own tie-breaking (by document id) never reorders
  tied scores, which would otherwise flatter or punish coarse codes (e.g. Hamming ties).
"""

from __future__ import annotations

import numpy as np

TIE_TOLERANCE = 1e-6
OPEN_TIE_RTOL = 1e-5  # ~100 float32 ulps: faiss and pair_scores form the same distance differently
DISTANCE_EPSILON = 1e-3


def recall_with_ties(gt_ids: np.ndarray, gt_dist: np.ndarray, run_ids: np.ndarray, k: int,
                     run_dist: np.ndarray | None = None) -> np.ndarray:
    """Per-query |run top-k ∩ tie-extended exact top-k| / k.

    ``gt_dist`` may be in any monotone convention (ascending or descending); ties are equality
    within 1e-6 of the k-th distance, as in big-ann-benchmarks.

    The stored ground truth is finite (e.g. 128 neighbours). When the tie of the k-th distance
    runs to its last stored neighbour, the tie set is *open*: further base vectors at exactly
    that distance exist that the ground truth could not list (all-identical vectors are the
    extreme case). ``run_dist``, the true scores of the returned items in the convention of
    ``gt_dist`` (:func:`harness.groundtruth.pair_scores`), then decides: a returned id whose
    score ties the k-th (within 1e-6, or a relative 1e-5 for float32 rounding between two ways of
    computing the same distance) counts as a hit. Without ``run_dist`` only listed ids count.
    """
    nq, gt_k = gt_ids.shape
    if k > gt_k:
        raise ValueError(f"recall@{k} needs at least {k} exact neighbours, have {gt_k}")
    kth = gt_dist[:, k - 1 : k]
    tied = np.abs(gt_dist - kth) < TIE_TOLERANCE
    tied[:, :k] = True
    # the extension stops at the first non-tied neighbour after position k
    after = np.cumprod(tied[:, k:], axis=1).astype(bool)
    accept = np.concatenate([tied[:, :k], after], axis=1)
    run = run_ids[:, :k]
    listed = np.where(accept, gt_ids, -2)  # -2 matches no returned id (padding is -1)
    hit = np.zeros(run.shape, dtype=bool)
    step = max(1, (1 << 24) // max(1, run.shape[1] * listed.shape[1]))  # ≤ 16 MB of comparisons at once
    for q0 in range(0, nq, step):
        r = run[q0 : q0 + step]
        hit[q0 : q0 + step] = (r[:, :, None] == listed[q0 : q0 + step, None, :]).any(axis=2) & (r >= 0)
    if run_dist is not None:
        if run_dist.shape[0] != nq or run_dist.shape[1] < run.shape[1]:
            raise ValueError(f"run_dist has shape {run_dist.shape}, run_ids {run_ids.shape}")
        open_tie = accept[:, -1]
        if open_tie.any():
            rd = np.asarray(run_dist[:, : run.shape[1]], dtype=np.float64)
            kth64 = np.asarray(kth, dtype=np.float64)
            tol = np.maximum(TIE_TOLERANCE, OPEN_TIE_RTOL * np.abs(kth64))
            with np.errstate(invalid="ignore"):
                ties_kth = np.abs(rd - kth64) <= tol
            hit |= open_tie[:, None] & ties_kth & (run >= 0)
    return hit.sum(axis=1) / k


def recall_by_distance(gt_true_dist: np.ndarray, run_true_dist: np.ndarray, k: int,
                       epsilon: float = DISTANCE_EPSILON) -> np.ndarray:
    """Per-query share of the top-k returned whose true distance ≤ k-th exact distance + ε.

    Both arrays hold *distances* (smaller is closer), as :func:`harness.groundtruth.true_distance`
    gives; missing results are NaN and never count.
    """
    threshold = gt_true_dist[:, k - 1 : k] + epsilon
    with np.errstate(invalid="ignore"):
        return (run_true_dist[:, :k] <= threshold).sum(axis=1) / k


def qrels_metrics(
    qrels: dict[str, dict[str, int]],
    run_ids: np.ndarray,
    query_ids: list[str],
    doc_ids: list[str],
    *,
    ignore_identical_ids: bool = True,
) -> dict[str, np.ndarray]:
    """Per-query nDCG@10 and Recall@100 (NaN for queries without judgments)."""
    import pytrec_eval

    docs = np.asarray(doc_ids, dtype=object)
    run: dict[str, dict[str, float]] = {}
    judged = [i for i, q in enumerate(query_ids) if q in qrels]
    for i in judged:
        q = query_ids[i]
        ids = run_ids[i]
        ids = ids[ids >= 0]
        ranked = [d for d in docs[ids] if not (ignore_identical_ids and d == q)]
        run[q] = {d: float(len(ranked) - r) for r, d in enumerate(ranked)}
    evaluator = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in run}, {"ndcg_cut.10", "recall.100"})
    scores = evaluator.evaluate(run)
    out = {"ndcg_at_10": np.full(len(query_ids), np.nan), "qrels_recall_at_100": np.full(len(query_ids), np.nan)}
    for i in judged:
        s = scores.get(query_ids[i])
        if s is None:  # a query with an empty run scores 0, as trec_eval does with -c
            out["ndcg_at_10"][i] = 0.0
            out["qrels_recall_at_100"][i] = 0.0
        else:
            out["ndcg_at_10"][i] = s["ndcg_cut_10"]
            out["qrels_recall_at_100"][i] = s["recall_100"]
    return out
