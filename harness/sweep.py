"""A budgeted sweep: plan builds for the budgets, skip stored configurations, run the rest
through an executor, and append each finished build's rows to the store at once (so a sweep
killed midway resumes where it stopped)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm import tqdm

from harness.budgets import DEFAULT_BUDGETS, DEFAULT_PER_BUDGET, plan
from harness.dataset import PreparedDataset
from harness.errors import VecbudgetError
from harness.executor import Executor, ProcessExecutor
from harness.provenance import config_hash, provenance
from harness.registry import default_methods, get_method
from harness.store import ResultStore
from harness.worker import Task


@dataclass
class SweepConfig:
    methods: list[str] = field(default_factory=list)  # empty: the default methods
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    k: int = 10
    quality_k: int = 100
    per_budget: int = DEFAULT_PER_BUDGET
    latency_queries: int = 200
    latency_seconds: float = 3.0
    threads: int = 0
    force: bool = False
    retry_failed: bool = False


def run_config_hash(ds: PreparedDataset, method: str, build: dict[str, Any], search: dict[str, Any],
                    cfg: SweepConfig) -> str:
    return config_hash(dataset=ds.fingerprint, method=method, build=build, search=search,
                       k=cfg.k, quality_k=cfg.quality_k)


def plan_tasks(ds: PreparedDataset, cfg: SweepConfig, store: ResultStore) -> tuple[list[Task], int]:
    """Tasks still to run, and how many stored configurations are skipped."""
    names = cfg.methods or default_methods()
    classes = [get_method(m) for m in names]
    unsupported = [c.name for c in classes if ds.method_metric not in c.metrics or c.input_kind != "dense"]
    if unsupported and cfg.methods:
        raise VecbudgetError(f"method(s) {', '.join(unsupported)} cannot run on {ds.name} "
                             f"(metric {ds.metric}, dense vectors)")
    classes = [c for c in classes if c.name not in unsupported]
    builds = plan(classes, ds.dim, ds.n, tuple(cfg.budgets), cfg.per_budget)
    skip_statuses = () if cfg.force else (("ok",) if cfg.retry_failed else ("ok", "failed", "timeout", "oom", "crashed"))
    done = store.done_hashes(skip_statuses) if skip_statuses else set()
    prov = provenance()
    tasks, skipped = [], 0
    for b in builds:
        searches = get_method(b.method).search_configs(**b.build_params)
        todo = [(s, run_config_hash(ds, b.method, b.build_params, s, cfg)) for s in searches]
        remaining = [(s, h) for s, h in todo if h not in done]
        skipped += len(todo) - len(remaining)
        if remaining:
            tasks.append(Task(
                dataset_dir=str(ds.path), method=b.method, build_params=b.build_params,
                search_configs=[s for s, _ in remaining], config_hashes=[h for _, h in remaining],
                k=cfg.k, quality_k=cfg.quality_k, latency_queries=cfg.latency_queries,
                latency_seconds=cfg.latency_seconds,
                threads=cfg.threads, raw_dir=str(store.root / "raw"), provenance=prov,
            ))
    return tasks, skipped


def run_sweep(
    ds: PreparedDataset,
    cfg: SweepConfig,
    store: ResultStore,
    executor: Executor | None = None,
    *,
    progress: bool = True,
    on_rows: Callable[[Task, list[dict[str, Any]]], None] | None = None,
) -> pd.DataFrame:
    """Run what is not stored yet; return this sweep's new rows."""
    removed = store.remove_stale_temporaries()
    if removed and progress:
        tqdm.write(f"removed {len(removed)} unfinished results file(s) left by a killed run")
    tasks, skipped = plan_tasks(ds, cfg, store)
    executor = executor or ProcessExecutor()
    new_rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks), desc=f"sweep {ds.name}", unit="build", disable=not progress)
    if skipped and progress:
        tqdm.write(f"skipping {skipped} stored configuration(s) (use --force to re-run)")
    for task, rows in executor.run(tasks):
        rows = [{**r, "store_id": store.store_id} for r in rows]
        store.append(rows)
        new_rows.extend(rows)
        failed = [r for r in rows if r.get("status") != "ok"]
        if failed and progress:
            tqdm.write(f"{task.label}: {failed[0]['status']}: {failed[0]['error'].splitlines()[0][:200]}")
        mismatched = [r for r in rows if r.get("bytes_mismatch")]
        if mismatched and progress:
            r = mismatched[0]
            tqdm.write(f"{task.label}: measured {r['bytes_per_vector']:.1f} B/vector differs from the "
                       f"formula's {r['bytes_analytic']:.1f} by more than 10%")
        if on_rows:
            on_rows(task, rows)
        bar.set_postfix_str(task.label[:40])
        bar.update(1)
    bar.close()
    return pd.DataFrame(new_rows)
