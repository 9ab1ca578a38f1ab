"""vecbudget command line: budgeted sweeps, leaderboards, plots, method and data set listings.

Installed as the ``vecbudget`` command; also ``python cli.py ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from harness.errors import VecbudgetError

# plain (click) help: it wraps long words instead of cutting them, in an 80-column terminal and in CI logs
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None,
                  pretty_exceptions_enable=False)
datasets_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Data sets: list, prepare, info.",
                           rich_markup_mode=None, pretty_exceptions_enable=False)
app.add_typer(datasets_app, name="datasets")

ResultsDir = Annotated[Path, typer.Option("--results-dir", show_default=False,
                                          help="Results folder (runs, leaderboards, plots); default: results/ "
                                               "beside cli.py.")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Data set: a name (see `datasets list`), a "
                                         "manifest .toml, an .hdf5 file or a folder; the same forms as `run`.")]
AtNOpt = Annotated[int | None, typer.Option("--at-n", min=1, help="Place runs by bytes projected to a collection "
                                            "of N vectors: codes and structure as measured, shared parts "
                                            "(codebooks, rotations) amortised over N.")]
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"

# encoder options shared by `run`, `datasets prepare` and `datasets info` (text data sets)
ModelOpt = Annotated[str | None, typer.Option("--model", help="Encoder: any sentence-transformers model name or local path (text data sets).")]
QueryPromptOpt = Annotated[str | None, typer.Option("--query-prompt", help="Prefix for queries, e.g. 'query: ' (default: the manifest's, else the model's known prompt).")]
DocPromptOpt = Annotated[str | None, typer.Option("--doc-prompt", help="Prefix for documents, e.g. 'passage: '.")]
MaxLengthOpt = Annotated[int | None, typer.Option("--max-length", help="Encoder max sequence length in tokens.")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Encoder batch size.")]
NormalizeOpt = Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise embeddings (default: the manifest's, normally on).")]


def _encoder_overrides(model: str | None = None, query_prompt: str | None = None, doc_prompt: str | None = None,
                       max_length: int | None = None, batch_size: int | None = None,
                       normalize: bool | None = None) -> dict:
    """Encoder overrides for :func:`harness.loaders.load_dataset` (only the options given)."""
    for name, value in (("--max-length", max_length), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise VecbudgetError(f"{name} must be a positive integer, got {value}")
    given = {"model": model, "query_prompt": query_prompt, "document_prompt": doc_prompt,
             "max_length": max_length, "batch_size": batch_size, "normalize": normalize}
    return {key: value for key, value in given.items() if value is not None}


def _budgets(values: list[float] | None) -> tuple[float, ...]:
    from harness.budgets import DEFAULT_BUDGETS

    if not values:
        return DEFAULT_BUDGETS
    bad = [v for v in values if not v > 0]
    if bad:
        raise VecbudgetError(f"budgets must be positive bytes per vector, got {bad}")
    return tuple(sorted(set(values)))


@app.command()
def run(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Data set name (see `datasets list`) or a folder.")] = "wordnet",
    method: Annotated[list[str] | None, typer.Option("--method", "-m", help="Method name; repeat for several. Default: the default set; 'all' for every method.")] = None,
    suite: Annotated[str | None, typer.Option("--suite", "-s", help="A method suite from methods/suites.toml (default, baselines, paper) or 'all'.")] = None,
    budget: Annotated[list[float] | None, typer.Option("--budget", "-b", help="Budget in bytes per vector; repeat for several.")] = None,
    k: Annotated[int, typer.Option(help="k for recall@k, latency and QPS.")] = 10,
    full: Annotated[bool, typer.Option("--full", help="WordNet: all 117,659 definitions and every example sentence not used for training as a query (30,877) instead of the 20k / 5k subset.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Re-run configurations already stored.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-run stored failed configurations.")] = False,
    variants: Annotated[bool, typer.Option("--variants", help="Also run each method's named variants (departures from the paper) beside its recipe.")] = False,
    per_budget: Annotated[int, typer.Option(help="Build configurations per method and budget (largest that fit).")] = 1,
    latency_queries: Annotated[int, typer.Option(help="Queries timed one at a time for latency percentiles (p99 of 200 is its 2nd-largest value).")] = 200,
    latency_seconds: Annotated[float, typer.Option(help="Stop timing single queries of a configuration after this many seconds (at least 50 queries are timed; the row stores how many).")] = 3.0,
    time_limit: Annotated[float, typer.Option(help="Seconds allowed per build (worker process); must be positive.")] = 900,
    memory_limit_gb: Annotated[float, typer.Option(help="Address-space limit per worker, GiB (default 75% of RAM).")] = 0,
    executor_kind: Annotated[str, typer.Option("--executor", help="Where builds run: 'process' (one at a time on this machine) or 'dask' (a Dask cluster: --scheduler, or a local one with --jobs).")] = "process",
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Address of a running Dask scheduler, e.g. tcp://HOST:8786 (with --executor dask).")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", help="Start a local Dask cluster of N worker processes (with --executor dask; default: --concurrent-per-host).")] = None,
    concurrent_per_host: Annotated[int | None, typer.Option("--concurrent-per-host", help="Timed builds allowed at once on one host (with --executor dask; default 1, so speed figures are measured alone; rows record it).")] = None,
    results_dir: ResultsDir = DEFAULT_RESULTS,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    model: ModelOpt = None,
    query_prompt: QueryPromptOpt = None,
    doc_prompt: DocPromptOpt = None,
    max_length: MaxLengthOpt = None,
    batch_size: BatchSizeOpt = None,
    normalize: NormalizeOpt = None,
) -> None:
    """Run a budgeted sweep on a data set, then print the leaderboard and write plots."""
    from harness.registry import all_methods, get_method
    from harness.store import ResultStore

    if k < 1 or k > 100:
        raise VecbudgetError(f"--k must be between 1 and 100, got {k}")
    if per_budget < 1:
        raise VecbudgetError(f"--per-budget must be at least 1, got {per_budget}")
    if not time_limit > 0:
        raise VecbudgetError(f"--time-limit must be a positive number of seconds, got {time_limit:g}")
    if memory_limit_gb < 0:
        raise VecbudgetError(f"--memory-limit-gb must be positive (0: 75% of RAM), got {memory_limit_gb:g}")
    if executor_kind not in ("process", "dask"):
        raise VecbudgetError(f"--executor must be 'process' or 'dask', got {executor_kind!r}")
    if executor_kind != "dask" and (scheduler or jobs is not None or concurrent_per_host is not None):
        raise VecbudgetError("--scheduler, --jobs and --concurrent-per-host need --executor dask")
    if scheduler and jobs is not None:
        raise VecbudgetError("give either --scheduler (a running cluster) or --jobs (a local cluster), not both")
    from harness.registry import suite as suite_methods

    names = list(method or [])
    every = names == ["all"]
    if every:
        names = list(all_methods())
    if suite:
        names += [m for m in suite_methods(suite) if m not in names]
    for name in names:
        get_method(name)  # unknown names fail before any encoding
    budgets = _budgets(budget)
    from harness import leaderboard as lb
    from harness.executor import ProcessExecutor
    from harness.loaders import load_dataset
    from harness.plots import plot_dataset
    from harness.sweep import SweepConfig, run_sweep

    overrides = {"documents": None, "queries": None} if full else {}
    overrides.update(_encoder_overrides(model, query_prompt, doc_prompt, max_length, batch_size, normalize))
    store = ResultStore(results_dir)
    store.check_writable()  # before any encoding or build
    memory_limit = int(memory_limit_gb * (1 << 30)) or None
    if executor_kind == "dask":  # connects (or starts the local cluster) before any encoding
        from harness.dask_executor import DaskExecutor

        per_host = 1 if concurrent_per_host is None else concurrent_per_host
        executor = DaskExecutor(scheduler, jobs=jobs, concurrent_per_host=per_host, time_limit_s=time_limit,
                                memory_limit_bytes=memory_limit)
    else:
        executor = ProcessExecutor(time_limit_s=time_limit, memory_limit_bytes=memory_limit)
    ds = load_dataset(dataset, overrides=overrides, progress=not quiet)
    from harness.loaders import manifest_for
    from harness.tracks import multivector as mv_track

    if mv_track.wanted(manifest_for(dataset, overrides)):  # token-level data set: tokens + Chamfer ground truth
        ds = mv_track.prepare(dataset, overrides, ds, progress=not quiet)
        names = names or suite_methods(mv_track.SUITE)
        budgets = budgets if budget else mv_track.BUDGETS
    from harness import filtered_report

    if filtered_report.has_filters(ds):  # its unfiltered runs are the plain data set's: run the filtered suite
        names = names or suite_methods(filtered_report.SUITE)
    cfg = SweepConfig(methods=names, budgets=budgets, k=k, per_budget=per_budget,
                      latency_queries=latency_queries, latency_seconds=latency_seconds, force=force,
                      retry_failed=retry_failed, variants=variants, time_limit_s=time_limit,
                      memory_limit_bytes=executor.memory_limit_bytes,
                      skip_unsupported=every or (bool(suite) and not method))
    new = run_sweep(ds, cfg, store, executor, progress=not quiet)
    df = store.load()
    if filtered_report.has_filters(ds) and all(get_method(m).input_kind == "filtered" for m in names):
        if code := filtered_report.cli_summary(ds, df, new, results_dir):  # per-band tables, plot, failures
            raise SystemExit(code)
        return
    # the saved leaderboard always covers the default ladder too, so a narrow run never shrinks it
    from harness.budgets import DEFAULT_BUDGETS

    ladder = tuple(sorted(set(DEFAULT_BUDGETS) | set(budgets)))
    board = lb.leaderboard(df, ds.name, ladder, fingerprint=ds.fingerprint)
    csv_path, md_path = lb.save(board, results_dir / "leaderboards", ds.name)
    plots = plot_dataset(df, ds.name, results_dir / "plots" / ds.name, fingerprint=ds.fingerprint)
    ok = int((new["status"] == "ok").sum()) if not new.empty else 0
    failed_now = len(new) - ok
    kept = new.attrs.get("kept_failures", [])
    typer.echo(f"\n{ds.name}: n={ds.n:,} d={ds.dim} queries={ds.nq} metric={ds.metric}; "
               f"{ok} new run(s) ok, {failed_now} failed" + (f", {len(kept)} known failure(s) kept" if kept else "")
               + (f"; skipping {new.attrs['skipped']} stored configuration(s) (--force re-runs them)"
                  if new.attrs.get("skipped") else ""))
    # print what this results folder measured itself: speed from another machine is not this one's
    here = store.measured_here(df)
    typer.echo(f"leaderboard of the runs measured here ({results_dir}), the requested budgets:")
    typer.echo(lb.to_markdown(lb.leaderboard(here, ds.name, tuple(budgets), fingerprint=ds.fingerprint)))
    typer.echo(lb.legend(board))
    others = lb.current_runs(df, ds.name, ds.fingerprint)
    n_other = int((~others["config_hash"].isin(set(here["config_hash"]))).sum()) if not others.empty else 0
    if n_other:
        typer.echo(f"({n_other} stored configuration(s) measured elsewhere are left out above; "
                   f"`vecbudget leaderboard -d {dataset}` shows all)")
    flagged = new[new["memory_flag"].fillna(False).astype(bool)] if "memory_flag" in new else new.iloc[0:0]
    for _, r in flagged.drop_duplicates("build_params").iterrows():
        typer.echo(f"memory check: {r['method']} ({r['build_params']}) reports {r['ram_bytes'] / 1e6:.1f} MB but the "
                   f"worker's RSS grew {r['rss_growth_bytes'] / 1e6:.1f} MB around add() and the first search",
                   err=True)
    typer.echo(f"leaderboard of all stored runs: {md_path}, {csv_path}")
    if plots:
        typer.echo(f"plots: {', '.join(str(p) for p in plots if p.suffix == '.png')}")
    if failed_now or kept:
        failures = [(r, "") for r in new.to_dict("records") if r.get("status") != "ok"]
        failures += [(r, " (failed before with this code, data and limits; --retry-failed re-runs it)") for r in kept]
        for r, why in failures[:10]:
            first = str(r.get("error") or "").splitlines()[0][:200] if r.get("error") else ""
            typer.echo(f"failed: {r.get('method')} {r.get('build_params')}: {r.get('status')}: {first}{why}", err=True)
        if len(failures) > 10:
            typer.echo(f"... and {len(failures) - 10} more failed configuration(s)", err=True)
        raise SystemExit(1)


def resolve_dataset(spec: str, df, *, quiet: bool = True) -> tuple[str, str | None]:
    """The name to show and the identity to select stored runs by, for a `-d` value.

    A name stored in the results is taken as it is (its newest identity); anything else — a
    manifest name, a manifest file, an .hdf5 file, a folder — is prepared (cached) to learn its
    identity, so runs measured under another name for the same data are found.
    """
    from harness.loaders import load_dataset

    if not df.empty and "dataset" in df and spec in set(df["dataset"]) and not Path(spec).exists():
        return spec, None
    ds = load_dataset(spec, progress=not quiet)
    return ds.name, ds.fingerprint


@app.command("methods")
def list_methods() -> None:
    """List registered methods: family, paper, bytes-per-vector formula, grids."""
    from harness.registry import all_methods, default_methods

    defaults = set(default_methods())
    for name, cls in all_methods().items():
        flag = "" if name in defaults else "  [not in the default suite]"
        typer.echo(f"{name}  ({cls.family}){flag}\n  paper: {cls.paper}\n  bytes/vector: {cls.bytes_formula}\n"
                   f"  build grid: {cls.build_grid}\n  search grid: {cls.search_grid}")


@datasets_app.command("list")
def datasets_list() -> None:
    """List the data sets declared in datasets/*.toml (and $VECBUDGET_MANIFESTS) and where their data are."""
    from harness.loaders import source_status
    from harness.manifest import manifests

    rows = [(name, f"[{m.format}, {m.metric}]", source_status(m), m.description) for name, m in sorted(manifests().items())]
    w0 = max((len(r[0]) for r in rows), default=0)
    w1 = max((len(r[1]) for r in rows), default=0)
    w2 = max((len(r[2]) for r in rows), default=0)
    for name, kind, status, desc in rows:
        typer.echo(f"{name:<{w0}}  {kind:<{w1}}  {status:<{w2}}  {desc}")


def _dataset_overrides(full: bool, **encoder: object) -> dict:
    overrides = {"documents": None, "queries": None} if full else {}
    overrides.update(_encoder_overrides(**encoder))
    return overrides


def _kv(lines: list[str], key: str, value: object, indent: int = 2) -> None:
    if value is None or value == "" or value == {} or value == []:
        return
    if isinstance(value, float):
        value = f"{value:.4g}"
    lines.append(f"{' ' * indent}{key + ':':<26}{value}")


def _describe(ds, m, stats: dict | None) -> list[str]:
    """Human-readable summary of a prepared data set (manifest, sizes, judgments, statistics)."""
    import numpy as np

    from harness.loaders import source_status

    meta = ds.meta
    lines = [f"{ds.name}", "manifest"]
    _kv(lines, "description", m.description)
    _kv(lines, "format", m.format)
    _kv(lines, "source", str(m.path) if m.path else m.url)
    _kv(lines, "url", m.url if m.path else None)
    _kv(lines, "status", source_status(m))
    _kv(lines, "licence", m.licence)
    _kv(lines, "citation", m.citation)
    _kv(lines, "tags", ", ".join(m.tags))
    enc = meta.get("info", {}).get("encoder") or m.encoder
    if enc:
        _kv(lines, "encoder", ", ".join(f"{k}={v!r}" for k, v in enc.items()))
    _kv(lines, "options", ", ".join(f"{k}={v!r}" for k, v in m.options.items()))
    lines.append("data")
    _kv(lines, "n (documents/base)", f"{ds.n:,}")
    _kv(lines, "d", ds.dim)
    _kv(lines, "nq (test queries)", f"{ds.nq:,}")
    if ds.train_queries is not None:
        _kv(lines, "training queries", f"{ds.train_queries.shape[0]:,}")
    _kv(lines, "metric", ds.metric + (" (vectors L2-normalised; methods see ip)" if ds.metric == "cosine" else ""))
    _kv(lines, "source dtype", meta.get("source_dtype"))
    _kv(lines, "ground truth", f"exact top-{meta['gt_k']} per query")
    shipped = meta.get("shipped_gt")
    if shipped:
        _kv(lines, "shipped neighbours", f"{shipped['rows_equal_up_to_ties']}/{shipped.get('rows_checked', shipped['rows'])} "
            f"checked rows equal up to ties (k={shipped['k']}; {shipped['positions_identical']:.2%} positions identical)")
    _kv(lines, "prepared folder", ds.path)
    if ds.has_qrels:
        qrels = ds.qrels
        judged = [q for q in ds.query_ids if q in qrels]
        counts = np.array([len(qrels[q]) for q in judged]) if judged else np.zeros(1)
        levels = sorted({s for q in judged for s in qrels[q].values()})
        lines.append("relevance judgments")
        _kv(lines, "judged queries", f"{len(judged):,} of {ds.nq:,}")
        _kv(lines, "judgments", f"{int(counts.sum()):,} (mean {counts.mean():.2f}, max {int(counts.max())} per query)")
        _kv(lines, "grades", ", ".join(map(str, levels)))
    mv = [role for role in ("document", "query") if ds.multivector(role) is not None]
    if mv:
        rv = ds.multivector("document")
        _kv(lines, "multi-vector", f"{', '.join(mv)} token embeddings; documents: {rv.n_tokens:,} tokens "
            f"(mean {rv.n_tokens / len(rv):.1f} per text)")
    if stats:
        lid, shift, norms = stats["lid"], stats["shift"], stats["norms"]
        lines.append(f"statistics (LID: MLE, k={lid['k']}; {lid['base_sampled']} sampled base vectors)")
        for who in ("base", "queries"):
            if who in norms:
                nm = norms[who]
                _kv(lines, f"norms {who}", f"mean {nm['mean']:.4g}, std {nm['std']:.3g}, min {nm['min']:.4g}, max {nm['max']:.4g}")
        _kv(lines, "LID base", f"mean {lid['base_mean']:.2f}, median {lid['base_median']:.2f}")
        if "queries_mean" in lid:
            _kv(lines, "LID queries", f"mean {lid['queries_mean']:.2f}, median {lid['queries_median']:.2f}")
        if "mean_shift" in shift:
            _kv(lines, "mean shift", f"{shift['mean_shift']:.3f} (sampling noise alone: ~{shift['mean_shift_iid']:.3f})")
            _kv(lines, "centroid cosine", f"base {shift['centroid_cosine_base']:.3f}, queries {shift['centroid_cosine_queries']:.3f}")
            _kv(lines, "NN distance ratio", f"1-NN {shift['nn1_ratio']:.3f}, {lid['k']}-NN {shift['nnk_ratio']:.3f} "
                "(queries vs base; ~1 in distribution)")
            _kv(lines, "residual off 90% subsp.", f"base {shift['base_residual_90']:.3f}, queries {shift['query_residual_90']:.3f} "
                f"(subspace dim {shift['subspace_dim_90']})")
            _kv(lines, "queries in base", f"{shift['queries_in_base']:.1%}")
    return lines


@datasets_app.command("prepare")
def datasets_prepare(
    name: Annotated[str, typer.Argument(help="Data set name (see `datasets list`), manifest .toml, .hdf5 file or folder.")],
    multivector: Annotated[bool, typer.Option("--multivector", help="Also store token-level embeddings (text data sets).")] = False,
    full: Annotated[bool, typer.Option("--full", help="WordNet: all 117,659 definitions and every example sentence not used for training as a query (30,877) instead of the 20k / 5k subset.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    model: ModelOpt = None,
    query_prompt: QueryPromptOpt = None,
    doc_prompt: DocPromptOpt = None,
    max_length: MaxLengthOpt = None,
    batch_size: BatchSizeOpt = None,
    normalize: NormalizeOpt = None,
) -> None:
    """Download (if needed and possible), encode, validate and compute exact ground truth; cached."""
    from harness.loaders import load_dataset, prepare_multivector

    overrides = _dataset_overrides(full, model=model, query_prompt=query_prompt, doc_prompt=doc_prompt,
                                   max_length=max_length, batch_size=batch_size, normalize=normalize)
    ds = load_dataset(name, overrides=overrides, progress=not quiet)
    if multivector:
        prepare_multivector(name, overrides=overrides, progress=not quiet, ds=ds)
    typer.echo(f"{ds.name}: n={ds.n:,} d={ds.dim} queries={ds.nq} metric={ds.metric} "
               f"ground truth top-{ds.meta['gt_k']}" + (", qrels" if ds.has_qrels else ""))
    shipped = ds.meta.get("shipped_gt")
    if shipped:
        typer.echo(f"shipped neighbours: {shipped['rows_equal_up_to_ties']}/{shipped.get('rows_checked', shipped['rows'])} "
                   f"checked rows equal to the recomputed ground truth up to ties (k={shipped['k']})")
    if multivector:
        for role in ("document", "query"):
            rv = ds.multivector(role)
            typer.echo(f"multi-vector {role}s: {len(rv):,} texts, {rv.n_tokens:,} tokens, d={rv.dim}")
    typer.echo(f"prepared: {ds.path}")


@datasets_app.command("info")
def datasets_info(
    name: Annotated[str, typer.Argument(help="Data set name (see `datasets list`), manifest .toml, .hdf5 file or folder.")],
    lid_k: Annotated[int, typer.Option("--lid-k", help="Neighbours for the LID (MLE) estimate.")] = 20,
    sample: Annotated[int, typer.Option(help="Base vectors and queries sampled for LID and NN statistics.")] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
    no_stats: Annotated[bool, typer.Option("--no-stats", help="Skip norms, LID and shift.")] = False,
    full: Annotated[bool, typer.Option("--full", help="WordNet: all 117,659 definitions and every example sentence not used for training as a query (30,877) instead of the 20k / 5k subset.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    model: ModelOpt = None,
    query_prompt: QueryPromptOpt = None,
    doc_prompt: DocPromptOpt = None,
    max_length: MaxLengthOpt = None,
    batch_size: BatchSizeOpt = None,
    normalize: NormalizeOpt = None,
) -> None:
    """Manifest, sizes, metric, judgments, and data statistics: norms, LID, query-vs-document shift.

    Prepares the data set first if needed (which may download and encode).
    """
    import json

    from harness.loaders import load_dataset, manifest_for

    if lid_k < 2 or sample < 1:
        raise VecbudgetError("--lid-k must be at least 2 and --sample at least 1")
    overrides = _dataset_overrides(full, model=model, query_prompt=query_prompt, doc_prompt=doc_prompt,
                                   max_length=max_length, batch_size=batch_size, normalize=normalize)
    m = manifest_for(name, overrides)
    ds = load_dataset(name, overrides=overrides, progress=not quiet)
    stats = None if no_stats else ds.stats(k=lid_k, sample=sample)
    if as_json:
        out = {"name": ds.name, "manifest": m.info(), "description": m.description, "n": ds.n, "dim": ds.dim,
               "nq": ds.nq, "metric": ds.metric, "has_qrels": ds.has_qrels, "path": str(ds.path),
               "shipped_gt": ds.meta.get("shipped_gt"), "stats": stats}
        typer.echo(json.dumps(out, indent=1, default=str))
        return
    typer.echo("\n".join(_describe(ds, m, stats)))


@app.command()
def leaderboard(
    dataset: DatasetOpt = "wordnet",
    budget: Annotated[list[float] | None, typer.Option("--budget", "-b")] = None,
    top: Annotated[int, typer.Option(min=0, help="Show the best N ranks per budget (0: all).")] = 0,
    at_n: AtNOpt = None,
    results_dir: ResultsDir = DEFAULT_RESULTS,
) -> None:
    """Print (and save as CSV and Markdown) the leaderboard of stored runs."""
    from harness import leaderboard as lb
    from harness.store import ResultStore

    df = ResultStore(results_dir).load()
    name, fp = resolve_dataset(dataset, df)
    from harness import filtered_report

    if filtered := filtered_report.save(df, name, results_dir, fingerprint=fp):  # per selectivity band
        typer.echo(filtered["markdown"])
        return
    board = lb.leaderboard(df, name, _budgets(budget), at_n=at_n, fingerprint=fp)
    if board.empty:
        raise VecbudgetError(f"no stored runs for data set {dataset!r} in {results_dir}")
    if at_n is None:
        lb.save(board, results_dir / "leaderboards", name)
    typer.echo(lb.to_markdown(board, top or None))
    typer.echo(lb.legend(board, at_n))


@app.command()
def plot(
    dataset: DatasetOpt = "wordnet",
    results_dir: ResultsDir = DEFAULT_RESULTS,
) -> None:
    """Write Pareto plots (PNG and SVG) of stored runs."""
    from harness.plots import plot_dataset
    from harness.store import ResultStore

    df = ResultStore(results_dir).load()
    name, fp = resolve_dataset(dataset, df)
    paths = plot_dataset(df, name, results_dir / "plots" / name, fingerprint=fp)
    if not paths:
        raise VecbudgetError(f"no stored runs for data set {dataset!r} in {results_dir}")
    for p in paths:
        typer.echo(str(p))


@app.command()
def report(
    results_dir: ResultsDir = DEFAULT_RESULTS,
    out: Annotated[Path | None, typer.Option("--out", help="Site folder (default: RESULTS_DIR/report).")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Markdown report (default: RESULTS_DIR/REPORT.md).")] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", "-d", help="Data set whose pages to rebuild (the same forms as `run`); repeat for several (default: all). The other data sets' published pages are kept.")] = None,
    budget: Annotated[list[float] | None, typer.Option("--budget", "-b", help="Budget in bytes per vector; repeat for several.")] = None,
    at_n: AtNOpt = None,
) -> None:
    """Write the static report site (leaderboards, plots, method pages) and REPORT.md."""
    from harness.report import build_report
    from harness.store import ResultStore

    identities: dict[str, str | None] = {}
    if dataset:
        df = ResultStore(results_dir).load()
        for spec in dataset:
            name, fp = resolve_dataset(spec, df)
            identities[name] = fp
    paths = build_report(results_dir, out, markdown=markdown, budgets=_budgets(budget),
                         datasets=list(identities) or None, at_n=at_n, identities=identities)
    rebuilt = getattr(paths, "rebuilt", paths.datasets)
    kept = [d for d in paths.datasets if d not in rebuilt]
    typer.echo(f"report: {paths.site / 'index.html'} ({len(paths.datasets)} data set(s), "
               f"{len(paths.methods)} method(s)); rebuilt: {', '.join(rebuilt) or 'none'}"
               + (f"; kept as published: {', '.join(kept)}" if kept else "")
               + f"\nmarkdown: {paths.markdown}")


@app.command()
def check(
    suite: Annotated[Path | None, typer.Option("--suite", help="Suite file (default: results/baselines/suite.toml).")] = None,
    baseline: Annotated[Path | None, typer.Option("--baseline", help="Baseline file (default: results/baselines/baseline.json).")] = None,
    update_baseline: Annotated[bool, typer.Option("--update-baseline", help="Rewrite the baseline from this run, on purpose.")] = False,
    repeats: Annotated[int | None, typer.Option("--repeats", min=1, help="Rounds (fresh builds) instead of the suite's.")] = None,
    report_file: Annotated[Path | None, typer.Option("--report-file", help="Where to write the Markdown comparison (default: results/tmp/check_report.md).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-build progress lines.")] = False,
) -> None:
    """Re-run the fixed regression suite and compare with the committed baseline (exit 1 on a regression)."""
    from harness import check as chk

    result = chk.run_check(suite or chk.DEFAULT_SUITE, baseline or chk.DEFAULT_BASELINE,
                           update_baseline=update_baseline, repeats=repeats,
                           report_path=report_file or chk.DEFAULT_REPORT, progress=not quiet)
    if result.updated:
        typer.echo(result.markdown)
        return
    typer.echo(result.markdown.split("\n## All comparisons")[0])
    if result.report_path:
        typer.echo(f"full comparison: {result.report_path}")
    if not result.ok:
        # SystemExit, not typer.Exit: main() runs the app with standalone_mode=False, where click
        # returns a typer.Exit's code instead of raising it, and the code would be lost
        sys.exit(1)


def _usage_error_types() -> tuple[type, ...]:
    """click's exception class, and the copy of click that typer ≥ 0.29 vendors."""
    import click

    types: list[type] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        types.append(VendoredClickException)
    except ImportError:
        pass
    return tuple(types)


def _one_line_usage_error(exc: Exception) -> int:
    """Print a usage error as one line (and the command's --help hint); return its exit status."""
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = " ".join(message.split())
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None and getattr(ctx, "command_path", "") else ""
    typer.echo(f"error: {message}{hint}", err=True)
    code = getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) and code else 2


def _show_warnings_as_they_happen() -> None:
    """Print each warning once, as one line on stderr, when it is raised (not after a long sweep)."""
    import warnings

    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            typer.echo(f"warning: {text}", err=True)

    warnings.showwarning = show
    warnings.simplefilter("default")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main() -> None:
    _show_warnings_as_they_happen()
    usage_errors = _usage_error_types()
    try:
        code = app(standalone_mode=False)
        code = code if isinstance(code, int) else 0
    except VecbudgetError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 2
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        code = 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        code = 130
    except usage_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            code = 0
        else:
            code = _one_line_usage_error(exc)
    sys.exit(code)


if __name__ == "__main__":
    main()
