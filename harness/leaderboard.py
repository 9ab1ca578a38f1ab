"""Leaderboards: per data set and budget, each entry's best configuration, ranked honestly.

An *entry* is a method, or ``method[variant]`` for a named departure from the paper (shown
beside the faithful one). Quality is nDCG@10 where the data set has relevance judgments, else
recall@10 against exact neighbours; both the quality column and recall@10 are always shown, and
Recall@100 against the judgments beside nDCG@10.

Placement: a configuration competes at budget B when its *measured* RAM bytes per vector is at most
B (plus :data:`PLACEMENT_SLACK` for constant-size object headers). With ``at_n`` the bytes are
projected to a collection of ``at_n`` vectors from the measured split: codes and structure per
vector as measured, shared parts (codebooks, rotations) amortised over ``at_n`` instead of n.
A budget where nothing fits is shown as such, with the smallest configuration and its size.

Ranks: an entry's rank is 1 + the number of entries that the paired sign-flip test over the same
queries (:mod:`harness.uncertainty`, p < 0.05) finds significantly better; so entries the test
cannot separate share a rank, and none is ranked below an entry that is not significantly better
than it. Entries the test cannot separate from the best are marked ``≈1``. Within a rank, entries
are listed by quality.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from harness import uncertainty as unc
from harness.io import atomic_write_text
from harness.method import PAPER_VARIANT, VARIANT_PARAM
from harness.store import latest

#: bytes per vector allowed over a budget for constant-size headers (45 B / 10,000 vectors ≈ 0.005)
PLACEMENT_SLACK = 0.5

COLUMNS = [
    "budget", "budget_ratio", "rank", "tied_with_best", "p_vs_best", "entry", "method", "variant",
    "build_params", "search_params", "quality_metric", "quality", "recall_at_10", "qrels_recall_at_100",
    "qps_1t", "latency_p99_ms", "bytes_per_vector", "bytes_projected", "memory_flag", "build_s",
    "config_hash", "fits", "note",
    # two-tier RAM + disk (BiDR): disk bytes are not on the ladder; latency with a warm / cold page cache
    "disk_bytes_per_vector", "latency_warm_p50_ms", "latency_cold_p50_ms",
    # multi-vector: "document" when bytes_per_vector counts bytes per document (harness/tracks/multivector.py)
    "bytes_unit",
    # layers x dimensions: the encoder depth of the data set's vectors and the query encoding cost it implies
    "encoder_layer", "query_encode_ms_per_query", "query_encode_ratio_to_full",
]
TWO_TIER = ("disk_bytes_per_vector", "latency_warm_p50_ms", "latency_cold_p50_ms")
ENCODER = ("encoder_layer", "query_encode_ms_per_query", "query_encode_ratio_to_full")


def quality_metric(df: pd.DataFrame) -> str:
    if "ndcg_at_10" in df and df["ndcg_at_10"].notna().any():
        return "ndcg_at_10"
    return "recall_at_10"


def select_runs(df: pd.DataFrame, dataset: str | None = None, fingerprint: str | None = None) -> pd.DataFrame:
    """OK runs of one data set, one row per configuration.

    By ``fingerprint`` (the data set's identity: runs are keyed by content, whatever name they were
    run under), else by name, taking that name's most recent identity.
    """
    if df.empty or "dataset" not in df:
        return df
    ok = df[df["status"] == "ok"]
    if "filter" in ok:  # filtered-search rows answer another question (harness/filtered_report.py)
        ok = ok[ok["filter"].isna() | (ok["filter"] == "")]
    if fingerprint is not None:
        sub = ok[ok["dataset_fingerprint"] == fingerprint]
    else:
        sub = ok[ok["dataset"] == dataset]
        if sub.empty:
            return sub
        newest_fp = sub.sort_values("created_utc", kind="mergesort")["dataset_fingerprint"].iloc[-1]
        sub = ok[ok["dataset_fingerprint"] == newest_fp]
    sub = latest(sub)
    if dataset is not None and not sub.empty:
        sub = sub.assign(dataset=dataset)  # shown under the name the user gave
    return sub


def current_runs(df: pd.DataFrame, dataset: str, fingerprint: str | None = None) -> pd.DataFrame:
    """OK runs of the data set's current identity (see :func:`select_runs`)."""
    return select_runs(df, dataset, fingerprint)


