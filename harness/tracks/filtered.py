"""The filtered-search track: every query carries a filter; only ids passing it may be returned.

Data: a prepared data set with a ``filters/`` part (:mod:`harness.filters`): per-query filters
in named families and the exact top-k among the passing ids. The track evaluates the first
``filters.nq`` queries of the data set (rows record that number as ``nq``).

Method contract (``input_kind = "filtered"``): a :class:`harness.method.Method` whose ``fit`` /
``add`` see the whole, unfiltered base (ids 0..n-1) and whose search is

    ``search(queries, k, allowed: harness.filters.Allowed, **params) -> (scores, ids)``

for a batch of queries that all carry the same filter. ``allowed`` holds the passing ids as a
boolean mask, sorted ids and a packed bitmap, made once per filter outside the timing. Results
follow the dense contract (best first, -1 as trailing padding when fewer than k pass), and every
returned id must pass the filter. The filter family is the search parameter ``filter`` (so each
row is one build, one search configuration, one family); the other search parameters go to the
method. Declare ``filter`` in ``search_grid`` (see :data:`FAMILIES`).

Evaluation: queries are grouped by identical filter and each group is one batch search
(``_timed_search``: one thread, best of repeated passes); latency is single-query on a seeded
sample spread over the groups (``_latencies``); results are validated (``validate_results``) and
then checked against the filter: a method that returns a failing id gets an ``invalid`` row with
the count (``filter_violations``) and the first offender. Recall is against the filtered ground
truth, divided by min(k, ids passing) for queries whose filter lets fewer than k through. nDCG@10
and Recall@100 use the judgments the filter lets through (a relevant document that fails the
filter cannot be retrieved); a query with none is left out (``filter_judged_queries``).
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from harness import schema
from harness.dataset import PreparedDataset
from harness.filters import FAMILIES, Family, FilterSet, has_filters
from harness.groundtruth import pair_scores, true_distance
from harness.io import atomic_path
from harness.metrics import qrels_metrics, recall_by_distance, recall_with_ties
from harness.provenance import blas_info
from harness.validation import InvalidResults, validate_results
from harness.worker import (
    BYTES_TOLERANCE,
    PER_QUERY_IN_ROW,
    QPS_ALL_QUERIES,
    Task,
    _all_threads,
    _latencies,
    _set_threads,
    _timed_search,
    anon_rss,
    describe_failure,
    memory_flag,
    task_identity,
    warm_blas,
)

__all__ = ["FAMILIES", "available", "run_task"]
RECALL_KS = (1, 10, 100)
LATENCY_SEED = 0


def available(ds: PreparedDataset) -> bool:
    return has_filters(ds)


class GroupedSearch:
    """Searches a bound query array group by group: the rows of a view are found by its offset
    into the bound array, so the worker's timing helpers (which call ``search(queries[i:j], k)``)
    time exactly the per-filter batch searches."""

    def __init__(self, index: Any, family: Family):
        self.index = index
        self.allowed = family.allowed
        self.bound: np.ndarray | None = None
        self.groups: np.ndarray | None = None

    def bind(self, queries: np.ndarray, groups: np.ndarray) -> GroupedSearch:
        self.bound, self.groups = queries, groups
        return self

    def search(self, queries: np.ndarray, k: int, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        assert self.bound is not None and self.groups is not None
        r0 = (queries.ctypes.data - self.bound.ctypes.data) // self.bound.strides[0]
        r1 = r0 + queries.shape[0]
        if not (0 <= r0 <= r1 <= self.bound.shape[0]) or not np.shares_memory(queries, self.bound):
            raise ValueError("GroupedSearch: queries must be a row slice of the bound array")
        groups = self.groups[r0:r1]
        cuts = np.flatnonzero(np.diff(groups)) + 1
        scores, ids = [], []
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, groups.size], strict=True):
            s, i = self.index.search(queries[a:b], k, allowed=self.allowed[int(groups[a])], **params)
            scores.append(np.asarray(s))
            ids.append(np.asarray(i))
        return np.vstack(scores), np.vstack(ids)


def check_filter(ids: np.ndarray, family: Family, rows: np.ndarray) -> tuple[int, str]:
    """(returned ids failing their query's filter, a description of the first)."""
    masks = family.masks[family.groups[rows]]
    valid = ids >= 0
    fails = valid & ~np.take_along_axis(masks, np.maximum(ids, 0), 1)
    count = int(fails.sum())
    if not count:
        return 0, ""
    q, j = np.argwhere(fails)[0]
    return count, (f"filter {family.name}: {count} returned id(s) fail the query's filter, e.g. query {int(q)}: "
                   f"id {int(ids[q, j])} at rank {int(j)}")


def filtered_quality(ds: PreparedDataset, fam: Family, queries: np.ndarray, ids: np.ndarray,
                     cutoffs: tuple[int, ...], qrels_metric: str | None, nq: int) -> dict[str, np.ndarray]:
    """Per-query quality against the filtered ground truth and the judgments the filter allows."""
    out: dict[str, np.ndarray] = {}
    cosine = ds.metric == "cosine"
    gt_ids, gt_dist = fam.gt_ids[:nq], fam.gt_dist[:nq]
    scores = pair_scores(ds.base, queries, ids, ds.method_metric)
    with np.errstate(invalid="ignore"):
        gt_true = true_distance(gt_dist, ds.method_metric, cosine=cosine)
        run_true = true_distance(scores, ds.method_metric, cosine=cosine)
        passing = fam.passing[:nq]
        for c in cutoffs:
            denom = np.minimum(c, passing).astype(np.float64)
            scale = np.where(denom > 0, c / np.maximum(denom, 1), np.nan)
            out[f"recall_at_{c}"] = recall_with_ties(gt_ids, gt_dist, ids, c, run_dist=scores) * scale
            out[f"recall_dist_at_{c}"] = recall_by_distance(gt_true, run_true, c) * scale
    if qrels_metric and ds.has_qrels:
        qids = ds.query_ids[:nq]
        doc_row = {d: i for i, d in enumerate(ds.doc_ids)}
        masks = fam.masks
        kept: dict[str, dict[str, int]] = {}
        for i, q in enumerate(qids):
            rel = {d: r for d, r in (ds.qrels.get(q) or {}).items()
                   if r > 0 and masks[fam.groups[i], doc_row[d]]}
            if rel:
                kept[q] = rel
        out[qrels_metric] = qrels_metrics(kept, ids, qids, ds.doc_ids)[qrels_metric]
    return out


def run_task(task: Task, ds: PreparedDataset, cls: type) -> list[dict[str, Any]]:
    """Build once on the whole base, then evaluate every (search parameters, filter family)."""
    from harness.worker import HarnessError

    try:
        fs = FilterSet(ds)
        nq = fs.nq
        base = np.ascontiguousarray(ds.base, dtype=np.float32)
        queries = np.ascontiguousarray(ds.queries[:nq])
    except Exception as exc:
        raise HarnessError(f"{type(exc).__name__}: {exc}") from exc
    threads = _all_threads(task)
    train = base
    if ds.n > task.train_size:
        train = base[np.sort(np.random.default_rng(0).choice(ds.n, task.train_size, replace=False))]
    index = cls(ds.dim, ds.method_metric, **task.build_params)
    index.expected_n = ds.n
    _set_threads(index, threads)
    t0 = time.perf_counter()
    index.fit(train, None)
    train_s = time.perf_counter() - t0
    index.warm_up()
    warm_blas(ds.dim)
    rss_before = anon_rss()
    t0 = time.perf_counter()
    index.add(base)
    build_s = time.perf_counter() - t0
    _set_threads(index, 1)
    k = min(task.k, ds.n)
    qk = min(task.quality_k, ds.n)
    first = dict(task.search_configs[0])
    fam0 = fs.family(str(first.pop("filter", fs.names[0])))
    GroupedSearch(index, fam0).bind(queries, fam0.groups).search(queries[:1], k, **first)  # the first search
    rss_after = anon_rss()
    mem = index.memory()
    with tempfile.TemporaryDirectory() as tmp:
        disk_bytes = index.save(os.path.join(tmp, "index.bin"))
    growth = None if rss_before is None or rss_after is None else max(0, rss_after - rss_before)
    blas = json.dumps(blas_info(), sort_keys=True)
    cutoffs_k = tuple(c for c in RECALL_KS if c <= k and c < qk) or (k,)
    cutoffs_100 = tuple(c for c in RECALL_KS if c <= qk and c not in cutoffs_k)
    families: dict[str, Family] = {}
    rows_out = []
    for search_params, chash in zip(task.search_configs, task.config_hashes, strict=True):
        row = task_identity(task, search_params, chash)
        params = dict(search_params)
        name = str(params.pop("filter", ""))
        if name not in families:
            families[name] = fs.family(name)
        fam = families[name]
        # queries in filter order (one batch per filter), and a seeded sample for latency
        order = np.argsort(fam.groups[:nq], kind="stable")
        q_sorted = np.ascontiguousarray(queries[order])
        searcher = GroupedSearch(index, fam)
        row.update({"nq": nq, "filter": name, "filter_groups": int(np.unique(fam.groups[:nq]).size),
                    "selectivity": float(fam.passing[:nq].mean() / ds.n), "retry_key": task.retry_key})
        violations = 0
        try:
            _set_threads(index, 1)
            searcher.bind(q_sorted, fam.groups[order])
            scores_s, ids_s, qps_1t = _timed_search(searcher, q_sorted, k, params)
            ids_s = validate_results(scores_s, ids_s, nq, k, ds.n)
            violations, why = check_filter(ids_s, fam, order)
            if not violations and qk > k:
                scores100_s, ids100_s, k100_qps = _timed_search(searcher, q_sorted, qk, params)
                ids100_s = validate_results(scores100_s, ids100_s, nq, qk, ds.n)
                violations, why = check_filter(ids100_s, fam, order)
            if violations:
                raise InvalidResults(why)
        except InvalidResults as exc:
            rows_out.append({**schema.failure(row, "invalid", describe_failure(exc), task.retry_key),
                             "filter_violations": violations})
            continue
        perm = np.random.default_rng(LATENCY_SEED).permutation(nq)
        q_perm = np.ascontiguousarray(queries[perm])
        latencies = _latencies(searcher.bind(q_perm, fam.groups[perm]), q_perm, k, params, task)
        _set_threads(index, threads)
        n_all = min(QPS_ALL_QUERIES, nq)
        _, _, qps_all = _timed_search(searcher.bind(q_sorted, fam.groups[order]), q_sorted[:n_all], k, params)
        _set_threads(index, 1)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(nq)
        ids = ids_s[inverse]
        per_query = filtered_quality(ds, fam, queries, ids, cutoffs_k, "ndcg_at_10" if k >= 10 else None, nq)
        k100: dict[str, Any] = {}
        ids_100, scores_100 = ids, np.asarray(scores_s)[inverse]
        if qk > k:
            ids_100, scores_100 = ids100_s[inverse], np.asarray(scores100_s)[inverse]
            k100["k100_qps_1t"] = float(k100_qps)
        per_query.update(filtered_quality(ds, fam, queries, ids_100, cutoffs_100, "qrels_recall_at_100", nq))
        judged = per_query.get("ndcg_at_10", per_query.get("qrels_recall_at_100"))
        ram = mem.ram
        bpv = ram / ds.n
        row.update({
            "status": "ok", "error": "", "filter_violations": 0,
            "filter_judged_queries": int(np.isfinite(judged).sum()) if judged is not None else 0,
            "ram_bytes": ram, "codes_bytes": mem.codes, "structure_bytes": mem.structure,
            "shared_bytes": mem.shared, "disk_only_bytes": mem.disk, "disk_bytes": int(disk_bytes),
            "bytes_per_vector": bpv, "ratio_to_float32": bpv / (4.0 * ds.dim),
            "bytes_mismatch": bool(abs(bpv - row["bytes_analytic"]) > BYTES_TOLERANCE * row["bytes_analytic"]),
            "rss_growth_bytes": float("nan") if growth is None else float(growth),
            "memory_flag": memory_flag(ram, growth),
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
            "latency_p99_ms": float(np.percentile(latencies, 99)),
            "latency_queries": int(latencies.size),
            "qps_1t": float(qps_1t), "qps_all": float(qps_all), "threads_all": threads,
            "train_s": train_s, "build_s": build_s,
            "train_sample": int(getattr(index, "train_sample", None) or train.shape[0]),
            "train_note": str(getattr(index, "training_notes", "") or ""),
            "blas": blas, **k100,
            **{m: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for m, v in per_query.items()},
            **{f"per_query_{m}": per_query[m].astype(np.float32).tolist() for m in PER_QUERY_IN_ROW if m in per_query},
        })
        if task.raw_dir:
            raw = Path(task.raw_dir) / task.dataset / f"{chash}-{uuid.uuid4().hex[:12]}.npz"
            with atomic_path(raw, suffix=".npz") as tmp:
                np.savez_compressed(tmp, ids=ids_100.astype(np.int32), scores=np.asarray(scores_100, np.float32),
                                    ids_k=ids.astype(np.int32), latency_ms=latencies.astype(np.float32),
                                    **{f"q_{m}": v.astype(np.float32) for m, v in per_query.items()})
            row["raw_path"] = str(raw)
        rows_out.append(row)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows_out:
        row["peak_rss_mb"] = peak_rss_mb
    return rows_out
