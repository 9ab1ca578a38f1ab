"""Atomic file writes: write to a temporary file in the same folder, then rename.

Temporary files are hidden (``.<name>.<pid>.<random><suffix>``) and carry the writer's process id, so a
writer killed mid-write (SIGKILL cannot be caught) leaves a file that readers skip and that
:func:`remove_stale_temporaries` deletes once that process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def is_temporary(path: str | os.PathLike) -> bool:
    """True for the hidden temporary files :func:`atomic_path` writes (readers must skip them)."""
    return Path(path).name.startswith(".")


_TEMPORARY_TAIL = re.compile(r"\.(\d+)\.\w+(?:\.\w+)?$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files in ``folder`` whose writing process no longer exists; return them.

    A file whose writer cannot be told from its name is left alone.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for tmp in folder.iterdir():
        if not (tmp.is_file() and is_temporary(tmp)):
            continue
        # ".<name>.<pid>.<random><suffix>": read the pid from the end, so digits in <name> never count
        match = _TEMPORARY_TAIL.search(tmp.name)
        if match and not _pid_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str))
