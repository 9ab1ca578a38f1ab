"""Shared fixtures: tiny clustered data with exact neighbours, and the paths of ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from harness.groundtruth import exact_knn

# Tiny test data gain nothing from BLAS threads, and on a loaded 2-core machine a BLAS pool
# oversubscribed with faiss's OpenMP threads slows the suite ~10x. Timing is never asserted.
threadpool_limits(1, user_api="blas")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def clustered(n: int, d: int, nq: int, seed: int = 0, clusters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-mixture base and queries (queries drawn near base points), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32) * 3
    base = centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, d)).astype(np.float32)
    queries = base[rng.choice(n, nq, replace=False)] + 0.3 * rng.normal(size=(nq, d)).astype(np.float32)
    return base.astype(np.float32), queries.astype(np.float32)


class Tiny:
    """A tiny data set: base (n, d), queries (nq, d), exact top-100 ids per metric."""

    def __init__(self, n: int = 3000, d: int = 32, nq: int = 50, seed: int = 0):
        self.base, self.queries = clustered(n, d, nq, seed)
        self.d = d
        norms = np.linalg.norm(self.base, axis=1, keepdims=True)
        self.base_unit = self.base / norms
        self.queries_unit = self.queries / np.linalg.norm(self.queries, axis=1, keepdims=True)
        self._gt: dict[str, np.ndarray] = {}

    def data(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return (self.base, self.queries) if metric == "l2" else (self.base_unit, self.queries_unit)

    def gt(self, metric: str, k: int = 100) -> np.ndarray:
        if metric not in self._gt:
            base, queries = self.data(metric)
            self._gt[metric] = exact_knn(base, queries, 100, metric)[1]
        return self._gt[metric][:, :k]


def write_vector_folder(folder: Path, n: int = 2000, d: int = 16, nq: int = 20, seed: int = 0) -> Path:
    """A data folder the CLI takes as it is (``-d FOLDER``): Gaussian ``base.npy`` and ``queries.npy``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "base.npy", rng.normal(size=(n, d)).astype(np.float32))
    np.save(folder / "queries.npy", rng.normal(size=(nq, d)).astype(np.float32))
    return folder


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    return Tiny()


def recall_at(ids: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Plain recall@k: |top-k returned ∩ top-k exact| / k, averaged over queries."""
    hits = [len(set(a[:k].tolist()) & set(b[:k].tolist())) for a, b in zip(ids, gt, strict=True)]
    return float(np.mean(hits) / k)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
