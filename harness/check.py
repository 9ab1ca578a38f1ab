"""`vecbudget check`: re-run a fixed small suite and compare it with a committed baseline.

The suite is data (``results/baselines/suite.toml``): data sets, methods, build and search
parameters, the number of rounds (``repeats``) and of speed samples per round (``samples``), and
the tolerances. Each round builds every configuration afresh through the harness's own worker
(:func:`harness.worker.run_task`, the code path of a sweep) and evaluates each search
configuration ``samples`` times on that build; rows go to a temporary results folder.

Two kinds of figures are compared with ``results/baselines/baseline.json``:

* **Deterministic figures**: recall@1/10/100 against exact neighbours, nDCG@10 and Recall@100
  against judgments where the data set has them, and measured RAM bytes per vector. Builds are
  seeded and run with one thread, so these are identical from run to run on one machine; the
  tolerances only absorb floating-point differences between machines and library builds:
  ``quality_abs`` (default 0.005: on 100 queries, recall@10 moves in steps of 0.001) and
  ``bytes_rel`` (default 0.001: bytes are exact, this covers a few header bytes amortised over n).
  A quality drop beyond the tolerance, or more bytes, is a regression; a quality gain or fewer bytes
  is reported as *improved* (update the baseline on purpose). A figure that differs between the
  rounds (separate builds) of one check is a regression too (*unstable*: a determinism bug).
* **Speed**, never as absolute QPS (machines differ), but as the ratio of a configuration's
  single-thread batch QPS to exact float32 search's (the suite's ``reference`` method) measured in
  the same run: exact search is timed just before and just after each build's task, and the
  slower of the two divides that task's samples, so the machine's speed, and changes of load
  between tasks, cancel. As in asv (airspeed velocity), a slowdown counts only when it is both
  large and statistically clear: the *best* ratio sample fell by at least ``speed_factor``
  (default 2×) *and* a one-sided Mann-Whitney U test of the current samples against the
  baseline's gives p < ``speed_alpha`` (default 0.05). The best sample, not the median, carries
  the factor because load from other processes only ever slows a measurement (the reason
  ``timeit`` reports the minimum time): on a shared 2-core machine, samples of one build varied
  up to 5×, and medians moved 2.5× by load alone while best samples moved at most 1.7×. A real
  slowdown moves every sample, the best included. With 2 rounds × 4 samples on each side the
  smallest attainable p is 1/12870; with fewer than 4 samples a side the test cannot reach 0.05,
  and speed is then judged by the factor alone (the report says so).

A regression exits 1 after printing a Markdown table of what moved (also written to a file);
``--update-baseline`` rewrites the baseline from this run, on purpose.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from harness.errors import VecbudgetError
from harness.io import atomic_write_json, atomic_write_text
from harness.store import RESULTS_ROOT, ResultStore

BASELINE_DIR = RESULTS_ROOT / "baselines"
DEFAULT_SUITE = BASELINE_DIR / "suite.toml"
DEFAULT_BASELINE = BASELINE_DIR / "baseline.json"
DEFAULT_REPORT = RESULTS_ROOT / "tmp" / "check_report.md"
BASELINE_FORMAT = 1
QUALITY_FIGURES = ("recall_at_1", "recall_at_10", "recall_at_100", "ndcg_at_10", "qrels_recall_at_100")
BYTES_FIGURE = "bytes_per_vector"
SPEED_FIGURE = "speed_ratio"


# ----------------------------------------------------------------------------------------------
# the suite


@dataclass(frozen=True)
class Tolerances:
    quality_abs: float = 0.005
    bytes_rel: float = 0.001
    speed_factor: float = 2.0
    speed_alpha: float = 0.05


@dataclass(frozen=True)
class Entry:
    dataset: str
    method: str
    build: dict[str, Any]
    search: dict[str, Any]

    @property
    def key(self) -> str:
        return entry_key(self.dataset, self.method, self.build, self.search)


@dataclass
class Suite:
    entries: list[Entry]
    repeats: int = 2  # rounds; each builds every configuration afresh
    samples: int = 4  # speed samples per search configuration and round
    threads: int = 1
    k: int = 10
    quality_k: int = 100
    latency_queries: int = 100
    train_size: int = 100_000  # training sample of the base vectors (smaller = cheaper builds)
    reference: str = "exact"
    tolerances: Tolerances = field(default_factory=Tolerances)
    path: Path | None = None
    text: str = ""

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(e.dataset for e in self.entries))


def entry_key(dataset: str, method: str, build: dict[str, Any], search: dict[str, Any]) -> str:
    return f"{dataset} | {method} | {json.dumps(build, sort_keys=True)} | {json.dumps(search, sort_keys=True)}"


def load_suite(path: str | Path) -> Suite:
    """Parse and validate a suite file (unknown methods or parameters fail here, before any run)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except OSError as exc:
        raise VecbudgetError(f"suite file {path}: cannot be read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise VecbudgetError(f"suite file {path}: not valid TOML ({exc})") from exc
    known = {"repeats", "samples", "threads", "k", "quality_k", "latency_queries", "train_size", "reference",
             "tolerances", "run"}
    unknown = set(data) - known
    if unknown:
        raise VecbudgetError(f"suite file {path}: unknown key(s) {', '.join(sorted(unknown))}")
    tol_data = data.get("tolerances", {})
    bad = set(tol_data) - set(Tolerances.__dataclass_fields__)
    if bad:
        raise VecbudgetError(f"suite file {path}: unknown tolerance(s) {', '.join(sorted(bad))}")
    entries = []
    for i, run in enumerate(data.get("run", [])):
        extra = set(run) - {"dataset", "method", "build", "search"}
        if extra or "dataset" not in run or "method" not in run:
            raise VecbudgetError(f"suite file {path}: [[run]] #{i + 1} needs 'dataset' and 'method' "
                                 f"(and optional 'build', 'search'); got {sorted(run)}")
        searches = run.get("search", [{}])
        if isinstance(searches, dict):
            searches = [searches]
        for s in searches:
            entries.append(Entry(run["dataset"], run["method"], dict(run.get("build", {})), dict(s)))
    if not entries:
        raise VecbudgetError(f"suite file {path}: no [[run]] entries")
    keys = [e.key for e in entries]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise VecbudgetError(f"suite file {path}: duplicate entries {dupes}")
    suite = Suite(entries=entries, tolerances=Tolerances(**tol_data), path=path, text=text,
                  **{k: data[k] for k in ("repeats", "samples", "threads", "k", "quality_k", "latency_queries", "train_size",
                               "reference")
                     if k in data})
    if suite.repeats < 1 or suite.samples < 1:
        raise VecbudgetError(f"suite file {path}: repeats and samples must be at least 1")
    for ds in suite.datasets:
        if not any(e.dataset == ds and e.method == suite.reference for e in entries):
            raise VecbudgetError(f"suite file {path}: data set {ds} has no {suite.reference!r} entry; "
                                 "speed is measured as a ratio to it")
    _validate_methods(suite)
    return suite


def _validate_methods(suite: Suite) -> None:
    from harness.registry import get_method

    for e in suite.entries:
        cls = get_method(e.method)  # unknown names list the valid ones
        for what, given, grid in (("build", e.build, cls.build_grid), ("search", e.search, cls.search_grid)):
            unknown = set(given) - set(grid)
            if unknown:
                raise VecbudgetError(
                    f"suite: {e.method} has no {what} parameter(s) {', '.join(sorted(unknown))}; "
                    f"its {what} grid declares {', '.join(sorted(grid)) or 'none'}")


# ----------------------------------------------------------------------------------------------
# running


@dataclass
class Measurement:
    entry: Entry
    config_hash: str = ""
    figures: dict[str, list[float]] = field(default_factory=dict)  # figure -> value per repeat
    qps: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, name: str, value: float) -> None:
        self.figures.setdefault(name, []).append(float(value))