def variant_of(row: pd.Series | dict[str, Any]) -> str:
    v = row.get("variant") if hasattr(row, "get") else None
    if isinstance(v, str) and v:
        return v
    try:
        return str(json.loads(row.get("build_params") or "{}").get(VARIANT_PARAM, PAPER_VARIANT))
    except (TypeError, ValueError):
        return PAPER_VARIANT


def entry_name(method: str, variant: str) -> str:
    return method if variant in ("", PAPER_VARIANT) else f"{method}[{variant}]"


def placed_bytes(runs: pd.DataFrame, at_n: int | None) -> pd.Series:
    """Bytes per vector as placed: measured, or projected to ``at_n`` vectors from the measured split."""
    if at_n is None:
        return runs["bytes_per_vector"].astype(float)
    per_vector = (runs["codes_bytes"].astype(float) + runs["structure_bytes"].astype(float)) / runs["n"].astype(float)
    return per_vector + runs["shared_bytes"].astype(float) / float(at_n)


def _per_query(row: pd.Series, metric: str) -> np.ndarray:
    return unc.per_query(row, metric)


class _Significance:
    """Paired tests between configurations, cached by their config hashes."""

    def __init__(self, metric: str, alpha: float = unc.ALPHA):
        self.metric, self.alpha = metric, alpha
        self._p: dict[tuple[str, str], float] = {}

    def p(self, a: pd.Series, b: pd.Series) -> float:
        key = (a["config_hash"], b["config_hash"])
        if key not in self._p:
            x, y = _per_query(a, self.metric), _per_query(b, self.metric)
            self._p[key] = unc.paired_p_value(x, y) if x.size and x.size == y.size else float("nan")
        return self._p[key]

    def separable(self, better: pd.Series, worse: pd.Series) -> bool:
        """Whether ``better`` is significantly better than ``worse``. Without per-query values (old
        rows) a strictly higher mean counts, as before."""
        p = self.p(better, worse)
        if np.isnan(p):
            return bool(better["quality"] > worse["quality"])
        return bool(p < self.alpha and better["quality"] > worse["quality"])


def rank_entries(best: pd.DataFrame, sig: _Significance) -> pd.DataFrame:
    """Rank = 1 + the number of entries significantly better than this one (paired test).

    Entries the test cannot separate share a rank; an entry is never ranked below one that is not
    significantly better than it. ``tied_with_best``: the test cannot separate it from #1.
    """
    best = best.sort_values(["quality", "qps_1t"], ascending=[False, False]).reset_index(drop=True)
    rows = [best.iloc[i] for i in range(len(best))]
    ranks = [1 + sum(sig.separable(rows[j], rows[i]) for j in range(i)) for i in range(len(rows))]
    p_best = [float("nan")] + [sig.p(rows[0], rows[i]) for i in range(1, len(rows))]
    tied = [False] + [not sig.separable(rows[0], rows[i]) for i in range(1, len(rows))]
    best = best.assign(rank=ranks, p_vs_best=p_best, tied_with_best=tied)
    return best.sort_values(["rank", "quality"], ascending=[True, False], kind="mergesort")


def smallest_configuration(runs: pd.DataFrame, placed: pd.Series) -> tuple[str, str, float]:
    i = placed.idxmin()
    r = runs.loc[i]
    return entry_name(r["method"], variant_of(r)), r["build_params"], float(placed.loc[i])


