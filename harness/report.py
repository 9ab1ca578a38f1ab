"""Published comparison report: a static site under ``results/report/`` and ``results/REPORT.md``.

The site opens from disk (``file://``, no server, nothing fetched: CSS and JavaScript are inline,
links are relative):

* ``index.html`` — the data sets, with a one-line recommendation each, and the methods (with
  "post-hoc" and their named variants, from the method classes' ``post_hoc`` and ``variants``);
* ``datasets/<name>.html`` — the leaderboard by budget from :func:`harness.leaderboard.leaderboard`
  (its ranks, ties and paired-test p-values; sortable by clicking a column header; optional
  columns toggled by check boxes, so it fits a laptop window; the best entry at each budget
  marked ★; quality with its 95% bootstrap interval over queries; Recall@100 against the
  judgments beside nDCG@10; ⚠ on bytes the memory cross-check doubts; the budgets nothing fits),
  the "which method at which budget" recommendation, and interactive Pareto plots (inline SVG
  from :mod:`harness.interactive_plot`: hover for a configuration, click for its row, the legend
  toggles methods);
* ``methods/<name>.html`` — the method's paper, bytes formula, declared grids, how it follows
  the paper (post-hoc statement, named variants; for a third-party plugin without them, the
  departures paragraph of its module docstring), and every stored configuration with the
  provenance of its numbers (config hash, git revision, time, CPU, package versions);
* ``plots/<name>/quality_vs_{bytes,qps}.{png,svg}`` — the static figures of :mod:`harness.plots`
  (for the README), linked from the data set page.

Every number shown carries the config hash of the stored run it comes from, so it can be traced
to a row of ``results/runs/*.parquet``. The recommendation follows the embedding-compression
benchmark literature: the best method at each budget, and the cheapest configuration (measured
bytes per vector) that keeps at least 95% / 99% of exact float32 quality.

The site is written to a temporary folder beside its destination and swapped in by renames, so
a reader (or a crash) never sees half a report. A report restricted to some data sets rewrites
only their pages and plots; the other data sets' pages stay, and the index, the method pages and
REPORT.md still cover every data set with stored runs.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import filtered_report, interactive_plot
from harness import uncertainty as unc
from harness.budgets import DEFAULT_BUDGETS
from harness.errors import VecbudgetError
from harness.io import atomic_write_text
from harness.leaderboard import (
    current_runs,
    entry_name,
    leaderboard,
    placed_bytes,
    quality_metric,
    variant_of,
)
from harness.store import ResultStore, latest

ASSETS = Path(__file__).resolve().parent / "report_assets"
VARIANT_PARAM = "variant"  # the build parameter naming a departure from the paper (harness.method)
RETENTION_LEVELS = (0.95, 0.99)
LABELS = {"ndcg_at_10": "nDCG@10", "recall_at_10": "recall@10", "qrels_recall_at_100": "Recall@100"}
#: the exact search whose quality the others are measured against, by track: the first present wins
#: (dense: exact float32 search; multi-vector: exact Chamfer over all float32 tokens)
REFERENCE_METHODS = ("exact", "chamfer-exact")


# ----------------------------------------------------------------------------------------------
# analysis (no HTML here): leaderboards with intervals and tests, recommendations


@dataclass
class DatasetReport:
    name: str
    runs: pd.DataFrame  # current OK runs, one per config hash
    failed: pd.DataFrame  # failed rows of the data set
    metric: str
    board: pd.DataFrame  # leaderboard + ci_low/ci_high/p_vs_best/tied_with_best/pct_of_ref
    reference: dict[str, Any] | None  # exact float32 quality and its run
    nothing_fits: list[dict[str, Any]] = field(default_factory=list)  # budget, ratio, note
    at_n: int | None = None  # bytes per vector projected to this many vectors (None: as measured)
    retention: list[dict[str, Any]] = field(default_factory=list)  # cheapest config per level
    retention_by_method: pd.DataFrame | None = None
    fastest: list[dict[str, Any]] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # name -> site-relative PNG path

    @property
    def info(self) -> dict[str, Any]:
        r = self.runs.iloc[0]
        return {"n": int(r["n"]), "dim": int(r["dim"]), "nq": int(r["nq"]), "metric": r["metric"],
                "fingerprint": r["dataset_fingerprint"]}


class _IntervalCache:
    def __init__(self, resamples: int, seed: int):
        self.resamples, self.seed = resamples, seed
        self._ci: dict[tuple[str, str], unc.Interval] = {}

    def ci(self, row: pd.Series, metric: str) -> unc.Interval | None:
        key = (row["config_hash"], metric)
        if key not in self._ci:
            values = unc.per_query(row, metric)
            self._ci[key] = unc.bootstrap_ci(values, resamples=self.resamples, seed=self.seed) if values.size else None
        return self._ci[key]


def _reference(runs: pd.DataFrame, metric: str) -> dict[str, Any] | None:
    """Exact float32 search quality (the best run of the first of :data:`REFERENCE_METHODS`
    stored); None when none is stored."""
    present = [m for m in REFERENCE_METHODS if (runs["method"] == m).any()]
    if not present:
        return None
    exact = runs[runs["method"] == present[0]]
    r = exact.sort_values(metric, ascending=False).iloc[0]
    return {"quality": float(r[metric]), "config_hash": r["config_hash"], "method": r["method"],
            "bytes_per_vector": float(r["bytes_per_vector"])}


def _run_summary(r: pd.Series, metric: str) -> dict[str, Any]:
    return {
        "method": r["method"], "entry": run_entry(r), "build_params": r["build_params"],
        "search_params": r["search_params"],
        "quality": float(r[metric]), "bytes_per_vector": float(r["bytes_per_vector"]),
        "ratio_to_float32": float(r["bytes_per_vector"]) / float(r["float32_bytes"]),
        "qps_1t": float(r["qps_1t"]), "config_hash": r["config_hash"],
    }


def _nothing_fits_note(runs: pd.DataFrame, at_n: int | None) -> tuple[str, str]:
    """The configuration closest to a budget nothing fits, in words (no placeholder): a sentence,
    and a table cell."""
    placed = placed_bytes(runs, at_n)
    r = runs.loc[placed.idxmin()]
    size = f"{float(placed.min()):.1f} B/vector" + (f" at n={at_n:,}" if at_n else "")
    return (f"the smallest stored configuration is {run_entry(r)}"
            f"{_params_clause(r['build_params'], r['search_params'])}, {size}",
            f"smallest stored configuration: {run_entry(r)}, {size}")


def _board(df: pd.DataFrame, dataset: str, budgets: tuple[float, ...], runs: pd.DataFrame,
           at_n: int | None, alpha: float,
           fingerprint: str | None = None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The leaderboard of :mod:`harness.leaderboard` (rows by budget, then rank and quality;
    ``is_top``: the budget's #1, ``pos``: place within the budget) and the budgets nothing fits."""
    board = leaderboard(df, dataset, budgets, at_n=at_n, alpha=alpha, fingerprint=fingerprint).reset_index(drop=True)
    fits = board["fits"].map(lambda v: bool(v) if pd.notna(v) else True).astype(bool)
    note, closest = _nothing_fits_note(runs, at_n)
    nothing = [{"budget": float(b["budget"]), "ratio": float(b["budget_ratio"]), "note": note, "closest": closest}
               for _, b in board[~fits].iterrows()]
    board = board[fits].reset_index(drop=True)
    board["ratio_to_float32"] = board["budget_ratio"].astype(float)
    board["entry"] = [e if isinstance(e, str) and e else m for e, m in zip(board["entry"], board["method"], strict=True)]
    for col in ("memory_flag", "bytes_projected", "tied_with_best"):
        board[col] = [bool(v) if pd.notna(v) else False for v in board[col]]
    for col in ("quality", "p_vs_best", "qrels_recall_at_100", "recall_at_10"):
        board[col] = board[col].astype(float)
    board = board.sort_values("budget", kind="stable").reset_index(drop=True)  # the leaderboard's order within
    board["pos"] = board.groupby("budget").cumcount() + 1  # place within the budget, best first
    board["is_top"] = board["pos"] == 1
    return board, nothing


