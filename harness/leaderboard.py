"""Leaderboards: per data set and budget, each method's best configuration.

Quality is nDCG@10 where the data set has relevance judgments, else recall@10 against exact
neighbours. A configuration competes at budget B when its *measured* RAM bytes per vector is at
most B (plus :data:`PLACEMENT_SLACK` for constant-size object headers, e.g. faiss's 45-byte index
header, which would otherwise keep exact float32 out of the 4·d budget). Ties on quality are
broken by single-thread QPS.
"""

from __future__ import annotations

import json

import pandas as pd

from harness.io import atomic_write_text
from harness.store import latest

#: bytes per vector allowed over a budget for constant-size headers (45 B / 10,000 vectors ≈ 0.005)
PLACEMENT_SLACK = 0.5

COLUMNS = [
    "budget", "ratio_to_float32", "rank", "method", "build_params", "search_params", "quality_metric",
    "quality", "recall_at_10", "qps_1t", "latency_p99_ms", "bytes_per_vector", "build_s", "config_hash",
]


def quality_metric(df: pd.DataFrame) -> str:
    if "ndcg_at_10" in df and df["ndcg_at_10"].notna().any():
        return "ndcg_at_10"
    return "recall_at_10"


def current_runs(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """OK runs of the data set's most recent fingerprint, one row per configuration."""
    if df.empty or "dataset" not in df:
        return df
    sub = df[(df["dataset"] == dataset) & (df["status"] == "ok")]
    if sub.empty:
        return sub
    newest_fp = sub.sort_values("created_utc")["dataset_fingerprint"].iloc[-1]
    return latest(sub[sub["dataset_fingerprint"] == newest_fp])


def leaderboard(df: pd.DataFrame, dataset: str, budgets: tuple[float, ...]) -> pd.DataFrame:
    runs = current_runs(df, dataset)
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    metric = quality_metric(runs)
    rows = []
    for budget in budgets:
        fit = runs[runs["bytes_per_vector"] <= budget + PLACEMENT_SLACK]
        if fit.empty:
            continue
        best = (fit.assign(quality=fit[metric])
                .sort_values(["quality", "qps_1t"], ascending=[False, False])
                .drop_duplicates("method"))
        for rank, (_, r) in enumerate(best.iterrows(), start=1):
            rows.append({
                "budget": budget,
                "ratio_to_float32": budget / r["float32_bytes"],
                "rank": rank,
                "method": r["method"],
                "build_params": r["build_params"],
                "search_params": r["search_params"],
                "quality_metric": metric,
                "quality": r["quality"],
                "recall_at_10": r["recall_at_10"],
                "qps_1t": r["qps_1t"],
                "latency_p99_ms": r["latency_p99_ms"],
                "bytes_per_vector": r["bytes_per_vector"],
                "build_s": r["train_s"] + r["build_s"],
                "config_hash": r["config_hash"],
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def _params(text: str) -> str:
    d = json.loads(text) if text else {}
    return ",".join(f"{k}={v}" for k, v in d.items()) or "-"


def to_markdown(board: pd.DataFrame, top: int | None = None) -> str:
    if board.empty:
        return "_no stored runs_\n"
    metric = board["quality_metric"].iloc[0]
    shown = board if top is None else board[board["rank"] <= top]
    table = pd.DataFrame({
        "budget B/vec": shown["budget"].map(lambda b: f"{b:g}"),
        "×float32": shown["ratio_to_float32"].map(lambda r: f"{r:.3f}"),
        "#": shown["rank"],
        "method": shown["method"],
        "build": shown["build_params"].map(_params),
        "search": shown["search_params"].map(_params),
        metric.replace("_at_", "@"): shown["quality"].map(lambda v: f"{v:.4f}"),
        "recall@10": shown["recall_at_10"].map(lambda v: f"{v:.4f}"),
        "QPS (1 thread)": shown["qps_1t"].map(lambda v: f"{v:,.0f}"),
        "p99 ms": shown["latency_p99_ms"].map(lambda v: f"{v:.3f}"),
        "measured B/vec": shown["bytes_per_vector"].map(lambda v: f"{v:.1f}"),
        "build s": shown["build_s"].map(lambda v: f"{v:.1f}"),
    })
    if metric == "recall_at_10":
        table = table.drop(columns="recall@10", errors="ignore")
    return table.to_markdown(index=False) + "\n"


def save(board: pd.DataFrame, out_dir, dataset: str) -> tuple[str, str]:
    csv_path = f"{out_dir}/{dataset}.csv"
    md_path = f"{out_dir}/{dataset}.md"
    atomic_write_text(csv_path, board.to_csv(index=False))
    atomic_write_text(md_path, f"# Leaderboard: {dataset}\n\n" + to_markdown(board))
    return csv_path, md_path
