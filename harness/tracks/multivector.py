"""The multi-vector track: late-interaction retrieval over token vectors, bytes per document.

Data: a prepared data set with token-level embeddings (``ds.multivector("document")`` and
``("query")``, :mod:`harness.multivector`), e.g. ``wordnet-multivector``. Ground truth is the
exact Chamfer top-128 (:func:`harness.chamfer.ground_truth`, cached beside the tokens).

Method contract (``input_kind = "multivector"``, :mod:`methods._multivector`):

* ``cls(dim, "ip", **build_params)`` — ``dim`` is the token dimension;
* ``fit(docs, None)`` — ``docs`` is the collection's :class:`~harness.multivector.RaggedVectors`
  (memory-mapped); a method samples what it trains on;
* ``add(docs)`` — encode and keep every document (ids = document order);
* ``search(queries, k, **search_params) -> (scores, ids)`` — ``queries`` a RaggedVectors of query
  tokens (a slice of the test queries), ``(nq, k)`` arrays, best first (higher is better), -1
  padding;
* ``memory()`` — what the index keeps in RAM, by part; ``bytes_per_vector(dim, n,
  tokens_per_doc=..., lengths=..., **build)`` — the analytic bytes **per document** (the track
  passes the mean and the per-document token counts; the planner, before any data are read,
  neither: methods then assume ``methods._multivector.NOMINAL_TOKENS_PER_DOC``).

Each search configuration becomes one row, as in the dense track (:mod:`harness.worker`, whose
timing, validation, RSS and failure helpers are reused): recall@1/@10 from the timed search for
k results and recall@100 from its own search for 100, against the exact Chamfer neighbours (ties
extended); nDCG@10 and Recall@100 against the judgments; QPS with one thread and all threads;
single-query latency. ``bytes_per_vector`` is RAM / number of documents, i.e. bytes per
document (``bytes_unit = "document"``), the budget ladder of this track.
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

from harness import chamfer
from harness.io import atomic_path
from harness.metrics import qrels_metrics, recall_with_ties
from harness.provenance import blas_info
from harness.validation import validate_results

#: budgets (bytes per document) used when a multi-vector data set is run without -b
BUDGETS: tuple[float, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
#: the method suite run on a multi-vector data set when no method is named (methods/suites.toml)
SUITE = "multivector"
#: queries timed for the all-threads QPS (an exhaustive Chamfer scan costs ~tens of ms per query)
QPS_ALL_QUERIES = 200
RECALL_KS = (1, 10, 100)


def available(ds: Any) -> bool:
    return ds.multivector("document") is not None and ds.multivector("query") is not None


def wanted(manifest: Any) -> bool:
    """Whether a data set's manifest asks for token-level data (tag ``multivector``)."""
    return "multivector" in (getattr(manifest, "tags", None) or [])


def prepare(spec: str, overrides: dict[str, Any] | None, ds: Any, *, progress: bool = True) -> Any:
    """Token embeddings (cached) and the exact Chamfer ground truth (cached) of data set ``spec``."""
    from harness.loaders import prepare_multivector

    if not available(ds):
        ds = prepare_multivector(spec, overrides=overrides, progress=progress, ds=ds)
    chamfer.ground_truth(ds, progress=progress)
    return ds


def _quality(ds: Any, docs: Any, queries: Any, gt: tuple[np.ndarray, np.ndarray], ids: np.ndarray,
             cutoffs: tuple[int, ...], qrels_metric: str | None) -> dict[str, np.ndarray]:
    gt_scores, gt_ids = gt
    true = chamfer.true_scores(queries, docs, ids)
    out = {f"recall_at_{c}": recall_with_ties(gt_ids, gt_scores, ids, c, run_dist=true) for c in cutoffs}
    if qrels_metric and ds.has_qrels:
        out[qrels_metric] = qrels_metrics(ds.qrels, ids, ds.query_ids, ds.doc_ids)[qrels_metric]
    return out


