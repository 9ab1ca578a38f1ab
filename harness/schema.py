"""The result row: one schema, one meaning per column, one owner.

Every row of ``results/runs/*.parquet`` is one run of one (data set, method, build, search)
configuration at one operating point. This module declares every column with its meaning and
builds the parts of a row; the worker fills in the measurements and the store stamps the time of
measurement and the results folder's id when it appends. Nothing else assembles rows.

Operating points. The *timed* operating point is a search for ``k`` results (``--k``, 10 by
default): its recall@1/@10, nDCG@10, QPS and latency all come from that one search with the same
parameters. Recall@100 and Recall@100 against judgments need a search for 100 results, which for
many methods (re-ranking, HNSW's ef ≥ k, IVF-PQ refine) is a different, slower search: it is
timed and stored as its own operating point in the ``*_at_100`` and ``k100_*`` columns.

Each query is searched once where the method allows it (``harness.worker.evaluate_searches``):
every query is searched for 100 results, and the search for k results is timed on every query up
to 5,000 (a seeded sample beyond). Where that search returned the first k of the 100 on every
timed query, quality at k is read from the long search (``quality_source`` "k100-prefix");
otherwise the remaining queries are searched for k results as well ("k-search"). Up to 5,000
queries (every default data set) the check covers every query, so quality at k is exactly the
k-result search's; beyond, zero disagreements among 5,000 sampled queries bound the share of
queries that could differ below 0.06% (95%, the rule of three).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

#: every column a result row may carry, with its one meaning
COLUMNS: dict[str, str] = {
    # identity
    "config_hash": "hash of everything that changes the result: data set identity, method, build, search, k",
    "dataset": "the name the data set was run under (a manifest name or the folder's name)",
    "dataset_fingerprint": "content identity of the data set: vectors, judgments, ids, metric, encoder, subset",
    "metric": "the data set's metric: l2, ip or cosine",
    "n": "number of base vectors",
    "dim": "dimension",
    "nq": "number of test queries",
    "method": "registered method name",
    "family": "method family",
    "variant": "'paper' for the paper's recipe, else the named departure (method.variants)",
    "build_params": "JSON of the build parameters",
    "search_params": "JSON of the search parameters",
    "k": "results asked for at the timed operating point",
    "status": "ok, failed (the method raised), invalid (results failed validation), error (harness or "
              "environment: data, dependency), crashed, oom, timeout",
    "error": "the failure's first line (exception type and message), then the end of its traceback",
    "retry_key": "hash of what a failure depends on (code, data set identity, limits): a failure is kept "
                 "only while this is unchanged",
    # bytes
    "ram_bytes": "measured RAM of the built index (codes + structure + shared)",
    "codes_bytes": "measured per-vector codes / stored vectors in RAM",
    "structure_bytes": "measured graph links, inverted lists, ids",
    "shared_bytes": "measured codebooks, rotations, models (independent of n)",
    "disk_only_bytes": "bytes kept on disk only (two-tier methods), not in RAM",
    "disk_bytes": "size of the saved index on disk",
    "bytes_per_vector": "measured RAM bytes / n: what places the run on the budget ladder",
    "ratio_to_float32": "measured bytes_per_vector / (4·dim)",
    "float32_bytes": "4·dim, the bytes of one float32 vector",
    "bytes_analytic": "the paper's formula for bytes per vector at this n",
    "bytes_mismatch": "measured and analytic bytes per vector differ by more than 10%",
    "rss_growth_bytes": "anonymous RSS growth of the worker around add() and the first search",
    "memory_flag": "reported RAM is below 0.8x the RSS growth (above a fixed floor): the plugin's memory() "
                   "may under-report",
    # quality at the timed operating point
    "recall_at_1": "ID-based recall@1 with distance ties extended, from the timed search",
    "recall_at_10": "ID-based recall@10 with distance ties extended, from the timed search",
    "recall_dist_at_1": "distance-threshold recall@1 (ann-benchmarks, eps=1e-3), from the timed search",
    "recall_dist_at_10": "distance-threshold recall@10, from the timed search",
    "ndcg_at_10": "nDCG@10 against the relevance judgments (pytrec_eval, by rank), from the timed search",
    # the k=100 operating point
    "recall_at_100": "ID-based recall@100, from its own search for 100 results",
    "recall_dist_at_100": "distance-threshold recall@100, from the k=100 search",
    "qrels_recall_at_100": "Recall@100 against the judgments (BEIR's second metric), from the k=100 search",
    "k100_qps_1t": "batch queries per second, one thread, of the k=100 search",
    # speed at the timed operating point
    "latency_p50_ms": "single-query latency, one thread, median",
    "latency_p95_ms": "single-query latency, one thread, 95th percentile",
    "latency_p99_ms": "single-query latency, one thread, 99th percentile",
    "latency_queries": "how many single queries were timed (time-boxed)",
    "qps_1t": "batch queries per second, one thread (timed on qps_queries of the queries)",
    "qps_queries": "queries of the timed search for k results: every query up to 5,000, else a seeded sample",
    "quality_source": "where quality at k comes from: 'k-search' (the search for k results) or 'k100-prefix' "
                      "(the first k of the k=100 search, which equalled the k-result search on every timed query)",
    "qps_all": "batch queries per second, all threads (timed on up to 1,000 of the queries)",
    "threads_all": "threads used for qps_all",
    "tasks_per_host": "most timed tasks a Dask sweep allowed at once on the measuring host "
                      "(--concurrent-per-host; 1 by default); empty: the process executor, one task at a time",
    "train_s": "seconds in fit()",
    "build_s": "seconds in add()",
    "train_sample": "training vectors used by fit() (a method's own cap or sample, if it reports one)",
    "train_note": "what a method did to fit its training to the data (caps, skipped steps)",
    "peak_rss_mb": "peak RSS of the worker process, MiB",
    "per_query_recall_at_10": "per-query recall@10 (bootstrap intervals, paired tests)",
    "per_query_ndcg_at_10": "per-query nDCG@10",
    "per_query_qrels_recall_at_100": "per-query Recall@100 against judgments",
    "raw_path": "per-query ids and scores of this row (unique per row)",
    # phases and scale (issue 13)
    "encode_s": "seconds to produce the data set's vectors when it was prepared (encoding texts, or reading the "
                "embedding cache if they were encoded before; reading files; generating synthetic data)",
    "groundtruth_s": "seconds of the exact ground truth when the data set was prepared",
    "search_s": "seconds evaluating this row's search configuration (timed searches, latency, scoring)",
    "build_peak_rss_mb": "peak RSS of the worker during fit() and add() (VmHWM reset before each), MiB",
    "build_peak_growth_mb": "the most fit() and add() held at once above the RSS before fit() (base vectors "
                            "already resident; what fit left allocated counts in add, the harness's warm-ups "
                            "between them do not), index included; compare with ram_bytes",
    # two-tier RAM + disk (BiDR)
    "disk_bytes_per_vector": "bytes per vector of the disk tier's file (not in RAM, not on the budget ladder)",
    "latency_warm_p50_ms": "two-tier: single-query latency, median, the disk tier's file in the page cache",
    "latency_cold_p50_ms": "two-tier: single-query latency, median, the file's pages evicted before each query",
    "latency_cold_p95_ms": "two-tier: single-query latency, 95th percentile, cold page cache",
    "cold_queries": "two-tier: how many cold single queries were timed (time-boxed)",
    "disk_read_bytes_per_query": "two-tier: candidate rows read from the disk tier per cold query x bytes per row",
    "disk_pages_bytes_per_query": "two-tier: distinct 4 KiB pages those rows span per cold query, in bytes",
    "io_read_bytes_per_query": "two-tier: /proc/self/io read_bytes per cold query (what the block layer read)",
    "cache_eviction_verified": "two-tier: mincore found none of the file's pages resident before every cold query",
    # filtered search
    "filter": "filtered track: the filter family every query carried (search parameter 'filter', "
              "harness/filters.py); empty for unfiltered runs",
    "selectivity": "filtered track: mean fraction of the base passing the evaluated queries' filters",
    "filter_groups": "filtered track: distinct filters among the evaluated queries (one batch search each)",
    "filter_violations": "filtered track: returned ids that fail their query's filter (any makes the row invalid)",
    "filter_judged_queries": "filtered track: queries with a relevant document that passes their filter "
                             "(nDCG@10 and judged Recall@100 are averaged over these)",
    # multi-vector (bytes are per document)
    "bytes_unit": "what n counts in bytes_per_vector: 'document' in the multi-vector track (RAM / documents, "
                  "every token of a document included); empty: one vector per item",
    "tokens_per_doc": "mean token vectors per document (multi-vector track)",
    # encoder layers (2DMSE / Starbucks post-hoc)
    "encoder_layer": "the data set's vectors are the pooled hidden state of this encoder layer (NAME@L<layer>, "
                     "harness/layers.py); empty: the model's standard embedding",
    "encoder_pooling": "token pooling of that layer's hidden state: mean (masked) or cls",
    "encoder_layers_total": "layers of the full encoder (encoder_layer = this is its last layer)",
    "query_encode_ms_per_query": "median ms to encode one query alone (tokenise, forward, pool; one thread) with "
                                 "the encoder truncated to encoder_layer layers; all layers timed in one run, "
                                 "interleaved: compare as ratios",
    "query_encode_batch_ms_per_query": "ms per query encoding the queries in batches (encoder batch size, one "
                                       "thread), truncated to encoder_layer layers, same run",
    "query_encode_ratio_to_full": "query_encode_ms_per_query / that of the full encoder, measured in the same run",
    # provenance
    "versions": "JSON of package versions",
    "cpu_model": "CPU model",
    "cpu_count": "logical CPUs",
    "omp_wait_policy": "OMP_WAIT_POLICY in force",
    "blas": "JSON: BLAS libraries (threadpoolctl: library, version, kernel architecture, threads) and "
            "OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as set",
    "git_revision": "git revision of the code (-dirty when modified)",
    "code_hash": "hash of the harness and method sources that ran",
    "protocol_version": "measurement protocol version",
    "time_limit_s": "worker time limit",
    "memory_limit_bytes": "worker address-space limit",
    "created_utc": "when the row was measured (stamped as it is appended to the store)",
    "store_id": "id of the results folder that measured the row",
}

#: statuses of a finished run; "ok" is the only one that is scored
STATUSES = ("ok", "failed", "invalid", "error", "crashed", "oom", "timeout")
#: failures caused outside the method (data, dependencies, the harness): always retried
ENVIRONMENT_STATUSES = ("error",)
#: how much of an error text a row keeps: its head (first line, exception) and its tail
ERROR_HEAD, ERROR_TAIL = 600, 1400


class SchemaError(ValueError):
    """A row with a column the schema does not declare (a second meaning must not creep in)."""


def check_columns(rows: Iterable[dict[str, Any]]) -> None:
    unknown = sorted({c for r in rows for c in r} - set(COLUMNS))
    if unknown:
        raise SchemaError(f"result row column(s) not in harness/schema.py: {', '.join(unknown)}")


def error_text(text: str) -> str:
    """Keep the first line and the end of a long error (the exception, then where it came from)."""
    text = text.strip()
    if len(text) <= ERROR_HEAD + ERROR_TAIL:
        return text
    return f"{text[:ERROR_HEAD]}\n[... {len(text) - ERROR_HEAD - ERROR_TAIL} characters left out ...]\n{text[-ERROR_TAIL:]}"


def identity(*, config_hash: str, dataset: str, fingerprint: str, metric: str, n: int, dim: int, nq: int,
             method: str, family: str, variant: str, build_params: dict[str, Any],
             search_params: dict[str, Any], k: int, bytes_analytic: float) -> dict[str, Any]:
    """The columns that say which configuration a row measured."""
    return {
        "config_hash": config_hash, "dataset": dataset, "dataset_fingerprint": fingerprint, "metric": metric,
        "n": int(n), "dim": int(dim), "nq": int(nq), "method": method, "family": family, "variant": variant,
        "build_params": json.dumps(build_params, sort_keys=True),
        "search_params": json.dumps(search_params, sort_keys=True),
        "k": int(k), "bytes_analytic": float(bytes_analytic), "float32_bytes": 4.0 * dim,
    }


def failure(row: dict[str, Any], status: str, error: str, retry_key: str) -> dict[str, Any]:
    if status not in STATUSES or status == "ok":
        raise ValueError(f"not a failure status: {status!r}")
    return {**row, "status": status, "error": error_text(error), "retry_key": retry_key}


def stamp(rows: list[dict[str, Any]], store_id: str) -> list[dict[str, Any]]:
    """Rows as they are appended: the time of measurement and the results folder's id."""
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    out = [{**r, "created_utc": now, "store_id": store_id} for r in rows]
    check_columns(out)
    return out
