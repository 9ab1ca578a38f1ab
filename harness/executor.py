"""Executors run sweep tasks. The interface is one method, so a Dask or cluster executor can
replace the local one without touching the sweep.

:class:`ProcessExecutor` runs each task in a fresh Python process with an address-space limit
(``RLIMIT_AS``) and a wall-clock limit; a crash, time-out or out-of-memory becomes failed rows
carrying the error, and the sweep goes on. :class:`InlineExecutor` runs tasks in-process (tests,
debugging).

A worker never outlives its command: the kernel kills it when the command dies
(``PR_SET_PDEATHSIG`` on Linux), and it carries its own limits (``alarm`` for wall-clock time,
``RLIMIT_CPU``), set before ``exec``, so even a worker that lost its parent stops. Each task runs in
a temporary folder ``vecbudget-<pid>-<random>`` named after the command's process id (the worker's
own temporaries go there too, through ``TMPDIR``); folders whose process is gone, left by a command
that was killed, are deleted when the next sweep starts (:func:`remove_stale_task_folders`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from harness.io import _pid_alive
from harness.worker import Task, classify, describe_failure, failure_rows, run_task

REPO_ROOT = Path(__file__).resolve().parents[1]
#: prefix of the per-task temporary folders: ``vecbudget-<pid of the command>-<random>``
TASK_FOLDER_PREFIX = "vecbudget-"
_TASK_FOLDER = re.compile(rf"^{TASK_FOLDER_PREFIX}(\d+)-\w+$")
#: the worker's own wall-clock alarm fires this long after the time limit (the command's own
#: time-out normally comes first; the alarm stops a worker whose command is gone)
ALARM_GRACE_S = 2
#: signals that mean the worker's own time limit stopped it
_TIME_SIGNALS = {signal.SIGALRM, signal.SIGXCPU}
_PR_SET_PDEATHSIG = 1


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()  # loaded here: the child between fork and exec must not load libraries


def remove_stale_task_folders(folder: str | os.PathLike | None = None) -> list[Path]:
    """Delete task folders ``vecbudget-<pid>-*`` in ``folder`` (default: the temporary folder)
    whose command process no longer exists; return them. Other folders are left alone."""
    folder = Path(folder or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TASK_FOLDER.match(entry.name)
        if not match or _pid_alive(int(match.group(1))) or entry.is_symlink() or not entry.is_dir():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    return removed


class Executor(Protocol):
    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, list[dict[str, Any]]]]:
        """Run tasks, yielding each with its result rows as it finishes."""
        ...


class InlineExecutor:
    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, list[dict[str, Any]]]]:
        for task in tasks:
            try:
                rows = run_task(task)
            except Exception as exc:  # noqa: BLE001 - classified as the worker process does
                rows = failure_rows(task, classify(exc), describe_failure(exc))
            yield task, rows


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def _signal_name(number: int) -> str:
    """E.g. ``SIGSEGV (Segmentation fault)``."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    text = signal.strsignal(number)
    return f"{name} ({text})" if text else name


def child_limits(time_limit_s: float, memory_limit_bytes: int, parent_pid: int) -> Callable[[], None]:
    """The ``preexec_fn`` of a worker: limits it keeps after ``exec``, whatever becomes of its parent.

    * ``RLIMIT_AS``: the address-space limit (an allocation beyond it fails: ``MemoryError``);
    * ``alarm``: SIGALRM ``ALARM_GRACE_S`` after the time limit (the wall clock; a pending alarm
      survives ``exec``, and Python leaves SIGALRM's default action, which terminates);
    * ``RLIMIT_CPU``: CPU seconds for the time limit on every core, a backstop should SIGALRM be
      ignored;
    * ``PR_SET_PDEATHSIG`` (Linux): SIGKILL when the parent dies. The parent may already have died
      between ``fork`` and ``prctl``: then the parent pid differs and the child kills itself.
      The signal follows the *thread* that started the child, so start workers from a thread that
      lives as long as the sweep (the main thread does).
    """
    timed = math.isfinite(time_limit_s)
    alarm_s = max(1, math.ceil(time_limit_s) + ALARM_GRACE_S) if timed else 0
    cpu_s = max(1, math.ceil(time_limit_s * (os.cpu_count() or 1)) + ALARM_GRACE_S) if timed else 0

    def limits() -> None:  # runs in the child between fork and exec: no imports
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
        if timed:
            _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
            if cpu_hard == resource.RLIM_INFINITY:
                resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
            elif cpu_hard > cpu_s:
                resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_hard))
            signal.alarm(alarm_s)
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return limits


class ProcessExecutor:
    def __init__(self, time_limit_s: float = 900, memory_limit_bytes: int | None = None):
        self.time_limit_s = time_limit_s
        self.memory_limit_bytes = memory_limit_bytes or int(0.75 * _total_memory())
        #: task folders of killed commands that the last :meth:`run` deleted
        self.removed_folders: list[Path] = []

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, list[dict[str, Any]]]]:
        self.removed_folders = remove_stale_task_folders()
        for task in tasks:
            yield task, self.run_one(task)

    def run_one(self, task: Task) -> list[dict[str, Any]]:
        tmp = Path(tempfile.mkdtemp(prefix=f"{TASK_FOLDER_PREFIX}{os.getpid()}-"))
        try:
            return self._run_in(task, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _run_in(self, task: Task, tmp: Path) -> list[dict[str, Any]]:
        task_file, out_file = tmp / "task.json", tmp / "rows.json"
        task_file.write_text(task.to_json())
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               "TMPDIR": str(tmp)}  # the worker's own temporaries die with the task folder
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.worker", str(task_file), str(out_file)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=child_limits(self.time_limit_s, self.memory_limit_bytes, os.getpid()), text=True,
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
        if proc.returncode < 0 and -proc.returncode in _TIME_SIGNALS:
            return failure_rows(task, "timeout", f"time limit of {self.time_limit_s:g} s exceeded "
                                f"(the worker stopped itself: {_signal_name(-proc.returncode)})")
        if proc.returncode < 0:
            status, why = "crashed", f"killed by {_signal_name(-proc.returncode)}"
            if -proc.returncode == signal.SIGKILL:
                why += " (by the system's out-of-memory killer or another process)"
        else:
            status, why = "failed", f"exit status {proc.returncode}"
        if any("MemoryError" in line or "bad_alloc" in line for line in tail):
            status = "oom"
        return failure_rows(task, status, f"worker {why}" + (": " + " | ".join(tail) if tail else ""))
