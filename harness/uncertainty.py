"""Uncertainty of quality figures over the query set.

Every quality metric in a result row is a mean over queries, and the rows keep the per-query
values (``per_query_recall_at_10``, ``per_query_ndcg_at_10``, ``per_query_qrels_recall_at_100``).
Two questions are answered from them, both by resampling queries (the queries are the sample; the
base vectors and the judgments are fixed):

* :func:`bootstrap_ci` — a percentile bootstrap confidence interval of the mean (Efron &
  Tibshirani 1993): resample the queries with replacement ``resamples`` times, take the
  ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled means.
* :func:`paired_test` — whether two configurations evaluated on the *same* queries differ: the
  per-query differences ``d_i = a_i - b_i`` are tested by a paired sign-flip permutation test
  (under H0 each ``d_i`` is as likely ``-d_i``; two-sided p-value with the +1 correction, so
  ``p > 0``), and a paired percentile bootstrap interval of the mean difference is given beside it.
  This is the test IR evaluation uses for system comparisons on one topic set (Smucker, Allan,
  Carterette, CIKM 2007: randomization, bootstrap and t tests agree on such data).

Both are vectorised (one ``(resamples, nq)`` index or sign matrix, no Python loop over resamples)
and seeded, so a report built twice from the same runs prints the same intervals. Queries whose
value is NaN (e.g. without judgments) are dropped; a pair is dropped when either side is NaN.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 2000
ALPHA = 0.05
SEED = 0
#: per-query columns kept in result rows -> the summary metric they average to
PER_QUERY_COLUMNS = {
    "recall_at_10": "per_query_recall_at_10",
    "ndcg_at_10": "per_query_ndcg_at_10",
    "qrels_recall_at_100": "per_query_qrels_recall_at_100",
}
#: resample matrices are built in chunks of at most this many elements (memory bound)
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class PairedResult:
    diff: float  # mean of a - b
    low: float  # bootstrap interval of the mean difference
    high: float
    p_value: float  # two-sided, sign-flip permutation
    n: int
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def as_array(values: Any) -> np.ndarray:
    """Per-query values from a result row cell (list, numpy array, None/NaN) as float64."""
    if values is None:
        return np.empty(0)
    if isinstance(values, float) and np.isnan(values):
        return np.empty(0)
    return np.asarray(values, dtype=np.float64).ravel()


def _resampled_means(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = x.size
    step = max(1, _CHUNK_ELEMENTS // max(n, 1))
    out = np.empty(resamples)
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def bootstrap_ci(values: Any, *, resamples: int = RESAMPLES, alpha: float = ALPHA,
                 seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of the mean of per-query ``values`` (NaNs dropped)."""
    x = as_array(values)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return Interval(mean, mean, mean, int(x.size))
    means = _resampled_means(x, resamples, np.random.default_rng(seed))
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # the percentile interval of a skewed statistic can miss the point estimate by rounding only
    return Interval(mean, float(min(low, mean)), float(max(high, mean)), int(x.size))


def paired_test(a: Any, b: Any, *, resamples: int = RESAMPLES, alpha: float = ALPHA,
                seed: int = SEED) -> PairedResult:
    """Paired two-sided test of mean(a) == mean(b) over the same queries (index i = query i)."""
    x, y = as_array(a), as_array(b)
    if x.size != y.size:
        raise ValueError(f"paired test needs the same queries: {x.size} vs {y.size} values")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = x[keep] - y[keep]
    n = int(d.size)
    if n == 0:
        return PairedResult(float("nan"), float("nan"), float("nan"), 1.0, 0, alpha)
    observed = float(d.mean())
    if np.all(d == 0):
        return PairedResult(0.0, 0.0, 0.0, 1.0, n, alpha)
    p_value = _sign_flip_p(d, observed, resamples, seed)
    rng = np.random.default_rng(seed + 1)
    means = _resampled_means(d, resamples, rng)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return PairedResult(observed, float(low), float(high), float(p_value), n, alpha)


#: sign matrices up to this many elements are cached and reused across tests of the same size
_CACHED_SIGN_ELEMENTS = 20_000_000


@functools.lru_cache(maxsize=4)
def _signs(n: int, resamples: int, seed: int) -> np.ndarray:
    """The ``(resamples, n)`` ±1 matrix of the sign-flip test (seeded, so reused across pairs)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, size=(resamples, n), dtype=np.int8) * 2 - 1).astype(np.float32)


def _sign_flip_p(d: np.ndarray, observed: float, resamples: int, seed: int) -> float:
    """Two-sided sign-flip permutation p-value of mean(d) (+1 correction, so p > 0)."""
    n = d.size
    tol = 1e-12 * max(1.0, abs(observed))
    if resamples * n <= _CACHED_SIGN_ELEMENTS:
        perm = _signs(n, resamples, seed) @ d.astype(np.float32) / n
        extreme = int(np.count_nonzero(np.abs(perm) >= abs(observed) - max(tol, 1e-6 * abs(observed))))
    else:
        rng = np.random.default_rng(seed)
        step = max(1, _CHUNK_ELEMENTS // n)
        extreme = 0
        for start in range(0, resamples, step):
            stop = min(resamples, start + step)
            signs = rng.integers(0, 2, size=(stop - start, n), dtype=np.int8) * 2 - 1
            perm = (signs * d).mean(axis=1)
            extreme += int(np.count_nonzero(np.abs(perm) >= abs(observed) - tol))
    return (extreme + 1) / (resamples + 1)


def paired_p_value(a: Any, b: Any, *, resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """The p-value of :func:`paired_test` alone (no bootstrap interval): fast enough to rank a
    leaderboard. 1.0 when the two agree on every query or share no query."""
    x, y = as_array(a), as_array(b)
    if x.size != y.size:
        raise ValueError(f"paired test needs the same queries: {x.size} vs {y.size} values")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = x[keep] - y[keep]
    if d.size == 0 or np.all(d == 0):
        return 1.0
    return _sign_flip_p(d, float(d.mean()), resamples, seed)


def row_intervals(row: Any, **kwargs: Any) -> dict[str, Interval]:
    """Bootstrap intervals of every quality metric whose per-query values the row carries."""
    out = {}
    for metric, column in PER_QUERY_COLUMNS.items():
        values = row.get(column) if hasattr(row, "get") else None
        x = as_array(values)
        if x.size:
            out[metric] = bootstrap_ci(x, **kwargs)
    return out


def per_query(row: Any, metric: str) -> np.ndarray:
    """The per-query values of ``metric`` in a result row (empty when the row lacks them)."""
    column = PER_QUERY_COLUMNS.get(metric)
    if column is None or not hasattr(row, "get"):
        return np.empty(0)
    return as_array(row.get(column))
