"""End-to-end CLI tests on real data from ../shared/data, bad input, and resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.registry import all_methods

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def parts(results: Path) -> list[Path]:
    """Stored part files; hidden names are temporaries of unfinished writes."""
    return sorted(p for p in (results / "runs").glob("*.parquet") if not p.name.startswith("."))


def test_run_on_bigann10k_end_to_end(tmp_path, shared_data):
    methods = [m for m in ("exact", "sq8", "hnsw") if m in all_methods()]
    args = ["run", "-d", "bigann10k", "--results-dir", str(tmp_path), "-q", "--latency-queries", "20"]
    for m in methods:
        args += ["-m", m]
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    assert "bigann10k: n=10,000 d=128" in out.stdout
    assert "| exact" in out.stdout
    df = pd.concat(pd.read_parquet(p) for p in parts(tmp_path))
    assert set(df["method"]) == set(methods) and df["status"].eq("ok").all()
    exact = df[df["method"] == "exact"].iloc[0]
    assert exact["recall_at_10"] == 1.0 and exact["recall_dist_at_10"] == 1.0
    assert exact["bytes_per_vector"] == pytest.approx(512, abs=0.1)
    for col in ("latency_p50_ms", "latency_p99_ms", "qps_1t", "qps_all", "disk_bytes", "peak_rss_mb",
                "config_hash", "dataset_fingerprint", "git_revision", "cpu_model", "versions"):
        assert col in df and df[col].notna().all(), col
    assert (tmp_path / "leaderboards" / "bigann10k.md").exists()
    assert (tmp_path / "plots" / "bigann10k" / "quality_vs_bytes.png").stat().st_size > 1000
    board = cli("leaderboard", "-d", "bigann10k", "--results-dir", str(tmp_path))
    assert board.returncode == 0 and "exact" in board.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "no-such-method"], "unknown method 'no-such-method'; valid methods: "),
        (["-d", "no-such-dataset"], "unknown data set 'no-such-dataset'; valid data sets: "),
        (["-d", "bigann10k", "-m", "exact", "-b", "8"], "no configuration fits the budget"),
        (["-d", "bigann10k", "-b", "-3"], "budgets must be positive"),
    ],
)
def test_bad_arguments_exit_nonzero_with_a_clear_message(tmp_path, args, message, shared_data):
    out = cli("run", "--results-dir", str(tmp_path), "-q", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert parts(tmp_path) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda b, q: (np.where(np.arange(b.size).reshape(b.shape) == 70, np.nan, b), q), "NaN or infinite"),
        (lambda b, q: (b, q[:, :5]), "does not match the base dimension"),
        (lambda b, q: (b, q[:0]), "empty"),
    ],
)
def test_bad_vectors_exit_nonzero_and_write_nothing(tmp_path, make, message):
    rng = np.random.default_rng(0)
    base, queries = make(rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(10, 8)).astype(np.float32))
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "base.npy", base)
    np.save(folder / "queries.npy", queries)
    out = cli("run", "-d", str(folder), "-m", "exact", "--results-dir", str(tmp_path / "res"), "-q",
              env={"VECBUDGET_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert not (tmp_path / "res").exists() or parts(tmp_path / "res") == []
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_sweep_killed_midway_resumes_without_recomputing(tmp_path, shared_data):
    methods = [m for m in ("exact", "fp16", "sq8", "sq4") if m in all_methods()]
    if len(methods) < 3:
        pytest.skip("needs several methods")
    args = [sys.executable, "cli.py", "run", "-d", "bigann10k", "--results-dir", str(tmp_path), "-q",
            "--latency-queries", "20"]
    for m in methods:
        args += ["-m", m]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not parts(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = pd.concat(pd.read_parquet(p) for p in parts(tmp_path))
    done_before = set(first["config_hash"])
    assert done_before, "the sweep stored nothing before it was killed"
    n_parts = len(parts(tmp_path))
    out = cli(*args[2:])
    assert out.returncode == 0, out.stderr
    new = pd.concat(pd.read_parquet(p) for p in parts(tmp_path)[n_parts:]) if len(parts(tmp_path)) > n_parts else pd.DataFrame(columns=["config_hash"])
    assert not (set(new["config_hash"]) & done_before), "a finished configuration was recomputed"
    assert not list((tmp_path / "runs").glob(".*")), "a partial results file was left behind"
    everything = pd.concat(pd.read_parquet(p) for p in parts(tmp_path))
    assert everything["config_hash"].is_unique


@pytest.mark.slow
def test_scifact_exact_search_reproduces_the_published_figures(tmp_path, shared_data):
    pytest.importorskip("sentence_transformers")
    out = cli("run", "-d", "scifact", "-m", "exact", "--results-dir", str(tmp_path), "-q",
              "--latency-queries", "20", timeout=1200)
    assert out.returncode == 0, out.stderr
    row = pd.read_parquet(parts(tmp_path)[0]).iloc[0]
    assert row["nq"] == 300 and row["n"] == 5183
    assert row["ndcg_at_10"] == pytest.approx(0.645, abs=0.005)
    assert row["qrels_recall_at_100"] == pytest.approx(0.925, abs=0.01)
