"""Sweeps on a Dask cluster: ``vecbudget run --executor dask [--scheduler tcp://HOST:PORT | --jobs N]``.

:class:`DaskExecutor` implements the one-method :class:`harness.executor.Executor` interface. Each
task — one (method, build) — is submitted to the cluster, and the Dask worker that takes it runs
:meth:`harness.executor.ProcessExecutor.run_one`: the same fresh worker process, with the same
address-space and wall-clock limits, as a local sweep. Results stream back as they finish
(``as_completed``) and the sweep appends each to the store at once, so a sweep broken off midway
resumes where it stopped. Tasks are taken from the sweep lazily (a window of about two per worker
thread), so configurations are claimed (:mod:`harness.claims`) only shortly before they run.

On the Dask worker, before anything runs:

* **Same data.** Data sets are addressed by path and fingerprint: the worker reads the prepared
  folder's ``meta.json`` and checks its fingerprint against the task's. A missing folder or a
  different fingerprint gives failed rows (status ``error``, so the next sweep retries them) saying
  which host lacks the data. Likewise the results folder: each row's per-query results
  (``raw_path``) are written by the worker, so the worker checks that the results folder it sees at
  that path is the command's (same ``.store_id``).
* **Clean speed figures.** At most ``concurrent_per_host`` timed tasks run at once on a host (1 by
  default, ``--concurrent-per-host N`` allows more). The limit is a set of host slots: exclusive
  ``flock`` locks on files ``vecbudget-host-slot-<host>-<i>.lock`` in a folder local to the host
  (``/tmp``), shared by every Dask worker on that host whatever cluster it belongs to; the kernel
  releases a slot the moment its holder dies, so a killed worker never leaves a host blocked. Every
  row records the limit it ran under (``tasks_per_host``).
* **A killed Dask worker.** When the Dask worker running a task dies (killed, or out of memory),
  its measuring process dies with it (``PR_SET_PDEATHSIG``), and Dask would run the task again
  elsewhere. The first attempt leaves a mark in the scheduler's metadata, so the second attempt
  does not measure again: it returns failed rows (status ``crashed``) naming the worker that died,
  and the sweep goes on. A task Dask gives up on (``KilledWorker``) becomes ``crashed`` rows too.

Every Dask worker needs vecbudget (and the method plugins: ``VECBUDGET_PLUGINS`` travels in the
worker's environment) installed, and the prepared data set and the results folder at the same paths
as the command sees them (a shared file system).
Only this module imports Dask (the ``cluster`` extra: ``pip install 'vecbudget[cluster]'``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from harness.errors import VecbudgetError
from harness.executor import ProcessExecutor, remove_stale_task_folders
from harness.worker import Task, failure_rows

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

#: seconds allowed to reach a scheduler given with ``--scheduler``
CONNECT_TIMEOUT_S = 10.0
#: host slot lock files: ``<folder>/vecbudget-host-slot-<host>-<i>.lock``
HOST_SLOT_PREFIX = "vecbudget-host-slot-"
#: scheduler metadata under which each task's first attempt is marked
ATTEMPTS_KEY = "vecbudget-attempts"
#: how often a task waiting for a host slot tries again, seconds
SLOT_POLL_S = 0.05


def default_slot_folder() -> Path:
    """The host-wide folder of the slot locks: ``/tmp`` (whatever ``TMPDIR`` a worker has), else
    the temporary folder."""
    tmp = Path("/tmp")
    return tmp if tmp.is_dir() else Path(tempfile.gettempdir())


# ----- on the Dask worker ------------------------------------------------------------------
def dataset_problem(task: Task) -> str | None:
    """Why this host cannot run ``task`` on the sweep's data (None: the prepared folder is there
    and its fingerprint is the task's)."""
    folder, host = Path(task.dataset_dir), socket.gethostname()
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return (f"prepared data set {folder} not found on host {host}: every Dask worker must see the "
                f"sweep's prepared data at the same path (share the folder, or prepare it there)")
    except (OSError, ValueError) as exc:
        return f"prepared data set {folder} on host {host} is unreadable ({exc})"
    found = meta.get("fingerprint") if isinstance(meta, dict) else None
    if found != task.fingerprint:
        return (f"prepared data set {folder} on host {host} has fingerprint {found}, the sweep's is "
                f"{task.fingerprint}: this worker would read different data")
    return None


def read_store_id(root: str | os.PathLike) -> str | None:
    """The id of the results folder ``root`` (its ``.store_id``), None when it has none."""
    try:
        return (Path(root) / ".store_id").read_text().strip() or None
    except OSError:
        return None