def _with_tests(board: pd.DataFrame, runs: pd.DataFrame, metric: str, cache: _IntervalCache) -> pd.DataFrame:
    """Add each entry's 95% bootstrap interval of quality, and the budget-level verdicts.

    Ranks and ties are the leaderboard's (``rank``, ``tied_with_best``, ``p_vs_best``): one paired
    test, one verdict, in the CLI's leaderboard and in the report alike.
    """
    by_hash = runs.set_index("config_hash", drop=False)
    intervals = [cache.ci(by_hash.loc[h], metric) for h in board["config_hash"]]
    board = board.assign(
        ci_low=[ci.low if ci else np.nan for ci in intervals],
        ci_high=[ci.high if ci else np.nan for ci in intervals],
        tied_with_best=board["tied_with_best"] & ~board["is_top"],
        p_vs_best=board["p_vs_best"].where(~board["is_top"], np.nan),
    )
    by_budget = board.groupby("budget")
    board["clear_best"] = board["budget"].map(~by_budget["tied_with_best"].any())
    board["alone"] = board["budget"].map(by_budget.size() == 1)
    return board


def analyse_dataset(df: pd.DataFrame, dataset: str, budgets: tuple[float, ...], *,
                    resamples: int = unc.RESAMPLES, alpha: float = unc.ALPHA,
                    seed: int = unc.SEED, at_n: int | None = None,
                    cache: _IntervalCache | None = None, fingerprint: str | None = None) -> DatasetReport | None:
    runs = current_runs(df, dataset, fingerprint)
    if runs.empty:
        return None
    metric = quality_metric(runs)
    cache = cache or _IntervalCache(resamples, seed)
    ref = _reference(runs, metric)
    board, nothing = _board(df, dataset, budgets, runs, at_n, alpha, fingerprint)
    board = _with_tests(board, runs, metric, cache)
    pct = [b["quality"] / ref["quality"] if ref and ref["quality"] > 0 else np.nan for _, b in board.iterrows()]
    board = board.assign(pct_of_reference=pct)

    # configurations of the current data set version whose latest run did not finish
    same = df[df["dataset_fingerprint"] == runs["dataset_fingerprint"].iloc[0]].assign(dataset=dataset)
    last = latest(same)
    failed = last[last["status"] != "ok"]
    rep = DatasetReport(dataset, runs, failed, metric, board, ref, nothing_fits=nothing, at_n=at_n)
    if ref is not None:
        for level in RETENTION_LEVELS:
            ok = runs[runs[metric] >= level * ref["quality"]]
            if ok.empty:
                rep.retention.append({"level": level, "run": None})
                rep.fastest.append({"level": level, "run": None})
                continue
            cheapest = ok.sort_values(["bytes_per_vector", metric], ascending=[True, False]).iloc[0]
            fastest = ok.sort_values(["qps_1t", metric], ascending=[False, False]).iloc[0]
            rep.retention.append({"level": level, "run": _run_summary(cheapest, metric)})
            rep.fastest.append({"level": level, "run": _run_summary(fastest, metric)})
        table = []
        for method, g in runs.groupby("method"):
            entry: dict[str, Any] = {"method": method, "best_quality": float(g[metric].max())}
            for level in RETENTION_LEVELS:
                ok = g[g[metric] >= level * ref["quality"]]
                entry[f"bytes_{level}"] = float(ok["bytes_per_vector"].min()) if not ok.empty else np.nan
                entry[f"hash_{level}"] = (ok.sort_values("bytes_per_vector")["config_hash"].iloc[0]
                                          if not ok.empty else "")
            table.append(entry)
        rep.retention_by_method = pd.DataFrame(table).sort_values(
            [f"bytes_{RETENTION_LEVELS[0]}", "best_quality"], ascending=[True, False], na_position="last")
    return rep


def departures(doc: str | None) -> str | None:
    """The paragraph(s) of a module docstring stating departures from the paper, if any."""
    if not doc:
        return None
    paragraphs = re.split(r"\n\s*\n", doc.strip())
    found = [p.strip() for p in paragraphs if re.search(r"\bdepart(s|ures?|ing|ed)?\b", p, re.IGNORECASE)]
    return "\n\n".join(found) or None


def declares_departures(text: str | None) -> bool:
    """True when a departure statement exists and does not begin with 'none' (a statement such
    as 'Departures: none. nprobe is clamped to nlist.' declares none, with a note)."""
    if not text:
        return False
    body = re.sub(r"^\s*departures?( from the paper)?\s*(/[^:]*)?:\s*", "", text, flags=re.IGNORECASE).strip()
    return not re.match(r"none\b", body, flags=re.IGNORECASE)


def declares_variants(cls: type) -> bool:
    """Whether a method class states its departures through ``variants`` / ``post_hoc`` (see
    :class:`harness.method.Method`): every method of this repository does (the defaults say "the
    paper's recipe, no variant"); a third-party plugin does when it sets either attribute itself.
    Otherwise the report falls back to the "Departures" paragraph of its docstring."""
    from harness.method import Method

    if (cls.__module__ or "").startswith("methods."):
        return True
    return any("variants" in vars(k) or "post_hoc" in vars(k) for k in cls.__mro__ if k not in (Method, object))


def method_info(name: str) -> dict[str, Any]:
    """Paper, formula, grids and docstring of a registered method (``registered`` False if gone)."""
    from harness.registry import all_methods

    try:
        cls = all_methods().get(name)
    except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the report
        return {"name": name, "registered": False, "error": f"{type(exc).__name__}: {exc}"}
    if cls is None:
        return {"name": name, "registered": False}
    module = sys.modules.get(cls.__module__)
    doc = (module.__doc__ if module else None) or ""
    dep = departures(doc) or departures(cls.__doc__)
    declared = declares_variants(cls)
    variants = getattr(cls, "variants", None)
    return {"name": name, "registered": True, "family": cls.family, "paper": cls.paper,
            "bytes_formula": cls.bytes_formula, "build_grid": cls.build_grid,
            "search_grid": cls.search_grid, "module": cls.__module__, "doc": doc.strip(),
            "declared": declared, "variants": {str(k): str(v) for k, v in (variants or {}).items()},
            "post_hoc": str(getattr(cls, "post_hoc", "") or ""),
            "departures": dep, "flag_departures": not declared and declares_departures(dep)}


def method_flags(info: dict[str, Any]) -> str:
    """The index's one-line statement of how a method relates to its paper ("" when faithful)."""
    flags = []
    if info.get("post_hoc"):
        flags.append("post-hoc")
    if info.get("variants"):
        flags.append("variants: " + ", ".join(info["variants"]))
    if info.get("flag_departures"):
        flags.append("⚠ departs")
    return "; ".join(flags)


# ----------------------------------------------------------------------------------------------
# formatting


def _param_items(text: Any, *, variant: bool = False) -> list[str]:
    """``key=value`` strings of a stored parameter cell (JSON object text). The ``variant`` build
    parameter is left out unless asked for: where an entry is named, ``method[variant]`` says it."""
    try:
        d = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return [str(text)]
    if not isinstance(d, dict):
        return [str(d)]
    return [f"{k}={v}" for k, v in d.items() if variant or k != VARIANT_PARAM]


def _params(text: Any, *, variant: bool = False) -> str:
    """A parameter cell for a table: ``a=1, b=2``, or a dash when there are none."""
    return ", ".join(_param_items(text, variant=variant)) or "–"


def _params_html(text: Any) -> str:
    """A parameter cell that wraps between parameters, never inside one."""
    items = _param_items(text)
    return ", ".join(f'<span class="kv">{_e(i)}</span>' for i in items) if items else "–"


def _params_clause(build: Any, search: Any) -> str:
    """`` (a=1; search b=2)`` for a sentence, or nothing when the configuration has no parameters:
    prose never shows the tables' placeholder dash."""
    parts = [", ".join(_param_items(build)), ", ".join(_param_items(search))]
    if parts[1]:
        parts[1] = "search " + parts[1]
    text = "; ".join(p for p in parts if p)
    return f" ({text})" if text else ""


