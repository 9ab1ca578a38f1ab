"""Single-thread scan speed of the custom scans against the closest faiss kernel, at equal bytes.

    python benchmarks/scan_speed.py                      # 20000 x 384 random unit vectors
    python benchmarks/scan_speed.py --data PATH          # cached embeddings: a .npy (rows split
                                                         # into base and queries) or a prepared
                                                         # data-set folder with base.npy/queries.npy

Pairs compared (both sides built on the same vectors, searched with the same 1000 queries, k=10,
one thread for faiss's OpenMP and for BLAS):

* LVQ-8 (``lvq``, bits1=8, when registered) vs faiss ``IndexScalarQuantizer`` QT_8bit, flat;
* binary codes (``bebr-residual``, ``itq``) vs faiss ``IndexBinaryFlat`` with the same number of bits;
* ``osq`` / ``nupes`` / ``kvquant-nuq`` vs faiss SQ4 / SQ8 flat of the same bytes per vector.

QPS: one batched ``search`` call over all queries (as the harness's ``qps_1t``), timed
alternately with its reference for at least 4 s (at most 40 rounds); each side's best run counts,
so a busy machine disturbs both sides alike. Single-query latency (as the harness's
``latency_p50_ms``): the first ``--latency-queries`` queries searched one at a time, each timed
right after the reference's search of the same query (p50 of each side; ``latency_ratio`` =
p50 / reference p50, aim <= 2); ``numpy_p50_ms`` times the method's numpy (GEMM) scan on the first
``--numpy-latency-queries`` queries the same way, for the methods with compiled small-batch kernels
(search parameter ``kernel``). Writes ``results/scan_speed.csv`` and ``results/scan_speed.md``
atomically; the note names the BLAS library that ran (``harness.provenance.blas_info``).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: BLAS pools start single-threaded

import argparse  # noqa: E402
import datetime  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402

from harness.groundtruth import exact_knn  # noqa: E402
from harness.io import atomic_write_text  # noqa: E402
from harness.method import Method  # noqa: E402
from harness.provenance import blas_info, cpu_model  # noqa: E402

#: modules holding the methods compared here (imported one by one: a broken unrelated plugin
#: must not stop the benchmark); lvq is optional
MODULES = ["methods.lvq", "methods.bebr", "methods.itq", "methods.osq", "methods.nonuniform"]

COLUMNS = ["method", "params", "bytes_per_vector", "p50_ms", "reference_p50_ms", "latency_ratio", "numpy_p50_ms",
           "qps", "reference", "reference_qps", "ratio", "recall_at_10", "reference_recall_at_10", "single_same_ids",
           "cpu_model", "date"]
#: methods whose search takes ``kernel`` (compiled small-batch kernels vs the numpy scan)
KERNEL_METHODS = {"lvq", "bebr-residual", "osq", "nupes", "kvquant-nuq"}


def load_methods() -> dict[str, type[Method]]:
    """name -> class of the registered methods defined in MODULES (missing modules skipped)."""
    import importlib

    found: dict[str, type[Method]] = {}
    for mod_name in MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except Exception as exc:  # noqa: BLE001 - e.g. lvq not written yet
            print(f"skipping {mod_name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Method) and getattr(obj, "name", None) \
                    and obj.__module__ == mod.__name__:
                found[obj.name] = obj
    return found


def limit_threads() -> None:
    faiss.omp_set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # the environment variables above already apply
        pass


def interleaved_qps(fn: Callable[[], Any], ref: Callable[[], Any], nq: int, min_total: float = 4.0,
                    max_rounds: int = 40) -> tuple[float, float]:
    """QPS of ``fn`` and ``ref``: best of alternating timed runs (alternation spreads any
    disturbance from other processes over both sides)."""
    best_f, best_r, total = float("inf"), float("inf"), 0.0
    for _ in range(max_rounds):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        ref()
        t2 = time.perf_counter()
        best_f, best_r = min(best_f, t1 - t0), min(best_r, t2 - t1)
        total += t2 - t0
        if total >= min_total:
            break
    return nq / best_f, nq / best_r


def interleaved_latency(fn: Callable[[int], Any], ref: Callable[[int], Any], nq: int) -> tuple[float, float]:
    """p50 single-query latency (ms) of ``fn(i)`` and ``ref(i)`` over queries 0..nq-1, each query
    timed on both sides back to back."""
    a, b = np.empty(nq), np.empty(nq)
    for i in range(nq):
        t0 = time.perf_counter_ns()
        fn(i)
        t1 = time.perf_counter_ns()
        ref(i)
        t2 = time.perf_counter_ns()
        a[i], b[i] = (t1 - t0) / 1e6, (t2 - t1) / 1e6
    return float(np.median(a)), float(np.median(b))


def single_query(index: Method, queries: np.ndarray, k: int, sp: dict[str, Any]) -> Callable[[int], Any]:
    """i -> index.search of query i alone."""
    return lambda i: index.search(queries[i : i + 1], k, **sp)


def same_ids(index: Method, queries: np.ndarray, k: int, sp: dict[str, Any], batch_ids: np.ndarray) -> float:
    """Mean fraction of the batched search's top-k ids that the single-query search (the
    latency path) also returns, over the given queries (1.0: the same results)."""
    shared = [len(set(index.search(queries[i : i + 1], k, **sp)[1][0].tolist()) & set(batch_ids[i].tolist())) / k
              for i in range(queries.shape[0])]
    return float(np.mean(shared))


def recall10(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a[:10].tolist()) & set(b[:10].tolist())) / 10 for a, b in zip(ids, gt, strict=True)]))


# ----- data ------------------------------------------------------------------------------------
def load_data(path: str | None, n: int, nq: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    if path is None:
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n + nq, 384)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x[:n], x[n:], f"random unit vectors {n}x384"
    p = Path(path)
    if p.is_dir():
        base = np.load(p / "base.npy", mmap_mode="r")[:n].astype(np.float32)
        queries = np.load(p / "queries.npy", mmap_mode="r")[:nq].astype(np.float32)
        label = f"{p.name} {base.shape[0]}x{base.shape[1]}"
    else:
        x = np.load(p, mmap_mode="r")
        base = np.asarray(x[:n], dtype=np.float32)
        queries = np.asarray(x[n : n + nq], dtype=np.float32)
        if queries.shape[0] == 0:
            raise SystemExit(f"{p} has no rows left for queries after the first {n}")
        label = f"{p.name} {base.shape[0]}x{base.shape[1]}"
    return np.ascontiguousarray(base), np.ascontiguousarray(queries), label


# ----- the two sides ---------------------------------------------------------------------------
def build_method(name: str, params: dict[str, Any], base: np.ndarray, queries: np.ndarray, k: int,
                 metric: str, search_params: dict[str, Any] | None = None
                 ) -> tuple[Callable[[], Any], float, np.ndarray, Method]:
    """(search closure, analytic bytes per vector, ids, index) of a registered method."""
    cls = METHODS[name]
    index = cls(base.shape[1], metric, **params)
    index.set_num_threads(1)
    index.fit(base)
    index.add(base)
    limit_threads()
    sp = search_params or {}
    _, ids = index.search(queries, k, **sp)
    return ((lambda: index.search(queries, k, **sp)), float(cls.bytes_per_vector(base.shape[1], base.shape[0], **params)),
            ids, index)


_REF_CACHE: dict[tuple, tuple[str, Callable[[], Any], np.ndarray, Callable[[int], Any]]] = {}
METHODS: dict[str, type[Method]] = {}


def build_reference(kind: str, bits: int, base: np.ndarray, queries: np.ndarray, k: int,
                    metric: str) -> tuple[str, Callable[[], Any], np.ndarray, Callable[[int], Any]]:
    """faiss kernel (label, batch search, ids, single-query search of query i): ``binary`` (IndexBinaryFlat with ``bits`` bits) or ``sq`` (SQ4/SQ8 flat)."""
    d = base.shape[1]
    key = (kind, bits)
    if key in _REF_CACHE:
        return _REF_CACHE[key]
    if kind == "binary":
        label = f"faiss IndexBinaryFlat({bits} bits)"
        # sign bits of a random projection: the content is irrelevant to Hamming scan speed,
        # the ids give a (weak) recall reference
        proj = np.random.default_rng(1).standard_normal((d, bits)).astype(np.float32)
        index = faiss.IndexBinaryFlat(bits)
        index.add(np.packbits(base @ proj > 0, axis=1))
        xq = np.packbits(queries @ proj > 0, axis=1)
    else:
        qt = {4: faiss.ScalarQuantizer.QT_4bit, 8: faiss.ScalarQuantizer.QT_8bit}[bits]
        label = f"faiss IndexScalarQuantizer(QT_{bits}bit) flat"
        mt = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        index = faiss.IndexScalarQuantizer(d, qt, mt)
        index.train(base)
        index.add(base)
        xq = queries
    limit_threads()
    _, ids = index.search(xq, k)
    _REF_CACHE[key] = (label, lambda: index.search(xq, k), ids, lambda i: index.search(xq[i : i + 1], k))
    return _REF_CACHE[key]


def pairs(d: int, registered: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any], str, int]]:
    """(method, build params, search params, reference kind, reference bits)."""
    out: list[tuple[str, dict[str, Any], dict[str, Any], str, int]] = []
    if "lvq" in registered:
        out.append(("lvq", {"bits1": 8}, {}, "sq", 8))
    for u, bits in [(1, 1), (2, 1), (4, 1), (2, 2)]:
        # auto: the compiled kernel for single queries, popcount (one plane) or GEMM for the batch
        out.append(("bebr-residual", {"u": u, "bits": bits}, {}, "binary", d * u * bits))
    for c in (64, 128, 256, d):
        out.append(("itq", {"bits": c, "rerank": 0}, {}, "binary", c))
    for b in (4, 8):
        out.append(("osq", {"bits_per_vector": d * b}, {}, "sq", b))
        out.append(("nupes", {"bits": b}, {}, "sq", b))
        out.append(("kvquant-nuq", {"bits": b, "outlier_frac": 0.01}, {}, "sq", b))
    return [p for p in out if p[0] in registered]


def markdown(rows: list[dict[str, Any]], label: str, k: int, nq: int, argv: list[str], blas: str,
             load: str = "") -> str:
    lines = [
        "# Scan speed: custom scans vs the closest faiss kernel",
        "",
        f"Data: {label}; {nq} queries, k={k}; one thread (faiss OpenMP and BLAS). QPS: best of",
        "batched searches timed alternately with the reference. ratio = qps / reference_qps",
        "(aim: >= 0.5). Single-query latency: p50 over the first queries searched one at a time, each",
        "right after the reference's search of the same query; latency_ratio = p50_ms / reference_p50_ms",
        "(aim: <= 2); numpy_p50_ms: the method's numpy (GEMM) scan, the path before the compiled",
        "small-batch kernels, on fewer queries; recall_at_10 is the batched search's, and",
        "single_same_ids the mean fraction of its top-10 ids that the single-query path returns on",
        "the timed queries (1.0000: the same results). Produced by",
        f"`python benchmarks/scan_speed.py {' '.join(argv)}`.".replace(" `", "`"),
        "",
        "Single-query paths (search parameter `kernel=\"auto\"`): nupes / kvquant-nuq with 1-, 2- or",
        "4-bit codes: the certified fast-scan (`methods/_fastscan.py`: AVX2 byte-shuffle sums of uint8",
        "tables, then exact re-scoring of every vector the quantization bound cannot rule out);",
        "osq and 8-bit codes: the exact per-query lookup-table kernel; lvq: integer dot products;",
        "bebr-residual: popcount over all plane pairs with the top-k heap in the kernel.",
        "",
        "The machine is shared with other jobs (timings are noisy; both sides of a ratio are timed",
        f"alternately){load}. BLAS: {blas}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r[c]
            cells.append(f"{v:.4f}" if isinstance(v, float) and c == "single_same_ids"
                         else f"{v:.3f}" if isinstance(v, float) and c in ("ratio", "recall_at_10", "reference_recall_at_10",
                                                                         "p50_ms", "reference_p50_ms", "numpy_p50_ms")
                         else f"{v:.1f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="cached embeddings (.npy) or a folder with base.npy and queries.npy")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--metric", choices=["ip", "l2"], default="ip")
    ap.add_argument("--methods", nargs="*", help="only these methods")
    ap.add_argument("--out", default=str(REPO / "results"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-queries", type=int, default=200, help="single queries timed per pair")
    ap.add_argument("--numpy-latency-queries", type=int, default=10,
                    help="single queries timed on the numpy scan (0: skip)")
    args = ap.parse_args(argv)
    shown_argv = list(sys.argv[1:] if argv is None else argv)

    limit_threads()
    METHODS.update(load_methods())
    base, queries, label = load_data(args.data, args.n, args.nq, args.seed)
    gt = exact_knn(base, queries, args.k, args.metric)[1]
    registered = METHODS
    if "lvq" not in registered:
        print("lvq is not registered: skipping LVQ-8 vs SQ8", file=sys.stderr)
    todo = pairs(base.shape[1], registered)
    if args.methods:
        todo = [p for p in todo if p[0] in args.methods]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = os.getloadavg()[0]
    cpu = cpu_model()
    rows = []
    for name, params, sparams, kind, bits in todo:
        try:
            search, bpv, ids, index = build_method(name, params, base, queries, args.k, args.metric, sparams)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other methods
            print(f"{name} {params}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        ref, ref_search, ref_ids, ref_single = build_reference(kind, bits, base, queries, args.k, args.metric)
        nlat = min(args.latency_queries, queries.shape[0])
        p50, ref_p50 = interleaved_latency(single_query(index, queries, args.k, sparams), ref_single, nlat)
        numpy_p50: float | str = ""
        nnp = min(args.numpy_latency_queries, queries.shape[0])
        if name in KERNEL_METHODS and nnp:
            # the path small batches took before the compiled kernels (bebr: popcount for <= 4 queries)
            np_sp = {**sparams, "kernel": "popcount" if name == "bebr-residual" else "numpy"}
            numpy_p50 = round(interleaved_latency(single_query(index, queries, args.k, np_sp), ref_single, nnp)[0], 3)
        qps, ref_qps = interleaved_qps(search, ref_search, queries.shape[0])
        same = same_ids(index, queries[:nlat], args.k, sparams, ids[:nlat])
        shown = {**params, **sparams}
        row = {
            "method": name,
            "params": " ".join(f"{k}={v}" for k, v in shown.items()),
            "bytes_per_vector": round(bpv, 1),
            "p50_ms": round(p50, 3),
            "reference_p50_ms": round(ref_p50, 3),
            "latency_ratio": round(p50 / ref_p50, 2),
            "numpy_p50_ms": numpy_p50,
            "qps": round(qps, 1),
            "reference": ref,
            "reference_qps": round(ref_qps, 1),
            "ratio": round(qps / ref_qps, 3),
            "recall_at_10": round(recall10(ids, gt), 3),
            "reference_recall_at_10": round(recall10(ref_ids, gt), 3),
            "single_same_ids": round(same, 4),
            "cpu_model": cpu,
            "date": date,
        }
        print(f"{name:14s} {row['params']:32s} p50 {p50:8.3f} ms vs {ref_p50:7.3f} ({row['latency_ratio']:.2f}x; "
              f"numpy {numpy_p50}) | {qps:9.1f} qps vs {ref:40s} {ref_qps:9.1f}  ratio {row['ratio']:.2f}", flush=True)
        rows.append(row)
    out = Path(args.out)
    csv_lines = [",".join(COLUMNS)] + [",".join(_csv(r[c]) for c in COLUMNS) for r in rows]
    atomic_write_text(out / "scan_speed.csv", "\n".join(csv_lines) + "\n")
    load = f"; load average (1 min) {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end, {os.cpu_count()} CPUs"
    atomic_write_text(out / "scan_speed.md", markdown(rows, label, args.k, queries.shape[0], shown_argv, _blas_text(),
                                                      load))
    print(f"wrote {out / 'scan_speed.csv'} and {out / 'scan_speed.md'}")
    return 0


def _blas_text() -> str:
    """The BLAS libraries that ran (threadpoolctl), in a few words."""
    info = blas_info()
    libs = [f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')} kernel, "
            f"{lib.get('num_threads')} thread(s))" if "error" not in lib else lib["error"] for lib in info["libraries"]]
    env = ", ".join(f"{k}={v}" for k, v in sorted(info["env"].items()))
    return "; ".join(libs) + (f"; {env}" if env else "")


def _csv(v: Any) -> str:
    s = str(v)
    return f'"{s}"' if ("," in s or '"' in s) else s


if __name__ == "__main__":
    sys.exit(main())
