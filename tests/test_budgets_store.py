import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.budgets import plan, plan_method
from harness.dataset import RawDataset, prepare
from harness.errors import BudgetError
from harness.executor import InlineExecutor
from harness.io import atomic_path
from harness.method import MemoryAccount, Method
from harness.registry import get_method
from harness.store import ResultStore
from harness.sweep import SweepConfig, plan_tasks, run_sweep
from tests.conftest import clustered

REPO = Path(__file__).resolve().parents[1]


class FakeSQ(Method):
    name = "fake-sq"
    family = "test"
    paper = "none"
    bytes_formula = "d·bits/8"
    build_grid = {"bits": [1, 2, 4, 8]}

    @classmethod
    def bytes_per_vector(cls, dim, n, bits):
        return dim * bits / 8

    def add(self, vectors):  # pragma: no cover - planning only
        raise NotImplementedError

    def search(self, queries, k, **kw):  # pragma: no cover
        raise NotImplementedError

    def memory(self):  # pragma: no cover
        return MemoryAccount()


def test_plan_picks_the_largest_configurations_that_fit_each_budget():
    chosen = plan_method(FakeSQ, 64, 1000, (8, 20, 64), per_budget=1)
    # 8 B fits bits=1 (8 B); 20 B fits bits=2 (16 B); 64 B fits bits=8 (64 B)
    assert [p.build_params["bits"] for p in chosen] == [1, 2, 8]
    two = plan_method(FakeSQ, 64, 1000, (64,), per_budget=2)
    assert [p.build_params["bits"] for p in two] == [4, 8]


def test_budget_no_configuration_fits_is_an_error():
    with pytest.raises(BudgetError, match="no configuration fits"):
        plan([FakeSQ], 64, 1000, (4,))


def test_store_round_trip_is_append_only(tmp_path):
    store = ResultStore(tmp_path)
    assert store.load().empty
    mine = store.store_id
    a = store.append([{"config_hash": "a", "status": "ok", "ram_bytes": 1.0}])
    b = store.append([{"config_hash": "b", "status": "failed", "ram_bytes": np.nan}])
    # a row measured by another checkout (as the published runs of a fresh clone are)
    store._write([{**a[0], "config_hash": "c", "store_id": "another-checkout"}])
    assert len(store.parts()) == 3
    assert a[0]["store_id"] == mine and b[0]["created_utc"] >= a[0]["created_utc"]  # stamped at append
    df = store.load()
    assert list(df["config_hash"]) == ["a", "b", "c"]
    assert store.done_hashes() == {"a"}  # "c" came from elsewhere: measured again here, not skipped
    assert store.done_hashes(("ok", "failed")) == {"a", "b"}
    assert list(store.measured_here(df)["config_hash"]) == ["a", "b"]
    assert ResultStore(tmp_path).store_id == mine and ResultStore(tmp_path / "other").store_id != mine
    assert not list(tmp_path.glob("runs/.*"))  # no temporary files left


def test_a_writer_killed_mid_write_leaves_a_temporary_that_readers_skip_and_sweeps_remove(tmp_path):
    store = ResultStore(tmp_path)
    store.append([{"config_hash": "a", "status": "ok"}])
    script = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
              "from harness.io import atomic_path\n"
              f"with atomic_path({str(store.runs / 'x.parquet')!r}, suffix='.parquet') as tmp:\n"
              "    print(tmp, flush=True); time.sleep(120)\n")
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    temporary = Path(writer.stdout.readline().strip())
    writer.kill()
    writer.wait()
    assert temporary.exists() and temporary.stat().st_size == 0  # SIGKILL cannot be cleaned up after
    assert len(store.parts()) == 1 and list(store.load()["config_hash"]) == ["a"]
    with atomic_path(store.runs / "y.parquet", suffix=".parquet") as live:  # our own, still writing
        assert store.remove_stale_temporaries() == [temporary]
        assert live.exists() and not temporary.exists()