def _num(v: Any, fmt: str) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return "–" if np.isnan(f) else format(f, fmt)


def _dv(v: Any) -> str:
    """Full-precision sort key for a table cell (empty when missing)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if np.isnan(f) else repr(f)


def _pct(v: float) -> str:
    return _num(100 * v, ".1f") + "%" if not np.isnan(v) else "–"


def _pfmt(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _budget_label(b: float) -> str:
    return f"{b:g}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _ci_text(low: float, high: float) -> str:
    if np.isnan(low):
        return ""
    return f"[{low:.4f}, {high:.4f}]"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# ----------------------------------------------------------------------------------------------
# HTML


def _asset(name: str) -> str:
    return (ASSETS / name).read_text()


def _page(title: str, body: str, *, depth: int) -> str:
    up = "../" * depth
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{_e(title)}</title>
<style>
{_asset("report.css")}
</style>
</head>
<body>
<header><a href="{up}index.html">vecbudget report</a> <span class="crumb">/ {_e(title)}</span></header>
<main>
{body}
</main>
<footer>Generated by <code>vecbudget report</code>. Intervals: 95% percentile bootstrap over queries;
≈#1: paired sign-flip permutation test against the budget's best, p ≥ 0.05; entries the test cannot
separate share a rank.</footer>
<script>
{_asset("report.js")}
</script>
<script>
{_asset("plot.js")}
</script>
</body>
</html>
"""


Header = tuple[str, str] | tuple[str, str, str, bool]


def _table(headers: list[Header], rows: list[str], *, cls: str = "sortable", tid: str = "") -> str:
    """headers: (label, tooltip), or (label, tooltip, key, shown) for a column the reader can hide
    (``shown``: visible by default); the table scrolls inside its own box, never the page."""
    th = []
    for h in headers:
        label, tip = h[0], h[1]
        extra = ""
        if len(h) == 4:
            extra = f' data-col="{_e(h[2])}"' + ("" if h[3] else ' data-default="hidden"')
        th.append(f'<th scope="col" title="{_e(tip)}"{extra}>{_e(label)}</th>')
    idattr = f' id="{tid}"' if tid else ""
    return (f'<div class="table-wrap"><table class="{cls}"{idattr}><thead><tr>{"".join(th)}</tr></thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody></table></div>")


def _column_toggles(headers: list[Header], tid: str) -> str:
    """Check boxes showing or hiding the table's optional columns (plain JavaScript, report.js)."""
    boxes = "".join(
        f'<label><input type="checkbox" class="col-toggle" data-table="{tid}" data-col="{_e(h[2])}"'
        f'{" checked" if h[3] else ""}> {_e(h[0])}</label>'
        for h in headers if len(h) == 4)
    return f'<span class="col-toggles" id="{tid}-columns">columns: {boxes}</span>' if boxes else ""


def _td(text: str, v: Any = None, cls: str = "", title: str = "", raw: bool = False, s: str | None = None) -> str:
    attrs = "" if s is None else f' data-s="{_e(s)}"'
    if v is not None:
        attrs += f' data-v="{_dv(v)}"'
    if cls:
        attrs += f' class="{cls}"'
    if title:
        attrs += f' title="{_e(title)}"'
    return f"<td{attrs}>{text if raw else _e(text)}</td>"


def _method_link(method: str, chash: str | None = None, depth: int = 1, text: str | None = None) -> str:
    """Link to a method page (``text``: what to show, e.g. ``method[variant]``), at a config's row."""
    anchor = f"#cfg-{chash}" if chash else ""
    return f'<a href="{"../" * depth}methods/{_slug(method)}.html{anchor}">{_e(text or method)}</a>'


MEMORY_FLAG = ("the method's reported RAM is under 0.8× the RSS growth measured around its add() and first "
               "search: its byte count may miss memory it holds")


def _bytes_label(rep: DatasetReport) -> tuple[str, str]:
    if rep.at_n:
        return (f"B/vec at n={rep.at_n:,}", f"bytes per vector projected to n={rep.at_n:,} vectors from the "
                f"measured parts (measured at n={rep.info['n']:,})")
    return "measured B/vec", "measured RAM bytes / n"


def nothing_fits_lines(rep: DatasetReport) -> list[str]:
    """One sentence per group of budgets nothing fits (budgets sharing the same closest configuration)."""
    groups: dict[str, list[float]] = {}
    for n in rep.nothing_fits:
        groups.setdefault(n["note"], []).append(n["budget"])
    return [f"Nothing fits {', '.join(_budget_label(b) for b in budgets)} B/vector: {note}."
            for note, budgets in groups.items()]


def _nothing_fits_html(rep: DatasetReport) -> str:
    if not rep.nothing_fits:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in nothing_fits_lines(rep))
    return f'<ul class="nothing-fits" id="nothing-fits">{items}</ul>'


def _leaderboard_html(rep: DatasetReport) -> str:
    board = rep.board
    if board.empty:
        return _nothing_fits_html(rep) + "<p>No configuration fits any budget of the ladder.</p>"
    label = LABELS.get(rep.metric, rep.metric)
    show_recall = rep.metric != "recall_at_10"
    show_r100 = bool(board["qrels_recall_at_100"].notna().any())
    two_tier = "disk_bytes_per_vector" in board and bool(board["disk_bytes_per_vector"].notna().any())  # BiDR
    bytes_label, bytes_tip = _bytes_label(rep)
    headers: list[Header] = [
        ("budget B/vec", "memory budget, bytes per vector"),
        ("×float32", "budget / float32 bytes", "ratio", False),
        ("#", "rank at this budget: entries the paired test cannot separate share a rank"),
        ("method", "★ best at this budget; method[variant] is a named departure from the paper"),
        ("build", "build parameters"), ("search", "search parameters", "search", True),
        (label, f"{label}, mean over queries"),
        ("95% CI", "percentile bootstrap over queries", "ci", True),
        ("vs #1", "≈#1: not significantly different from the budget's best (paired permutation test, p ≥ 0.05); p-value shown"),
        ("% of float32", f"{label} / exact float32 {label}", "pct", True),
    ]
    if show_recall:
        headers.append(("recall@10", "recall@10 against exact neighbours", "recall", True))
    if show_r100:
        headers.append(("Recall@100", "recall@100 against the relevance judgments", "r100", True))
    headers += [("QPS", "queries per second, one thread, batch"),
                ("p99 ms", "single-query latency, 99th percentile", "p99", True),
                (bytes_label, bytes_tip + "; ⚠: " + MEMORY_FLAG)]
    if two_tier:
        headers += [("disk B/vec", "two-tier: bytes per vector on disk (not in RAM, not on the budget ladder)", "disk", True),
                    ("warm p50 ms", "two-tier: single-query latency, median, file in the page cache", "warm", True),
                    ("cold p50 ms", "two-tier: single-query latency, median, file's pages evicted before each query",
                     "cold", True)]
    headers += [("build s", "train + build seconds", "build_s", False),
                ("config", "config hash of the stored run (links to its provenance)", "config", False)]
    rows = []
    for _, b in board.iterrows():
        best = bool(b["is_top"])
        star = "★ " if best else ""
        if best:
            vs = ("only entry" if b["alone"] else "clear #1") if b["clear_best"] else "#1 (≈ #2)"
            vs_title = ("the runner-up is significantly worse" if b["clear_best"]
                        else "the runner-up is not significantly different")
        elif np.isnan(b["p_vs_best"]):
            vs = "≈#1" if b["tied_with_best"] else "untested"
            vs_title = "no per-query values to test"
        else:
            vs = ("≈#1 " if b["tied_with_best"] else "") + _pfmt(b["p_vs_best"])
            vs_title = ("not significantly different from #1" if b["tied_with_best"]
                        else "significantly worse than #1")
        flag = " ⚠" if b["memory_flag"] else ""
        bytes_title = MEMORY_FLAG if flag else ("projected" if b["bytes_projected"] else "")
        cells = [
            _td(_budget_label(b["budget"]), b["budget"], title=f"×{b['ratio_to_float32']:.4f} float32"),
            _td(_num(b["ratio_to_float32"], ".4f"), b["ratio_to_float32"]),
            _td(str(int(b["rank"])), b["rank"]),
            _td(star + _method_link(b["method"], b["config_hash"], text=b["entry"]), None, "method", raw=True,
                s=b["entry"]),
            _td(_params_html(b["build_params"]), None, "l", raw=True),
            _td(_params_html(b["search_params"]), None, "l", raw=True),
            _td(_num(b["quality"], ".4f"), b["quality"], "q"),
            _td(_ci_text(b["ci_low"], b["ci_high"]), b["ci_low"], "ci"),
            _td(vs, b["p_vs_best"] if not best else 0.0, "tie" if b["tied_with_best"] else "", vs_title),
            _td(_pct(b["pct_of_reference"]), b["pct_of_reference"]),
        ]
        if show_recall:
            cells.append(_td(_num(b["recall_at_10"], ".4f"), b["recall_at_10"]))
        if show_r100:
            cells.append(_td(_num(b["qrels_recall_at_100"], ".4f"), b["qrels_recall_at_100"]))
        cells += [
            _td(_num(b["qps_1t"], ",.0f"), b["qps_1t"]),
            _td(_num(b["latency_p99_ms"], ".3f"), b["latency_p99_ms"]),
            _td(_num(b["bytes_per_vector"], ".1f") + flag, b["bytes_per_vector"], "memflag" if flag else "",
                title=bytes_title),
        ]
        if two_tier:
            cells += [_td(_num(b[c], f), b[c]) for c, f in (("disk_bytes_per_vector", ".0f"),
                                                            ("latency_warm_p50_ms", ".3f"), ("latency_cold_p50_ms", ".3f"))]
        cells += [
            _td(_num(b["build_s"], ".2f"), b["build_s"]),
            _td(f'<a href="../methods/{_slug(b["method"])}.html#cfg-{_e(b["config_hash"])}"><code>{_e(b["config_hash"])}</code></a>',
                None, raw=True),
        ]
        attrs = (f' data-budget="{_dv(b["budget"])}" data-hash="{_e(b["config_hash"])}"'
                 f' data-method="{_e(b["method"])}" data-entry="{_e(b["entry"])}" data-rank="{int(b["rank"])}"'
                 f' data-pos="{int(b["pos"])}"'
                 + (' data-top="1"' if best else "") + (' data-memory-flag="1"' if flag else ""))
        rows.append(f'<tr class="{"best" if best else ""}"{attrs}>' + "".join(cells) + "</tr>")
    options = "".join(f'<option value="{_dv(b)}">{_budget_label(b)} B/vec</option>'
                      for b in sorted(board["budget"].unique()))
    controls = (f'<p class="controls"><label>budget <select id="budget-filter"><option value="">all</option>'
                f'{options}</select></label> <label><input type="checkbox" id="top-only"> best 3 per budget only</label>'
                f' {_column_toggles(headers, "leaderboard")}'
                ' <span class="hint">Click a column header to sort.</span></p>')
    return _nothing_fits_html(rep) + controls + _table(headers, rows, tid="leaderboard")


