"""Quality metrics, per query, so that aggregates and bootstrap intervals come from one place.

* :func:`recall_with_ties` — big-ann-benchmarks' ID-based recall@k: the exact top-k set is
  extended by every further neighbour whose distance ties the k-th (|Δ| < 1e-6).
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
DISTANCE_EPSILON = 1e-3


def recall_with_ties(gt_ids: np.ndarray, gt_dist: np.ndarray, run_ids: np.ndarray, k: int) -> np.ndarray:
    """Per-query |run top-k ∩ tie-extended exact top-k| / k.

    ``gt_dist`` may be in any monotone convention (ascending or descending); ties are equality
    within 1e-6 of the k-th distance, as in big-ann-benchmarks.
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
    hits = np.zeros(nq)
    for i in range(nq):
        truth = gt_ids[i, accept[i]]
        hits[i] = np.isin(run[i][run[i] >= 0], truth).sum()
    return hits / k


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
