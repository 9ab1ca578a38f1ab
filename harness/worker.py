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
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness import schema
from harness.dataset import PreparedDataset
from harness.groundtruth import pair_scores, true_distance
from harness.io import atomic_path, atomic_write_json
from harness.layers import encoder_columns
from harness.metrics import qrels_metrics, recall_by_distance, recall_with_ties
from harness.phases import BuildPeak, dataset_columns, touch
from harness.provenance import blas_info
from harness.registry import get_method
from harness.validation import InvalidResults, validate_results

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
    """One (method, build configuration) and the search configurations to evaluate on it.

    The data set's identity travels with the task, so a failure row can be written even when the
    prepared data cannot be read.
    """

    dataset_dir: str
    method: str
    build_params: dict[str, Any]
    search_configs: list[dict[str, Any]]
    config_hashes: list[str]
    dataset: str = ""
    fingerprint: str = ""
    metric: str = ""
    n: int = 0
    dim: int = 0
    nq: int = 0
    k: int = 10
    quality_k: int = 100
    latency_queries: int = 200
    latency_seconds: float = 3.0  # stop timing single queries after this long (at least MIN_LATENCY_QUERIES)
    train_size: int = 100_000
    threads: int = 0  # 0: all cores
    raw_dir: str | None = None
    retry_key: str = ""
    time_limit_s: float | None = None
    memory_limit_bytes: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_dataset(cls, ds: PreparedDataset, method: str, build_params: dict[str, Any],
                    search_configs: list[dict[str, Any]], config_hashes: list[str], **kw: Any) -> Task:
        return cls(dataset_dir=str(ds.path), method=method, build_params=build_params,
                   search_configs=search_configs, config_hashes=config_hashes, dataset=ds.name,
                   fingerprint=ds.fingerprint, metric=ds.metric, n=ds.n, dim=ds.dim, nq=ds.nq, **kw)

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


#: queries timed for the all-threads batch QPS (a rate; the scored searches use every query)
QPS_ALL_QUERIES = 1000
#: queries of the timed k-result search when a k=100 search is scored too (a rate: below this many
#: queries it is every query, so the default data sets time and score the same search)
QPS_1T_QUERIES = 5000
#: a batch search faster than this is timed again (best of up to TIMING_REPEATS passes)
MIN_TIMED_SECONDS = 0.3
TIMING_REPEATS = 3


def _timed_search(index: Any, queries: np.ndarray, k: int, params: dict[str, Any]) -> tuple[Any, Any, float]:
    """One batch search whose results are scored, and its queries per second: the same search.

    A pass shorter than MIN_TIMED_SECONDS is repeated (same call) and the best time kept.
    """
    t0 = time.perf_counter()
    scores, ids = index.search(queries, k, **params)
    best = total = time.perf_counter() - t0
    for _ in range(TIMING_REPEATS - 1):
        if total >= MIN_TIMED_SECONDS:
            break
        t0 = time.perf_counter()
        index.search(queries, k, **params)
        dt = time.perf_counter() - t0
        best, total = min(best, dt), total + dt
    return scores, ids, queries.shape[0] / best


def _latencies(index: Any, queries: np.ndarray, k: int, params: dict[str, Any], task: Task) -> np.ndarray:
    """Single-query latencies (ms), one thread, time-boxed (at least MIN_LATENCY_QUERIES)."""
    n_lat = min(task.latency_queries, queries.shape[0])
    out = np.empty(n_lat)
    spent = 0.0
    for i in range(n_lat):
        q = queries[i : i + 1]
        t = time.perf_counter_ns()
        index.search(q, k, **params)
        out[i] = (time.perf_counter_ns() - t) / 1e6
        spent += out[i] / 1e3
        if spent >= task.latency_seconds and i + 1 >= MIN_LATENCY_QUERIES:
            return out[: i + 1]  # slow single-query scans: the row says how many were timed
    return out