def _recommendation_rows(rep: DatasetReport) -> list[dict[str, Any]]:
    out = []
    for budget, g in rep.board.groupby("budget", sort=True):
        best = g[g["is_top"]].iloc[0]
        tied = g[g["tied_with_best"]]
        ties = tied["entry"].tolist()
        # among #1 and the methods the paired test cannot tell from it, the fastest (1 thread)
        pool = pd.concat([g[g["is_top"]], tied])
        fastest = pool.sort_values("qps_1t", ascending=False).iloc[0]
        out.append({"budget": budget, "ratio": best["ratio_to_float32"], "best": best, "ties": ties,
                    "fastest": fastest})
    return out


def _fastest_text(item: dict[str, Any]) -> str:
    f = item["fastest"]
    same = f["config_hash"] == item["best"]["config_hash"]
    return (f"the same ({f['qps_1t']:,.0f} QPS)" if same
            else f"{f['entry']} ({f['qps_1t']:,.0f} QPS, `{f['config_hash']}`)")


def _summary_sentence(rep: DatasetReport) -> str:
    label = LABELS.get(rep.metric, rep.metric)
    parts = []
    if rep.reference:
        parts.append(f"exact float32 {label} {rep.reference['quality']:.4f}")
    for item in rep.retention:
        run = item["run"]
        if run:
            parts.append(f"≥{item['level']:.0%} of it from {run['bytes_per_vector']:.1f} B/vector with "
                         f"{run['entry']} (×{1 / run['ratio_to_float32']:.1f} compression)")
    return "; ".join(parts)


def _recommendation_html(rep: DatasetReport) -> str:
    label = LABELS.get(rep.metric, rep.metric)
    rows = []
    for item in _recommendation_rows(rep):
        best = item["best"]
        verdict = (("the only method that fits" if best["alone"] else "clear winner") if best["clear_best"]
                   else "not significantly better than " + ", ".join(item["ties"]))
        rows.append("<tr>" + "".join([
            _td(_budget_label(item["budget"]), item["budget"]),
            _td(_num(item["ratio"], ".4f"), item["ratio"]),
            _td("★ " + _method_link(best["method"], best["config_hash"], text=best["entry"]), None, "method",
                raw=True, s=best["entry"]),
            _td(_params(best["build_params"]), None, "l"),
            _td(f"{best['quality']:.4f} {_ci_text(best['ci_low'], best['ci_high'])}", best["quality"]),
            _td(_pct(best["pct_of_reference"]), best["pct_of_reference"]),
            _td(verdict, None, "l"),
            _td((_method_link(item["fastest"]["method"], item["fastest"]["config_hash"], text=item["fastest"]["entry"])
                 + f" ({item['fastest']['qps_1t']:,.0f} QPS)"), item["fastest"]["qps_1t"], raw=True),
        ]) + "</tr>")
    for n in rep.nothing_fits:
        rows.append("<tr>" + "".join([
            _td(_budget_label(n["budget"]), n["budget"]), _td(_num(n["ratio"], ".4f"), n["ratio"]),
            _td("nothing fits", None, "method"), _td(""), _td("", ""), _td("", ""), _td(n["closest"], None, "l"),
            _td("", "")]) + "</tr>")
    html_out = [f"<p>{_e(_summary_sentence(rep))}.</p>" if rep.reference else
                "<p>No exact float32 run is stored, so retention of float32 quality is not computed.</p>"]
    html_out.append(_table([("budget B/vec", ""), ("×float32", ""), ("use", "best method at this budget"),
                            ("build", ""), (f"{label} [95% CI]", ""), ("% of float32", ""),
                            ("verdict", "paired test of #1 against the others at the budget"),
                            ("fastest of #1 and ≈#1", "single-thread QPS; a method not significantly worse than #1")],
                           rows, tid="recommendation"))
    if rep.retention:
        measured = f" measured at n={rep.info['n']:,}" if rep.at_n else ""
        items = []
        for item, fast in zip(rep.retention, rep.fastest, strict=True):
            run, frun = item["run"], fast["run"]
            if run is None:
                items.append(f"<li>≥{item['level']:.0%} of float32 {_e(label)}: no stored configuration.</li>")
                continue
            items.append(
                f"<li>≥{item['level']:.0%} of float32 {_e(label)}: cheapest is "
                f"{_method_link(run['method'], run['config_hash'], text=run['entry'])}"
                f"{_e(_params_clause(run['build_params'], run['search_params']))} at "
                f"<b>{run['bytes_per_vector']:.1f} B/vector</b>{measured} "
                f"(×{1 / run['ratio_to_float32']:.1f} smaller than float32, {label} {run['quality']:.4f}); "
                f"fastest is {_method_link(frun['method'], frun['config_hash'], text=frun['entry'])}"
                f"{_e(_params_clause(frun['build_params'], frun['search_params']))} at "
                f"{frun['qps_1t']:,.0f} QPS ({frun['bytes_per_vector']:.1f} B/vector).</li>")
        html_out.append("<ul>" + "".join(items) + "</ul>")
    if rep.retention_by_method is not None and not rep.retention_by_method.empty:
        rows = []
        for _, r in rep.retention_by_method.iterrows():
            cells = [_td(_method_link(r["method"]), None, "method", raw=True),
                     _td(_num(r["best_quality"], ".4f"), r["best_quality"])]
            for level in RETENTION_LEVELS:
                cells.append(_td(_num(r[f"bytes_{level}"], ".1f"), r[f"bytes_{level}"],
                                 title=f"config {r[f'hash_{level}']}" if r[f"hash_{level}"] else "not reached"))
            rows.append("<tr>" + "".join(cells) + "</tr>")
        html_out.append("<h3>Smallest measured bytes per vector at which each method keeps float32 quality</h3>")
        html_out.append(_table([("method", ""), (f"best {label}", "")]
                               + [(f"B/vec for ≥{lv:.0%}", f"smallest measured bytes/vector with {label} ≥ {lv:.0%} of exact float32")
                                  for lv in RETENTION_LEVELS], rows, tid="retention"))
    return "\n".join(html_out)


