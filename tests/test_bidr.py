"""BiDR (two-tier: codes in RAM, vectors on disk): exactness of the re-ranking, the disk tier read
from its file (not held in RAM), the warm / cold measurement columns, RAM-only bytes per vector."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pandas as pd
import pytest

from harness import disk_tier, schema
from harness import leaderboard as lb
from harness.dataset import RawDataset, prepare
from harness.groundtruth import exact_knn
from harness.registry import get_method
from harness.worker import Task, anon_rss, memory_flag, run_task, warm_blas

K = 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(old)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build(base: np.ndarray, metric: str, train_q: np.ndarray | None = None, **params):
    index = get_method("bidr")(base.shape[1], metric, **params)
    index.expected_n = base.shape[0]
    index.fit(base, train_q)
    index.add(base)
    return index


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("variant", ["paper", "opq", "ivf-pq", "binary"])
def test_every_candidate_reranked_equals_exact_search(variant, metric):
    """With every vector a candidate (n ≤ 1000, the candidate cap) and no fusion, post
    verification from the disk tier is exact search: same ids, same scores."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(600, 16)).astype(np.float32)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    if metric == "ip":
        base, queries = unit(base), unit(queries)
    train_q = unit(base[:200] + 0.3 * rng.normal(size=(200, 16)).astype(np.float32))
    index = build(base, metric, train_q, variant=variant, m=4)
    scores, ids = index.search(queries, K, factor=100, sparse_weight=0.0, nprobe=10**6)
    true_scores, true_ids = exact_knn(base, queries, K, metric)
    np.testing.assert_array_equal(ids, true_ids)
    np.testing.assert_allclose(scores, true_scores, rtol=1e-4, atol=1e-4)
    index.close()


def test_fp16_disk_tier_is_exact_search_over_fp16_vectors_and_fusion_changes_the_order():
    rng = np.random.default_rng(1)
    base, queries = unit(rng.normal(size=(500, 16))), unit(rng.normal(size=(40, 16)))
    index = build(base, "ip", variant="opq", m=4, disk="fp16")
    _, ids = index.search(queries, K, factor=100, sparse_weight=0.0)
    _, true_ids = exact_knn(base.astype(np.float16).astype(np.float32), queries, K, "ip")
    np.testing.assert_array_equal(ids, true_ids)
    assert index.memory().disk == 500 * 16 * 2
    # the paper's fusion (dense + 0.3 · PQ score) is applied: it reorders some results
    _, fused = index.search(queries, K, factor=100, sparse_weight=0.3)
    assert not np.array_equal(fused, ids)


def test_disk_tier_is_read_from_the_file_not_held_in_ram(tmp_path):
    """The worker's own measurement (anonymous RSS growth around add() and the first search) on
    60k × 128 (a 30.7 MB disk tier) stays near the RAM tier (sign bits, 0.96 MB); the same
    measurement sees a copy of the vectors held in RAM (the control), so it can tell."""
    rng = np.random.default_rng(2)
    n, d = 60_000, 128
    base = rng.normal(size=(n, d)).astype(np.float32)
    queries = rng.normal(size=(50, d)).astype(np.float32)
    ds = prepare(RawDataset(name="bidr-rss", base=base, queries=queries, metric="ip"), tmp_path / "cache",
                 progress=False)
    task = Task.for_dataset(ds, "bidr", {"variant": "binary", "m": 48, "disk": "float32"},
                            [{"factor": 4, "sparse_weight": 0.0}], ["h-bidr"], latency_queries=20,
                            latency_seconds=0.2)
    (row,) = run_task(task)
    disk = n * d * 4
    assert row["disk_only_bytes"] == disk and row["ram_bytes"] < disk / 20
    assert row["rss_growth_bytes"] < row["ram_bytes"] + (4 << 20), row["rss_growth_bytes"]
    assert not row["memory_flag"]
    # disk bytes and warm / cold latency are their own leaderboard columns; the ladder counts RAM only
    board = lb.leaderboard(pd.DataFrame(schema.stamp([row], "s")), "bidr-rss", (64.0,), fingerprint=ds.fingerprint)
    assert board["fits"].all() and board["bytes_per_vector"].iloc[0] == row["ram_bytes"] / n
    assert board["disk_bytes_per_vector"].iloc[0] == 4 * d and board["latency_cold_p50_ms"].iloc[0] > 0
    assert "cold p50 ms" in lb.to_markdown(board) and "disk B/vec" in lb.to_markdown(board)
    # the control: the same measurement around an index that also holds its vectors in RAM
    warm_blas(d)
    index = get_method("bidr")(d, "ip", variant="binary")
    index.fit(base)
    before = anon_rss()
    index.add(base)
    index.search(queries[:1], K)
    index.disk_file.warm()  # the whole file in the page cache: still not anonymous memory
    held = index.disk_file.gather(np.arange(n))  # a RAM copy, as a one-tier re-ranker keeps
    grown = anon_rss() - before
    assert grown > 0.8 * disk and memory_flag(index.memory().ram, grown)
    del held
    index.close()


def test_cold_and_warm_columns_are_measured_and_declared():
    rng = np.random.default_rng(3)
    base, queries = unit(rng.normal(size=(4000, 64))), unit(rng.normal(size=(30, 64)))
    index = build(base, "ip", variant="binary")
    out = disk_tier.measure(index, queries, K, {"factor": 8, "sparse_weight": 0.0})
    schema.check_columns([out])
    for col in ("latency_warm_p50_ms", "latency_cold_p50_ms", "latency_cold_p95_ms", "disk_read_bytes_per_query",
                "disk_pages_bytes_per_query", "io_read_bytes_per_query", "cache_eviction_verified"):
        assert col in out and col in schema.COLUMNS
    assert out["latency_warm_p50_ms"] > 0 and out["latency_cold_p50_ms"] > 0
    # one query reads its 80 candidates' rows: 80 × 256 B, spanning between 6 and 80 pages
    assert out["disk_read_bytes_per_query"] == 80 * 64 * 4
    assert 6 * 4096 <= out["disk_pages_bytes_per_query"] <= 80 * 2 * 4096
    assert isinstance(out["cache_eviction_verified"], bool)
    if out["cache_eviction_verified"]:  # the pages really left the cache: the first read is cold
        index.disk_file.evict()
        assert index.disk_file.resident_pages() == 0
    folder = index.disk_file.folder
    index.close()
    assert not os.path.exists(folder)  # the index owns its file and removes it


def test_bytes_per_vector_counts_ram_only_and_save_writes_both_tiers(tmp_path):
    rng = np.random.default_rng(4)
    n, d = 3000, 32
    base = unit(rng.normal(size=(n, d)))
    cls = get_method("bidr")
    for variant in ("opq", "binary"):
        index = build(base, "ip", variant=variant, m=8, disk="float32")
        mem = index.memory()
        assert mem.disk == n * d * 4 and mem.ram == mem.codes + mem.structure + mem.shared
        analytic = cls.bytes_per_vector(d, n, variant=variant, m=8)
        assert abs(mem.ram / n - analytic) <= 0.1 * analytic  # RAM tier only: 4·d of disk is not in it
        assert analytic < 4 * d
        size = index.save(str(tmp_path / f"{variant}.npz"))
        assert size == os.path.getsize(tmp_path / f"{variant}.npz") > mem.disk
        with np.load(tmp_path / f"{variant}.npz") as saved:  # both tiers: the RAM tier and the rows
            np.testing.assert_array_equal(saved["vectors"], base)
            assert saved["ram"].size > 0
        index.close()