class _ReferenceProbe:
    """Exact search (the suite's reference method) on a data set, timed on demand.

    The check times it just before and just after each build's task and divides that task's QPS
    samples by the slower of the two: exact search measured in the same run, seconds apart from
    the samples it normalises, so a change of load on a shared machine between tasks cancels.
    Taking the slower probe errs towards *not* reporting a slowdown caused by load.
    """

    def __init__(self, cls: type, ds: Any, k: int, threads: int):
        self.index = cls(ds.dim, ds.method_metric)
        base = np.ascontiguousarray(ds.base, dtype=np.float32)
        self.index.fit(base)
        self.index.add(base)
        self.queries = np.ascontiguousarray(ds.queries, dtype=np.float32)
        self.k, self.threads = k, max(1, threads)

    def qps(self, runs: int = 5) -> float:
        """Best-of-``runs`` single-thread batch QPS (as the worker's ``qps_1t``)."""
        try:
            from threadpoolctl import threadpool_limits

            limits = threadpool_limits(1)
        except ImportError:
            limits = contextlib.nullcontext()
        self.index.set_num_threads(1)
        best = math.inf
        with limits:
            for _ in range(runs):
                t0 = time.perf_counter()
                self.index.search(self.queries, self.k)
                best = min(best, time.perf_counter() - t0)
        self.index.set_num_threads(self.threads)
        return self.queries.shape[0] / best


