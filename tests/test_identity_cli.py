"""Data identity end to end (issue 8 §1): an edited judgment file changes the next run's numbers
without deleting any cache, and a copy of a folder under another name is found by its content."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
TOPICS = ["volcano eruption lava", "stock market crash", "penguin colony antarctica", "violin concerto",
          "tomato soup recipe", "marathon running training", "quantum computing qubits", "medieval castle siege"]


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})


def _beir(folder: Path, relevant: dict[str, str]) -> None:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for i, topic in enumerate(TOPICS):
            for j in range(3):
                f.write(json.dumps({"_id": f"d{i}-{j}", "title": "", "text": f"{topic}, note {j}"}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for i, topic in enumerate(TOPICS[:4]):
            f.write(json.dumps({"_id": f"q{i}", "text": f"about {topic}"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in relevant.items()))


def _ndcg(results: Path) -> list[float]:
    parts = sorted(p for p in (results / "runs").glob("*.parquet") if not p.name.startswith("."))
    return [float(pd.read_parquet(p).iloc[0]["ndcg_at_10"]) for p in parts]


@pytest.mark.slow
def test_editing_judgments_changes_the_next_run_and_a_copy_is_found_by_content(tmp_path):
    pytest.importorskip("sentence_transformers")
    env = {"VECBUDGET_CACHE": str(tmp_path / "cache")}
    data, res = tmp_path / "mini", tmp_path / "res"
    _beir(data, {"q0": "d0-0", "q1": "d1-0", "q2": "d2-0", "q3": "d3-0"})
    run = ["run", "-m", "exact", "-b", "4096", "--results-dir", str(res), "-q", "--latency-queries", "5"]
    assert cli(*run, "-d", str(data), env=env).returncode == 0
    # the judgments now point at documents of other topics: nDCG must drop, with no cache deleted
    _beir(data, {"q0": "d5-0", "q1": "d6-0", "q2": "d7-0", "q3": "d4-0"})
    second = cli(*run, "-d", str(data), env=env)
    assert second.returncode == 0, second.stderr
    first_ndcg, second_ndcg = _ndcg(res)
    assert first_ndcg > 0.3 and second_ndcg < first_ndcg - 0.2, (first_ndcg, second_ndcg)
    info = cli("datasets", "info", str(data), "--no-stats", "-q", "--json", env=env)
    assert info.returncode == 0 and json.loads(info.stdout)["has_qrels"]
    # the same folder under another name: not measured again, and shown under the new name
    copy = tmp_path / "mini-copy"
    shutil.copytree(data, copy)
    third = cli(*run, "-d", str(copy), env=env)
    assert third.returncode == 0 and "skipping 1 stored configuration" in third.stdout + third.stderr
    board = cli("leaderboard", "-d", str(copy), "--results-dir", str(res), env=env)
    assert board.returncode == 0, board.stderr
    assert "exact" in board.stdout and f"{second_ndcg:.4f}"[:5] in board.stdout