PLOTS = (  # name, x column, x label, smaller x is better, log base of the x axis
    ("quality_vs_bytes", "bytes_per_vector", "measured RAM bytes per vector", True, 2),
    ("quality_vs_qps", "qps_1t", "queries per second, one thread", False, 10),
)


def run_entry(r: pd.Series) -> str:
    """A run's leaderboard entry: its method, or ``method[variant]`` for a named departure."""
    return entry_name(r["method"], variant_of(r))


def _plots_html(rep: DatasetReport) -> str:
    label = LABELS.get(rep.metric, rep.metric)
    figures = []
    for name, xcol, xlabel, smaller_better, base in PLOTS:
        svg = interactive_plot.pareto_svg(
            rep.runs, x=xcol, y=rep.metric, xlabel=xlabel, ylabel=label, smaller_x_better=smaller_better,
            entry=run_entry, href=lambda r: f"../methods/{_slug(r['method'])}.html#cfg-{r['config_hash']}",
            params=lambda t: ", ".join(_param_items(t)), plot_id=f"plot-{name}", log_base=base)
        static = rep.plots.get(name)
        links = (f' Static figure: <a href="../{_e(static[0])}">PNG</a> · <a href="../{_e(static[1])}">SVG</a>.'
                 if static else "")
        figures.append(f'<figure class="interactive" id="fig-{name}"><figcaption>{_e(label)} against '
                       f'{_e(xlabel)}; each method\'s Pareto front is drawn as a line.{links}</figcaption>'
                       f"{svg}</figure>")
    return ('<p class="hint">Hover a point for its configuration, click it for its row (with provenance) on '
            "the method page; click a legend entry to show or hide that method.</p>"
            f'<div class="plots">{"".join(figures)}</div>')


def _encoder_layer_html(runs: pd.DataFrame) -> str:
    """A layer's data set (layers x dimensions): which encoder depth its vectors come from and the
    query encoding cost of that depth, as its rows record it."""
    if "encoder_layer" not in runs or pd.to_numeric(runs["encoder_layer"], errors="coerce").isna().all():
        return ""
    r = runs[pd.to_numeric(runs["encoder_layer"], errors="coerce").notna()].iloc[0]
    total = r.get("encoder_layers_total")
    of = f" of {int(total)}" if pd.notna(total) else ""
    cost = ""
    if pd.notna(r.get("query_encode_ms_per_query")):
        cost = (f"; encoding one query with the encoder truncated to this depth takes "
                f"{float(r['query_encode_ms_per_query']):.2f} ms (median, one thread)")
        if pd.notna(r.get("query_encode_ratio_to_full")):
            cost += f", {float(r['query_encode_ratio_to_full']):.2f}× the full encoder in the same run"
    return (f'<p class="meta">Post-hoc layers × dimensions: vectors are the {_e(r.get("encoder_pooling") or "mean")}-'
            f"pooled hidden state of encoder layer {int(r['encoder_layer'])}{of}{_e(cost)}.</p>\n")


def dataset_page(rep: DatasetReport) -> str:
    info = rep.info
    label = LABELS.get(rep.metric, rep.metric)
    plots = _plots_html(rep)
    bytes_text = (f"RAM bytes per vector, <em>projected to n={rep.at_n:,}</em> from the measured parts,"
                  if rep.at_n else "<em>measured</em> RAM bytes per vector")
    failed = ""
    if not rep.failed.empty:
        failed = (f"<p class=\"warn\">{len(rep.failed)} configuration(s) failed "
                  f"({', '.join(sorted(rep.failed['method'].unique()))}); see the method pages.</p>")
    body = f"""
<h1>{_e(rep.name)}</h1>
<p class="meta">n={info['n']:,} vectors, d={info['dim']}, {info['nq']} queries, metric {_e(info['metric'])},
quality {_e(label)}; {len(rep.runs)} configurations of {rep.runs['method'].nunique()} methods
(data set fingerprint <code>{_e(info['fingerprint'])}</code>).</p>
{_encoder_layer_html(rep.runs)}{failed}
<section id="leaderboard-section"><h2>Leaderboard by budget</h2>
<p>At each budget every method competes with its best configuration whose {bytes_text}
fit. ★ marks the best; ≈#1 marks methods the paired test cannot tell from it (they share its rank).
⚠ beside the bytes: {_e(MEMORY_FLAG)}.</p>
{_leaderboard_html(rep)}
</section>
<section id="plots"><h2>Pareto plots</h2>{plots}</section>
<section id="recommendation"><h2>Which method at which budget</h2>
{_recommendation_html(rep)}
</section>
"""
    from harness.tracks.multivector import per_document, per_document_text

    body = per_document_text(body) if per_document(rep.runs) else body  # multi-vector: bytes per document
    return _page(f"{rep.name} leaderboard", body, depth=1)


def _provenance_cells(r: pd.Series) -> list[str]:
    versions = r.get("versions", "")
    try:
        vers = {str(k): str(v) for k, v in json.loads(versions).items()}
    except (TypeError, ValueError, AttributeError):
        vers = {"versions": str(versions or "")}
    short = ", ".join(f"{k} {vers[k]}" for k in ("faiss-cpu", "numpy") if k in vers) or "versions"
    full = ", ".join(f"{k} {v}" for k, v in vers.items())
    return [_td(str(r.get("git_revision", "") or "")[:12], None, "nw", title=str(r.get("git_revision", "") or "")),
            _td(str(r.get("created_utc", "") or ""), None, "nw"),
            _td(str(r.get("cpu_model", "") or "")),
            _td(f'<details class="versions"><summary>{_e(short)}</summary>{_e(full)}</details>', None, "small",
                raw=True)]


def _paper_fidelity_html(name: str, info: dict[str, Any]) -> str:
    """The method's own statement (``post_hoc``, ``variants``) of how it follows its paper."""
    out = []
    if info.get("post_hoc"):
        out.append('<div class="departures" id="post-hoc"><b>Post-hoc version of the paper\'s recipe</b> '
                   f"(the recipe itself cannot run here): {_e(info['post_hoc'])}</div>")
    if info.get("variants"):
        items = "".join(f"<li><code>{_e(name)}[{_e(v)}]</code> (build parameter <code>variant={_e(v)}</code>): "
                        f"{_e(why)}</li>" for v, why in info["variants"].items())
        default = "the closest post-hoc version of the paper's recipe" if info.get("post_hoc") else "the paper's recipe"
        out.append(f'<div class="note" id="variants"><b>Named variants</b>, each a departure from the paper '
                   f"shown as its own leaderboard entry; the default (<code>{_e(name)}</code>) is {default}:"
                   f"<ul>{items}</ul></div>")
    if not out:
        out.append('<p class="note">Runs the paper\'s recipe; no named variant departs from it.</p>')
    return "\n".join(out)


