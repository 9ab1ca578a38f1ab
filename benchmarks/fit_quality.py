"""Fit quality of the fitted synthetic generator (issue 13 §3): synthetic against real, same sizes.

Fits the model a ``kind = "fitted"`` manifest declares (default ``synthetic-minilm-1m``) to its
source, draws as many documents and queries as the source has (LID depends on the density of the
sample, so sizes must match), and compares them with the source: spectrum (total variance,
dimensions holding 50/90/99% of the energy, worst error of the cumulative energy curve), norms
before L2-normalisation, LID (MLE, k = 20) of documents and of queries against the documents,
and the query shift statistics of ``vecbudget datasets info``. An isotropic Gaussian of the same
size is shown as the baseline the model must beat.

    OMP_NUM_THREADS=1 python benchmarks/fit_quality.py [-d synthetic-minilm-1m] [--csv results/scale_fit.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import fitted_synthetic as fs  # noqa: E402
from harness.intrinsic import dataset_stats  # noqa: E402
from harness.loaders import cache_root, manifest_for  # noqa: E402


def describe(name: str, docs: np.ndarray, queries: np.ndarray, real_spec: tuple[np.ndarray, np.ndarray],
             raw_norms: np.ndarray | None) -> dict:
    st = dataset_stats(docs, queries, "cosine", k=20, sample=2000)
    sd, sq = fs.spectrum_error(real_spec[0], fs.spectrum(docs, True)), fs.spectrum_error(
        real_spec[1], fs.spectrum(queries, True))
    return {
        "vectors": name, "n": docs.shape[0], "nq": queries.shape[0],
        "total_variance_ratio": sd["total_variance_ratio"], "dims50": sd["dims50_synth"],
        "dims90": sd["dims90_synth"], "dims99": sd["dims99_synth"],
        "max_cum_energy_error": sd["max_cum_energy_error"],
        "query_dims90": sq["dims90_synth"], "query_max_cum_energy_error": sq["max_cum_energy_error"],
        "raw_norm_mean": float(raw_norms.mean()) if raw_norms is not None else 1.0,
        "raw_norm_std": float(raw_norms.std()) if raw_norms is not None else 0.0,
        "lid_base_mean": st["lid"]["base_mean"], "lid_base_median": st["lid"]["base_median"],
        "lid_queries_mean": st["lid"]["queries_mean"], "lid_queries_median": st["lid"]["queries_median"],
        "nn1_ratio": st["shift"]["nn1_ratio"], "nnk_ratio": st["shift"]["nnk_ratio"],
        "mean_shift": st["shift"]["mean_shift"], "centroid_cosine_base": st["shift"]["centroid_cosine_base"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-d", "--dataset", default="synthetic-minilm-1m", help="a kind = 'fitted' manifest")
    ap.add_argument("--csv", help="write the table here")
    args = ap.parse_args(argv)
    m = manifest_for(args.dataset)
    o = fs.options({k: v for k, v in m.options.items() if k != "kind"}, m.name)
    docs, queries, _, _, _ = fs.fit_sources(o["source"])
    test_q = queries[: min(len(queries), 5000)]  # the source's test queries come first
    doc_model, query_model, _ = fs.fitted_models(o, cache_root() / "synthetic")
    real_spec = (fs.spectrum(docs, True), fs.spectrum(test_q, True))
    rng = np.random.default_rng(12345)
    synth_docs = doc_model.sample(docs.shape[0], rng)
    synth_q = (query_model or doc_model).sample(test_q.shape[0], rng)
    raw = np.linalg.norm(doc_model.sample(5000, rng, raw=True), axis=1)
    iso = rng.standard_normal((docs.shape[0] + test_q.shape[0], docs.shape[1])).astype(np.float32)
    iso /= np.linalg.norm(iso, axis=1, keepdims=True)
    rows = [describe(f"real ({o['source']})", np.asarray(docs), np.asarray(test_q), real_spec, None),
            describe(f"fitted (clusters={o['clusters']}, local_dim={o['local_dim']})", synth_docs, synth_q,
                     real_spec, raw),
            describe("isotropic Gaussian", iso[: docs.shape[0]], iso[docs.shape[0]:], real_spec, None)]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