def results_problem(task: Task, store_id: str | None) -> str | None:
    """Why this host cannot write ``task``'s per-query results where the command reads them (None:
    the results folder here is the command's, or the command has none to compare with)."""
    if not task.raw_dir or store_id is None:
        return None
    root, host = Path(task.raw_dir).parent, socket.gethostname()
    found = read_store_id(root)
    if found == store_id:
        return None
    here = "has no .store_id" if found is None else f"has store id {found}"
    return (f"results folder {root} on host {host} is not the command's (it {here}, the command's is "
            f"{store_id}): per-query results (raw_path) would be written where the command cannot read "
            f"them; every Dask worker must see the results folder at the same path")


@contextlib.contextmanager
def host_slot(limit: int, folder: str | os.PathLike | None = None) -> Iterator[int]:
    """Hold one of ``limit`` slots of this host while the block runs (waits until one is free);
    yields the slot's number. Slots are ``flock`` locks, released by the kernel if the holder dies."""
    if limit < 1:
        raise ValueError(f"a host needs at least one slot, got {limit}")
    if fcntl is None:  # pragma: no cover - not POSIX: no limit
        yield 0
        return
    folder = Path(folder or default_slot_folder())
    host = re.sub(r"[^\w.-]", "_", socket.gethostname())
    while True:
        for slot in range(limit):
            path = folder / f"{HOST_SLOT_PREFIX}{host}-{slot}.lock"
            # read-only suffices for flock, and opens a lock file another user created
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                continue
            try:
                yield slot
            finally:
                os.close(fd)  # drops the lock
            return
        time.sleep(SLOT_POLL_S)