def leaderboard(df: pd.DataFrame, dataset: str, budgets: tuple[float, ...], *, at_n: int | None = None,
                fingerprint: str | None = None, alpha: float = unc.ALPHA) -> pd.DataFrame:
    """Each entry's best configuration per budget, ranked with ties (see the module docstring)."""
    runs = select_runs(df, dataset, fingerprint)
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    metric = quality_metric(runs)
    runs = runs[runs[metric].notna()] if metric in runs else runs.iloc[0:0]
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = runs.assign(
        quality=runs[metric].astype(float),
        placed=placed_bytes(runs, at_n),
        variant=[variant_of(r) for _, r in runs.iterrows()],
    )
    runs["entry"] = [entry_name(m, v) for m, v in zip(runs["method"], runs["variant"], strict=True)]
    for col in ("recall_at_10", "qrels_recall_at_100", "memory_flag", "latency_p99_ms", *TWO_TIER, *ENCODER):  # absent in odd rows
        if col not in runs:
            runs[col] = np.nan
    sig = _Significance(metric, alpha)
    rows: list[dict[str, Any]] = []
    float32 = float(runs["float32_bytes"].iloc[0])
    for budget in budgets:
        fit = runs[runs["placed"] <= budget + PLACEMENT_SLACK]
        if fit.empty:
            name, build, size = smallest_configuration(runs, runs["placed"])
            params = _params(build)
            rows.append({"budget": budget, "budget_ratio": budget / float32, "fits": False,
                         "quality_metric": metric, "bytes_projected": at_n is not None,
                         "note": f"nothing fits: the smallest configuration is {name}"
                                 + (f" ({params})" if params != "-" else "") + f" at {size:.1f} B/vector"})
            continue
        best = (fit.sort_values(["quality", "qps_1t"], ascending=[False, False])
                .drop_duplicates("entry"))
        for _, r in rank_entries(best, sig).iterrows():
            rows.append({
                "budget": budget, "budget_ratio": budget / float32, "rank": int(r["rank"]),
                "tied_with_best": bool(r["tied_with_best"]), "p_vs_best": r["p_vs_best"],
                "entry": r["entry"], "method": r["method"], "variant": r["variant"],
                "build_params": r["build_params"], "search_params": r["search_params"],
                "quality_metric": metric, "quality": r["quality"], "recall_at_10": r["recall_at_10"],
                "qrels_recall_at_100": r["qrels_recall_at_100"], "qps_1t": r["qps_1t"],
                "latency_p99_ms": r["latency_p99_ms"], "bytes_per_vector": r["placed"],
                "bytes_projected": at_n is not None, "memory_flag": bool(pd.notna(r["memory_flag"]) and r["memory_flag"]),
                "build_s": r["train_s"] + r["build_s"], "config_hash": r["config_hash"], "fits": True,
                "note": "", **{c: r[c] for c in TWO_TIER}, "bytes_unit": r.get("bytes_unit", ""),
                **{c: r[c] for c in ENCODER},
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def _params(text: str) -> str:
    try:
        d = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return str(text)
    return ",".join(f"{k}={v}" for k, v in d.items() if k != "variant") or "-"


def _rank_label(r: pd.Series) -> str:
    if not r["fits"]:
        return "-"
    return "≈1" if r["tied_with_best"] and r["rank"] == 1 else str(int(r["rank"]))


def _num(v: Any, fmt: str) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if np.isnan(f) else format(f, fmt)


def to_markdown(board: pd.DataFrame, top: int | None = None) -> str:
    """The leaderboard as a Markdown table: the quality column on every data set, recall@10, and
    Recall@100 against judgments where they exist; ``≈1`` marks entries tied with the best; a
    budget where nothing fits says so."""
    if board.empty:
        return "_no stored runs_\n"
    metric = board["quality_metric"].iloc[0]
    shown = board if top is None else board[(board["rank"] <= top) | ~board["fits"].astype(bool)]
    projected = bool(board["bytes_projected"].fillna(False).any())
    fits = shown["fits"].astype(bool)
    table = pd.DataFrame({
        "budget B/vec": shown["budget"].map(lambda b: f"{b:g}"),
        "×float32": shown["budget_ratio"].map(lambda r: f"{r:.3f}"),
        "#": [_rank_label(r) for _, r in shown.iterrows()],
        "method": [e if f else "(nothing fits)" for e, f in zip(shown["entry"], fits, strict=True)],
        "build": [_params(b) if f else n for b, n, f in zip(shown["build_params"], shown["note"], fits, strict=True)],
        "search": [_params(s) if f else "" for s, f in zip(shown["search_params"], fits, strict=True)],
    })
    if metric != "recall_at_10":
        table[metric.replace("_at_", "@")] = shown["quality"].map(lambda v: _num(v, ".4f"))
        if shown["qrels_recall_at_100"].notna().any():
            table["Recall@100 (judged)"] = shown["qrels_recall_at_100"].map(lambda v: _num(v, ".4f"))
    table["recall@10"] = shown["recall_at_10"].map(lambda v: _num(v, ".4f"))
    table["QPS (1 thread)"] = shown["qps_1t"].map(lambda v: _num(v, ",.0f"))
    table["p99 ms"] = shown["latency_p99_ms"].map(lambda v: _num(v, ".3f"))
    table["projected B/vec" if projected else "measured B/vec"] = shown["bytes_per_vector"].map(lambda v: _num(v, ".1f"))
    table["build s"] = shown["build_s"].map(lambda v: _num(v, ".1f"))
    if all(c in shown for c in TWO_TIER) and shown["disk_bytes_per_vector"].notna().any():  # two-tier rows
        table["disk B/vec"] = shown["disk_bytes_per_vector"].map(lambda v: _num(v, ".0f"))
        table["warm p50 ms"] = shown["latency_warm_p50_ms"].map(lambda v: _num(v, ".3f"))
        table["cold p50 ms"] = shown["latency_cold_p50_ms"].map(lambda v: _num(v, ".3f"))
    if all(c in shown for c in ENCODER) and pd.to_numeric(shown["encoder_layer"], errors="coerce").notna().any():
        table["encoder layer"] = shown["encoder_layer"].map(lambda v: _num(v, ".0f"))  # a layer's data set
        table["query encode ms"] = shown["query_encode_ms_per_query"].map(lambda v: _num(v, ".2f"))
        table["× full encoder"] = shown["query_encode_ratio_to_full"].map(lambda v: _num(v, ".2f"))
    flags = shown["memory_flag"].fillna(False).astype(bool)
    if flags.any():
        table["memory check"] = ["RAM below RSS growth" if f else "" for f in flags]
    if (shown["bytes_unit"] == "document").any():  # the multi-vector track's ladder is bytes per document
        table = table.rename(columns=lambda c: c.replace("B/vec", "B/doc"))
    return table.to_markdown(index=False) + "\n"


def legend(board: pd.DataFrame, at_n: int | None = None) -> str:
    """One paragraph saying how to read the ranks (and the projection, if any)."""
    text = ("# : 1 + the number of entries significantly better (paired sign-flip test over the same queries, "
            "p < 0.05); entries the test cannot separate share a rank, and ≈1 marks those it cannot separate "
            "from the best.")
    if at_n:
        text += (f" Bytes are projected to n = {at_n:,} from the measured split (codes and structure per vector "
                 f"as measured, shared parts amortised over {at_n:,}).")
    return text + "\n"


def save(board: pd.DataFrame, out_dir, dataset: str, at_n: int | None = None) -> tuple[str, str]:
    csv_path = f"{out_dir}/{dataset}.csv"
    md_path = f"{out_dir}/{dataset}.md"
    atomic_write_text(csv_path, board.to_csv(index=False))
    atomic_write_text(md_path, f"# Leaderboard: {dataset}\n\n" + to_markdown(board) + "\n" + legend(board, at_n))
    return csv_path, md_path