def method_page(name: str, info: dict[str, Any], reps: list[DatasetReport], cache: _IntervalCache) -> str:
    parts = [f"<h1>{_e(name)}</h1>"]
    if not info.get("registered"):
        why = f" (the method registry failed to load: {_e(info['error'])})" if info.get("error") else ""
        parts.append('<p class="warn">This method is not registered in the current tree' + why + "; "
                     "its stored runs are shown as recorded.</p>")
    else:
        parts.append(f"""<dl class="facts">
<dt>family</dt><dd>{_e(info['family'])}</dd>
<dt>paper</dt><dd>{_e(info['paper'])}</dd>
<dt>bytes per vector</dt><dd><code>{_e(info['bytes_formula'])}</code></dd>
<dt>build grid</dt><dd><code>{_e(json.dumps(info['build_grid']))}</code></dd>
<dt>search grid</dt><dd><code>{_e(json.dumps(info['search_grid']))}</code></dd>
<dt>module</dt><dd><code>{_e(info['module'])}</code></dd>
</dl>""")
        if info.get("declared"):
            parts.append(_paper_fidelity_html(name, info))
        elif info.get("flag_departures"):
            parts.append('<div class="departures"><b>⚠ Departs from its paper</b> (as its module docstring '
                         f"declares):<pre>{_e(info['departures'])}</pre></div>")
        elif info.get("departures"):
            parts.append('<div class="note"><b>Declares no departure from its paper</b>, with a note:'
                         f'<pre>{_e(info["departures"])}</pre></div>')
        else:
            parts.append('<p class="note">The module docstring states no departure from the paper.</p>')
        if info.get("doc"):
            parts.append(f"<details><summary>Module documentation</summary><pre>{_e(info['doc'])}</pre></details>")
    for rep in reps:
        runs = rep.runs[rep.runs["method"] == name]
        failed = rep.failed[rep.failed["method"] == name] if not rep.failed.empty else rep.failed
        if runs.empty and failed.empty:
            continue
        label = LABELS.get(rep.metric, rep.metric)
        parts.append(f'<h2>{_e(rep.name)} <a class="small" href="../datasets/{_slug(rep.name)}.html">leaderboard</a></h2>')
        metrics = [m for m in unc.PER_QUERY_COLUMNS if m in runs and runs[m].notna().any()]
        headers = ([("config", "config hash"), ("build", ""), ("search", "")]
                   + [(f"{LABELS.get(m, m)} [95% CI]", "") for m in metrics]
                   + [("measured B/vec", ""), ("formula B/vec", "analytic bytes per vector"),
                      ("QPS", "one thread"), ("p50 ms", ""), ("p99 ms", ""), ("build s", "train + build"),
                      ("peak RSS MB", ""), ("git revision", ""), ("time (UTC)", ""), ("CPU", ""),
                      ("versions", "")])
        rows = []
        for _, r in runs.sort_values("bytes_per_vector").iterrows():
            qcells = []
            for m in metrics:
                ci = cache.ci(r, m)
                qcells.append(_td(f"{r[m]:.4f} {_ci_text(ci.low, ci.high) if ci else ''}", r[m]))
            flag = " ⚠" if bool(r.get("bytes_mismatch", False)) else ""
            rows.append(
                f'<tr id="cfg-{_e(r["config_hash"])}" data-hash="{_e(r["config_hash"])}">'
                + "".join([_td(f"<code>{_e(r['config_hash'])}</code>", None, raw=True),
                           _td(_params(r["build_params"], variant=True), None, "l"),
                           _td(_params(r["search_params"]), None, "l")]
                          + qcells
                          + [_td(_num(r["bytes_per_vector"], ".1f") + flag, r["bytes_per_vector"],
                                 title="measured differs from the formula by >10%" if flag else ""),
                             _td(_num(r["bytes_analytic"], ".1f"), r["bytes_analytic"]),
                             _td(_num(r["qps_1t"], ",.0f"), r["qps_1t"]),
                             _td(_num(r["latency_p50_ms"], ".3f"), r["latency_p50_ms"]),
                             _td(_num(r["latency_p99_ms"], ".3f"), r["latency_p99_ms"]),
                             _td(_num(r["train_s"] + r["build_s"], ".2f"), r["train_s"] + r["build_s"]),
                             _td(_num(r.get("peak_rss_mb", np.nan), ",.0f"), r.get("peak_rss_mb", np.nan))]
                          + _provenance_cells(r))
                + "</tr>")
        parts.append(f"<p>Quality: {_e(label)}. {len(runs)} stored configuration(s).</p>")
        parts.append(_table(headers, rows))
        if not failed.empty:
            items = "".join(f"<li><code>{_e(f['config_hash'])}</code>{_e(_params_clause(f['build_params'], f['search_params']))}: "
                            f"<b>{_e(f['status'])}</b> {_e(str(f.get('error', ''))[:300])}</li>"
                            for _, f in failed.drop_duplicates("config_hash").iterrows())
            parts.append(f"<details><summary>{len(failed)} failed run(s)</summary><ul>{items}</ul></details>")
    return _page(f"method {name}", "\n".join(parts), depth=1)


def _rows_sentence(reps: list[DatasetReport], n_rows: int) -> str:
    current = sum(len(r.runs) for r in reps)
    return (f"{n_rows:,} stored result rows; the {current:,} current configurations of these "
            f"{len(reps)} data set(s) are reported (older runs of a configuration and failed runs are not ranked).")


def index_page(reps: list[DatasetReport], methods: dict[str, dict[str, Any]], n_rows: int,
               studies_html: str = "") -> str:
    rows = []
    for rep in reps:
        info = rep.info
        top = rep.board[rep.board["is_top"]]
        winners = ", ".join(f"{_budget_label(b)}: {m}" for b, m in zip(top["budget"], top["entry"], strict=True))
        rows.append("<tr>" + "".join([
            _td(f'<a href="datasets/{_slug(rep.name)}.html">{_e(rep.name)}</a>', None, raw=True),
            _td(f"{info['n']:,}", info["n"]), _td(str(info["dim"]), info["dim"]), _td(str(info["nq"]), info["nq"]),
            _td(info["metric"]), _td(LABELS.get(rep.metric, rep.metric)),
            _td(str(len(rep.runs)), len(rep.runs)), _td(str(rep.runs["method"].nunique()), rep.runs["method"].nunique()),
            _td(str(rep.runs["created_utc"].max())),
            _td(winners, None, "small"),
        ]) + "</tr>")
    mrows = []
    for name, info in methods.items():
        flag = method_flags(info)
        mrows.append("<tr>" + "".join([
            _td(_method_link(name, depth=0), None, "method", raw=True),
            _td(info.get("family", "–")), _td(info.get("bytes_formula", "–")),
            _td(info.get("paper", "not registered in this tree"), None, "small"), _td(flag),
        ]) + "</tr>")
    summaries = "".join(f"<li><b>{_e(r.name)}</b>: {_e(_summary_sentence(r))}</li>" for r in reps if r.reference)
    body = f"""
<h1>vecbudget: embedding compression and vector search under memory budgets</h1>
<p>{_rows_sentence(reps, n_rows)} Each data set page has the leaderboard by budget, the Pareto plots
and the recommendation; each method page has its configurations and the provenance of every number.</p>
<h2>Data sets</h2>
{_table([("data set", ""), ("n", ""), ("d", ""), ("queries", ""), ("metric", ""), ("quality", ""),
         ("configs", ""), ("methods", ""), ("latest run (UTC)", ""), ("best per budget (B/vec: method)", "")],
        rows, tid="datasets")}
{f"<ul>{summaries}</ul>" if summaries else ""}
{studies_html}<h2>Methods</h2>
{_table([("method", ""), ("family", ""), ("bytes per vector", ""), ("paper", ""),
         ("paper's recipe", "post-hoc: the recipe cannot run here, its closest post-hoc version does; "
          "variants: named departures, each its own leaderboard entry")],
        mrows, tid="methods")}
"""
    return _page("index", body, depth=0)


# ----------------------------------------------------------------------------------------------
# Markdown


INSERTION_ORDER_STUDY = "insertion_order.md"  # written by benchmarks/insertion_order.py


