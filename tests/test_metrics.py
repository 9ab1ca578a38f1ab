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


def test_recall_with_ties_counts_returned_ids_tying_an_open_tie():
    # all-identical vectors: every distance ties, the 128 stored neighbours are an arbitrary
    # subset of the tie; a method returning other (equally distant) ids is exact
    gt_ids = np.arange(128)[None, :]
    gt_dist = np.zeros((1, 128), np.float32)
    run = np.arange(500, 510)[None, :]
    tied = np.zeros((1, 10), np.float32)
    assert recall_with_ties(gt_ids, gt_dist, run, 10, run_dist=tied)[0] == 1.0
    assert recall_with_ties(gt_ids, gt_dist, run, 10)[0] == 0.0  # the old call: listed ids only
    # returned ids farther than the k-th never count; -1 padding (NaN score) never counts
    worse = np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0.5, np.nan]], np.float32)
    run_pad = run.copy()
    run_pad[0, 9] = -1
    assert math.isclose(recall_with_ties(gt_ids, gt_dist, run_pad, 10, run_dist=worse)[0], 0.8)


def test_recall_with_ties_closed_tie_ignores_run_distances():
    # the tie at the k-th distance ends inside the stored list: it is complete, so an unlisted
    # id (a wrong score, or a ground-truth miss) is not credited
    gt_ids = np.array([[10, 11, 12, 13, 14]])
    gt_dist = np.array([[0.1, 0.2, 0.3, 0.3, 0.5]])
    run = np.array([[10, 11, 99]])
    assert math.isclose(recall_with_ties(gt_ids, gt_dist, run, 3, run_dist=np.array([[0.1, 0.2, 0.3]]))[0], 2 / 3)


def test_all_identical_vectors_score_full_recall_end_to_end(tmp_path):
    from harness.dataset import RawDataset, prepare
    from harness.groundtruth import pair_scores

    for metric in ("l2", "cosine"):
        base = np.full((400, 8), 0.5, np.float32)
        ds = prepare(RawDataset(f"same-{metric}", base, base[:4].copy(), metric), tmp_path, progress=False)
        run = np.tile(np.arange(300, 310), (4, 1))  # past the 128 stored neighbours
        scores = pair_scores(ds.base, ds.queries, run, ds.method_metric)
        assert recall_with_ties(ds.gt_ids, ds.gt_dist, run, 10, run_dist=scores).tolist() == [1.0] * 4
