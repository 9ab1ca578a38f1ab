"""Evaluation tracks beyond one dense vector per item.

The dense track (one float vector per document, every query unfiltered) is
:func:`harness.worker.run_task`. A method whose ``input_kind`` is not ``"dense"`` is evaluated by
the track module named here, which provides

* ``available(ds: PreparedDataset) -> bool``: whether a prepared data set carries what the track
  needs (token embeddings, query filters, ...); the sweep plans the method only where it does;
* ``run_task(task: Task, ds: PreparedDataset, cls: type[Method]) -> list[dict]``: build once,
  evaluate every search configuration, return schema rows (see :mod:`harness.schema`).

Configuration is data: a new track is one entry in :data:`TRACKS` and one module.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

#: input kind -> module implementing the track ("dense" is the worker's own path)
TRACKS: dict[str, str] = {
    "multivector": "harness.tracks.multivector",
    "filtered": "harness.tracks.filtered",
}


def track_module(kind: str) -> ModuleType:
    if kind not in TRACKS:
        raise ValueError(f"no evaluation track for input kind {kind!r} (known: dense, {', '.join(TRACKS)})")
    return importlib.import_module(TRACKS[kind])


def supports(ds: Any, kind: str) -> bool:
    """Whether prepared data set ``ds`` can run methods of input kind ``kind``."""
    if kind == "dense":
        return True
    try:
        return bool(track_module(kind).available(ds))
    except ImportError:
        return False