def insertion_order_summary(results_dir: Path) -> tuple[list[str], list[list[str]], str] | None:
    """The effect-size table of ``results_dir/insertion_order.md`` (headers, rows, the sentence
    after it), or None when the study has not been run."""
    try:
        text = (Path(results_dir) / INSERTION_ORDER_STUDY).read_text()
    except OSError:
        return None
    section: list[str] = []
    for ln in text.splitlines():
        if section and ln.startswith("## "):
            break
        if section or ln.startswith("## Effect size"):
            section.append(ln)
    table = [ln for ln in section if ln.startswith("|")]
    if len(table) < 3:
        return None
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]] for ln in table]
    note = " ".join(ln for ln in section[1:] if ln and not ln.startswith("|"))
    return cells[0], cells[2:], note


def _insertion_order_html(results_dir: Path, site: Path) -> str:
    summary = insertion_order_summary(results_dir)
    if summary is None:
        return ""
    headers, rows, note = summary
    link = Path(os.path.relpath(Path(results_dir) / INSERTION_ORDER_STUDY, site)).as_posix()

    def cell(c: str) -> str:
        return _e(c.strip("*`")) if not (c.startswith("**") and c.endswith("**")) else f"<b>{_e(c[2:-2])}</b>"

    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<h2>HNSW insertion order and local intrinsic dimension</h2>\n<p>Recall@10 spread across '
            f'insertion orders at fixed M/ef (<code>benchmarks/insertion_order.py</code>; full tables: '
            f'<a href="{_e(link)}">{INSERTION_ORDER_STUDY}</a>). {_e(note.replace("**", "").replace("`", ""))}</p>\n'
            f'<table class="study"><thead><tr>{"".join(f"<th>{_e(h)}</th>" for h in headers)}</tr></thead>'
            f'<tbody>{body}</tbody></table>\n')


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def markdown_report(reps: list[DatasetReport], site: Path, md_path: Path, n_rows: int,
                    results_dir: Path | None = None, extra_lines: list[str] | None = None) -> str:
    rel = Path(os.path.relpath(site, md_path.parent)).as_posix()
    lines = ["# vecbudget report", "",
             f"Built from `runs/*.parquet`: {_rows_sentence(reps, n_rows)} Browsable site with sortable "
             f"leaderboards, interactive plots and per-method provenance: [{rel}/index.html]({rel}/index.html).", "",
             "Quality intervals are 95% percentile bootstraps over queries (2,000 resamples); **≈#1** marks a "
             "method the paired sign-flip permutation test (by query) cannot tell from the budget's best "
             "(p ≥ 0.05). Every row names the config hash of the stored run it comes from.", ""]
    from harness.tracks.multivector import per_document, per_document_text

    for rep in reps:
        first = len(lines)  # this data set's lines (the multi-vector track's say bytes per document)
        info, label = rep.info, LABELS.get(rep.metric, rep.metric)
        page = f"{rel}/datasets/{_slug(rep.name)}.html"
        lines += [f"## {rep.name}", "",
                  f"n={info['n']:,}, d={info['dim']}, {info['nq']} queries, metric {info['metric']}, "
                  f"quality {label}; {len(rep.runs)} configurations of {rep.runs['method'].nunique()} methods "
                  f"([site page]({page})).", ""]
        lines += ["### Which method at which budget", ""]
        if rep.reference:
            lines += [_summary_sentence(rep) + ".", ""]
        rec_rows = []
        for item in _recommendation_rows(rep):
            b = item["best"]
            rec_rows.append([_budget_label(item["budget"]), f"{item['ratio']:.4f}", f"**{b['entry']}**",
                             _params(b["build_params"]), f"{b['quality']:.4f} {_ci_text(b['ci_low'], b['ci_high'])}",
                             _pct(b["pct_of_reference"]),
                             ("only entry" if b["alone"] else "clear winner") if b["clear_best"]
                             else "≈ " + ", ".join(item["ties"]),
                             _fastest_text(item), f"`{b['config_hash']}`"])
        rec_rows += [[_budget_label(n["budget"]), f"{n['ratio']:.4f}", "nothing fits", "", "", "", n["closest"], "", ""]
                     for n in rep.nothing_fits]
        lines.append(_md_table(["budget B/vec", "×float32", "use", "build", f"{label} [95% CI]",
                                "% of float32", "vs the rest", "fastest of #1 and ≈#1", "config"], rec_rows))
        measured = f" (measured at n={info['n']:,})" if rep.at_n else ""
        for item in rep.retention:
            run = item["run"]
            if run:
                lines.append(f"- cheapest configuration keeping ≥{item['level']:.0%} of exact float32 {label}: "
                             f"**{run['entry']}**{_params_clause(run['build_params'], run['search_params'])} "
                             f"at {run['bytes_per_vector']:.1f} B/vector{measured}, ×{1 / run['ratio_to_float32']:.1f} smaller "
                             f"than float32 ({label} {run['quality']:.4f}, config `{run['config_hash']}`)")
            else:
                lines.append(f"- no stored configuration keeps ≥{item['level']:.0%} of exact float32 {label}")
        lines += ["", "### Leaderboard", ""]
        if rep.at_n:
            lines += [f"Bytes per vector are projected to n={rep.at_n:,} (measured at n={info['n']:,}).", ""]
        show_r100 = bool(rep.board["qrels_recall_at_100"].notna().any()) if not rep.board.empty else False
        rows = []
        for _, b in rep.board.iterrows():
            vs = ("" if b["is_top"] else ("≈#1 " if b["tied_with_best"] else "")
                  + (_pfmt(b["p_vs_best"]) if not np.isnan(b["p_vs_best"]) else "untested"))
            row = [_budget_label(b["budget"]), str(int(b["rank"])),
                   ("★ " if b["is_top"] else "") + b["entry"], _params(b["build_params"]),
                   _params(b["search_params"]), f"{b['quality']:.4f}", _ci_text(b["ci_low"], b["ci_high"]), vs]
            if show_r100:
                row.append(_num(b["qrels_recall_at_100"], ".4f"))
            row += [f"{b['qps_1t']:,.0f}", f"{b['latency_p99_ms']:.3f}",
                    f"{b['bytes_per_vector']:.1f}" + (" ⚠" if b["memory_flag"] else ""),
                    f"{b['build_s']:.2f}", f"`{b['config_hash']}`"]
            rows.append(row)
        bytes_label = _bytes_label(rep)[0]
        lines.append(_md_table(["budget B/vec", "#", "method", "build", "search", label, "95% CI", "vs #1"]
                               + (["Recall@100"] if show_r100 else [])
                               + ["QPS (1 thread)", "p99 ms", bytes_label, "build s", "config"], rows))
        if rep.board["memory_flag"].any() if not rep.board.empty else False:
            lines += [f"⚠ beside the bytes: {MEMORY_FLAG}.", ""]
        lines += [f"- {line}" for line in nothing_fits_lines(rep)]
        if rep.nothing_fits:
            lines.append("")
        for name, (png, _svg) in rep.plots.items():
            lines += [f"![{rep.name}: {name.replace('_', ' ')}]({rel}/{png})", ""]
        if per_document(rep.runs):
            lines[first:] = [per_document_text(line) for line in lines[first:]]
    lines += list(extra_lines or [])
    study = insertion_order_summary(results_dir) if results_dir is not None else None
    if study is not None:
        link = Path(os.path.relpath(Path(results_dir) / INSERTION_ORDER_STUDY, md_path.parent)).as_posix()
        lines += ["## HNSW insertion order and local intrinsic dimension", "",
                  f"Recall@10 spread across insertion orders at fixed M/ef (`benchmarks/insertion_order.py`; "
                  f"full tables: [{INSERTION_ORDER_STUDY}]({link})).", "",
                  "| " + " | ".join(study[0]) + " |", "|" + "|".join("---" for _ in study[0]) + "|",
                  *("| " + " | ".join(r) + " |" for r in study[1]), "", study[2], ""]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# entry point


@dataclass
class ReportPaths:
    site: Path
    markdown: Path
    datasets: list[str]  # every data set the index and REPORT.md cover
    methods: list[str]
    rebuilt: list[str] = field(default_factory=list)  # data sets whose pages were (re)written


