import math

import numpy as np

from harness.metrics import qrels_metrics, recall_by_distance, recall_with_ties


def test_recall_with_ties_extends_the_exact_set_at_the_kth_distance():
    gt_ids = np.array([[10, 11, 12, 13, 14]])
    gt_dist = np.array([[0.1, 0.2, 0.3, 0.3, 0.5]])  # 12 and 13 tie at k=3
    # returning 13 instead of 12 is fully correct under ties
    assert recall_with_ties(gt_ids, gt_dist, np.array([[10, 11, 13]]), 3)[0] == 1.0
    # 14 is not tied: one miss
    assert math.isclose(recall_with_ties(gt_ids, gt_dist, np.array([[10, 11, 14]]), 3)[0], 2 / 3)
    # without a tie at k=2 the set is just {10, 11}
    assert recall_with_ties(gt_ids, gt_dist, np.array([[10, 12, 99]]), 2)[0] == 0.5
    # -1 padding never counts
    assert recall_with_ties(gt_ids, gt_dist, np.array([[-1, -1, 10]]), 3)[0] == 1 / 3


def test_recall_with_ties_descending_scores():
    gt_ids = np.array([[1, 2, 3, 4]])
    gt_dist = np.array([[0.9, 0.8, 0.8, 0.1]])  # inner products, 2 and 3 tie
    assert recall_with_ties(gt_ids, gt_dist, np.array([[1, 3]]), 2)[0] == 1.0


def test_recall_by_distance_threshold():
    gt = np.array([[1.0, 2.0, 3.0]])
    run = np.array([[1.0, 3.0005, 3.5]])
    # k=3: threshold 3.001 → 1.0 and 3.0005 count, 3.5 does not
    assert math.isclose(recall_by_distance(gt, run, 3)[0], 2 / 3)
    run_nan = np.array([[1.0, np.nan, 2.0]])
    assert math.isclose(recall_by_distance(gt, run_nan, 3)[0], 2 / 3)


def test_ndcg_and_recall_against_hand_computation():
    qrels = {"q1": {"d1": 2, "d3": 1}, "q2": {"d2": 1}}
    doc_ids = ["d0", "d1", "d2", "d3"]
    run_ids = np.array([[3, 0, 1], [2, 0, 1], [0, 1, 2]])
    out = qrels_metrics(qrels, run_ids, ["q1", "q2", "q3"], doc_ids)
    dcg = 1 / math.log2(2) + 0 + 2 / math.log2(4)  # d3 (rel 1) at rank 1, d1 (rel 2) at rank 3
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert math.isclose(out["ndcg_at_10"][0], dcg / idcg, rel_tol=1e-6)
    assert out["ndcg_at_10"][1] == 1.0
    assert np.isnan(out["ndcg_at_10"][2])  # no judgments
    assert out["qrels_recall_at_100"][0] == 1.0


def test_rank_order_is_judged_not_pytrec_tie_breaking():
    # the method's order (d2 first) must be scored, whatever the ids
    qrels = {"q": {"d9": 1}}
    out = qrels_metrics(qrels, np.array([[1, 0]]), ["q"], ["d9", "d1"])
    assert math.isclose(out["ndcg_at_10"][0], 1 / math.log2(3), rel_tol=1e-6)


def test_identical_ids_are_ignored_as_in_beir():
    qrels = {"x": {"y": 1}}
    out = qrels_metrics(qrels, np.array([[0, 1]]), ["x"], ["x", "y"])
    assert out["ndcg_at_10"][0] == 1.0  # "x" itself is dropped, "y" moves to rank 1
    out = qrels_metrics(qrels, np.array([[0, 1]]), ["x"], ["x", "y"], ignore_identical_ids=False)
    assert out["ndcg_at_10"][0] < 1.0