def run_task(task: Any, ds: Any, cls: type) -> list[dict[str, Any]]:
    """Build once, evaluate every search configuration (see the module docstring)."""
    from harness.worker import (
        PER_QUERY_IN_ROW,
        HarnessError,
        _all_threads,
        _latencies,
        _set_threads,
        _timed_search,
        anon_rss,
        memory_flag,
        task_identity,
        warm_blas,
    )

    try:
        docs, queries = ds.multivector("document"), ds.multivector("query")
        if docs is None or queries is None:
            raise ValueError(f"{ds.name} has no token-level embeddings (vecbudget datasets prepare --multivector)")
        if len(docs) != ds.n or len(queries) != ds.nq:
            raise ValueError(f"{ds.name}: {len(docs)} token documents / {len(queries)} token queries for "
                             f"{ds.n} documents / {ds.nq} queries")
        chamfer.check_nonempty(docs.offsets, f"{ds.name} documents")
        chamfer.check_nonempty(queries.offsets, f"{ds.name} queries")
        gt = chamfer.ground_truth(ds)
    except Exception as exc:
        raise HarnessError(f"{type(exc).__name__}: {exc}") from exc
    n, nq = len(docs), len(queries)
    tokens_per_doc = docs.n_tokens / n
    threads = _all_threads(task)
    index = cls(docs.dim, "ip", **task.build_params)
    index.expected_n = n
    _set_threads(index, threads)
    t0 = time.perf_counter()
    index.fit(docs, None)
    train_s = time.perf_counter() - t0
    index.warm_up()
    warm_blas(docs.dim)
    rss_before = anon_rss()
    t0 = time.perf_counter()
    index.add(docs)
    build_s = time.perf_counter() - t0
    _set_threads(index, 1)
    k = min(task.k, n)
    validate_results(*index.search(queries[:1], k, **task.search_configs[0]), 1, k, n)
    rss_after = anon_rss()
    mem = index.memory()
    with tempfile.TemporaryDirectory() as tmp:
        disk_bytes = index.save(os.path.join(tmp, "index.bin"))
    growth = None if rss_before is None or rss_after is None else max(0, rss_after - rss_before)
    blas = json.dumps(blas_info(), sort_keys=True)
    analytic = float(cls.bytes_per_vector(docs.dim, n, tokens_per_doc=tokens_per_doc, lengths=docs.lengths,
                                          **task.build_params))

    qk = min(task.quality_k, n)
    cutoffs_k = tuple(c for c in RECALL_KS if c <= k and c < qk) or (k,)
    cutoffs_100 = tuple(c for c in RECALL_KS if c <= qk and c not in cutoffs_k)
    rows_out = []
    for search_params, chash in zip(task.search_configs, task.config_hashes, strict=True):
        row = task_identity(task, search_params, chash)
        _set_threads(index, 1)
        scores, ids, qps_1t = _timed_search(index, queries, k, search_params)
        ids = validate_results(scores, ids, nq, k, n)
        latencies = _latencies(index, queries, k, search_params, task)
        _set_threads(index, threads)
        _, _, qps_all = _timed_search(index, queries[:QPS_ALL_QUERIES], k, search_params)
        per_query = _quality(ds, docs, queries, gt, ids, cutoffs_k, "ndcg_at_10" if k >= 10 else None)
        k100: dict[str, Any] = {}
        ids_100, scores_100 = ids, scores
        if qk > k:
            _set_threads(index, 1)
            scores_100, ids_100, k100_qps = _timed_search(index, queries, qk, search_params)
            ids_100 = validate_results(scores_100, ids_100, nq, qk, n)
            k100["k100_qps_1t"] = float(k100_qps)
        per_query.update(_quality(ds, docs, queries, gt, ids_100, cutoffs_100, "qrels_recall_at_100"))
        ram = mem.ram
        bpd = ram / n
        row.update({
            "status": "ok", "error": "", "retry_key": task.retry_key,
            "ram_bytes": ram, "codes_bytes": mem.codes, "structure_bytes": mem.structure,
            "shared_bytes": mem.shared, "disk_only_bytes": mem.disk, "disk_bytes": int(disk_bytes),
            "bytes_per_vector": bpd, "ratio_to_float32": bpd / (4.0 * ds.dim),
            "bytes_analytic": analytic,
            "bytes_mismatch": bool(abs(bpd - analytic) > 0.10 * analytic),
            "bytes_unit": "document", "tokens_per_doc": float(tokens_per_doc),
            "rss_growth_bytes": float("nan") if growth is None else float(growth),
            "memory_flag": memory_flag(ram, growth),
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p95_ms": float(np.percentile(latencies, 95)),
            "latency_p99_ms": float(np.percentile(latencies, 99)),
            "latency_queries": int(latencies.size),
            "qps_1t": float(qps_1t), "qps_all": float(qps_all), "threads_all": threads,
            "train_s": train_s, "build_s": build_s,
            "train_sample": int(getattr(index, "train_sample", None) or n),
            "train_note": str(getattr(index, "training_notes", "") or ""),
            "blas": blas, **k100,
            **{name: float(np.nanmean(v)) for name, v in per_query.items()},
            **{f"per_query_{name}": per_query[name].astype(np.float32).tolist()
               for name in PER_QUERY_IN_ROW if name in per_query},
        })
        if task.raw_dir:
            raw = Path(task.raw_dir) / task.dataset / f"{chash}-{uuid.uuid4().hex[:12]}.npz"
            with atomic_path(raw, suffix=".npz") as tmp:
                np.savez_compressed(tmp, ids=ids_100.astype(np.int32), scores=np.asarray(scores_100, np.float32),
                                    ids_k=ids.astype(np.int32), latency_ms=latencies.astype(np.float32),
                                    **{f"q_{name}": v.astype(np.float32) for name, v in per_query.items()})
            row["raw_path"] = str(raw)
        rows_out.append(row)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows_out:
        row["peak_rss_mb"] = peak_rss_mb
    return rows_out


