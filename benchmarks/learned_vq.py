"""Benchmark of the learned PQs (jpq, repconc, distill-vq) against the opq-pq they start from.

For every data set and m (8-bit codes: m bytes of codes per vector) the script builds ``opq-pq``
(the initialisation) and each learned method in its own process (so that each one's peak RSS is its
own), on 2 threads, searches the held-out *test* queries for 10 results and stores the per-query
quality: recall@10 against exact neighbours, and nDCG@10 against the judgments where the data set
has them. The note pairs each learned method with its initialisation on the same queries
(:func:`harness.uncertainty.paired_test`: sign-flip p-value and a bootstrap interval of the
difference) and lists training time, peak RSS and the training notes.

    python3 -m benchmarks.learned_vq run            # all runs (skips those already stored)
    python3 -m benchmarks.learned_vq note           # writes results/learned_vq.md from the stored runs

Runs are stored as JSON under ``results/learned_vq/`` (one file per data set, method and m).
Nothing is tuned on the test queries: the methods select their epoch on held-out *training*
queries only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "learned_vq"
NOTE = REPO / "results" / "learned_vq.md"
DATASETS = ("wordnet", "scifact")
MS = (32, 48, 64)
LEARNED = ("jpq", "repconc", "distill-vq")
THREADS = 2
K = 10


def _run_one(dataset: str, method: str, m: int, variant: str | None) -> dict[str, Any]:
    """Build one configuration in this process and measure it on the test queries."""
    import faiss

    from harness.loaders import load_dataset
    from harness.metrics import qrels_metrics, recall_with_ties
    from harness.registry import get_method

    ds = load_dataset(dataset)
    base = np.ascontiguousarray(ds.base, dtype=np.float32)
    queries = np.ascontiguousarray(ds.queries, dtype=np.float32)
    cls = get_method(method)
    params: dict[str, Any] = {"m": m, "nbits": 8}
    if variant:
        params["variant"] = variant
    faiss.omp_set_num_threads(THREADS)
    index = cls(ds.dim, ds.method_metric, **params)
    index.expected_n = ds.n
    index.set_num_threads(THREADS)
    t0 = time.perf_counter()
    index.fit(base, ds.train_queries if cls.uses_train_queries else None)
    fit_s = time.perf_counter() - t0
    index.add(base)
    index.set_num_threads(1)
    _, ids = index.search(queries, K)
    out: dict[str, Any] = {
        "dataset": dataset, "method": method, "variant": variant or "paper", "m": m, "n": ds.n,
        "fit_s": fit_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bytes_per_vector": index.memory().ram / ds.n,
        "bytes_formula": cls.bytes_per_vector(ds.dim, ds.n, **params),
        "code_bytes": m, "threads": THREADS,
        "training_notes": str(getattr(index, "training_notes", "")),
        "init_digest": getattr(index, "init_digest", None),
        "val_history": list(getattr(index, "val_history", [])),
        "loss_history": list(getattr(index, "history", [])),
        "recall_at_10": recall_with_ties(ds.gt_ids, ds.gt_dist, ids, K).tolist(),
        "n_train_queries": 0 if ds.train_queries is None else len(ds.train_queries),
    }
    if method == "opq-pq":
        pq = faiss.downcast_index(faiss.downcast_index(index.index).index).pq
        import hashlib

        out["init_digest"] = hashlib.sha256(faiss.vector_to_array(pq.centroids).tobytes()).hexdigest()[:16]
    if ds.has_qrels:
        out["ndcg_at_10"] = qrels_metrics(ds.qrels, ids, ds.query_ids, ds.doc_ids)["ndcg_at_10"].tolist()
    return out


def _path(dataset: str, method: str, m: int, variant: str | None) -> Path:
    tag = method if not variant else f"{method}[{variant}]"
    return OUT / f"{dataset}-{tag}-m{m}.json"


def run(datasets: list[str], ms: list[int], methods: list[str], force: bool) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        for m in ms:
            for spec in ["opq-pq", *methods]:
                method, _, variant = spec.partition("[")
                variant = variant.rstrip("]") or None
                path = _path(dataset, method, m, variant)
                if path.exists() and not force:
                    continue
                t0 = time.time()
                cmd = [sys.executable, "-m", "benchmarks.learned_vq", "one", dataset, method, str(m)]
                if variant:
                    cmd.append(variant)
                res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"FAILED {dataset} {spec} m={m}:\n{res.stderr[-3000:]}", flush=True)
                    continue
                print(f"{dataset} {spec} m={m}: {time.time() - t0:.0f} s", flush=True)


def _one(argv: list[str]) -> None:
    dataset, method, m = argv[0], argv[1], int(argv[2])
    variant = argv[3] if len(argv) > 3 else None
    out = _run_one(dataset, method, m, variant)
    path = _path(dataset, method, m, variant)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)


def note() -> str:
    from harness.uncertainty import bootstrap_ci, paired_test

    runs = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    by = {(r["dataset"], r["method"] if r["variant"] == "paper" else f"{r['method']}[{r['variant']}]", r["m"]): r
          for r in runs}
    lines = [
        "# Learned PQ on frozen embeddings: JPQ, RepCONC, Distill-VQ vs. their opq-pq initialisation",
        "",
        "Generated by `python3 -m benchmarks.learned_vq note` from the runs stored in `results/learned_vq/` "
        "(made by `python3 -m benchmarks.learned_vq run`). Every learned method starts from the `opq-pq` "
        "index with the same m (8-bit codes, the same bytes per vector: m code bytes plus the shared OPQ "
        "rotation and codebooks) and is compared with it on the same held-out test queries. Δ is learned "
        "minus initialisation; the interval is the paired bootstrap 95% interval of Δ and p the two-sided "
        "paired sign-flip p-value (`harness.uncertainty.paired_test`); a difference with p ≥ 0.05 is a tie. "
        "Training uses only the data sets' training queries (WordNet: 2,000 disjoint queries; SciFact: "
        "the 809 queries of qrels/train.tsv) and, for Distill-VQ, training vectors as pseudo-queries; the "
        "relevance signal is the exact neighbours of the frozen embeddings (label-free). Each method keeps "
        "the epoch with the best recall@10 on a held-out fifth of the training queries. Training on "
        f"{THREADS} threads of a 2-core machine shared with other jobs; `fit s` includes the OPQ "
        "initialisation; peak RSS is the whole build process's (data set loading included).",
        "",
    ]
    for dataset in DATASETS:
        metrics = ["recall_at_10"] + (["ndcg_at_10"] if any("ndcg_at_10" in r for r in runs if r["dataset"] == dataset)
                                      else [])
        ms = sorted({r["m"] for r in runs if r["dataset"] == dataset})
        if not ms:
            continue
        lines += [f"## {dataset}", ""]
        if "ndcg_at_10" in metrics:
            exact = _exact_ndcg(dataset)
            gaps = ", ".join(f"m = {m}: {exact - float(np.nanmean(by[(dataset, 'opq-pq', m)]['ndcg_at_10'])):+.4f}"
                             for m in ms if (dataset, "opq-pq", m) in by)
            lines += [f"Exact float32 search scores nDCG@10 = {exact:.4f} here; the gap from the opq-pq "
                      f"initialisation to exact search, what a codebook that reproduced the exact ranking would "
                      f"gain, is {gaps}.", ""]
        head = "| m (code B/vec) | method | measured B/vec |"
        for metric in metrics:
            head += f" {metric} [95% CI] | Δ vs init [95% CI] | p |"
        head += " fit s | peak RSS MB | init = opq-pq |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for m in ms:
            init = by.get((dataset, "opq-pq", m))
            if init is None:
                continue
            names = ["opq-pq"] + sorted({k[1] for k in by if k[0] == dataset and k[2] == m and k[1] != "opq-pq"})
            for name in names:
                r = by.get((dataset, name, m))
                if r is None:
                    continue
                row = f"| {m} | {name} | {r['bytes_per_vector']:.1f} |"
                for metric in metrics:
                    ci = bootstrap_ci(r[metric])
                    row += f" {ci.mean:.4f} [{ci.low:.4f}, {ci.high:.4f}] |"
                    if name == "opq-pq":
                        row += " – | – |"
                    else:
                        t = paired_test(r[metric], init[metric])
                        mark = "**" if t.significant else ""
                        row += f" {mark}{t.diff:+.4f}{mark} [{t.low:+.4f}, {t.high:+.4f}] | {t.p_value:.3g} |"
                same = "–" if name == "opq-pq" else ("yes" if r.get("init_digest") == init.get("init_digest") else "NO")
                row += f" {r['fit_s']:.0f} | {r['peak_rss_mb']:.0f} | {same} |"
                lines.append(row)
        lines += [""]
        lines += ["Training notes (held-out recall@10 on training queries: at init → kept):", ""]
        for m in ms:
            for name in sorted({k[1] for k in by if k[0] == dataset and k[2] == m and k[1] != "opq-pq"}):
                r = by[(dataset, name, m)]
                lines.append(f"* {name}, m = {m}: {r['training_notes']}")
        lines += [""]
    old = [json.loads(p.read_text()) for p in sorted((OUT / "superseded").glob("*.json"))]
    if old:
        lines += [
            "## Superseded runs",
            "",
            "Runs made before a change of the training schedule, kept for the record (the change and why: "
            "`FULL_N` in `methods/_learned_pq.py`; it was decided on held-out *training* queries). Compared "
            "with the current opq-pq runs of the same data set and m.",
            "",
            "| data set | m | method | metric | Δ vs init [95% CI] | p |",
            "|---|---|---|---|---|---|",
        ]
        for r in old:
            init = by.get((r["dataset"], "opq-pq", r["m"]))
            name = r["method"] if r["variant"] == "paper" else f"{r['method']}[{r['variant']}]"
            for metric in ("recall_at_10", "ndcg_at_10"):
                if init is None or metric not in r:
                    continue
                t = paired_test(r[metric], init[metric])
                lines.append(f"| {r['dataset']} | {r['m']} | {name} | {metric} | {t.diff:+.4f} "
                             f"[{t.low:+.4f}, {t.high:+.4f}] | {t.p_value:.3g} |")
        lines += [""]
    lines += [
        "`init = opq-pq`: whether the learned method's initial codebooks are bit-identical to those of the "
        "`opq-pq` build in the row above (same class, parameters, data and seeds).",
        "",
    ]
    return "\n".join(lines)


def _exact_ndcg(dataset: str) -> float:
    """nDCG@10 of exact search (the stored exact neighbours) on the test queries."""
    from harness.loaders import load_dataset
    from harness.metrics import qrels_metrics

    ds = load_dataset(dataset)
    ids = np.ascontiguousarray(ds.gt_ids[:, :K])
    return float(np.nanmean(qrels_metrics(ds.qrels, ids, ds.query_ids, ds.doc_ids)["ndcg_at_10"]))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "one":
        _one(argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["run", "note"])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--m", nargs="+", type=int, default=list(MS))
    ap.add_argument("--methods", nargs="+", default=list(LEARNED))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "run":
        run(args.datasets, args.m, args.methods, args.force)
    else:
        NOTE.write_text(note())
        print(f"wrote {NOTE}")


if __name__ == "__main__":
    main()
