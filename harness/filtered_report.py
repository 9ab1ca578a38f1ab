"""Filtered-search results: per-selectivity-band leaderboards and recall/QPS-vs-selectivity plots.

Reads stored rows of the filtered track (rows with a ``filter``). An *entry* is a method and the
build parameter that changes its kind (``filter-faiss/hnsw``, ``filter-quantized/sq8``...).
Within a band, each filter family lists every entry's operating point chosen as in
big-ann-benchmarks' filter track: the fastest configuration (QPS, one thread) whose recall@10
reaches :data:`TARGET_RECALL`; an entry that never reaches it shows its best recall instead
(``reaches`` = no). Entries are sorted by (reaches, QPS) then recall. No ranks: the table does
not claim a significance test; QPS are from one run (read them as ratios within a table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.filters import BANDS, band_label, band_of, has_filters
from harness.io import atomic_write_text
from harness.store import latest

__all__ = ["has_filters", "save", "cli_summary"]

#: the method suite `vecbudget run -d <filtered data set>` runs when no method is named
SUITE = "filtered"
TARGET_RECALL = 0.9
KIND_PARAMS = ("index", "codec")
#: the budget of the plots, bytes per vector (every filtered method at d = 384 fits)
PLOT_BUDGET = 2048.0


def filtered_runs(df: pd.DataFrame, dataset: str | None = None, fingerprint: str | None = None) -> pd.DataFrame:
    """OK filtered-track rows of one data set, one per configuration: by name and, when given, by
    identity (a filtered data set's identity covers its filter spec: harness.filters.filter_spec)."""
    if df.empty or "filter" not in df:
        return df.iloc[0:0]
    ok = df[(df["status"] == "ok") & df["filter"].notna() & (df["filter"] != "")]
    if fingerprint is not None:
        ok = ok[ok["dataset_fingerprint"] == fingerprint]
    if dataset is not None:
        ok = ok[ok["dataset"] == dataset]
        if fingerprint is None and not ok.empty:  # the name's most recent identity, as select_runs
            newest = ok.sort_values("created_utc", kind="mergesort")["dataset_fingerprint"].iloc[-1]
            ok = ok[ok["dataset_fingerprint"] == newest]
    if ok.empty:
        return ok
    out = latest(ok).copy()
    out["entry"] = [entry_name(m, b) for m, b in zip(out["method"], out["build_params"], strict=True)]
    out["band"] = [band_of(float(s)) for s in out["selectivity"]]
    return out


def entry_name(method: str, build_params: str) -> str:
    params = json.loads(build_params) if build_params else {}
    kind = [str(params[p]) for p in KIND_PARAMS if p in params]
    return f"{method}/{kind[0]}" if kind else method


def _pick(g: pd.DataFrame, target: float) -> pd.Series:
    reach = g[g["recall_at_10"] >= target - 1e-9]
    if not reach.empty:
        r = reach.sort_values(["qps_1t", "recall_at_10"], ascending=False).iloc[0].copy()
        r["reaches"] = True
        return r
    r = g.sort_values(["recall_at_10", "qps_1t"], ascending=False).iloc[0].copy()
    r["reaches"] = False
    return r


def band_table(runs: pd.DataFrame, *, budget: float | None = None, target: float = TARGET_RECALL) -> pd.DataFrame:
    """One row per (band, filter, entry): its operating point (see the module docstring)."""
    if budget is not None:
        runs = runs[runs["bytes_per_vector"] <= budget + 0.5]
    rows = []
    for (flt, entry), g in runs.groupby(["filter", "entry"], sort=False):
        r = _pick(g, target)
        rows.append({"band": r["band"], "filter": flt, "selectivity": float(r["selectivity"]), "entry": entry,
                     "build_params": r["build_params"], "search_params": _search(r["search_params"]),
                     "recall_at_10": float(r["recall_at_10"]), "reaches": bool(r["reaches"]),
                     "ndcg_at_10": float(r.get("ndcg_at_10", np.nan)),
                     "judged": int(r.get("filter_judged_queries", 0) or 0),
                     "qps_1t": float(r["qps_1t"]), "latency_p99_ms": float(r["latency_p99_ms"]),
                     "bytes_per_vector": float(r["bytes_per_vector"]), "nq": int(r["nq"]),
                     "config_hash": r["config_hash"]})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = {band_label(lo, hi): i for i, (lo, hi) in enumerate(BANDS)}
    out["_b"] = out["band"].map(order)
    out = out.sort_values(["_b", "selectivity", "filter", "reaches", "qps_1t", "recall_at_10"],
                          ascending=[True, True, True, False, False, False], kind="mergesort")
    return out.drop(columns="_b").reset_index(drop=True)


def _search(text: str) -> str:
    params = {k: v for k, v in json.loads(text).items() if k != "filter"}
    return ",".join(f"{k}={v}" for k, v in params.items()) or "-"


def _build(text: str) -> str:
    return ",".join(f"{k}={v}" for k, v in json.loads(text).items()) or "-"


def to_markdown(table: pd.DataFrame, target: float = TARGET_RECALL) -> str:
    """Per-band Markdown tables."""
    if table.empty:
        return "(no filtered runs)\n"
    parts = []
    for band, g in table.groupby("band", sort=False):
        parts.append(f"#### Selectivity {band}\n")
        parts.append(f"| filter | selectivity | entry | build | search | recall@10 | ≥{target:g} | nDCG@10 (judged q) "
                     "| QPS (1 thread) | p99 ms | B/vec |")
        parts.append("|---|---:|---|---|---|---:|:-:|---:|---:|---:|---:|")
        for _, r in g.iterrows():
            ndcg = f"{r['ndcg_at_10']:.4f} ({r['judged']})" if np.isfinite(r["ndcg_at_10"]) else f"- ({r['judged']})"
            parts.append(f"| {r['filter']} | {r['selectivity']:.2%} | {r['entry']} | {_build(r['build_params'])} | "
                         f"{r['search_params']} | {r['recall_at_10']:.4f} | {'yes' if r['reaches'] else 'no'} | {ndcg} | "
                         f"{r['qps_1t']:,.0f} | {r['latency_p99_ms']:.3f} | {r['bytes_per_vector']:.0f} |")
        parts.append("")
    return "\n".join(parts)


def plot(runs: pd.DataFrame, out_dir: str | Path, *, budget: float = PLOT_BUDGET,
         target: float = TARGET_RECALL) -> list[Path]:
    """recall@10 (best configuration) and QPS at recall@10 ≥ target vs selectivity, per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = runs[runs["bytes_per_vector"] <= budget + 0.5]
    if runs.empty:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    cmap = plt.get_cmap("tab10")
    for i, (entry, g) in enumerate(sorted(runs.groupby("entry"), key=lambda t: t[0])):
        pts: list[tuple[bool, float, float, float]] = []
        for name, f in g.groupby("filter"):
            best = f["recall_at_10"].max()
            reach = f[f["recall_at_10"] >= target - 1e-9]
            pts.append((str(name).startswith("sel="), float(f["selectivity"].iloc[0]), float(best),
                        float(reach["qps_1t"].max()) if not reach.empty else np.nan))
        pts.sort()
        colour, marker = cmap(i % 10), "osD^v<>pPX"[i % 10]
        for synthetic in (True, False):  # random subsets: filled and joined (the sweep); attributes: hollow
            sub = [p for p in pts if p[0] == synthetic]
            if not sub:
                continue
            x = [p[1] for p in sub]
            style = {"marker": marker, "color": colour, "ms": 7, "ls": "-" if synthetic else "none", "lw": 1,
                     "mfc": colour if synthetic else "none", "label": entry if synthetic else None}
            ax1.plot(x, [p[2] for p in sub], **style)
            ax2.plot(x, [p[3] for p in sub], **style)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("selectivity (fraction of the base passing the filter, log scale)")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("recall@10 (best configuration)")
    ax2.set_yscale("log")
    ax2.set_ylabel(f"QPS, one thread, fastest configuration with recall@10 ≥ {target:g}")
    ax1.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Filtered search at ≤ {budget:g} B/vector, one point per filter family\nfilled and joined: "
                 "random id subsets; hollow: attribute filters; missing on the right: never "
                 f"reaches recall@10 {target:g}", fontsize=10)
    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        p = out_dir / f"recall_qps_vs_selectivity.{ext}"
        fig.savefig(p, dpi=110)
        paths.append(p)
    plt.close(fig)
    return paths


def save(df: pd.DataFrame, dataset: str, results_dir: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
    """Write the per-band leaderboard (Markdown, CSV) and the plot of one data set's filtered runs."""
    runs = filtered_runs(df, dataset, fingerprint)
    if runs.empty:
        return {}
    results_dir = Path(results_dir)
    table = band_table(runs)
    md = to_markdown(table)
    board_dir = results_dir / "leaderboards" / "filtered"
    board_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(board_dir / f"{dataset}.md", md)
    atomic_write_text(board_dir / f"{dataset}.csv", table.to_csv(index=False))
    plots = plot(runs, results_dir / "plots" / "filtered" / dataset)
    return {"markdown": md, "table": table, "md_path": board_dir / f"{dataset}.md", "plots": plots}


def cli_summary(ds: Any, df: pd.DataFrame, new: pd.DataFrame, results_dir: str | Path) -> int:
    """What `vecbudget run` prints after a filtered sweep; returns its exit code (1: failures)."""
    import sys

    ok = int((new["status"] == "ok").sum()) if not new.empty else 0
    kept = new.attrs.get("kept_failures", [])
    print(f"\n{ds.name}: n={ds.n:,} d={ds.dim} metric={ds.metric}, filtered track; {ok} new run(s) ok, "
          f"{len(new) - ok} failed" + (f", {len(kept)} known failure(s) kept" if kept else ""))
    saved = save(df, ds.name, results_dir, fingerprint=ds.fingerprint)
    if saved:
        print(f"filtered leaderboard of all stored runs (per selectivity band; operating point: the fastest "
              f"configuration with recall@10 ≥ {TARGET_RECALL:g}, else the best recall):")
        print(saved["markdown"])
        print(f"saved: {saved['md_path']}; plots: {', '.join(str(p) for p in saved['plots'] if p.suffix == '.png')}")
    failures = [r for r in new.to_dict("records") if r.get("status") != "ok"] + list(kept)
    for r in failures[:10]:
        first = str(r.get("error") or "").splitlines()[0][:200] if r.get("error") else ""
        print(f"failed: {r.get('method')} {r.get('build_params')} {r.get('search_params')}: {r.get('status')}: {first}",
              file=sys.stderr)
    if len(failures) > 10:
        print(f"... and {len(failures) - 10} more failed configuration(s)", file=sys.stderr)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------
# the report site's page and REPORT.md section (called by harness.report.build_report)

PLOT_STEM = "recall_qps_vs_selectivity"
PROTOCOL = (f"Each query carries a filter; ground truth is the exact top-k among the vectors that pass it, and "
            f"nDCG@10 is computed on what the filter lets through (a relevant document that fails the filter "
            f"cannot be retrieved; queries left without one are not judged). Operating point, as in "
            f"big-ann-benchmarks' filter track: per entry and filter, the fastest configuration (QPS, one "
            f"thread) whose recall@10 reaches {TARGET_RECALL:g}, else its best recall. No ranks: no paired "
            f"test is run across entries here. QPS are from one run: read them as ratios within a table.")


def reportable(df: pd.DataFrame) -> list[str]:
    """Names of the data sets with stored filtered-track runs."""
    runs = filtered_runs(df)
    return sorted(runs["dataset"].unique()) if not runs.empty else []


def site_body(name: str, runs: pd.DataFrame, plot_src: str | None) -> str:
    """The HTML body of a filtered data set's page: the plot and one table per selectivity band."""
    from harness.report import _e, _method_link, _table, _td

    table = band_table(runs)
    parts = [f"<h1>{_e(name)}: filtered search</h1>", f"<p>{_e(PROTOCOL)} {len(runs)} stored "
             f"configurations of {runs['method'].nunique()} methods, {runs['filter'].nunique()} filter families.</p>"]
    if plot_src:
        parts.append(f'<figure><img src="{_e(plot_src)}" alt="recall@10 and QPS vs selectivity" '
                     f'style="max-width:100%"><figcaption>recall@10 and QPS at recall@10 ≥ {TARGET_RECALL:g} vs '
                     f"selectivity, at ≤ {PLOT_BUDGET:g} B/vector</figcaption></figure>")
    headers = [("filter", "filter family"), ("selectivity", "mean fraction of the base that passes"),
               ("entry", "method / index kind"), ("build", ""), ("search", "the operating point's search parameters"),
               ("recall@10", "against the exact filtered top-10"), (f"≥{TARGET_RECALL:g}", "reaches the target recall"),
               ("nDCG@10", "on what the filter allows"), ("judged q", "queries with a retrievable relevant document"),
               ("QPS (1 thread)", ""), ("p99 ms", ""), ("B/vec", "measured bytes per vector"), ("config", "")]
    for i, (band, g) in enumerate(table.groupby("band", sort=False)):
        rows = []
        for _, r in g.iterrows():
            ndcg = r["ndcg_at_10"]
            rows.append("<tr>" + "".join([
                _td(r["filter"]), _td(f"{r['selectivity']:.2%}", r["selectivity"]),
                _td(_method_link(r["entry"].split("/")[0], text=r["entry"]), None, "method", raw=True),
                _td(_build(r["build_params"]), None, "small"), _td(r["search_params"], None, "small"),
                _td(f"{r['recall_at_10']:.4f}", r["recall_at_10"]), _td("yes" if r["reaches"] else "no"),
                _td(f"{ndcg:.4f}" if np.isfinite(ndcg) else "–", ndcg if np.isfinite(ndcg) else None),
                _td(str(r["judged"]), r["judged"]), _td(f"{r['qps_1t']:,.0f}", r["qps_1t"]),
                _td(f"{r['latency_p99_ms']:.3f}", r["latency_p99_ms"]),
                _td(f"{r['bytes_per_vector']:.0f}", r["bytes_per_vector"]),
                _td(f"<code>{_e(r['config_hash'])}</code>", None, raw=True)]) + "</tr>")
        parts.append(f"<h2>Selectivity {_e(band)}</h2>")
        parts.append(_table(headers, rows, tid=f"band{i}"))
    return "\n".join(parts)


def markdown_section(name: str, runs: pd.DataFrame, page: str, plot_src: str | None) -> list[str]:
    """REPORT.md lines for one filtered data set: the protocol, the plot and the per-band tables."""
    lines = [f"## {name}: filtered search", "",
             f"{PROTOCOL} {len(runs)} stored configurations of {runs['method'].nunique()} methods "
             f"([site page]({page})).", ""]
    if plot_src:
        lines += [f"![{name}: recall@10 and QPS vs selectivity]({plot_src})", ""]
    md = to_markdown(band_table(runs)).replace("#### Selectivity", "### Selectivity")
    return lines + md.splitlines() + [""]