def timed_sample(nq: int, size: int | None = None) -> np.ndarray:
    """Rows of the queries the timed k-result search runs on: all of them, or a seeded sample."""
    size = QPS_1T_QUERIES if size is None else size
    if nq <= size:
        return np.arange(nq)
    return np.sort(np.random.default_rng(0).choice(nq, size, replace=False))


def prefix_agrees(ids_k: np.ndarray, scores_k: np.ndarray, ids_long: np.ndarray, scores_long: np.ndarray) -> bool:
    """Whether a search for k results returned the first k results of a longer search, per query:
    the same ids, or (a tie broken the other way) the same scores."""
    k = ids_k.shape[1]
    same_ids = (np.sort(ids_k, axis=1) == np.sort(ids_long[:, :k], axis=1)).all(axis=1)
    # padding (-1) has no score: a padded slot never ties a found one
    a = np.sort(np.where(ids_k >= 0, np.asarray(scores_k, np.float64), np.nan), axis=1)
    b = np.sort(np.where(ids_long[:, :k] >= 0, np.asarray(scores_long[:, :k], np.float64), np.nan), axis=1)
    same_scores = np.isclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True).all(axis=1)
    return bool((same_ids | same_scores).all())


def evaluate_searches(index: Any, queries: np.ndarray, k: int, qk: int, params: dict[str, Any],
                      n: int) -> dict[str, Any]:
    """The scored and timed searches of one operating point, one thread, each query searched once
    where the method allows it.

    Without a k=100 point (``qk <= k``) this is one timed search for k results over every query.
    Otherwise every query is searched once for ``qk`` results (timed: ``k100_qps_1t``), and the
    search for k results is timed on a sample (``timed_sample``: every query up to
    QPS_1T_QUERIES). Where that sample's results are the first k of the long search's
    (:func:`prefix_agrees`, e.g. flat scans, IVF, PQ), quality at k is read from the long search's
    prefix; where they are not (HNSW's ef below 100, often re-ranking of k·factor candidates), the
    queries outside the sample are searched for k results too. Up to QPS_1T_QUERIES queries the
    check covers every query; beyond, no disagreement among the sampled queries bounds the share
    that could differ (below 3/QPS_1T_QUERIES at 95%).
    """
    nq = queries.shape[0]
    if qk <= k:
        scores, ids, qps_1t = _timed_search(index, queries, k, params)
        ids = validate_results(scores, ids, nq, k, n)
        return {"ids": ids, "ids_long": ids, "scores_long": scores, "qps_1t": qps_1t, "qps_queries": nq,
                "quality_source": "k-search"}
    scores_long, ids_long, qps_long = _timed_search(index, queries, qk, params)
    ids_long = validate_results(scores_long, ids_long, nq, qk, n)
    rows = timed_sample(nq)
    sample = np.ascontiguousarray(queries[rows])
    scores_s, ids_s, qps_1t = _timed_search(index, sample, k, params)
    ids_s = validate_results(scores_s, ids_s, rows.size, k, n)
    out = {"ids_long": ids_long, "scores_long": scores_long, "qps_1t": qps_1t, "k100_qps_1t": qps_long,
           "qps_queries": int(rows.size)}
    if prefix_agrees(ids_s, scores_s, ids_long[rows], scores_long[rows]):
        return {**out, "ids": ids_long[:, :k], "quality_source": "k100-prefix"}
    if rows.size == nq:
        return {**out, "ids": ids_s, "quality_source": "k-search"}
    ids = np.empty((nq, k), dtype=ids_s.dtype)
    ids[rows] = ids_s
    rest = np.setdiff1d(np.arange(nq), rows)
    scores_r, ids_r = index.search(np.ascontiguousarray(queries[rest]), k, **params)
    ids[rest] = validate_results(scores_r, ids_r, rest.size, k, n)
    return {**out, "ids": ids, "quality_source": "k-search"}