def run_suite(suite: Suite, results_dir: str | Path, *, progress: bool = True,
              repeats: int | None = None) -> dict[str, Measurement]:
    """Run the suite: ``repeats`` rounds, each building every configuration afresh and timing each
    search configuration ``samples`` times on that build. Returns measurements by entry key."""
    from harness.executor import InlineExecutor
    from harness.loaders import load_dataset
    from harness.provenance import provenance
    from harness.registry import get_method
    from harness.sweep import SweepConfig, run_config_hash
    from harness.worker import Task

    store = ResultStore(results_dir)
    repeats = repeats or suite.repeats
    cfg = SweepConfig(k=suite.k, quality_k=suite.quality_k)
    out = {e.key: Measurement(e) for e in suite.entries}
    prepared = {name: load_dataset(name, progress=False) for name in suite.datasets}
    for name, ds in prepared.items():
        for e in suite.entries:
            if e.dataset != name:
                continue
            cls = get_method(e.method)
            if ds.method_metric not in cls.metrics or not cls.is_valid(ds.dim, **e.build):
                raise VecbudgetError(f"suite: {e.method} {e.build} is not valid on {name} "
                                     f"(d={ds.dim}, metric {ds.metric})")
            out[e.key].config_hash = run_config_hash(ds, e.method, e.build, e.search, cfg)
    executor = InlineExecutor()
    prov = provenance()
    samples = suite.samples
    probes = {name: _ReferenceProbe(get_method(suite.reference), ds, suite.k, suite.threads)
              for name, ds in prepared.items()}
    for rnd in range(repeats):
        for name, ds in prepared.items():
            groups: dict[str, list[Entry]] = {}
            for e in suite.entries:
                if e.dataset == name:
                    groups.setdefault(entry_key(name, e.method, e.build, {}), []).append(e)
            tasks, owner = [], {}
            for es in groups.values():
                searches, hashes = [], []
                for j in range(samples):  # the same search configuration timed `samples` times
                    for e in es:
                        h = f"{out[e.key].config_hash}-r{rnd}s{j}"
                        searches.append(e.search)
                        hashes.append(h)
                        owner[h] = (e.key, j)
                tasks.append(Task.for_dataset(ds, es[0].method, es[0].build, searches, hashes, k=suite.k,
                                  quality_k=suite.quality_k, latency_queries=suite.latency_queries,
                                  train_size=suite.train_size, threads=suite.threads, raw_dir=None,
                                  provenance=prov))
            if rnd % 2:  # alternate the order, so no method always runs in the same phase of a round
                tasks.reverse()
            for task in tasks:
                before = probes[name].qps()
                _, rows = next(iter(executor.run([task])))
                ref = min(before, probes[name].qps())
                store.append(rows)
                if progress:
                    bad = [r for r in rows if r.get("status") != "ok"]
                    print(f"  round {rnd + 1}/{repeats} {name} {task.label}: "
                          + (f"{bad[0].get('status')}" if bad else "ok"), flush=True)
                for row in rows:
                    key, j = owner[row["config_hash"]]
                    m = out[key]
                    if row.get("status") != "ok":
                        if j == 0:
                            m.errors.append(f"{row.get('status')}: "
                                            f"{str(row.get('error', '')).splitlines()[0][:200]}")
                        continue
                    if j == 0:  # deterministic figures: once per build
                        for fig in QUALITY_FIGURES:
                            v = row.get(fig)
                            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                                m.add(fig, v)
                        m.add(BYTES_FIGURE, row[BYTES_FIGURE])
                    m.qps.append(float(row["qps_1t"]))
                    m.add(SPEED_FIGURE, float(row["qps_1t"]) / ref)
    return out


