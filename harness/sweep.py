"""A budgeted sweep: plan builds for the budgets, skip stored configurations, run the rest
through an executor, and append each finished build's rows to the store at once (so a sweep
killed midway resumes where it stopped).

Failures: a stored failure is re-run by default when what caused it may have changed — the
code (:func:`harness.provenance.code_hash`), the data set's identity or the worker's limits — or
when it was caused outside the method (status ``error``: unreadable data, a missing dependency).
A failure of the same code on the same data under the same limits is kept and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm import tqdm

from harness import tracks
from harness.budgets import DEFAULT_BUDGETS, DEFAULT_PER_BUDGET, plan
from harness.claims import Claims
from harness.dataset import PreparedDataset
from harness.errors import VecbudgetError
from harness.executor import Executor, ProcessExecutor
from harness.provenance import code_hash, config_hash, provenance
from harness.registry import default_methods, get_method
from harness.schema import ENVIRONMENT_STATUSES
from harness.store import ResultStore, latest
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
    #: also plan each method's named variants (departures from the paper) beside its recipe
    variants: bool = False
    #: methods came from `-m all` or a suite: leave out those the data set cannot run instead of failing
    skip_unsupported: bool = False
    #: the worker's limits: part of what a failure depends on (a time-out under another limit is retried)
    time_limit_s: float | None = None
    memory_limit_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.per_budget < 1:
            raise VecbudgetError(f"per-budget must be at least 1, got {self.per_budget}")
        if not 1 <= self.k <= 100:
            raise VecbudgetError(f"k must be between 1 and 100, got {self.k}")


def run_config_hash(ds: PreparedDataset, method: str, build: dict[str, Any], search: dict[str, Any],
                    cfg: SweepConfig) -> str:
    return config_hash(dataset=ds.fingerprint, method=method, build=build, search=search,
                       k=cfg.k, quality_k=cfg.quality_k)


def failure_retry_key(ds: PreparedDataset, method: str, build: dict[str, Any], cfg: SweepConfig) -> str:
    """What a failure of this build depends on: the code, the data set's identity, the limits.
    A stored failure whose key differs may not happen again, so it is retried."""
    return config_hash(code=code_hash(), dataset=ds.fingerprint, method=method, build=build,
                       time_limit=cfg.time_limit_s, memory_limit=cfg.memory_limit_bytes)


@dataclass
class Plan:
    tasks: list[Task]
    skipped: int = 0  # stored ok configurations
    #: stored failures of the same code, data and limits: kept and reported, not re-run
    kept_failures: list[dict[str, Any]] = field(default_factory=list)


def _stored_state(store: ResultStore) -> dict[str, dict[str, Any]]:
    """The latest row this results folder measured for each config hash."""
    df = store.load()
    if df.empty or "store_id" not in df:
        return {}
    mine = latest(df[df["store_id"] == store.store_id])
    cols = [c for c in ("config_hash", "status", "retry_key", "error", "method", "build_params") if c in mine]
    return {r["config_hash"]: r for r in mine[cols].to_dict("records")}


def _keeps(row: dict[str, Any] | None, retry_key: str, cfg: SweepConfig) -> str:
    """'done', 'kept' (a failure that would happen again) or 'run'."""
    if row is None or cfg.force:
        return "run"
    if row.get("status") == "ok":
        return "done"
    if cfg.retry_failed or row.get("status") in ENVIRONMENT_STATUSES or row.get("retry_key") != retry_key:
        return "run"
    return "kept"


def plan_sweep(ds: PreparedDataset, cfg: SweepConfig, store: ResultStore) -> Plan:
    """Tasks still to run, stored configurations skipped, and failures kept."""
    if cfg.k > ds.n:
        raise VecbudgetError(f"k={cfg.k} is larger than the {ds.n} vectors of {ds.name}")
    names = cfg.methods or default_methods()
    classes = [get_method(m) for m in names]
    unsupported = [c.name for c in classes
                   if ds.method_metric not in c.metrics or not tracks.supports(ds, c.input_kind)]
    if unsupported and cfg.methods and not cfg.skip_unsupported:
        kinds = sorted({c.input_kind for c in classes if c.name in unsupported})
        raise VecbudgetError(f"method(s) {', '.join(unsupported)} cannot run on {ds.name} "
                             f"(metric {ds.metric}; input {', '.join(kinds)}: see `vecbudget methods`)")
    classes = [c for c in classes if c.name not in unsupported]
    builds = plan(classes, ds.dim, ds.n, tuple(cfg.budgets), cfg.per_budget, cfg.variants)
    state = _stored_state(store)
    prov = provenance()
    out = Plan(tasks=[])
    for b in builds:
        retry_key = failure_retry_key(ds, b.method, b.build_params, cfg)
        remaining = []
        for s in get_method(b.method).search_configs(**b.build_params):
            h = run_config_hash(ds, b.method, b.build_params, s, cfg)
            verdict = _keeps(state.get(h), retry_key, cfg)
            if verdict == "done":
                out.skipped += 1
            elif verdict == "kept":
                out.kept_failures.append(state[h])
            else:
                remaining.append((s, h))
        if remaining:
            out.tasks.append(Task.for_dataset(
                ds, b.method, b.build_params, [s for s, _ in remaining], [h for _, h in remaining],
                k=cfg.k, quality_k=cfg.quality_k, latency_queries=cfg.latency_queries,
                latency_seconds=cfg.latency_seconds, threads=cfg.threads, raw_dir=str(store.root / "raw"),
                retry_key=retry_key, time_limit_s=cfg.time_limit_s, memory_limit_bytes=cfg.memory_limit_bytes,
                provenance=prov,
            ))
    return out


def plan_tasks(ds: PreparedDataset, cfg: SweepConfig, store: ResultStore) -> tuple[list[Task], int]:
    """Tasks still to run, and how many stored configurations are skipped (see :func:`plan_sweep`)."""
    p = plan_sweep(ds, cfg, store)
    return p.tasks, p.skipped + len(p.kept_failures)


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
    store.check_writable()
    claims = Claims(store)  # before planning: what another run stores from now on is skipped
    planned = plan_sweep(ds, cfg, store)
    tasks, skipped = planned.tasks, planned.skipped
    executor = executor or ProcessExecutor()
    new_rows: list[dict[str, Any]] = []
    if skipped and progress:
        tqdm.write(f"skipping {skipped} stored configuration(s) (use --force to re-run)")
    if planned.kept_failures and progress:
        first = planned.kept_failures[0]
        tqdm.write(f"{len(planned.kept_failures)} configuration(s) failed before with this code, data and limits "
                   f"and are not re-run (--retry-failed re-runs them); e.g. {first.get('method')}: "
                   f"{str(first.get('error', '')).splitlines()[0][:160] if first.get('error') else first.get('status')}")
    bar = tqdm(total=len(tasks), desc=f"sweep {ds.name}", unit="build", disable=not progress)
    # each configuration is claimed before it runs; those another run has claimed are skipped
    for task, rows in executor.run(claims.claimed(tasks, on_skip=tqdm.write)):
        rows = store.append(rows)
        claims.release(task.config_hashes)
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
    out = pd.DataFrame(new_rows)
    out.attrs["kept_failures"] = planned.kept_failures
    out.attrs["skipped"] = skipped
    return out