def task_identity(task: Task, search_params: dict[str, Any], config_hash: str) -> dict[str, Any]:
    """The identity columns of a row of ``task`` (from the task alone: no data are read)."""
    try:
        cls = get_method(task.method)
        family, variant = cls.family, cls.variant_of(task.build_params)
        analytic = float(cls.bytes_per_vector(task.dim, task.n, **task.build_params))
    except Exception:  # noqa: BLE001 - a plugin that cannot load still gets its failure row
        family, variant, analytic = "", str(task.build_params.get("variant", "paper")), float("nan")
    row = schema.identity(
        config_hash=config_hash, dataset=task.dataset, fingerprint=task.fingerprint, metric=task.metric,
        n=task.n, dim=task.dim, nq=task.nq, method=task.method, family=family, variant=variant,
        build_params=task.build_params, search_params=search_params, k=task.k, bytes_analytic=analytic)
    row.update(task.provenance)
    row.update({"time_limit_s": task.time_limit_s, "memory_limit_bytes": task.memory_limit_bytes})
    return row


def _quality(ds: PreparedDataset, queries: np.ndarray, ids: np.ndarray, gt_true: np.ndarray,
             cutoffs: tuple[int, ...], qrels_metric: str | None) -> dict[str, np.ndarray]:
    """Per-query quality of one search's ids at the given cutoffs (and one judgment metric)."""
    out: dict[str, np.ndarray] = {}
    cosine = ds.metric == "cosine"
    scores = pair_scores(ds.base, queries, ids, ds.method_metric)
    run_true = true_distance(scores, ds.method_metric, cosine=cosine)
    for c in cutoffs:
        # the returned items' own scores: a tie that runs past the stored ground truth still counts
        out[f"recall_at_{c}"] = recall_with_ties(ds.gt_ids, ds.gt_dist, ids, c, run_dist=scores)
        out[f"recall_dist_at_{c}"] = recall_by_distance(gt_true, run_true, c)
    if qrels_metric and ds.has_qrels:
        out[qrels_metric] = qrels_metrics(ds.qrels, ids, ds.query_ids, ds.doc_ids)[qrels_metric]
    return out


