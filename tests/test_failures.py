"""Failures do not poison later runs; usage errors and bad arguments are one line and exit 2
(issue 9 §1, §2, §6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import write_vector_folder

REPO = Path(__file__).resolve().parents[1]
RAISES = str(REPO / "tests" / "plugins" / "vecbudget_raises.py")


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def parts(results: Path) -> list[Path]:
    return sorted(p for p in (results / "runs").glob("*.parquet") if not p.name.startswith("."))


def _folder(tmp_path: Path) -> Path:
    return write_vector_folder(tmp_path / "data", n=300, d=8, nq=10)


def test_a_deterministic_failure_is_kept_and_reported_until_its_cause_changes(tmp_path):
    folder, res = _folder(tmp_path), tmp_path / "res"
    env = {"VECBUDGET_PLUGINS": RAISES, "VECBUDGET_CACHE": str(tmp_path / "cache")}
    args = ["run", "-d", str(folder), "-m", "test-raises", "--results-dir", str(res), "-q", "--latency-queries", "5"]
    first = cli(*args, env=env)
    assert first.returncode == 1, first.stderr  # a configuration of this run failed
    assert "ValueError: deterministic bug in fit()" in first.stderr
    row = pd.read_parquet(parts(res)[0]).iloc[0]
    assert row["status"] == "failed" and row["error"].startswith("ValueError: deterministic bug in fit()")
    again = cli(*args, env=env)
    assert again.returncode == 1 and len(parts(res)) == 1  # same code, data, limits: kept, not re-run
    assert "failed before with this code, data and limits" in again.stdout + again.stderr
    other_limit = cli(*args, "--time-limit", "123", env=env)
    assert other_limit.returncode == 1 and len(parts(res)) == 2  # the limits changed: retried


def test_a_failure_caused_by_the_environment_is_retried(tmp_path):
    """A corrupt cache fails the run; after the cache is rebuilt the next run measures it."""
    folder, res, cache = _folder(tmp_path), tmp_path / "res", tmp_path / "cache"
    env = {"VECBUDGET_CACHE": str(cache)}
    args = ["run", "-d", str(folder), "-m", "sq8", "-b", "512", "--results-dir", str(res), "-q",
            "--latency-queries", "5"]
    assert cli("datasets", "prepare", str(folder), "-q", env=env).returncode == 0
    base = next(cache.glob("*/base.npy"))
    base.write_bytes(base.read_bytes()[:1000])  # truncated
    broken = cli(*args, env=env)
    assert broken.returncode == 1
    row = pd.read_parquet(parts(res)[0]).iloc[0]
    assert row["status"] == "error" and "corrupt" in row["error"]
    import shutil

    shutil.rmtree(cache)
    fixed = cli(*args, env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert "skipping" not in fixed.stdout + fixed.stderr
    assert pd.read_parquet(parts(res)[-1]).iloc[0]["status"] == "ok"


def test_usage_errors_are_one_line_and_exit_2(tmp_path):
    for args in (["run", "-b", "abc"], ["run", "--no-such-option"], ["leaderboard", "--top", "x"]):
        out = cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stderr.startswith("error:")


def test_bad_numbers_and_edge_cases_are_refused_before_anything_runs(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    rng = np.random.default_rng(0)
    np.save(small / "base.npy", rng.normal(size=(5, 4)).astype(np.float32))
    np.save(small / "queries.npy", rng.normal(size=(3, 4)).astype(np.float32))
    env = {"VECBUDGET_CACHE": str(tmp_path / "cache")}
    res = tmp_path / "res"
    cases = [
        (["-d", str(small), "-m", "exact"], "larger than the 5 vectors"),
        (["-d", str(small), "-m", "exact", "--per-budget", "-1"], "--per-budget must be at least 1"),
        (["-d", str(small), "-m", "exact", "--time-limit", "0"], "--time-limit must be a positive"),
    ]
    for args, message in cases:
        out = cli("run", *args, "--results-dir", str(res), "-q", env=env)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
        assert parts(res) == []


def test_an_unwritable_results_folder_is_refused_before_the_first_build(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = cli("run", "-d", str(_folder(tmp_path)), "-m", "exact", "--results-dir", str(blocker / "results"), "-q",
              env={"VECBUDGET_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 2 and "not writable" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "cache").exists()  # refused before any data were prepared


def test_help_is_readable_in_an_80_column_terminal():
    commands = [[], ["run"], ["leaderboard"], ["report"], ["plot"], ["check"], ["datasets", "info"],
                ["datasets", "prepare"]]
    for command in commands:
        out = cli(*command, "--help", env={"COLUMNS": "80", "TERM": "dumb"})
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines and all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
        assert "…" not in out.stdout, command
    assert "--at-n" in cli("leaderboard", "--help", env={"COLUMNS": "80"}).stdout
