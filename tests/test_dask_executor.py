"""The Dask executor (``vecbudget run --executor dask``) against a real ``LocalCluster`` of two
worker processes: the same rows as the process executor (quality and bytes), results streamed into
the store so resume works, the data checked by path and fingerprint on the worker, at most one timed
task per host unless allowed, and a Dask worker killed mid-task giving a failed row, not a hang.

The misbehaving methods live in the test-only plugin ``tests/plugins/vecbudget_faults.py``, named in
``VECBUDGET_PLUGINS`` for the command, which its local cluster's workers inherit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import VecbudgetError
from harness.executor import ProcessExecutor
from harness.store import ResultStore
from harness.sweep import SweepConfig, run_sweep
from harness.worker import Task
from tests.conftest import write_vector_folder

distributed = pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")

from harness.dask_executor import DaskExecutor, host_slot, read_store_id, results_problem  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "plugins" / "vecbudget_faults.py"
#: what must be the same whichever executor measured a configuration
SAME = ["status", "recall_at_1", "recall_at_10", "recall_at_100", "recall_dist_at_10", "recall_dist_at_100",
        "ram_bytes", "codes_bytes", "structure_bytes", "shared_bytes", "bytes_per_vector", "disk_bytes",
        "per_query_recall_at_10", "build_params", "search_params", "dataset_fingerprint"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc and flock")


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of two single-threaded worker processes, shared by this module's tests."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, memory_limit=0)
    c = distributed.Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


@pytest.fixture()
def dataset(tmp_path, monkeypatch):
    from harness.loaders import load_dataset

    monkeypatch.setenv("VECBUDGET_CACHE", str(tmp_path / "cache"))
    return load_dataset(str(write_vector_folder(tmp_path / "data")), progress=False)


def sweep(ds, store: Path, executor, **cfg) -> pd.DataFrame:
    config = SweepConfig(methods=["exact", "sq8"], budgets=(64,), latency_queries=20, **cfg)
    return run_sweep(ds, config, ResultStore(store), executor, progress=False)


def overlap(log: list[dict]) -> bool:
    (a, b) = sorted(log, key=lambda r: r["started"])
    return b["started"] < a["finished"]


def test_rows_match_the_process_executor_stream_to_the_store_and_resume(tmp_path, client, dataset):
    local = sweep(dataset, tmp_path / "local", ProcessExecutor(time_limit_s=60))
    dask = DaskExecutor(client=client, time_limit_s=60, slot_folder=tmp_path)
    seen: list[int] = []  # parts in the store each time a task's rows arrive: appended as they finish
    cfg = SweepConfig(methods=["exact", "sq8"], budgets=(64,), latency_queries=20)
    remote = run_sweep(dataset, cfg, ResultStore(tmp_path / "dask"), dask, progress=False,
                       on_rows=lambda task, rows: seen.append(len(ResultStore(tmp_path / "dask").parts())))
    assert len(local) == len(remote) == 2 and seen == [1, 2]
    assert set(remote["status"]) == {"ok"}, remote["error"].tolist()
    a, b = (df.set_index("config_hash").sort_index() for df in (local, remote))
    assert a.index.equals(b.index)
    for col in SAME:
        assert a[col].tolist() == b[col].tolist(), col
    assert b["tasks_per_host"].tolist() == [1, 1] and "tasks_per_host" not in a
    assert ResultStore(tmp_path / "dask").load()["tasks_per_host"].tolist() == [1, 1]
    # both workers took part or not, the two timed tasks never ran at the same time on this host
    assert len(dask.log) == 2 and {r["host"] for r in dask.log} == {socket.gethostname()}
    assert not overlap(dask.log), dask.log
    # resume: everything is stored, nothing runs again
    again = sweep(dataset, tmp_path / "dask", DaskExecutor(client=client, slot_folder=tmp_path))
    assert again.empty and again.attrs["skipped"] == 2


def test_concurrent_per_host_lets_tasks_overlap_and_rows_say_so(tmp_path, client, dataset):
    dask = DaskExecutor(client=client, time_limit_s=60, concurrent_per_host=2, slot_folder=tmp_path)
    rows = sweep(dataset, tmp_path / "res", dask)
    assert set(rows["status"]) == {"ok"} and rows["tasks_per_host"].tolist() == [2, 2]
    assert sorted(r["slot"] for r in dask.log) == [0, 1] and overlap(dask.log), dask.log


def test_a_worker_without_the_same_data_gives_error_rows(tmp_path, client, dataset):
    task = Task.for_dataset(dataset, "exact", {}, [{}], ["h-other"], latency_queries=20)
    other = dataclasses.replace(task, fingerprint="f" * 16)
    missing = dataclasses.replace(task, dataset_dir=str(tmp_path / "nowhere"), config_hashes=["h-missing"])
    dask = DaskExecutor(client=client, time_limit_s=60, slot_folder=tmp_path)
    rows = {t.config_hashes[0]: r for t, (r,) in dask.run([other, missing])}
    host = socket.gethostname()
    assert rows["h-other"]["status"] == "error" and rows["h-missing"]["status"] == "error"
    assert f"on host {host} has fingerprint {dataset.fingerprint}, the sweep's is {'f' * 16}" in rows["h-other"]["error"]
    assert f"{tmp_path / 'nowhere'} not found on host {host}" in rows["h-missing"]["error"]
    assert rows["h-other"]["tasks_per_host"] == 1
    assert dask.log == [] or all("started" not in r for r in dask.log)  # nothing was measured


def test_a_worker_that_sees_another_results_folder_gives_error_rows(tmp_path, dataset):
    mine, other = tmp_path / "mine", tmp_path / "other"
    ResultStore(mine).check_writable()  # creates its .store_id
    ResultStore(other).check_writable()
    expected = read_store_id(mine)
    task = Task.for_dataset(dataset, "exact", {}, [{}], ["h"], raw_dir=str(mine / "raw"))
    assert expected and results_problem(task, expected) is None
    elsewhere = dataclasses.replace(task, raw_dir=str(other / "raw"))  # as a host without the share sees it
    assert f"results folder {other} on host {socket.gethostname()} is not the command's" in \
        results_problem(elsewhere, expected)
    assert "has no .store_id" in results_problem(dataclasses.replace(task, raw_dir=str(tmp_path / "x" / "raw")),
                                                 expected)


def test_host_slots_admit_one_task_at_a_time_unless_more_are_allowed(tmp_path):
    got = threading.Event()

    def second() -> None:
        with host_slot(1, tmp_path):
            got.set()

    with host_slot(1, tmp_path) as first:
        assert first == 0
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not got.wait(0.3), "a second task ran while the host's only slot was held"
        with host_slot(2, tmp_path) as other:  # two allowed: the second slot is free
            assert other == 1
    assert got.wait(5), "the slot was not handed on"
    waiter.join()


def test_an_unreachable_scheduler_is_a_one_line_error_within_the_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    t0 = time.monotonic()
    with pytest.raises(VecbudgetError) as err:
        DaskExecutor(f"tcp://127.0.0.1:{port}", connect_timeout_s=1)
    assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert message.startswith(f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port} within 1 s")
    assert "\n" not in message


def test_bad_option_combinations_exit_2_with_one_line(tmp_path):
    for args, message in [(["--scheduler", "tcp://127.0.0.1:8786"], "need --executor dask"),
                          (["--jobs", "2"], "need --executor dask"),
                          (["--executor", "dask", "--scheduler", "tcp://127.0.0.1:8786", "--jobs", "2"], "not both"),
                          (["--executor", "slurm"], "--executor must be 'process' or 'dask'")]:
        out = subprocess.run([sys.executable, "cli.py", "run", "-d", str(tmp_path / "none"), "-m", "exact",
                              "--results-dir", str(tmp_path / "res"), *args], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "res" / "runs").exists()


# ----- a killed Dask worker ------------------------------------------------------------------
def harness_workers(tmpdir: Path) -> list[tuple[int, Path]]:
    """(pid, task file) of the measuring processes whose task folder is in ``tmpdir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args]
        if "harness.worker" in words and len(words) > 3 and words[3].startswith(str(tmpdir)):
            found.append((int(entry.name), Path(words[3])))
    return found