def run_task(task: Task) -> list[dict[str, Any]]:
    """Build once, then evaluate every search configuration; raise on a failure (see :func:`main`)."""
    try:
        ds = PreparedDataset(task.dataset_dir)
        cls = get_method(task.method)
        base = np.ascontiguousarray(ds.base, dtype=np.float32)
        queries = ds.queries
        gt_true = true_distance(ds.gt_dist, ds.method_metric, cosine=ds.metric == "cosine")
        train_queries = ds.train_queries if cls.uses_train_queries else None
    except Exception as exc:
        raise HarnessError(f"{type(exc).__name__}: {exc}") from exc
    if cls.input_kind != "dense":  # multi-vector, filtered, ...: the track's own evaluation
        from harness.tracks import track_module

        return track_module(cls.input_kind).run_task(task, ds, cls)
    threads = _all_threads(task)
    if ds.n > task.train_size:
        rows = np.sort(np.random.default_rng(0).choice(ds.n, task.train_size, replace=False))
        train = base[rows]
    else:
        train = base

    index = cls(ds.dim, ds.method_metric, **degraded(task.method, task.build_params))
    index.expected_n = ds.n
    _set_threads(index, threads)
    touch(base)  # the base is resident before the build peak is measured (harness/phases.py)
    peak = BuildPeak()
    t0 = time.perf_counter()
    with peak:
        index.fit(train, train_queries)
    train_s = time.perf_counter() - t0
    index.warm_up()  # JIT kernels are compiled here: their memory is not the index's
    warm_blas(ds.dim)  # so are BLAS's work buffers, allocated on the first large GEMM
    rss_before = anon_rss()
    t0 = time.perf_counter()
    with peak:
        index.add(base)
    build_s = time.perf_counter() - t0
    _set_threads(index, 1)
    k = min(task.k, ds.n)
    validate_results(*index.search(queries[:1], k, **task.search_configs[0]), 1, k, ds.n)  # the first search
    rss_after = anon_rss()
    mem = index.memory()
    with tempfile.TemporaryDirectory() as tmp:
        disk_bytes = index.save(os.path.join(tmp, "index.bin"))
    growth = None if rss_before is None or rss_after is None else max(0, rss_after - rss_before)
    blas = json.dumps(blas_info(), sort_keys=True)

    qk = min(task.quality_k, ds.n)
    cutoffs_k = tuple(c for c in RECALL_KS if c <= k and c < qk) or (k,)
    cutoffs_100 = tuple(c for c in RECALL_KS if c <= qk and c not in cutoffs_k)
    rows_out = []
    for search_params, chash in zip(task.search_configs, task.config_hashes, strict=True):
        t_eval = time.perf_counter()  # this row's search evaluation: search_s
        row = task_identity(task, search_params, chash)
        row.update(encoder_columns(ds.meta))  # a layer's data set: its depth and query encoding cost
        # the timed operating point (k results) and the k=100 one, each query searched once where
        # the method's first k results do not depend on k (evaluate_searches)
        _set_threads(index, 1)
        searched = evaluate_searches(index, queries, k, qk, search_params, ds.n)
        ids = searched["ids"]
        ids_100, scores_100 = searched["ids_long"], searched["scores_long"]
        latencies = _latencies(index, queries, k, search_params, task)
        _set_threads(index, threads)
        # a rate: timed on a sample of queries (repeated while shorter than MIN_TIMED_SECONDS)
        _, _, qps_all = _timed_search(index, queries[:QPS_ALL_QUERIES], k, search_params)
        per_query = _quality(ds, queries, ids, gt_true, cutoffs_k, "ndcg_at_10" if k >= 10 else None)
        k100 = {"k100_qps_1t": float(searched["k100_qps_1t"])} if "k100_qps_1t" in searched else {}
        per_query.update(_quality(ds, queries, ids_100, gt_true, cutoffs_100, "qrels_recall_at_100"))

        ram = mem.ram
        bpv = ram / ds.n
        row.update({
            "status": "ok",
            "error": "",
            "retry_key": task.retry_key,
            "ram_bytes": ram,
            "codes_bytes": mem.codes,
            "structure_bytes": mem.structure,
            "shared_bytes": mem.shared,
            "disk_only_bytes": mem.disk,
            "disk_bytes": int(disk_bytes),
            "bytes_per_vector": bpv,
            "ratio_to_float32": bpv / (4.0 * ds.dim),
            "bytes_mismatch": bool(abs(bpv - row["bytes_analytic"]) > BYTES_TOLERANCE * row["bytes_analytic"]),
            "rss_growth_bytes": float("nan") if growth is None else float(growth),
            "memory_flag": memory_flag(ram, growth),
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
            "latency_p99_ms": float(np.percentile(latencies, 99)),
            "latency_queries": int(latencies.size),
            "qps_1t": float(searched["qps_1t"]),
            "qps_queries": int(searched["qps_queries"]),
            "quality_source": searched["quality_source"],
            "qps_all": float(qps_all),
            "threads_all": threads,
            "train_s": train_s,
            "build_s": build_s,
            "train_sample": int(getattr(index, "train_sample", None) or train.shape[0]),
            "train_note": str(getattr(index, "training_notes", "") or ""),
            "blas": blas,
            **k100,
            **{name: float(np.nanmean(v)) for name, v in per_query.items()},
            **{f"per_query_{name}": per_query[name].astype(np.float32).tolist()
               for name in PER_QUERY_IN_ROW if name in per_query},
        })
        if task.raw_dir:
            # one file per row (a unique name): two runs never overwrite each other's raw results
            raw = Path(task.raw_dir) / task.dataset / f"{chash}-{uuid.uuid4().hex[:12]}.npz"
            with atomic_path(raw, suffix=".npz") as tmp:
                np.savez(tmp, ids=ids_100.astype(np.int32), scores=np.asarray(scores_100, np.float32),
                         ids_k=ids.astype(np.int32), latency_ms=latencies.astype(np.float32),
                         **{f"q_{name}": v.astype(np.float32) for name, v in per_query.items()})
            row["raw_path"] = str(raw)
        if mem.disk > 0:  # two-tier (RAM + disk): warm / cold latency, bytes read (harness/disk_tier.py)
            from harness import disk_tier

            _set_threads(index, 1)
            row.update(disk_tier.measure(index, queries, k, search_params))
        row.update({"search_s": time.perf_counter() - t_eval, **peak.columns(), **dataset_columns(ds.meta)})
        rows_out.append(row)
    # the process peak: ru_maxrss, or the build's VmHWM where the kernel counted a higher mark
    peak_rss_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      float(np.nan_to_num(peak.peak_mb, nan=0.0)))
    for row in rows_out:
        row["peak_rss_mb"] = peak_rss_mb
    return rows_out


