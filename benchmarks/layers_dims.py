"""Layers × dimensions (post-hoc 2DMSE / Starbucks): quality by encoder layer, PCA prefix and storage.

For each data set and layer L = 1..6 of all-MiniLM-L6-v2 the data set ``NAME@L<L>`` holds the
mean-pooled, L2-normalised hidden state of layer L (:mod:`harness.layers`; every layer comes from
one encode, cached per layer; the query encoding time of the model truncated to L layers is
measured once for all layers, interleaved, and stored in each row). On each, ``vecbudget``'s
sweep runs ``starbucks-2d`` (first d' PCA coordinates, fp16 or int8; all 12 grid points) and
``exact`` (float32, the layer's own exact search), in worker processes, stored in ``results/``
like any run, so the rows are on the leaderboards as ``NAME@L<L>``.

    python3 -m benchmarks.layers_dims run     # the runs (skips those already stored)
    python3 -m benchmarks.layers_dims note    # heat-maps (results/plots/layers/) and results/layers_dims.md
    python3 -m benchmarks.layers_dims         # both

``--datasets`` / ``--layers`` narrow the grid. The same runs, one layer at a time:
``vecbudget run -d wordnet@L3 -m starbucks-2d -m exact -b 4096 --per-budget 12``.

This is post hoc: the model was not trained with the 2DMSE / Starbucks objective, so the
numbers measure how good a frozen model's intermediate layers are, not the papers' method.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
PLOTS = RESULTS / "plots" / "layers"
NOTE = RESULTS / "layers_dims.md"
DATASETS = ("wordnet", "scifact")
LAYERS = (1, 2, 3, 4, 5, 6)
METHODS = ("starbucks-2d", "exact")
BUDGET = 4096.0  # every grid point fits: the sweep builds all of them
TITLES = {"wordnet": "WordNet", "scifact": "SciFact"}


def run(datasets: tuple[str, ...], layers: tuple[int, ...], quiet: bool) -> int:
    from harness import leaderboard as lb
    from harness.budgets import DEFAULT_BUDGETS
    from harness.executor import ProcessExecutor
    from harness.loaders import load_dataset
    from harness.registry import get_method
    from harness.store import ResultStore
    from harness.sweep import SweepConfig, run_sweep

    store = ResultStore(RESULTS)
    store.check_writable()
    per_budget = max(len(get_method(m).build_configs(384)) for m in METHODS)
    failed = 0
    for name in datasets:
        for layer in layers:
            ds = load_dataset(f"{name}@L{layer}", progress=not quiet)
            cfg = SweepConfig(methods=list(METHODS), budgets=(BUDGET,), per_budget=per_budget)
            new = run_sweep(ds, cfg, store, ProcessExecutor(), progress=not quiet)
            failed += int((new["status"] != "ok").sum()) if not new.empty else 0
            board = lb.leaderboard(store.load(), ds.name, tuple(DEFAULT_BUDGETS), fingerprint=ds.fingerprint)
            lb.save(board, RESULTS / "leaderboards", ds.name)
            print(f"{ds.name}: {len(new)} new row(s), fingerprint {ds.fingerprint}", flush=True)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# the note


def grid(df: pd.DataFrame, name: str, layers: tuple[int, ...]) -> pd.DataFrame:
    """One row per (layer, method, dims, dtype) of the stored runs of ``name@L<layer>``."""
    from harness.leaderboard import current_runs

    parts = []
    for layer in layers:
        runs = current_runs(df, f"{name}@L{layer}")
        if runs.empty:
            continue
        runs = runs[runs["method"].isin(METHODS)].copy()
        params = runs["build_params"].map(json.loads)
        runs["dims"] = [int(p.get("dims", r["dim"])) for p, (_, r) in zip(params, runs.iterrows(), strict=True)]
        runs["dtype"] = [p.get("dtype", "float32") for p in params]
        runs["layer"] = layer
        parts.append(runs)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def tied_with_best(g: pd.DataFrame, metric: str = "ndcg_at_10") -> pd.Series:
    """Whether each row is statistically tied with the best row of ``g`` (paired sign-flip test over
    the same queries, p >= 0.05): a difference the test cannot see is a tie."""
    from harness.uncertainty import paired_p_value, per_query

    best = g.loc[g[metric].idxmax()]
    ref = per_query(best, metric)
    return pd.Series([paired_p_value(per_query(r, metric), ref) >= 0.05 for _, r in g.iterrows()], index=g.index)


def heatmap(g: pd.DataFrame, name: str, dtype: str, out: Path, vmin: float, vmax: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.io import atomic_path

    sub = g[(g["method"] == "starbucks-2d") & (g["dtype"] == dtype)]
    table = sub.pivot_table(index="layer", columns="dims", values="ndcg_at_10")
    tied = sub.assign(t=sub["tied"]).pivot_table(index="layer", columns="dims", values="t", aggfunc="max")
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    im = ax.imshow(table.to_numpy(float), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"L{i}" for i in table.index])
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            v = table.iat[i, j]
            if np.isfinite(v):
                mark = "≈" if bool(tied.iat[i, j]) else ""
                ax.text(j, i, f"{v:.3f}{mark}", ha="center", va="center", fontsize=8,
                        color="black" if v > (vmin + vmax) / 2 else "white")
    ax.set_xlabel(f"PCA-prefix dimensions d' ({dtype}: {2 if dtype == 'fp16' else 1} B per dim)")
    ax.set_ylabel("encoder layer (mean-pooled hidden state)")
    ax.set_title(f"{TITLES.get(name, name)}: nDCG@10 by layer × dimension, {dtype}\n"
                 "post-hoc 2DMSE / Starbucks on all-MiniLM-L6-v2 (not 2D-Matryoshka trained); ≈ tied with best",
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="nDCG@10")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".svg"):
        f = out / f"{name}_{dtype}_ndcg.{suffix[1:]}"
        with atomic_path(f, suffix=suffix) as tmp:
            fig.savefig(tmp, dpi=120, format=suffix[1:])
        written.append(f)
    plt.close(fig)
    return written


def cost_plot(g: pd.DataFrame, name: str, out: Path) -> list[Path]:
    """nDCG@10 against the measured query encoding time of each depth, one line per (d', storage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.io import atomic_path

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ex = g[g["method"] == "exact"].sort_values("layer")
    ax.plot(ex["query_encode_ms_per_query"], ex["ndcg_at_10"], "k-o", lw=2, label="exact float32 (1536 B)")
    for (dims, dtype), sub in g[g["method"] == "starbucks-2d"].groupby(["dims", "dtype"]):
        if dims not in (32, 64, 128, 384):
            continue
        sub = sub.sort_values("layer")
        colour = plt.get_cmap("tab10")((32, 64, 128, 384).index(dims))
        ax.plot(sub["query_encode_ms_per_query"], sub["ndcg_at_10"], "--" if dtype == "int8" else "-",
                color=colour, marker="x" if dtype == "int8" else ".", label=f"d'={dims} {dtype} ({dims * (2 if dtype == 'fp16' else 1)} B)")
    for _, r in ex.iterrows():
        ax.annotate(f"L{int(r['layer'])}", (r["query_encode_ms_per_query"], r["ndcg_at_10"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("query encoding ms, one query alone, one thread (model truncated to L layers; shared CPU)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{TITLES.get(name, name)}: quality vs encoder depth and bytes (post-hoc, not 2D-trained)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written = []
    for suffix in (".png", ".svg"):
        f = out / f"{name}_ndcg_vs_query_ms.{suffix[1:]}"
        with atomic_path(f, suffix=suffix) as tmp:
            fig.savefig(tmp, dpi=120, format=suffix[1:])
        written.append(f)
    plt.close(fig)
    return written


def findings(g: pd.DataFrame) -> list[str]:
    """What the grid says about depth against bytes, computed from the stored rows."""
    top = int(g["layer"].max())
    ex = g[g["method"] == "exact"].set_index("layer")
    sb = g[g["method"] == "starbucks-2d"]
    out = []
    if top in ex.index and top - 1 in ex.index:
        a, b = ex.loc[top - 1], ex.loc[top]
        out.append(f"Layer {top - 1} (query encoding {a['query_encode_ratio_to_full']:.2f}× the full model's) keeps "
                   f"{a['ndcg_at_10'] / b['ndcg_at_10']:.0%} of layer {top}'s exact nDCG@10 "
                   f"({a['ndcg_at_10']:.4f} vs {b['ndcg_at_10']:.4f}).")
    shallow = g[g["layer"] < top]
    if not shallow.empty:
        best_shallow = shallow.loc[shallow["ndcg_at_10"].idxmax()]
        from harness.uncertainty import paired_p_value, per_query

        ref = per_query(best_shallow, "ndcg_at_10")
        beat = sb[(sb["layer"] == top) & (sb["ndcg_at_10"] > best_shallow["ndcg_at_10"])].sort_values("bytes_per_vector")
        beat = beat[[paired_p_value(per_query(r, "ndcg_at_10"), ref) < 0.05 for _, r in beat.iterrows()]]
        if not beat.empty:
            small = beat.iloc[0]
            p = paired_p_value(per_query(small, "ndcg_at_10"), ref)
            out.append(f"The best cell of any shallower layer ({best_shallow['method']} L{int(best_shallow['layer'])}, "
                       f"{best_shallow['bytes_per_vector']:.0f} B/vector, nDCG@10 {best_shallow['ndcg_at_10']:.4f}) is "
                       f"beaten significantly (paired sign-flip p = {p:.3g}) by layer {top} at d'={int(small['dims'])} "
                       f"{small['dtype']} ({small['bytes_per_vector']:.1f} B/vector measured, nDCG@10 "
                       f"{small['ndcg_at_10']:.4f}): on this frozen model, depth cannot be traded for bytes.")
    return [" ".join(out), ""] if out else []


def _md_table(frame: pd.DataFrame) -> str:
    return frame.to_markdown()


def note(datasets: tuple[str, ...], layers: tuple[int, ...]) -> Path:
    from harness.io import atomic_path
    from harness.leaderboard import current_runs
    from harness.store import ResultStore

    df = ResultStore(RESULTS).load()
    lines = [
        "# Layers × dimensions: post-hoc 2DMSE / Starbucks on all-MiniLM-L6-v2",
        "",
        "Issue 12 §3. Encoder depth is a cost axis beside bytes: 2DMSE (Li et al., *2D Matryoshka Sentence "
        "Embeddings*, 2024) and Starbucks (Zhuang et al., *Starbucks: Improved Training for 2D Matryoshka "
        "Embeddings*, 2024) train an encoder so that every (layer, dimension) sub-network embeds well. "
        "**This is the post-hoc variant, not the papers' method**: all-MiniLM-L6-v2 was not 2D-Matryoshka "
        "trained, so the grid measures how good the frozen model's intermediate layers and PCA prefixes are.",
        "",
        "* **Layer axis** (a data set property, `NAME@L<L>`, `harness/layers.py`): the hidden state after "
        "transformer layer L (1..6), mean-pooled over tokens (masked) and L2-normalised. Layer 6 is the "
        "model's standard embedding (a test checks equality with sentence-transformers' output). All six "
        "layers come from one encode (one forward pass per batch, `output_hidden_states=True`), cached per layer. "
        "The data set's identity (fingerprint) names model, layer and pooling; standard embeddings keep their "
        "identity.",
        "* **Dimension × storage axis** (method `starbucks-2d`, `methods/starbucks_2d.py`): the first d' "
        "coordinates in the layer's PCA basis (as `pca-prefix`), stored fp16 (2·d' B) or int8 (d' B, "
        "per-dimension [min, max] calibration as sentence-transformers' `quantize_embeddings`), exact scan, "
        "float32 queries. `exact` (float32, 384 dims) is run on every layer as its reference.",
        "* **Query cost**: a copy of the model truncated to its first L layers encodes the test queries, one "
        "at a time (tokenise + forward + pool, one thread; median over the first 100 queries) and in batches "
        "(first 512, batch size 64), the six depths interleaved query by query in one run so machine load "
        "hits them alike. Rows carry `encoder_layer`, `query_encode_ms_per_query`, "
        "`query_encode_batch_ms_per_query` and `query_encode_ratio_to_full`. The machine (2 cores) was shared "
        "with other jobs: read the times as ratios within one data set.",
        "",
        "Command (runs what is not stored yet, then writes this note and the heat-maps):",
        "",
        "```bash",
        "python3 -m benchmarks.layers_dims            # = run + note; --datasets / --layers narrow it",
        "vecbudget leaderboard -d wordnet@L3          # any layer's leaderboard",
        "```",
        "",
        "Leaderboards: each layer is its own data set, `wordnet@L1` … `wordnet@L6`, `scifact@L1` … "
        "`scifact@L6` (`results/leaderboards/<name>.md`); `vecbudget run -d wordnet@L3` runs any method on "
        "layer 3's vectors.",
        "",
    ]
    for name in datasets:
        g = grid(df, name, layers)
        if g.empty:
            lines += [f"## {TITLES.get(name, name)}", "", "No stored runs yet.", ""]
            continue
        g["tied"] = tied_with_best(g)
        ok = g[g["method"] == "starbucks-2d"]
        vmin, vmax = float(ok["ndcg_at_10"].min()), float(g["ndcg_at_10"].max())
        plots = [heatmap(g, name, dt, PLOTS, vmin, vmax) for dt in ("fp16", "int8")]
        plots.append(cost_plot(g, name, PLOTS))
        first = g.iloc[0]
        lines += [f"## {TITLES.get(name, name)} (n = {int(first['n']):,}, {int(first['nq']):,} test queries)", ""]
        for files in plots:
            png = files[0].relative_to(RESULTS)
            lines += [f"![{png.stem}]({png})", ""]
        for dt in ("fp16", "int8"):
            sub = g[(g["method"] == "starbucks-2d") & (g["dtype"] == dt)]
            t = sub.pivot_table(index="layer", columns="dims", values="ndcg_at_10")
            tied = sub.pivot_table(index="layer", columns="dims", values="tied", aggfunc="max")
            shown = t.map(lambda v: f"{v:.4f}") + tied.map(lambda v: " ≈" if v else "")
            shown.index = [f"L{i}" for i in shown.index]
            shown.columns = [f"d'={c} ({c * (2 if dt == 'fp16' else 1)} B)" for c in shown.columns]
            lines += [f"nDCG@10, {dt} (≈: tied with the best cell of this data set, paired sign-flip test p ≥ 0.05):",
                      "", _md_table(shown), ""]
        ex = g[g["method"] == "exact"].set_index("layer").sort_index()
        sb = g[g["method"] == "starbucks-2d"]
        per_layer = pd.DataFrame({
            "exact float32 nDCG@10": ex["ndcg_at_10"].map(lambda v: f"{v:.4f}"),
            "Recall@100 (judged)": ex["qrels_recall_at_100"].map(lambda v: f"{v:.4f}"),
            "query ms (single, p50)": ex["query_encode_ms_per_query"].map(lambda v: f"{v:.2f}"),
            "× full model": ex["query_encode_ratio_to_full"].map(lambda v: f"{v:.2f}"),
            "batch ms/query": ex["query_encode_batch_ms_per_query"].map(lambda v: f"{v:.3f}"),
            "int8 d'=64 recall@10 (vs this layer's exact)": sb[(sb["dtype"] == "int8") & (sb["dims"] == 64)]
            .set_index("layer")["recall_at_10"].map(lambda v: f"{v:.4f}"),
        })
        per_layer.index = [f"L{i}" for i in per_layer.index]
        lines += ["Per layer: exact search on the layer's vectors and the query encoding cost (one run, "
                  "interleaved):", "", _md_table(per_layer), ""]
        std = current_runs(df, name)
        std = std[std["method"] == "exact"] if not std.empty else std
        if not std.empty:
            r = std.iloc[0]
            lines += [f"Reference: the standard embedding (sentence-transformers' pipeline, data set `{name}`, "
                      f"stored `exact` run, fingerprint {r['dataset_fingerprint']}): nDCG@10 {r['ndcg_at_10']:.4f}, "
                      f"Recall@100 (judged) {r['qrels_recall_at_100']:.4f} — layer 6 above should match it.", ""]
        lines += findings(g)
        best = g.loc[g["ndcg_at_10"].idxmax()]
        lines += [f"Best cell: {best['method']} L{int(best['layer'])} d'={int(best['dims'])} {best['dtype']} "
                  f"nDCG@10 {best['ndcg_at_10']:.4f}; {int(g['tied'].sum())} of {len(g)} cells tied with it.", ""]
    lines += [
        "## Caveats",
        "",
        "* Post hoc: the model was not trained with the 2DMSE / Starbucks loss. Trained 2D-Matryoshka models "
        "keep far more quality at shallow layers; these numbers are a floor for what depth can save on an "
        "ordinary model, not an estimate of the papers' results.",
        "* recall@10 is against each layer's *own* exact neighbours, so it is not comparable across layers; "
        "nDCG@10 (against the judgments) is, and is what the heat-maps show.",
        "* Query times were measured once per data set on a 2-core machine shared with other jobs, one thread, "
        "CPU; absolute milliseconds depend on that, the ratios between layers much less (the depths were timed "
        "interleaved). Tokenisation and pooling are included, so the ratio of layer 1 to layer 6 is above 1/6.",
        "* The PCA basis and the int8 ranges are fitted on the data set's base vectors (the worker's training "
        "sample), as for `pca-prefix`.",
        "",
    ]
    with atomic_path(NOTE) as tmp:
        tmp.write_text("\n".join(lines))
    return NOTE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", default="all", choices=("run", "note", "all"))
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--layers", nargs="+", type=int, default=list(LAYERS))
    ap.add_argument("--quiet", "-q", action="store_true")
    args = ap.parse_args(argv)
    datasets, layers = tuple(args.datasets), tuple(args.layers)
    rc = 0
    if args.what in ("run", "all"):
        rc = run(datasets, layers, args.quiet)
    if args.what in ("note", "all"):
        print(note(datasets, layers))
    return rc


if __name__ == "__main__":
    sys.exit(main())


__all__: list[Any] = ["main", "run", "note", "grid", "heatmap"]
