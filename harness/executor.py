"""Executors run sweep tasks. The interface is one method, so a Dask or cluster executor can
replace the local one without touching the sweep.

:class:`ProcessExecutor` runs each task in a fresh Python process with an address-space limit
(``RLIMIT_AS``) and a wall-clock limit; a crash, time-out or out-of-memory becomes failed rows
carrying the error, and the sweep goes on. :class:`InlineExecutor` runs tasks in-process (tests,
debugging).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from harness.worker import Task, failure_rows, run_task

REPO_ROOT = Path(__file__).resolve().parents[1]


class Executor(Protocol):
    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, list[dict[str, Any]]]]:
        """Run tasks, yielding each with its result rows as it finishes."""
        ...


class InlineExecutor:
    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, list[dict[str, Any]]]]:
        for task in tasks:
            try:
                yield task, run_task(task)
            except Exception as exc:  # noqa: BLE001
                yield task, failure_rows(task, "failed", f"{type(exc).__name__}: {exc}")


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


class ProcessExecutor:
    def __init__(self, time_limit_s: float = 900, memory_limit_bytes: int | None = None):
        self.time_limit_s = time_limit_s
        self.memory_limit_bytes = memory_limit_bytes or int(0.75 * _total_memory())

    def _limits(self) -> None:  # runs in the child before exec
        limit = self.memory_limit_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, list[dict[str, Any]]]]:
        for task in tasks:
            yield task, self.run_one(task)

    def run_one(self, task: Task) -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="vecbudget-") as tmp:
            task_file, out_file = Path(tmp) / "task.json", Path(tmp) / "rows.json"
            task_file.write_text(task.to_json())
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
            proc = subprocess.Popen(
                [sys.executable, "-m", "harness.worker", str(task_file), str(out_file)],
                cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=self._limits, text=True,
            )
            try:
                _, stderr = proc.communicate(timeout=self.time_limit_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return failure_rows(task, "timeout", f"time limit of {self.time_limit_s:g} s exceeded")
            if out_file.exists():
                return json.loads(out_file.read_text())
            tail = (stderr or "").strip().splitlines()[-5:]
            if proc.returncode < 0:
                status, why = "crashed", f"killed by signal {-proc.returncode}"
            else:
                status, why = "failed", f"exit status {proc.returncode}"
            if any("MemoryError" in line or "bad_alloc" in line for line in tail):
                status = "oom"
            return failure_rows(task, status, f"worker {why}: " + " | ".join(tail))
