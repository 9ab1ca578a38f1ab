"""vecbudget command line: budgeted sweeps, leaderboards, plots, method and data set listings.

Installed as the ``vecbudget`` command; also ``python cli.py ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from harness.errors import VecbudgetError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
datasets_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Data sets: list, prepare, info.")
app.add_typer(datasets_app, name="datasets")

ResultsDir = Annotated[Path, typer.Option("--results-dir", help="Results folder (runs, leaderboards, plots).")]
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


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
    budget: Annotated[list[float] | None, typer.Option("--budget", "-b", help="Budget in bytes per vector; repeat for several.")] = None,
    k: Annotated[int, typer.Option(help="k for recall@k, latency and QPS.")] = 10,
    full: Annotated[bool, typer.Option("--full", help="WordNet: all ~117k definitions instead of the 20k subset.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Re-run configurations already stored.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-run stored failed configurations.")] = False,
    per_budget: Annotated[int, typer.Option(help="Build configurations per method and budget.")] = 2,
    latency_queries: Annotated[int, typer.Option(help="Queries timed one at a time for latency percentiles.")] = 1000,
    time_limit: Annotated[float, typer.Option(help="Seconds allowed per build (worker process).")] = 900,
    memory_limit_gb: Annotated[float, typer.Option(help="Address-space limit per worker, GiB (default 75% of RAM).")] = 0,
    results_dir: ResultsDir = DEFAULT_RESULTS,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run a budgeted sweep on a data set, then print the leaderboard and write plots."""
    from harness.registry import all_methods, get_method

    if k < 1 or k > 100:
        raise VecbudgetError(f"--k must be between 1 and 100, got {k}")
    names = list(method or [])
    if names == ["all"]:
        names = list(all_methods())
    for name in names:
        get_method(name)  # unknown names fail before any encoding
    budgets = _budgets(budget)
    from harness import leaderboard as lb
    from harness.executor import ProcessExecutor
    from harness.loaders import load_dataset
    from harness.plots import plot_dataset
    from harness.store import ResultStore
    from harness.sweep import SweepConfig, run_sweep

    overrides = {"documents": None} if full else {}
    ds = load_dataset(dataset, overrides=overrides, progress=not quiet)
    store = ResultStore(results_dir)
    cfg = SweepConfig(methods=names, budgets=budgets, k=k, per_budget=per_budget,
                      latency_queries=latency_queries, force=force, retry_failed=retry_failed)
    executor = ProcessExecutor(time_limit_s=time_limit,
                               memory_limit_bytes=int(memory_limit_gb * (1 << 30)) or None)
    new = run_sweep(ds, cfg, store, executor, progress=not quiet)
    df = store.load()
    board = lb.leaderboard(df, ds.name, budgets)
    csv_path, md_path = lb.save(board, results_dir / "leaderboards", ds.name)
    plots = plot_dataset(df, ds.name, results_dir / "plots" / ds.name)
    ok = int((new["status"] == "ok").sum()) if not new.empty else 0
    typer.echo(f"\n{ds.name}: n={ds.n:,} d={ds.dim} queries={ds.nq} metric={ds.metric}; "
               f"{ok} new run(s) ok, {len(new) - ok} failed")
    typer.echo(lb.to_markdown(board))
    typer.echo(f"leaderboard: {md_path}, {csv_path}")
    if plots:
        typer.echo(f"plots: {', '.join(str(p) for p in plots if p.suffix == '.png')}")


@app.command("methods")
def list_methods() -> None:
    """List registered methods: family, paper, bytes-per-vector formula, grids."""
    from harness.registry import all_methods

    for name, cls in all_methods().items():
        flag = "" if cls.default else "  [not in default sweep]"
        typer.echo(f"{name}  ({cls.family}){flag}\n  paper: {cls.paper}\n  bytes/vector: {cls.bytes_formula}\n"
                   f"  build grid: {cls.build_grid}\n  search grid: {cls.search_grid}")


@datasets_app.command("list")
def datasets_list() -> None:
    """List the data sets declared in datasets/*.toml."""
    from harness.manifest import manifests

    for name, m in manifests().items():
        typer.echo(f"{name}  [{m.format}, {m.metric}]  {m.description}")


@app.command()
def leaderboard(
    dataset: Annotated[str, typer.Option("--dataset", "-d")] = "wordnet",
    budget: Annotated[list[float] | None, typer.Option("--budget", "-b")] = None,
    top: Annotated[int, typer.Option(help="Show the best N methods per budget (0: all).")] = 0,
    results_dir: ResultsDir = DEFAULT_RESULTS,
) -> None:
    """Print (and save as CSV and Markdown) the leaderboard of stored runs."""
    from harness import leaderboard as lb
    from harness.store import ResultStore

    df = ResultStore(results_dir).load()
    board = lb.leaderboard(df, dataset, _budgets(budget))
    if board.empty:
        raise VecbudgetError(f"no stored runs for data set {dataset!r} in {results_dir}")
    lb.save(board, results_dir / "leaderboards", dataset)
    typer.echo(lb.to_markdown(board, top or None))


@app.command()
def plot(
    dataset: Annotated[str, typer.Option("--dataset", "-d")] = "wordnet",
    results_dir: ResultsDir = DEFAULT_RESULTS,
) -> None:
    """Write Pareto plots (PNG and SVG) of stored runs."""
    from harness.plots import plot_dataset
    from harness.store import ResultStore

    paths = plot_dataset(ResultStore(results_dir).load(), dataset, results_dir / "plots" / dataset)
    if not paths:
        raise VecbudgetError(f"no stored runs for data set {dataset!r} in {results_dir}")
    for p in paths:
        typer.echo(str(p))


def main() -> None:
    try:
        app(standalone_mode=False)
    except VecbudgetError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
