"""Pareto plots (matplotlib, PNG and SVG): quality vs bytes per vector, and quality vs QPS."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.io import atomic_path  # noqa: E402
from harness.leaderboard import current_runs, quality_metric  # noqa: E402

LABELS = {"ndcg_at_10": "nDCG@10", "recall_at_10": "recall@10"}


def pareto_front(x: np.ndarray, y: np.ndarray, *, smaller_x_better: bool) -> np.ndarray:
    """Indices of the points no other point beats on both x and y, ordered by x."""
    order = np.lexsort((-y, x if smaller_x_better else -x))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    front = np.array(front, dtype=int)
    return front[np.argsort(x[front])] if front.size else front


def _style(methods: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab20")
    markers = "osD^v<>pPX*h"
    return {m: (cmap(i % 20), markers[i % len(markers)]) for i, m in enumerate(sorted(methods))}


def plot_dataset(df: pd.DataFrame, dataset: str, out_dir: str | Path, fingerprint: str | None = None) -> list[Path]:
    runs = current_runs(df, dataset, fingerprint)
    if runs.empty:
        return []
    metric = quality_metric(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    style = _style(list(runs["method"].unique()))
    written = []
    for name, xcol, xlabel, smaller_better in (
        ("quality_vs_bytes", "bytes_per_vector", "measured RAM bytes per vector (log scale)", True),
        ("quality_vs_qps", "qps_1t", "queries per second, one thread (log scale)", False),
    ):
        fig, ax = plt.subplots(figsize=(9, 6))
        for method, g in runs.groupby("method"):
            x, y = g[xcol].to_numpy(float), g[metric].to_numpy(float)
            colour, marker = style[method]
            ax.scatter(x, y, color=colour, marker=marker, s=14, alpha=0.35)
            front = pareto_front(x, y, smaller_x_better=smaller_better)
            ax.plot(x[front], y[front], color=colour, marker=marker, ms=5, lw=1.5, label=method)
        ax.set_xscale("log", base=2 if xcol == "bytes_per_vector" else 10)
        if xcol == "bytes_per_vector" and "bytes_unit" in runs and (runs["bytes_unit"] == "document").any():
            xlabel = xlabel.replace("per vector", "per document")  # the multi-vector track's ladder
        ax.set_xlabel(xlabel)
        ax.set_ylabel(LABELS.get(metric, metric))
        n, d = int(runs["n"].iloc[0]), int(runs["dim"].iloc[0])
        ax.set_title(f"{dataset} (n={n:,}, d={d}): {LABELS.get(metric, metric)} vs {xlabel.split(' (')[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2, loc="lower right")
        fig.tight_layout()
        for ext in ("png", "svg"):
            path = out_dir / f"{name}.{ext}"
            with atomic_path(path, suffix=f".{ext}") as tmp:
                fig.savefig(tmp, dpi=110)
            written.append(path)
        plt.close(fig)
    return written