def plot(df: Any, dataset: str, out_dir: str | Path, fingerprint: str | None = None) -> list[Path]:
    """Two panels, recall@10 against exact Chamfer and nDCG@10 against the judgments, each vs
    measured bytes per document (log scale), one Pareto line per method; PNG and SVG."""
    import matplotlib.pyplot as plt

    from harness.leaderboard import current_runs
    from harness.plots import _style, pareto_front

    runs = current_runs(df, dataset, fingerprint)
    runs = runs[runs["status"] == "ok"] if not runs.empty else runs
    if runs.empty:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    style = _style(list(runs["method"].unique()))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, metric, label in ((axes[0], "recall_at_10", "recall@10 vs exact Chamfer"),
                              (axes[1], "ndcg_at_10", "nDCG@10 vs judgments")):
        for method, g in runs.groupby("method"):
            x, y = g["bytes_per_vector"].to_numpy(float), g[metric].to_numpy(float)
            colour, marker = style[method]
            ax.scatter(x, y, color=colour, marker=marker, s=14, alpha=0.35)
            front = pareto_front(x, y, smaller_x_better=True)
            ax.plot(x[front], y[front], color=colour, marker=marker, ms=5, lw=1.5, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("measured RAM bytes per document (log scale)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    n, tpd = int(runs["n"].iloc[0]), float(runs["tokens_per_doc"].iloc[0])
    fig.suptitle(f"{dataset} (n={n:,} documents, {tpd:.1f} tokens/doc, d={int(runs['dim'].iloc[0])})")
    fig.tight_layout()
    written = []
    for ext in ("png", "svg"):
        path = out_dir / f"quality_vs_bytes_per_doc.{ext}"
        with atomic_path(path, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, dpi=110)
        written.append(path)
    plt.close(fig)
    return written


def per_document(runs: Any) -> bool:
    """Whether stored rows place runs by bytes per document (this track) rather than per vector."""
    return bool(runs is not None and "bytes_unit" in runs and (runs["bytes_unit"] == "document").any())


def per_document_text(text: str) -> str:
    """A report text's byte units said per document (the report's hook for this track's pages)."""
    return text.replace("B/vector", "B/document").replace("B/vec", "B/doc").replace(
        "bytes per vector", "bytes per document").replace("exact float32", "exact Chamfer (float32 tokens)").replace(
        "% of float32", "% of exact Chamfer")
