"""Run one (method, build configuration) on a prepared data set and measure everything.

A task builds the index once and evaluates every search configuration on it. Each search
configuration yields one result row: measured bytes (RAM by part, on disk), recall (ID-based with
ties and distance-threshold), nDCG@10 / Recall@100 against judgments, single-query latency
percentiles, batch QPS with one and with all threads, train and build time, peak RSS. Raw
per-query ids, scores and metric values are saved so metrics can be recomputed without a re-run.

Run as ``python -m harness.worker TASK.json OUT.json`` by the process executor.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.dataset import PreparedDataset
from harness.groundtruth import pair_scores, true_distance
from harness.io import atomic_path, atomic_write_json
from harness.metrics import qrels_metrics, recall_by_distance, recall_with_ties
from harness.registry import get_method

RECALL_KS = (1, 10, 100)
BYTES_TOLERANCE = 0.10
#: single-query timing stops after Task.latency_seconds, but never before this many queries
MIN_LATENCY_QUERIES = 50
#: per-query values kept in the result row itself (bootstrap intervals need no raw files)
PER_QUERY_IN_ROW = ("recall_at_10", "ndcg_at_10", "qrels_recall_at_100")
#: test-only switch, "method:param=factor": scales an integer build parameter of that method
#: while the row keeps the configured parameters, to prove that `vecbudget check` catches it
DEGRADE_ENV = "VECBUDGET_TEST_DEGRADE"


def degraded(method: str, params: dict[str, Any]) -> dict[str, Any]:
    spec = os.environ.get(DEGRADE_ENV, "")
    if not spec or not spec.startswith(f"{method}:"):
        return params
    name, factor = spec.split(":", 1)[1].split("=")
    if name not in params:
        return params
    return {**params, name: max(1, int(round(params[name] * float(factor))))}


@dataclass
class Task:
    dataset_dir: str
    method: str
    build_params: dict[str, Any]
    search_configs: list[dict[str, Any]]
    config_hashes: list[str]
    k: int = 10
    quality_k: int = 100
    latency_queries: int = 200
    latency_seconds: float = 3.0  # stop timing single queries after this long (at least MIN_LATENCY_QUERIES)
    train_size: int = 100_000
    threads: int = 0  # 0: all cores
    raw_dir: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Task:
        return cls(**json.loads(text))

    @property
    def label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.build_params.items())
        return f"{self.method}({params})"


def _all_threads(task: Task) -> int:
    return task.threads or os.cpu_count() or 1


def _limit_blas_threads(n: int) -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # numpy BLAS then uses its default pool
        pass


def _set_threads(index: Any, n: int) -> None:
    index.set_num_threads(n)
    _limit_blas_threads(n)


def _best_time(fn, min_total: float = 0.3, max_repeats: int = 3) -> float:
    """Best wall time of ``fn`` over up to ``max_repeats`` runs (stops early once past min_total)."""
    best, total = float("inf"), 0.0
    for _ in range(max_repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total = min(best, dt), total + dt
        if total >= min_total:
            break
    return best


def base_row(task: Task, ds: PreparedDataset, search_params: dict[str, Any], config_hash: str) -> dict[str, Any]:
    cls = get_method(task.method)
    return {
        "config_hash": config_hash,
        "dataset": ds.name,
        "dataset_fingerprint": ds.fingerprint,
        "metric": ds.metric,
        "n": ds.n,
        "dim": ds.dim,
        "nq": ds.nq,
        "method": task.method,
        "family": cls.family,
        "build_params": json.dumps(task.build_params, sort_keys=True),
        "search_params": json.dumps(search_params, sort_keys=True),
        "k": task.k,
        "bytes_analytic": float(cls.bytes_per_vector(ds.dim, ds.n, **task.build_params)),
        "float32_bytes": 4.0 * ds.dim,
        **task.provenance,
    }


def run_task(task: Task) -> list[dict[str, Any]]:
    ds = PreparedDataset(task.dataset_dir)
    cls = get_method(task.method)
    threads = _all_threads(task)
    base = np.ascontiguousarray(ds.base, dtype=np.float32)
    queries = ds.queries
    if ds.n > task.train_size:
        rows = np.sort(np.random.default_rng(0).choice(ds.n, task.train_size, replace=False))
        train = base[rows]
    else:
        train = base

    index = cls(ds.dim, ds.method_metric, **degraded(task.method, task.build_params))
    index.expected_n = ds.n
    _set_threads(index, threads)
    t0 = time.perf_counter()
    index.fit(train, ds.train_queries if cls.uses_train_queries else None)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.add(base)
    build_s = time.perf_counter() - t0
    mem = index.memory()
    with tempfile.TemporaryDirectory() as tmp:
        disk_bytes = index.save(os.path.join(tmp, "index.bin"))

    gt_true = true_distance(ds.gt_dist, ds.method_metric, cosine=ds.metric == "cosine")
    n_lat = min(task.latency_queries, queries.shape[0])
    rows_out = []
    for search_params, chash in zip(task.search_configs, task.config_hashes, strict=True):
        row = base_row(task, ds, search_params, chash)
        _set_threads(index, 1)
        qk = min(task.quality_k, ds.n)
        scores, ids = index.search(queries, qk, **search_params)
        ids = np.asarray(ids, dtype=np.int64)
        qps_1t = queries.shape[0] / _best_time(lambda sp=search_params: index.search(queries, task.k, **sp))
        latencies = np.empty(n_lat)
        spent, n_timed = 0.0, 0
        for i in range(n_lat):
            q = queries[i : i + 1]
            t = time.perf_counter_ns()
            index.search(q, task.k, **search_params)
            latencies[i] = (time.perf_counter_ns() - t) / 1e6
            spent, n_timed = spent + latencies[i] / 1e3, i + 1
            if spent >= task.latency_seconds and n_timed >= MIN_LATENCY_QUERIES:
                break  # slow single-query scans: time-boxed, the row says how many were timed
        latencies = latencies[:n_timed]
        _set_threads(index, threads)
        qps_all = queries.shape[0] / _best_time(lambda sp=search_params: index.search(queries, task.k, **sp))

        per_query: dict[str, np.ndarray] = {}
        run_true = true_distance(pair_scores(ds.base, queries, ids, ds.method_metric), ds.method_metric,
                                 cosine=ds.metric == "cosine")
        for k in RECALL_KS:
            if k <= qk:
                per_query[f"recall_at_{k}"] = recall_with_ties(ds.gt_ids, ds.gt_dist, ids, k)
                per_query[f"recall_dist_at_{k}"] = recall_by_distance(gt_true, run_true, k)
        if ds.has_qrels:
            per_query.update(qrels_metrics(ds.qrels, ids, ds.query_ids, ds.doc_ids))

        ram = mem.ram
        bpv = ram / ds.n
        row.update({
            "status": "ok",
            "error": "",
            "ram_bytes": ram,
            "codes_bytes": mem.codes,
            "structure_bytes": mem.structure,
            "shared_bytes": mem.shared,
            "disk_only_bytes": mem.disk,
            "disk_bytes": int(disk_bytes),
            "bytes_per_vector": bpv,
            "ratio_to_float32": bpv / (4.0 * ds.dim),
            "bytes_mismatch": bool(abs(bpv - row["bytes_analytic"]) > BYTES_TOLERANCE * row["bytes_analytic"]),
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
            "latency_p99_ms": float(np.percentile(latencies, 99)),
            "latency_queries": int(n_timed),
            "qps_1t": float(qps_1t),
            "qps_all": float(qps_all),
            "threads_all": threads,
            "train_s": train_s,
            "build_s": build_s,
            **{name: float(np.nanmean(v)) for name, v in per_query.items()},
            **{f"per_query_{name}": per_query[name].astype(np.float32).tolist()
               for name in PER_QUERY_IN_ROW if name in per_query},
        })
        if task.raw_dir:
            raw = Path(task.raw_dir) / ds.name / f"{chash}.npz"
            with atomic_path(raw, suffix=".npz") as tmp:
                np.savez_compressed(tmp, ids=ids.astype(np.int32), scores=np.asarray(scores, np.float32),
                                    latency_ms=latencies.astype(np.float32),
                                    **{f"q_{name}": v.astype(np.float32) for name, v in per_query.items()})
            row["raw_path"] = str(raw)
        rows_out.append(row)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows_out:
        row["peak_rss_mb"] = peak_rss_mb
    return rows_out


def failure_rows(task: Task, status: str, error: str) -> list[dict[str, Any]]:
    """Rows recording a task that did not finish; the sweep goes on."""
    ds = PreparedDataset(task.dataset_dir)
    out = []
    for search_params, chash in zip(task.search_configs, task.config_hashes, strict=True):
        row = base_row(task, ds, search_params, chash)
        row.update({"status": status, "error": error[-2000:]})
        out.append(row)
    return out


def main(argv: list[str]) -> int:
    task_file, out_file = argv
    task = Task.from_json(Path(task_file).read_text())
    try:
        rows = run_task(task)
    except MemoryError:
        rows = failure_rows(task, "oom", "MemoryError: the worker ran out of memory (limit reached)")
    except Exception as exc:  # noqa: BLE001 - any failure becomes a failed row
        status = "oom" if "bad_alloc" in str(exc) else "failed"
        rows = failure_rows(task, status, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
    atomic_write_json(out_file, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