def test_killing_the_dask_worker_of_a_task_gives_a_crashed_row_and_the_sweep_finishes(tmp_path):
    data, tmpdir, results = write_vector_folder(tmp_path / "data"), tmp_path / "tmp", tmp_path / "res"
    tmpdir.mkdir()
    env = {**os.environ, "VECBUDGET_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmpdir),
           "VECBUDGET_PLUGINS": str(PLUGIN), "VECBUDGET_TEST_SLOW_S": "60"}
    args = [sys.executable, "cli.py", "run", "-d", str(data), "--results-dir", str(results), "-q",
            "--latency-queries", "20", "-b", "64", "--executor", "dask", "--jobs", "2",
            "-m", "test-slow", "-m", "fault-segfault", "-m", "exact"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    killed = None
    try:
        deadline = time.monotonic() + 90
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            for _, task_file in harness_workers(tmpdir):
                try:
                    method = json.loads(task_file.read_text())["method"]
                except (OSError, ValueError):
                    continue
                if method == "test-slow":  # busy for 60 s: kill the Dask worker that runs it
                    killed = int(task_file.parent.name.split("-")[1])
                    os.kill(killed, signal.SIGKILL)
                    break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed is not None, "test-slow never started: " + stderr[-3000:]
    assert proc.returncode == 1, stderr[-3000:]  # failures are reported, the command finished
    assert "Traceback" not in stdout
    df = ResultStore(results).load()
    by_method = {m: g for m, g in df.groupby("method")}
    assert set(by_method) == {"test-slow", "fault-segfault", "exact"}
    slow = by_method["test-slow"]
    assert len(slow) == 2 and set(slow["status"]) == {"crashed"}  # its two search configurations
    assert f"pid {killed}" in slow["error"].iloc[0] and "was lost" in slow["error"].iloc[0]
    segfault = by_method["fault-segfault"].iloc[0]
    assert segfault["status"] == "crashed" and "SIGSEGV" in segfault["error"]
    assert by_method["exact"]["status"].tolist() == ["ok"]
    assert set(df["tasks_per_host"]) == {1}
    assert harness_workers(tmpdir) == [], "a measuring process outlived its Dask worker"
    assert sorted(tmpdir.glob("vecbudget-*")) == [], "task folders leaked"