# ----------------------------------------------------------------------------------------------
# baseline


def baseline_from(measurements: dict[str, Measurement], suite: Suite, rounds: int | None = None) -> dict[str, Any]:
    from harness.provenance import cpu_model, git_revision, package_versions

    entries = {}
    for key, m in measurements.items():
        if m.errors:
            raise VecbudgetError(f"cannot write a baseline: {key} failed ({m.errors[0]})")
        e = {"dataset": m.entry.dataset, "method": m.entry.method, "build": m.entry.build,
             "search": m.entry.search, "config_hash": m.config_hash,
             SPEED_FIGURE: [round(v, 6) for v in m.figures[SPEED_FIGURE]],
             "qps_1t": [round(v, 1) for v in m.qps]}
        for fig, values in m.figures.items():
            if fig != SPEED_FIGURE:
                if max(values) - min(values) > 1e-9:
                    raise VecbudgetError(f"cannot write a baseline: {key} {fig} differs between repeats "
                                         f"({min(values)} .. {max(values)}); fix the nondeterminism first")
                e[fig] = values[0]
        entries[key] = e
    return {
        "format": BASELINE_FORMAT,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "cpu_model": cpu_model(),
        "versions": package_versions(),
        "suite": suite.path.name if suite.path else "",
        "repeats": rounds or suite.repeats,
        "samples": suite.samples,
        "entries": entries,
    }


def load_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise VecbudgetError(f"no baseline at {path}; create one with `vecbudget check --update-baseline`")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise VecbudgetError(f"baseline {path} is not valid JSON ({exc})") from exc
    if data.get("format") != BASELINE_FORMAT or "entries" not in data:
        raise VecbudgetError(f"baseline {path}: unknown format; rewrite it with --update-baseline")
    return data


# ----------------------------------------------------------------------------------------------
# statistics


def mann_whitney_less(x: list[float], y: list[float]) -> float:
    """One-sided Mann-Whitney U test p-value for 'x tends to be smaller than y'.

    Exact (enumerating the splits of the pooled mid-ranks) for small samples, normal
    approximation with tie correction otherwise.
    """
    a, b = np.asarray(x, float), np.asarray(y, float)
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = np.concatenate([a, b])
    order = np.argsort(pooled, kind="mergesort")
    ranks = np.empty(pooled.size)
    sorted_vals = pooled[order]
    i = 0
    while i < pooled.size:  # mid-ranks for ties
        j = i
        while j + 1 < pooled.size and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    observed = ranks[:n1].sum()
    if math.comb(n1 + n2, n1) <= 200_000:
        combos = np.array(list(itertools.combinations(range(n1 + n2), n1)))
        sums = ranks[combos].sum(axis=1)
        return float(np.mean(sums <= observed + 1e-9))
    u = observed - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    _, counts = np.unique(pooled, return_counts=True)
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - np.sum(counts**3 - counts) / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (u - mean + 0.5) / math.sqrt(var)
    return float(0.5 * math.erfc(-z / math.sqrt(2)))


