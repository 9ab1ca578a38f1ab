"""QPS the harness records against a direct library call on the same index (goal: ratio ≥ 0.97).

    python benchmarks/harness_overhead.py                    # bigann10k, 7 interleaved repeats
    python benchmarks/harness_overhead.py -d wordnet --repeats 11

For each method (sq8, pq, hnsw) one index is built through its plugin. Each repeat times, one
after the other and in alternating order, (a) the harness's own timed search,
``harness.worker._timed_search`` on the plugin (what fills ``qps_1t``), and (b) a direct call on
the library index inside the plugin (faiss ``index.search`` / hnswlib ``knn_query``) timed by
the same rule (best of up to 3 passes, repeated only while under 0.3 s in total). One thread for
faiss's OpenMP, hnswlib and BLAS. The ratio harness/direct is taken per repeat; the table gives
its median with min and max. The query set is the data set's queries repeated to at least
``--min-queries`` rows so that one pass is long enough to time. Writes
``results/harness_overhead.csv`` and ``results/harness_overhead.md`` atomically, with the BLAS
kernel (``harness.provenance.blas_info``) and the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import methods  # noqa: E402,F401 - registers the plugins
from harness.io import atomic_write_text  # noqa: E402
from harness.loaders import load_dataset  # noqa: E402
from harness.provenance import blas_info, cpu_model  # noqa: E402
from harness.registry import get_method  # noqa: E402
from harness.worker import MIN_TIMED_SECONDS, TIMING_REPEATS, _set_threads, _timed_search  # noqa: E402

#: (method, build parameters, search parameters)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("sq8", {}, {}),
    ("pq", {"m": 16, "nbits": 8}, {}),
    ("hnsw", {"M": 16}, {"ef": 64}),
]
COLUMNS = ["method", "build", "search", "repeats", "harness_qps_median", "direct_qps_median",
           "ratio_median", "ratio_min", "ratio_max"]


def direct_search(index: Any, queries: np.ndarray, k: int, search: dict[str, Any]) -> Callable[[], Any]:
    """The library call inside the plugin, with the same parameters."""
    lib = index.index
    if hasattr(lib, "knn_query"):  # hnswlib
        lib.set_ef(max(int(search.get("ef", 64)), k))
        return lambda: lib.knn_query(queries, k=k, num_threads=1)
    return lambda: lib.search(queries, k)


def timed_direct(fn: Callable[[], Any], nq: int) -> float:
    """QPS by the rule of ``harness.worker._timed_search``."""
    t0 = time.perf_counter()
    fn()
    best = total = time.perf_counter() - t0
    for _ in range(TIMING_REPEATS - 1):
        if total >= MIN_TIMED_SECONDS:
            break
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, total = min(best, dt), total + dt
    return nq / best


def measure(name: str, build: dict[str, Any], search: dict[str, Any], base: np.ndarray, queries: np.ndarray,
            metric: str, k: int, repeats: int) -> dict[str, Any]:
    cls = get_method(name)
    index = cls(base.shape[1], metric, **build)
    index.expected_n = base.shape[0]
    _set_threads(index, 1)
    index.fit(base)
    index.add(base)
    _set_threads(index, 1)
    direct = direct_search(index, queries, k, search)
    index.search(queries, k, **search)  # warm both paths
    direct()
    ratios, h_qps, d_qps = [], [], []
    for r in range(repeats):
        if r % 2 == 0:
            h = _timed_search(index, queries, k, search)[2]
            d = timed_direct(direct, queries.shape[0])
        else:
            d = timed_direct(direct, queries.shape[0])
            h = _timed_search(index, queries, k, search)[2]
        h_qps.append(h)
        d_qps.append(d)
        ratios.append(h / d)
    return {
        "method": name,
        "build": " ".join(f"{a}={b}" for a, b in build.items()) or "-",
        "search": " ".join(f"{a}={b}" for a, b in search.items()) or "-",
        "repeats": repeats,
        "harness_qps_median": round(statistics.median(h_qps), 1),
        "direct_qps_median": round(statistics.median(d_qps), 1),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
    }


def markdown(rows: list[dict[str, Any]], label: str, nq: int, k: int, blas: dict[str, Any], note: str) -> str:
    lines = [
        "# Harness overhead: recorded QPS vs a direct library call",
        "",
        f"Data: {label}; {nq} queries, k={k}; one thread. Produced by `python benchmarks/harness_overhead.py`.",
        "ratio = QPS recorded by `harness.worker._timed_search` / QPS of the direct call on the same index,",
        "per interleaved repeat (order alternating); goal ≥ 0.97.",
        "",
        f"CPU: {cpu_model()}. BLAS: `{json.dumps(blas, sort_keys=True)}`.",
        "",
    ]
    if note:
        lines += [f"Note: {note}", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--dataset", default="bigann10k")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--min-queries", type=int, default=1000)
    ap.add_argument("--methods", nargs="*", help="only these of sq8, pq, hnsw")
    ap.add_argument("--note", default="", help="a sentence about the machine's state, printed in the table")
    ap.add_argument("--out", default=str(REPO / "results"))
    args = ap.parse_args(argv)

    ds = load_dataset(args.dataset, progress=False)
    base = np.ascontiguousarray(ds.base, dtype=np.float32)
    queries = np.ascontiguousarray(ds.queries, dtype=np.float32)
    reps = -(-args.min_queries // queries.shape[0])
    queries = np.ascontiguousarray(np.tile(queries, (reps, 1)))
    label = f"{ds.name} ({ds.n} x {ds.dim}, {ds.metric}; its {ds.nq} queries repeated {reps}x)"
    rows = []
    for name, build, search in CASES:
        if args.methods and name not in args.methods:
            continue
        row = measure(name, build, search, base, queries, ds.method_metric, args.k, args.repeats)
        print(f"{name:6s} harness {row['harness_qps_median']:10.1f}  direct {row['direct_qps_median']:10.1f}  "
              f"ratio {row['ratio_median']:.3f} [{row['ratio_min']:.3f}, {row['ratio_max']:.3f}]", flush=True)
        rows.append(row)
    blas = blas_info()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.out)
    csv = [",".join(COLUMNS + ["date"])] + [",".join(str(r[c]) for c in COLUMNS) + f",{date}" for r in rows]
    atomic_write_text(out / "harness_overhead.csv", "\n".join(csv) + "\n")
    atomic_write_text(out / "harness_overhead.md", markdown(rows, label, queries.shape[0], args.k, blas, args.note))
    print(f"wrote {out / 'harness_overhead.csv'} and {out / 'harness_overhead.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
