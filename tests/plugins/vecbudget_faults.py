"""Test-only method plugins that misbehave the way real methods can: crash, abort, run out of
memory, hang, or just take a while. Never registered in production: the tests name this file in
``VECBUDGET_PLUGINS`` (see ``harness/registry.py``), which the worker processes inherit.

Bytes per vector: 4·d (they store float32 vectors, like ``exact``).
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

import numpy as np

from harness.method import MemoryAccount, Method
from harness.registry import register

#: the address space ``fault-oom`` reserves (never touched, so it costs no RAM when unlimited)
OOM_BYTES = 8 << 30
#: how long ``test-slow`` sleeps in ``fit``, seconds
SLOW_S = float(os.environ.get("VECBUDGET_TEST_SLOW_S", "0.5"))


class _Flat(Method):
    """float32 vectors searched by brute force (numpy), after ``_misbehave`` in ``fit``."""

    family = "test"
    paper = "none (test fault injection)"
    bytes_formula = "4·d"
    search_grid = {"repeat": [1]}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        return 4.0 * dim

    def _misbehave(self) -> None:
        pass

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        self._misbehave()

    def add(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ntotal = self.vectors.shape[0]

    def search(self, queries: np.ndarray, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, dtype=np.float32)
        if self.metric == "l2":
            scores = (q * q).sum(1)[:, None] - 2 * q @ self.vectors.T + (self.vectors ** 2).sum(1)[None, :]
            ids = np.argsort(scores, axis=1, kind="stable")[:, :k]
        else:
            scores = q @ self.vectors.T
            ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, ids, axis=1), ids

    def memory(self) -> MemoryAccount:
        return MemoryAccount(codes=self.vectors.nbytes)


@register
class Segfault(_Flat):
    name = "fault-segfault"

    def _misbehave(self) -> None:
        ctypes.string_at(0)  # reads address 0: SIGSEGV


@register
class Abort(_Flat):
    name = "fault-abort"

    def _misbehave(self) -> None:
        os.abort()  # SIGABRT, as a failed C++ assertion would


@register
class OutOfMemory(_Flat):
    name = "fault-oom"

    def _misbehave(self) -> None:
        self.blocks = [np.empty(256 << 20, dtype=np.uint8) for _ in range(OOM_BYTES >> 28)]


@register
class Hang(_Flat):
    name = "fault-hang"

    def _misbehave(self) -> None:
        while True:
            time.sleep(60)


@register
class Slow(_Flat):
    """Exact search that takes ``SLOW_S`` seconds to fit: a worker that is busy when killed."""

    name = "test-slow"
    build_grid = {"level": [1, 2, 4, 8]}
    search_grid = {"repeat": [1, 2]}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, level: int = 1, **build_params: Any) -> float:
        return 16.0 * level  # one build per budget 16, 32, 64, 128 (measured: 4·d, flagged)

    def _misbehave(self) -> None:
        time.sleep(SLOW_S)