# ----------------------------------------------------------------------------------------------
# comparison


@dataclass
class Finding:
    status: str  # "regression" | "improved" | "ok"
    entry: str
    figure: str
    baseline: str
    current: str
    change: str
    rule: str

    @property
    def failing(self) -> bool:
        return self.status == "regression"


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"


def compare(measurements: dict[str, Measurement], baseline: dict[str, Any], tol: Tolerances) -> list[Finding]:
    findings: list[Finding] = []
    base_entries = baseline["entries"]
    for key, m in measurements.items():
        if m.errors:
            findings.append(Finding("regression", key, "run", "ok", m.errors[0], "", "the run failed"))
            continue
        b = base_entries.get(key)
        if b is None:
            findings.append(Finding("regression", key, "entry", "absent", "measured", "",
                                    "not in the baseline: the suite changed; run with --update-baseline"))
            continue
        for fig, values in m.figures.items():
            if fig == SPEED_FIGURE:
                continue
            cur = values[0]
            spread = max(values) - min(values)
            limit = tol.quality_abs if fig != BYTES_FIGURE else tol.bytes_rel * abs(b.get(fig, cur))
            if spread > limit:
                findings.append(Finding("regression", key, fig, "", f"{_fmt(min(values))} .. {_fmt(max(values))}",
                                        f"±{_fmt(spread)}", "unstable: differs between repeats of this check"))
            if fig not in b:
                findings.append(Finding("regression", key, fig, "absent", _fmt(cur), "",
                                        "figure not in the baseline; run with --update-baseline"))
                continue
            base = float(b[fig])
            delta = cur - base
            if fig == BYTES_FIGURE:
                rule = f"|Δ| ≤ {tol.bytes_rel:.2%} of the baseline"
                status = "ok" if abs(delta) <= limit else ("regression" if delta > 0 else "improved")
                change = f"{delta:+.1f} ({delta / base:+.1%})" if base else f"{delta:+.1f}"
            else:
                rule = f"|Δ| ≤ {tol.quality_abs:g}"
                status = "ok" if abs(delta) <= tol.quality_abs else ("regression" if delta < 0 else "improved")
                change = f"{delta:+.4f}"
            findings.append(Finding(status, key, fig, _fmt(base), _fmt(cur), change, rule))
        for fig in b:
            if fig in QUALITY_FIGURES and fig not in m.figures:
                findings.append(Finding("regression", key, fig, _fmt(float(b[fig])), "absent", "",
                                        "figure no longer measured"))
        cur_r, base_r = m.figures.get(SPEED_FIGURE, []), list(b.get(SPEED_FIGURE, []))
        if m.entry.method != "exact" and cur_r and base_r:
            cur_best, base_best = max(cur_r), max(base_r)
            cur_med, base_med = statistics.median(cur_r), statistics.median(base_r)
            slower = base_best / cur_best if cur_best > 0 else math.inf
            p_slow = mann_whitney_less(cur_r, base_r)
            p_fast = mann_whitney_less(base_r, cur_r)
            testable = 1 / math.comb(len(cur_r) + len(base_r), len(cur_r)) < tol.speed_alpha
            sig_slow = p_slow < tol.speed_alpha or not testable
            sig_fast = p_fast < tol.speed_alpha or not testable
            if slower >= tol.speed_factor and sig_slow:
                status = "regression"
            elif slower > 0 and 1 / slower >= tol.speed_factor and sig_fast:
                status = "improved"
            else:
                status = "ok"
            rule = (f"best sample moved ≥{tol.speed_factor:g}× and Mann-Whitney p < {tol.speed_alpha:g}"
                    if testable else f"best sample moved ≥{tol.speed_factor:g}× (too few samples for the test)")
            findings.append(Finding(status, key, "QPS / exact QPS", f"{base_best:.3f} (median {base_med:.3f})",
                                    f"{cur_best:.3f} (median {cur_med:.3f})",
                                    f"×{cur_best / base_best:.2f}, {_p(min(p_slow, p_fast))}", rule))
    for key in base_entries:
        if key not in measurements:
            findings.append(Finding("ok", key, "entry", "present", "not in the suite", "",
                                    "dropped from the suite (baseline keeps it until --update-baseline)"))
    return findings