def run_on_worker(task: Task, process: ProcessExecutor, tasks_per_host: int, slot_folder: str | None,
                  attempt_key: list[str], store_id: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The Dask task: check the data and the results folder, wait for a host slot, run the task
    in a fresh worker process (:meth:`ProcessExecutor.run_one`). Returns the rows and where and
    when it ran."""
    from distributed import get_client, get_worker

    worker, host = get_worker(), socket.gethostname()
    info: dict[str, Any] = {"host": host, "worker": worker.address, "pid": os.getpid()}
    remove_stale_task_folders()  # left on this host by a Dask worker that was killed
    client = get_client()
    earlier = client.get_metadata(attempt_key, None)
    if earlier is not None:
        return failure_rows(task, "crashed", f"the Dask worker that started this task was lost (killed, out "
                            f"of memory or shut down: {earlier}); the task is not run again, so that no "
                            f"configuration is measured twice"), info
    problem = dataset_problem(task) or results_problem(task, store_id)
    if problem:
        return failure_rows(task, "error", problem), info
    with host_slot(tasks_per_host, slot_folder) as slot:
        client.set_metadata(attempt_key, f"worker {worker.address} on host {host}, pid {os.getpid()}")
        info.update(slot=slot, started=time.time())
        rows = process.run_one(task)
        info["finished"] = time.time()
    return rows, info


# ----- in the command ----------------------------------------------------------------------
class DaskExecutor:
    """Run sweep tasks on a Dask cluster (see the module docstring).

    ``scheduler``: the address of a running scheduler (``tcp://HOST:PORT``); without it a local
    cluster of ``jobs`` worker processes (default: ``concurrent_per_host``) is started. ``client``:
    an existing ``distributed.Client`` to use instead (not closed by this executor). A cluster or
    client the executor made itself is closed when :meth:`run` ends (or by :meth:`close`).
    """

    def __init__(self, scheduler: str | None = None, *, jobs: int | None = None, time_limit_s: float = 900,
                 memory_limit_bytes: int | None = None, concurrent_per_host: int = 1,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, client: Any = None,
                 slot_folder: str | os.PathLike | None = None):
        if concurrent_per_host < 1:
            raise VecbudgetError(f"--concurrent-per-host must be at least 1, got {concurrent_per_host}")
        if jobs is not None and jobs < 1:
            raise VecbudgetError(f"--jobs must be at least 1, got {jobs}")
        if scheduler and jobs is not None:
            raise VecbudgetError("give either --scheduler (a running cluster) or --jobs (a local cluster), not both")
        #: runs each task on the Dask worker: the limits are the local executor's, defaults included
        self.process = ProcessExecutor(time_limit_s=time_limit_s, memory_limit_bytes=memory_limit_bytes)
        self.time_limit_s = self.process.time_limit_s
        self.memory_limit_bytes = self.process.memory_limit_bytes
        self.scheduler = scheduler
        self.jobs = jobs
        self.concurrent_per_host = concurrent_per_host
        self.connect_timeout_s = connect_timeout_s
        self.slot_folder = None if slot_folder is None else str(slot_folder)
        #: where and when each task of the last :meth:`run` ran (host, worker, pid, slot, started, finished)
        self.log: list[dict[str, Any]] = []
        self._client = client
        self._cluster: Any = None
        self._owned = client is None
        if client is None:
            self._connect()  # an unreachable scheduler fails here, before any work

    def _connect(self) -> None:
        try:
            import distributed
        except ImportError as exc:
            raise VecbudgetError("--executor dask needs dask.distributed: pip install 'dask[distributed]' "
                                 "(or vecbudget's extra: pip install -e '.[cluster]')") from exc
        if self.scheduler:
            from distributed.comm.addressing import parse_address
            from distributed.comm.registry import get_backend

            try:
                scheme, location = parse_address(self.scheduler)
                get_backend(scheme)
                if not location:
                    raise ValueError("no host")
            except ValueError as exc:
                raise VecbudgetError(f"not a Dask scheduler address: {self.scheduler!r} ({exc}); "
                                     f"expected e.g. tcp://HOST:8786") from None
            try:
                self._client = distributed.Client(self.scheduler, timeout=self.connect_timeout_s,
                                                  set_as_default=False)
            except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError for a bad address
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise VecbudgetError(f"cannot reach the Dask scheduler at {self.scheduler} within "
                                     f"{self.connect_timeout_s:g} s: {first}") from None
            return
        self._cluster = distributed.LocalCluster(
            n_workers=self.jobs or self.concurrent_per_host, threads_per_worker=1, processes=True,
            dashboard_address=None, memory_limit=0)  # memory: each task's own limit (RLIMIT_AS)
        self._client = distributed.Client(self._cluster, set_as_default=False)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._connect()
        return self._client

    def close(self) -> None:
        """Close the client and the local cluster this executor started (not a client it was given)."""
        if not self._owned:
            return
        for thing in (self._client, self._cluster):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self._client = self._cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _window(self, client: Any) -> int:
        """Tasks in flight: about two per worker thread, so workers never wait for the next one."""
        try:
            return max(2, 2 * sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - the scheduler is unreachable: futures will say so
            return 2

    def _rows(self, task: Task, future: Any) -> list[dict[str, Any]]:
        from distributed import KilledWorker

        try:
            rows, info = future.result()
            self.log.append({**info, "label": task.label})
        except KilledWorker as exc:
            rows = failure_rows(task, "crashed", f"the Dask workers running this task died ({exc})")
        except Exception as exc:  # noqa: BLE001 - e.g. a worker that cannot import vecbudget, a lost scheduler
            rows = failure_rows(task, "error", f"Dask: {type(exc).__name__}: {exc}")
        for row in rows:
            row["tasks_per_host"] = self.concurrent_per_host
        return rows

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, list[dict[str, Any]]]]:
        from distributed import as_completed

        client = self.client
        run_id = uuid.uuid4().hex[:12]
        self.log = []
        pending: dict[Any, Task] = {}
        store_ids: dict[str, str | None] = {}  # results folder -> its id, as the command sees it
        source = iter(tasks)
        done = as_completed(loop=client.loop)

        def submit(number: int) -> bool:
            task = next(source, None)
            if task is None:
                return False
            key = f"vecbudget-{task.method}-{run_id}-{number}"
            root = str(Path(task.raw_dir).parent) if task.raw_dir else ""
            if root not in store_ids:
                store_ids[root] = read_store_id(root) if root else None
            future = client.submit(run_on_worker, task, self.process, self.concurrent_per_host,
                                   self.slot_folder, [ATTEMPTS_KEY, run_id, key], store_ids[root],
                                   key=key, pure=False)
            pending[future] = task
            done.add(future)
            return True

        submitted = 0
        try:
            window = self._window(client)
            while len(pending) < window and submit(submitted):
                submitted += 1
            for future in done:
                task = pending.pop(future)
                yield task, self._rows(task, future)
                window = self._window(client)  # workers may have joined or left
                while len(pending) < window and submit(submitted):
                    submitted += 1
        finally:
            for future in pending:
                future.cancel()
            with contextlib.suppress(Exception):
                client.set_metadata([ATTEMPTS_KEY, run_id], {})  # forget this run's attempt marks
            self.close()