class HarnessError(RuntimeError):
    """A failure outside the method: the prepared data, a dependency, the harness itself."""


#: below this RSS growth the memory cross-check says nothing (allocator noise)
MEMORY_FLOOR_BYTES = 4 << 20
#: reported RAM below this share of the measured RSS growth is flagged
MEMORY_FLAG_RATIO = 0.8


def memory_flag(reported: int, growth: int | None) -> bool:
    """Whether a plugin's reported RAM is implausibly below the RSS growth the worker measured."""
    return bool(growth is not None and growth > MEMORY_FLOOR_BYTES and reported < MEMORY_FLAG_RATIO * growth)


def warm_blas(dim: int, rows: int = 32768) -> None:
    """Run one large float32 and float64 GEMM, so numpy's BLAS has allocated and touched its
    per-thread work buffers (tens of MB) before RSS is measured around add(): library buffers are
    not index memory (measured: a first 20,000 × 384 GEMM grows RSS ~16 MB beyond its result)."""
    d = max(1, min(int(dim), 512))
    for dtype in (np.float32, np.float64):
        a = np.ones((rows, d), dtype)
        a @ np.ones((d, d), dtype)
        del a


def _trim_heap() -> None:
    """Return freed heap memory to the OS (glibc), so RSS reflects what is still held."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def anon_rss() -> int | None:
    """Anonymous resident memory of this process in bytes (file-backed pages, e.g. the
    memory-mapped base vectors, do not count); None where /proc is not available."""
    _trim_heap()
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def classify(exc: BaseException) -> str:
    """The status of a failed task from its exception."""
    if isinstance(exc, MemoryError) or "bad_alloc" in str(exc):
        return "oom"
    if isinstance(exc, InvalidResults):
        return "invalid"
    if isinstance(exc, HarnessError | ImportError):
        return "error"
    return "failed"


def failure_rows(task: Task, status: str, error: str) -> list[dict[str, Any]]:
    """Rows recording a task that did not finish; the sweep goes on."""
    return [schema.failure(task_identity(task, s, h), status, error, task.retry_key)
            for s, h in zip(task.search_configs, task.config_hashes, strict=True)]


def describe_failure(exc: BaseException) -> str:
    """First line: the exception and its message; then the traceback (the row keeps head and tail)."""
    if isinstance(exc, MemoryError):
        head = "MemoryError: the worker ran out of memory (limit reached)"
    else:
        head = f"{type(exc).__name__}: {exc}"
    return head + "\n" + "".join(traceback.format_exception(exc, limit=8))


def main(argv: list[str]) -> int:
    task_file, out_file = argv
    task = Task.from_json(Path(task_file).read_text())
    try:
        rows = run_task(task)
    except Exception as exc:  # noqa: BLE001 - any failure becomes a failed row
        rows = failure_rows(task, classify(exc), describe_failure(exc))
    atomic_write_json(out_file, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