def _swap_in(tmp: Path, dest: Path) -> None:
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    if dest.exists():
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except OSError:
        if old.exists():
            os.replace(old, dest)
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def build_report(results_dir: str | Path, out_dir: str | Path | None = None, *,
                 markdown: str | Path | None = None, budgets: tuple[float, ...] = DEFAULT_BUDGETS,
                 datasets: list[str] | None = None, resamples: int = unc.RESAMPLES,
                 plots: bool = True, at_n: int | None = None,
                 identities: dict[str, str | None] | None = None) -> ReportPaths:
    """Write the site (``out_dir``, default ``results_dir/report``) and ``REPORT.md``.

    ``datasets`` restricts what is *rebuilt*, never what is published: the named data sets' pages
    and plots are rewritten; every other data set with stored runs keeps the page and plots it
    already has in the site (a data set without one gets it written), and the index, the method
    pages and REPORT.md always cover every data set. ``plots=False`` skips the static matplotlib
    figures (the pages' interactive plots are drawn all the same). ``at_n`` ranks on bytes per
    vector projected to that many vectors (the pages say so). ``identities`` maps a data set name
    to the identity (fingerprint) whose runs it shows: runs are keyed by content, so a folder
    copied under another name is reported under the name given.
    """
    from harness.plots import plot_dataset

    results_dir = Path(results_dir)
    site = Path(out_dir) if out_dir else results_dir / "report"
    md_path = Path(markdown) if markdown else results_dir / "REPORT.md"
    if at_n is not None and int(at_n) <= 0:
        raise VecbudgetError(f"at_n must be a positive number of vectors, got {at_n}")
    df = ResultStore(results_dir).load()
    if df.empty or "dataset" not in df:
        raise VecbudgetError(f"no stored runs in {results_dir / 'runs'}; run `vecbudget run` first")
    identities = {k: v for k, v in (identities or {}).items() if v is not None}
    stored = sorted(set(df.loc[df["status"] == "ok", "dataset"].unique()) | set(identities))
    unknown = sorted(set(datasets or ()) - set(df["dataset"].unique()) - set(identities))
    if unknown:
        raise VecbudgetError(f"no stored runs for data set(s) {', '.join(unknown)}; "
                             f"stored: {', '.join(sorted(df['dataset'].unique()))}")
    rebuild = set(datasets) if datasets else set(stored)
    cache = _IntervalCache(resamples, unc.SEED)
    reps = [r for r in (analyse_dataset(df, n, budgets, resamples=resamples, at_n=at_n, cache=cache,
                                        fingerprint=identities.get(n)) for n in stored)
            if r is not None]
    filtered_names = [n for n in filtered_report.reportable(df) if n in stored]
    if not rebuild & ({r.name for r in reps} | set(filtered_names)):
        raise VecbudgetError(f"no successful runs to report in {results_dir / 'runs'}"
                             + (f" for {', '.join(sorted(rebuild))}" if datasets else ""))

    site.parent.mkdir(parents=True, exist_ok=True)
    tmp = site.parent / f".{site.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if datasets and site.is_dir():
            shutil.copytree(site, tmp, symlinks=True)  # the pages of the data sets not rebuilt stay
        (tmp / "datasets").mkdir(parents=True, exist_ok=True)
        (tmp / "methods").mkdir(exist_ok=True)
        rebuilt = []
        for rep in reps:
            folder = f"plots/{_slug(rep.name)}"
            page = tmp / "datasets" / f"{_slug(rep.name)}.html"
            if rep.name not in rebuild and page.is_file():
                rep.plots = _static_plots(tmp, folder)
                continue
            shutil.rmtree(tmp / folder, ignore_errors=True)
            written = plot_dataset(df, rep.name, tmp / folder, fingerprint=identities.get(rep.name)) if plots else []
            stems = sorted({p.stem for p in written})
            rep.plots = {s: (f"{folder}/{s}.png", f"{folder}/{s}.svg") for s in stems}
            page.write_text(dataset_page(rep))
            rebuilt.append(rep.name)
        filtered_pages = _filtered_pages(df, tmp, filtered_names, rebuild, identities, plots)
        def methods_of(r: DatasetReport) -> set[str]:
            return set(r.runs["method"]) | set(r.failed.get("method", []))

        filtered_methods = set(filtered_report.filtered_runs(df)["method"]) if filtered_names else set()
        method_names = sorted(set().union(*(methods_of(r) for r in reps)) | filtered_methods)
        touched = set().union(*(methods_of(r) for r in reps if r.name in rebuilt))
        if rebuild & set(filtered_names):
            touched |= filtered_methods
        infos = {m: method_info(m) for m in method_names}
        for m in method_names:
            page = tmp / "methods" / f"{_slug(m)}.html"
            if m in touched or not page.is_file():  # a method only in kept data sets keeps its page
                page.write_text(method_page(m, infos[m], reps, cache))
        studies = _filtered_index_html(filtered_pages) + _insertion_order_html(results_dir, site)
        (tmp / "index.html").write_text(index_page(reps, infos, len(df), studies))
        _swap_in(tmp, site)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    filtered_md = _filtered_markdown(df, filtered_pages, site, md_path, identities)
    atomic_write_text(md_path, markdown_report(reps, site, md_path, len(df), results_dir, filtered_md))
    md_path.chmod(0o644)  # readable like the site's files (the atomic writer's temp file is 0600)
    shown = [r.name for r in reps] + [n for n in filtered_names if n not in {r.name for r in reps}]
    rebuilt += [n for n in filtered_names if n in rebuild and n not in rebuilt]
    return ReportPaths(site, md_path, shown, method_names, rebuilt)


def _filtered_pages(df: pd.DataFrame, site: Path, names: list[str], rebuild: set[str],
                    identities: dict[str, str], plots: bool) -> dict[str, tuple[str, str | None]]:
    """Write the filtered-search page (per-band tables, recall/QPS-vs-selectivity plot) of each
    data set in ``names`` that is rebuilt or has none yet: name -> (page, plot PNG), site paths."""
    out: dict[str, tuple[str, str | None]] = {}
    (site / "filtered").mkdir(exist_ok=True)
    for name in names:
        slug = _slug(name)
        page, folder = site / "filtered" / f"{slug}.html", f"plots/filtered/{slug}"
        png = f"{folder}/{filtered_report.PLOT_STEM}.png"
        if name in rebuild or not page.is_file():
            runs = filtered_report.filtered_runs(df, name, identities.get(name))
            shutil.rmtree(site / folder, ignore_errors=True)
            if plots:
                filtered_report.plot(runs, site / folder)
            src = f"../{png}" if (site / png).is_file() else None
            page.write_text(_page(f"{name}: filtered search", filtered_report.site_body(name, runs, src), depth=1))
        out[name] = (f"filtered/{slug}.html", png if (site / png).is_file() else None)
    return out


def _filtered_index_html(pages: dict[str, tuple[str, str | None]]) -> str:
    if not pages:
        return ""
    items = "".join(f'<li><a href="{_e(page)}">{_e(name)}</a></li>' for name, (page, _png) in pages.items())
    return ("<h2>Filtered search</h2>\n<p>Every query carries a filter (attribute filters and random subsets "
            "from 0.1% to 50% selectivity); per-selectivity-band tables and the recall/QPS-vs-selectivity "
            f"plot:</p>\n<ul>{items}</ul>\n")


def _filtered_markdown(df: pd.DataFrame, pages: dict[str, tuple[str, str | None]], site: Path, md_path: Path,
                       identities: dict[str, str]) -> list[str]:
    rel = Path(os.path.relpath(site, md_path.parent)).as_posix()
    lines: list[str] = []
    for name, (page, png) in pages.items():
        runs = filtered_report.filtered_runs(df, name, identities.get(name))
        lines += filtered_report.markdown_section(name, runs, f"{rel}/{page}", f"{rel}/{png}" if png else None)
    return lines


def _static_plots(site: Path, folder: str) -> dict[str, tuple[str, str]]:
    """The static figures a kept data set page already has: name -> (PNG, SVG) site paths."""
    names = {p.stem for p in (site / folder).glob("*.png")} & {p.stem for p in (site / folder).glob("*.svg")}
    return {n: (f"{folder}/{n}.png", f"{folder}/{n}.svg") for n in sorted(names)}
