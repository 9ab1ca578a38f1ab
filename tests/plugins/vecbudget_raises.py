"""Test-only method plugin that fails deterministically in ``fit`` (a bug in a method), for the
retry tests. Never registered in production: tests name this file in ``VECBUDGET_PLUGINS``."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.method import MemoryAccount, Method
from harness.registry import register


@register
class Raises(Method):
    name = "test-raises"
    family = "test"
    paper = "none (test fault injection)"
    bytes_formula = "4·d"

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        return 4.0 * dim

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        raise ValueError("deterministic bug in fit()")

    def add(self, vectors: np.ndarray) -> None:  # pragma: no cover - never reached
        raise AssertionError

    def search(self, queries: np.ndarray, k: int, **search_params: Any):  # pragma: no cover
        raise AssertionError

    def memory(self) -> MemoryAccount:  # pragma: no cover
        return MemoryAccount()