def findings_table(findings: list[Finding]) -> str:
    header = "| status | data set | method | build | search | figure | baseline | current | change | rule |\n"
    header += "|---|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for f in findings:
        parts = [p.strip() for p in f.entry.split(" | ")]
        parts += [""] * (4 - len(parts))
        label = {"regression": "**REGRESSION**", "improved": "improved", "ok": "ok"}[f.status]
        cells = [label, *parts[:4], f.figure, f.baseline, f.current, f.change, f.rule]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return header + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# entry point


@dataclass
class CheckResult:
    ok: bool
    findings: list[Finding]
    markdown: str
    report_path: Path | None
    seconds: float
    updated: bool = False


def run_check(suite_path: str | Path = DEFAULT_SUITE, baseline_path: str | Path = DEFAULT_BASELINE, *,
              update_baseline: bool = False, repeats: int | None = None,
              report_path: str | Path | None = DEFAULT_REPORT, keep_runs: str | Path | None = None,
              progress: bool = True) -> CheckResult:
    t0 = time.perf_counter()
    suite = load_suite(suite_path)
    baseline = None if update_baseline else load_baseline(baseline_path)  # fail before running
    tmp = Path(keep_runs) if keep_runs else Path(tempfile.mkdtemp(prefix="vecbudget-check-"))
    try:
        measurements = run_suite(suite, tmp, progress=progress, repeats=repeats)
    finally:
        if not keep_runs:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    n_rep = repeats or suite.repeats
    if update_baseline:
        data = baseline_from(measurements, suite, n_rep)
        atomic_write_json(baseline_path, data)
        Path(baseline_path).chmod(0o644)  # a committed file (the atomic writer's temp file is 0600)
        md = (f"# vecbudget check: baseline updated\n\nWrote {baseline_path} from {len(measurements)} "
              f"configurations × {n_rep} rounds × {suite.samples} speed samples in {seconds:.0f} s.\n")
        return CheckResult(True, [], md, None, seconds, updated=True)
    findings = compare(measurements, baseline, suite.tolerances)
    moved = [f for f in findings if f.status != "ok"]
    failing = [f for f in findings if f.failing]
    tol = suite.tolerances
    head = (f"# vecbudget check: {'FAILED' if failing else 'passed'}\n\n"
            f"Suite `{suite.path}` ({len(measurements)} configurations × {n_rep} rounds × {suite.samples} speed samples, {seconds:.0f} s) "
            f"against baseline `{baseline_path}` (made {baseline.get('created_utc', '?')} at "
            f"{str(baseline.get('git_revision', '?'))[:12]} on {baseline.get('cpu_model', '?')}).\n\n"
            f"Rules: quality |Δ| ≤ {tol.quality_abs:g}; bytes/vector |Δ| ≤ {tol.bytes_rel:.2%}; speed = single-thread "
            f"QPS / exact-search QPS timed beside it, a regression when the best sample is "
            f"≥{tol.speed_factor:g}× slower and a one-sided Mann-Whitney U test of all samples gives "
            f"p < {tol.speed_alpha:g}.\n\n")
    if failing:
        body = f"## What moved ({len(failing)} regression(s))\n\n" + findings_table(moved)
    elif moved:
        body = "## What moved (no regression)\n\n" + findings_table(moved)
    else:
        body = "Nothing moved beyond the tolerances.\n"
    md = head + body + "\n## All comparisons\n\n" + findings_table(findings)
    out = None
    if report_path:
        out = Path(report_path)
        atomic_write_text(out, md)
    return CheckResult(not failing, findings, md, out, seconds)
