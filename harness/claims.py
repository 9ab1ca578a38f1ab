"""Claims: two runs into one results folder never measure the same configuration twice.

Before a configuration runs, its run claims it: an exclusive lock on
``<results>/claims/<config_hash>.lock`` (``flock``), which holds the owner's process id and host for
messages. The kernel drops the lock the moment its process dies, even by SIGKILL, so a claim of a
killed run is never stale: the next run takes it over at once, and no process id is ever guessed.
A configuration claimed by a live other run is skipped, and the sweep says so; after claiming,
the store is read again, so a configuration that another run finished in the meantime is skipped
too. Claims are released (lock file deleted) once the caller has stored the rows.

Usage (the sweep)::

    claims = Claims(store)                    # before planning: notes the stored results
    tasks, _ = plan_tasks(...)
    for task, rows in executor.run(claims.claimed(tasks, on_skip=print)):
        store.append(rows)
        claims.release(task.config_hashes)    # the rest is released when the loop ends

Tasks are claimed lazily, one at a time, as the executor asks for the next one. Where ``flock``
does not exist (not POSIX), every claim succeeds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from harness.errors import DataError
from harness.io import _pid_alive
from harness.store import ResultStore
from harness.worker import Task

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

CLAIMS_FOLDER = "claims"


class Claims:
    """Exclusive per-configuration claims in a results folder (see the module docstring)."""

    def __init__(self, store: ResultStore):
        self.store = store
        self.folder = Path(store.root) / CLAIMS_FOLDER
        self._held: dict[str, int] = {}  # config hash -> open, locked file descriptor
        self._seen_parts: set[Path] = set(store.parts())
        self._stored_since: set[str] = set()
        #: config hashes :meth:`claimed` skipped: claimed by another run, or stored meanwhile
        self.skipped: list[str] = []

    # ----- single claims ---------------------------------------------------------------
    def _path(self, config_hash: str) -> Path:
        if not config_hash or not all(c.isalnum() or c in "-_" for c in config_hash):
            raise ValueError(f"not a config hash: {config_hash!r}")
        return self.folder / f"{config_hash}.lock"

    def _ensure_folder(self) -> None:
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            ignore = self.folder / ".gitignore"
            with contextlib.suppress(OSError):
                ignore.write_text("# lock files of running sweeps (harness/claims.py)\n*\n")

    def try_claim(self, config_hash: str) -> bool:
        """Claim ``config_hash`` for this process; False when another live holder has it."""
        if config_hash in self._held:
            return True
        if fcntl is None:
            self._held[config_hash] = -1
            return True
        path = self._path(config_hash)
        tries = 0
        while True:
            try:
                self._ensure_folder()
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise DataError(f"cannot claim configurations in {self.folder} ({exc.strerror or exc}); "
                                f"choose another results folder with --results-dir") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                # a lock file naming a dead process is held only for a moment, by a run deleting
                # it (remove_stale): try again shortly instead of skipping the configuration
                tries += 1
                if tries > 20 or _owner_alive(self.owner(config_hash)):
                    return False
                time.sleep(0.005)
                continue
            # the holder we waited on may have released (and deleted) the file just before we
            # locked it: then we hold a lock on a deleted file, so start again on the new one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner, 0)
        self._held[config_hash] = fd
        return True

    def remove_stale(self) -> list[Path]:
        """Delete lock files nobody holds (left by killed runs); return them."""
        removed: list[Path] = []
        if fcntl is None or not self.folder.is_dir():
            return removed
        for path in self.folder.glob("*.lock"):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    os.unlink(path)
                    removed.append(path)
            except OSError:
                pass  # held by a live run, or gone meanwhile
            finally:
                os.close(fd)
        return removed

    def owner(self, config_hash: str) -> dict[str, Any]:
        """Who holds a claim, as its lock file says (``{}`` when unknown)."""
        try:
            return json.loads(self._path(config_hash).read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def release(self, config_hashes: Iterable[str]) -> None:
        """Give up claims (the rows are stored): delete each lock file, then unlock it."""
        for config_hash in list(config_hashes):
            fd = self._held.pop(config_hash, None)
            if fd is None or fd < 0:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(config_hash))  # still ours: we hold the lock
            os.close(fd)

    def release_all(self) -> None:
        self.release(list(self._held))

    @property
    def held(self) -> set[str]:
        return set(self._held)

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_all()

    # ----- results stored meanwhile ------------------------------------------------------
    def stored_since(self) -> set[str]:
        """Config hashes this folder stored since this object was made (by another run, or by
        this one), read incrementally: each new part file is opened once, two columns of it."""
        store_id = self.store.store_id
        for part in self.store.parts():
            if part in self._seen_parts:
                continue
            self._seen_parts.add(part)
            try:
                names = set(pq.read_schema(part).names)
                if "config_hash" not in names:
                    continue
                df = pd.read_parquet(part, columns=[c for c in ("config_hash", "store_id") if c in names])
            except Exception:  # noqa: BLE001 - a corrupt part is the store's to report
                continue
            if "store_id" in df:
                df = df[df["store_id"] == store_id]
            self._stored_since.update(df["config_hash"].astype(str))
        return set(self._stored_since)

    # ----- tasks -------------------------------------------------------------------------
    def claimed(self, tasks: Iterable[Task], *,
                on_skip: Callable[[str], None] | None = None) -> Iterator[Task]:
        """Yield each task reduced to the configurations this run has claimed and that nobody
        stored meanwhile (a task left with none is dropped). ``on_skip`` receives one message per
        task that lost configurations. Release each yielded task's claims with :meth:`release`
        once its rows are stored; whatever is still held is released when the iteration ends
        (finished, broken off, or the generator closed)."""
        self.remove_stale()
        try:
            for task in tasks:
                mine, others = [], []
                for config_hash in task.config_hashes:
                    (mine if self.try_claim(config_hash) else others).append(config_hash)
                done = self.stored_since() & set(mine) if mine else set()
                if done:
                    self.release(done)
                    mine = [h for h in mine if h not in done]
                if others or done:
                    self.skipped.extend(others + sorted(done))
                    if on_skip:
                        on_skip(f"{task.label}: {_skip_message(others, done, self.owner)}")
                if mine:
                    yield _restrict(task, mine)
        finally:
            self.release_all()


def _skip_message(others: list[str], done: set[str], owner: Callable[[str], dict[str, Any]]) -> str:
    parts = []
    if others:
        owners = sorted({_describe(owner(h)) for h in others})
        parts.append(f"{len(others)} configuration(s) are being measured by another run "
                     f"({', '.join(owners)}); skipped")
    if done:
        parts.append(f"{len(done)} configuration(s) were stored by another run meanwhile; skipped")
    return "; ".join(parts)


def _owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the process a lock file names may still run (unknown, or on another host: yes)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or owner.get("host") not in (None, socket.gethostname()):
        return True
    return _pid_alive(pid)


def _describe(owner: dict[str, Any]) -> str:
    if not owner.get("pid"):
        return "pid unknown"
    host = owner.get("host")
    return f"pid {owner['pid']}" + (f" on {host}" if host and host != socket.gethostname() else "")


def _restrict(task: Task, hashes: list[str]) -> Task:
    if hashes == list(task.config_hashes):
        return task
    keep = set(hashes)
    pairs = [(s, h) for s, h in zip(task.search_configs, task.config_hashes, strict=True) if h in keep]
    return dataclasses.replace(task, search_configs=[s for s, _ in pairs], config_hashes=[h for _, h in pairs])