def test_sweep_removes_temporaries_of_killed_writers(tmp_path):
    base, queries = clustered(300, 8, 5)
    ds = prepare(RawDataset("toy", base, queries, "l2"), tmp_path / "cache", progress=False)
    store = ResultStore(tmp_path / "results")
    store.runs.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = store.runs / f".0.parquet.{dead}.abc.parquet"
    stale.touch()
    run_sweep(ds, SweepConfig(methods=["exact"], budgets=(64,), latency_queries=2), store, InlineExecutor(),
              progress=False)
    assert not stale.exists() and len(store.parts()) == 1


def test_sweep_resumes_without_recomputing_stored_configurations(tmp_path):
    base, queries = clustered(500, 16, 20)
    ds = prepare(RawDataset("toy", base, queries, "l2"), tmp_path / "cache", progress=False)
    store = ResultStore(tmp_path / "results")
    cfg = SweepConfig(methods=["exact"], budgets=(64, 128), latency_queries=5)
    first = run_sweep(ds, cfg, store, InlineExecutor(), progress=False)
    assert len(first) == 1 and first["status"].eq("ok").all()
    tasks, skipped = plan_tasks(ds, cfg, store)
    assert tasks == [] and skipped == 1
    again = run_sweep(ds, cfg, store, InlineExecutor(), progress=False)
    assert again.empty and len(store.parts()) == 1
    forced = run_sweep(ds, SweepConfig(methods=["exact"], budgets=(64,), force=True, latency_queries=5),
                       store, InlineExecutor(), progress=False)
    assert len(forced) == 1 and len(store.parts()) == 2
    df = store.load()
    row = df.iloc[0]
    assert row["recall_at_10"] == 1.0 and row["bytes_per_vector"] == pytest.approx(64, rel=0.01)
    assert row["method"] == get_method("exact").name
    assert isinstance(pd.read_parquet(store.parts()[0]), pd.DataFrame)


def test_single_query_timing_is_time_boxed_but_never_below_the_minimum(tmp_path):
    from harness.worker import MIN_LATENCY_QUERIES

    base, queries = clustered(400, 8, 120)
    ds = prepare(RawDataset("toy", base, queries, "l2"), tmp_path / "cache", progress=False)
    store = ResultStore(tmp_path / "results")
    boxed = run_sweep(ds, SweepConfig(methods=["exact"], budgets=(64,), latency_queries=100, latency_seconds=0.0),
                      store, InlineExecutor(), progress=False)
    assert np.load(boxed["raw_path"].iloc[0])["latency_ms"].shape == (MIN_LATENCY_QUERIES,)
    full = run_sweep(ds, SweepConfig(methods=["exact"], budgets=(64,), latency_queries=100, force=True),
                     store, InlineExecutor(), progress=False)
    assert boxed["latency_queries"].tolist() == [MIN_LATENCY_QUERIES]
    assert full["latency_queries"].tolist() == [100]


def test_stale_temporary_pid_is_read_from_the_end_of_the_name(tmp_path):
    from harness.io import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f".part.0003.npz.{dead}.k2j3h4g5.npz"  # digits in the target name are not the pid
    live = tmp_path / f".part.{dead}.npz.{os.getpid()}.k2j3h4g5.npz"
    other = tmp_path / ".notes.txt"
    for f in (stale, live, other):
        f.touch()
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and other.exists()


def test_variants_are_planned_only_when_asked_beside_the_paper_recipe():
    from harness.budgets import plan_method

    cls = get_method("binary-rescore")
    paper = plan_method(cls, 384, 20000, (64, 512))
    both = plan_method(cls, 384, 20000, (64, 512), variants=True)
    assert {cls.variant_of(b.build_params) for b in paper} == {"paper"}
    assert {cls.variant_of(b.build_params) for b in both} == {"paper", "centred"}
    assert len(both) == 2 * len(paper)
