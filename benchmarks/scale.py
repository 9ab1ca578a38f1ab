"""The scale table (issue 13 §3): the same methods at 20k, 117k and 1M vectors, from stored runs.

Reads a results store (the scale track's ``results/scale``, or ``--results-dir``); nothing is measured here and no
number is written by hand. For each size, method and budget it takes the configuration with the
best recall@10 whose measured bytes per vector fit the budget (the leaderboard's placement), and
shows bytes/vector, recall@10, batch QPS (one thread), build time (train + add), search
evaluation time, build peak RSS (fit + add) and the worker's peak RSS, and the data set's
encode and ground-truth times. It then says which sizes (and which methods at a size) have no
stored runs yet, with the command that makes them.

    python benchmarks/scale.py --out results/scale_table.md   # results/scale, suite scale, 64/512/2048 B
    python benchmarks/scale.py -b 128 --results-dir results --suite default

Sizes: ``20k`` = ``wordnet`` (default subset), ``117k`` = ``wordnet`` with ``--full``
(all 117,659 definitions), ``1M`` = ``synthetic-minilm-1m``. ``--size LABEL=DATASET:N`` replaces
them. Rows are matched by data set name and n; where one name has several identities at the same
n, the most recently measured one is used (as the leaderboard does).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.leaderboard import PLACEMENT_SLACK  # noqa: E402
from harness.registry import suite  # noqa: E402
from harness.store import ResultStore, latest  # noqa: E402

#: the scale track's sweep (methods/suites.toml "scale"), stored apart from the published results
TRACK = "--suite scale -b 64 -b 512 -b 2048 --results-dir results/scale"
#: (label, data set name, n, the command that stores its runs)
SIZES = [
    ("20k", "wordnet", 20_000, f"vecbudget run -d wordnet {TRACK}"),
    ("117k", "wordnet", 117_659, f"vecbudget run -d wordnet --full {TRACK}"),
    ("1M", "synthetic-minilm-1m", 1_000_000, f"vecbudget run -d synthetic-minilm-1m {TRACK}"),
]
COLUMNS = ["size", "budget", "method", "build", "search", "B/vec", "recall@10", "QPS (1 thread)", "build s",
           "search s", "build peak RSS MB", "build peak growth MB", "peak RSS MB"]


def _params(text: str) -> str:
    try:
        d = json.loads(text)
    except (TypeError, ValueError):
        return str(text)
    return ",".join(f"{k}={v}" for k, v in d.items() if k != "variant" or v != "paper") or "-"


def runs_at(df: pd.DataFrame, dataset: str, n: int, methods: list[str] | None = None) -> pd.DataFrame:
    """OK runs of ``dataset`` at size ``n`` (of ``methods``, if given), one row per configuration,
    most recent identity."""
    if df.empty or "dataset" not in df:
        return df.iloc[0:0]
    ok = df[(df["dataset"] == dataset) & (df["n"] == n) & (df["status"] == "ok")]
    if methods is not None:
        ok = ok[ok["method"].isin(methods)]
    if ok.empty:
        return ok
    newest_fp = ok.sort_values("created_utc")["dataset_fingerprint"].iloc[-1]
    return latest(ok[ok["dataset_fingerprint"] == newest_fp])


def _num(row: pd.Series, col: str) -> float:
    v = row.get(col, math.nan)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def scale_table(df: pd.DataFrame, sizes: list[tuple[str, str, int, str]], budgets: list[float],
                methods: list[str] | None = None) -> pd.DataFrame:
    """One row per (size, budget, method): its best recall@10 configuration within the budget."""
    out = []
    for label, dataset, n, _ in sizes:
        runs = runs_at(df, dataset, n, methods)
        for budget in budgets:
            fit = runs[runs["bytes_per_vector"] <= budget + PLACEMENT_SLACK]
            for method, group in fit.groupby("method"):
                r = group.sort_values(["recall_at_10", "qps_1t"], ascending=False).iloc[0]
                out.append({
                    "size": label, "budget": budget, "method": method, "build": _params(r["build_params"]),
                    "search": _params(r["search_params"]), "B/vec": _num(r, "bytes_per_vector"),
                    "recall@10": _num(r, "recall_at_10"), "QPS (1 thread)": _num(r, "qps_1t"),
                    "build s": _num(r, "train_s") + _num(r, "build_s"), "search s": _num(r, "search_s"),
                    "build peak RSS MB": _num(r, "build_peak_rss_mb"),
                    "build peak growth MB": _num(r, "build_peak_growth_mb"), "peak RSS MB": _num(r, "peak_rss_mb"),
                })
    table = pd.DataFrame(out, columns=COLUMNS)
    order = {s[0]: i for i, s in enumerate(sizes)}
    if table.empty:
        return table
    table["_o"] = table["size"].map(order)
    return table.sort_values(["budget", "method", "_o"]).drop(columns="_o").reset_index(drop=True)


def dataset_phases(df: pd.DataFrame, sizes: list[tuple[str, str, int, str]],
                   methods: list[str] | None = None) -> list[str]:
    """One line per size with stored runs: its encode and ground-truth times (from the rows)."""
    lines = []
    for label, dataset, n, _ in sizes:
        runs = runs_at(df, dataset, n, methods)
        if runs.empty:
            continue
        enc = runs["encode_s"].dropna() if "encode_s" in runs else pd.Series(dtype=float)
        gt = runs["groundtruth_s"].dropna() if "groundtruth_s" in runs else pd.Series(dtype=float)
        lines.append(f"- {label} ({dataset}, n={n:,}, {runs['nq'].iloc[0]:,} queries, {len(runs)} configurations): "
                     f"encode {enc.iloc[0]:.0f} s, ground truth {gt.iloc[0]:.0f} s" if len(enc) and len(gt) else
                     f"- {label} ({dataset}, n={n:,}, {len(runs)} configurations): encode / ground-truth times "
                     f"not recorded (prepared before they were)")
    return lines


def sweep_times(df: pd.DataFrame, sizes: list[tuple[str, str, int, str]],
                methods: list[str] | None = None) -> list[str]:
    """One line per size: the time its stored rows spent, per phase and per method, and the
    largest worker peak RSS (train and add counted once per build; evaluation once per row)."""
    lines = []
    for label, dataset, n, _ in sizes:
        runs = runs_at(df, dataset, n, methods)
        if runs.empty:
            continue
        builds = runs.drop_duplicates(["method", "build_params"])
        train, add = builds["train_s"].sum(), builds["build_s"].sum()
        search = runs["search_s"].sum()
        per_method = (builds.groupby("method")[["train_s", "build_s"]].sum().sum(axis=1)
                      + runs.groupby("method")["search_s"].sum()).sort_values(ascending=False)
        peak = runs.loc[runs["peak_rss_mb"].idxmax()]
        top, top_method = peak["peak_rss_mb"], peak["method"]
        lines.append(
            f"- {label}: {len(builds)} builds, {len(runs)} rows, {(train + add + search) / 60:.1f} min in the workers "
            f"(train {train / 60:.1f}, add {add / 60:.1f}, evaluation {search / 60:.1f}); by method: "
            + ", ".join(f"{m} {t / 60:.1f}" for m, t in per_method.items())
            + f"; largest worker peak RSS {top:,.0f} MB ({top_method})")
    return lines


def missing(df: pd.DataFrame, sizes: list[tuple[str, str, int, str]], methods: list[str] | None = None) -> list[str]:
    """What the table still lacks: sizes without runs, and methods (of ``methods``, else those
    stored at any size) without runs at a size."""
    per_size = {s[0]: set(runs_at(df, s[1], s[2], methods)["method"]) if not df.empty else set() for s in sizes}
    every = set(methods) if methods is not None else set().union(*per_size.values())
    lines = []
    for label, dataset, n, command in sizes:
        if not per_size[label]:
            lines.append(f"- {label}: no stored runs of {dataset} at n={n:,} — run `{command}`")
        elif every - per_size[label]:
            lines.append(f"- {label}: no runs of {', '.join(sorted(every - per_size[label]))} — run `{command}`")
    return lines


def to_markdown(table: pd.DataFrame) -> str:
    fmt = {"B/vec": "{:.1f}", "recall@10": "{:.4f}", "QPS (1 thread)": "{:,.0f}", "build s": "{:.1f}",
           "search s": "{:.1f}", "build peak RSS MB": "{:,.0f}", "build peak growth MB": "{:,.0f}",
           "peak RSS MB": "{:,.0f}", "budget": "{:g}"}
    shown = table.copy()
    for col, f in fmt.items():
        shown[col] = [("-" if isinstance(v, float) and math.isnan(v) else f.format(v)) for v in shown[col]]
    return shown.to_markdown(index=False)


def parse_size(text: str) -> tuple[str, str, int, str]:
    label, rest = text.split("=", 1)
    dataset, n = rest.rsplit(":", 1)
    return label, dataset, int(n), f"vecbudget run -d {dataset}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-b", "--budget", type=float, action="append", help="bytes per vector (repeat)")
    ap.add_argument("--size", action="append", help="LABEL=DATASET:N (repeat; replaces the default sizes)")
    ap.add_argument("--suite", default="scale", help="methods of this suite (methods/suites.toml), or 'all'")
    ap.add_argument("--results-dir", default=str(REPO / "results" / "scale"))
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.size] if args.size else SIZES
    budgets = args.budget or [64.0, 512.0, 2048.0]
    df = ResultStore(args.results_dir).load()
    methods = None if args.suite == "all" else suite(args.suite)
    table = scale_table(df, sizes, budgets, methods)
    text = [f"Scale table from {args.results_dir}, suite {args.suite} (best recall@10 within each budget, bytes "
            f"as measured)", ""]
    text.append(to_markdown(table) if not table.empty else "(no stored runs at these sizes)")
    if phases := dataset_phases(df, sizes, methods):
        text += ["", "Data set preparation (one-time, recorded when each was prepared):", *phases]
    if times := sweep_times(df, sizes, methods):
        text += ["", "Time in the workers (minutes, from the rows) and peak memory:", *times]
    if gaps := missing(df, sizes, methods):
        text += ["", "Still missing:", *gaps]
    out = "\n".join(text) + "\n"
    print(out, end="")
    if args.out:
        Path(args.out).write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
