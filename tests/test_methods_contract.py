"""Generic contract tests, parametrised over every registered dense method and metric.

For each (method, metric) a few build configurations valid at d = 32 are built on the ``tiny``
fixture (n = 3000): the ones with the smallest, middle and largest asymptotic bytes per vector
(``bytes_per_vector(d, n→∞)``, i.e. without shared parts, which dominate at n = 3000). Each is
searched with its *last* search configuration — grids list values in increasing accuracy — and
checked for:

(a) result shapes, id range, no duplicate ids per row, scores ordered best first;
(b) measured ``memory().ram / n`` within 10% of ``bytes_per_vector(d, n, **params)``;
(c) more bytes never markedly worse: recall@10 of a config with strictly more asymptotic bytes
    is at least that of a smaller one minus 0.05;
(d) ``save()`` writes a non-empty file and returns its size;
(e) ``exact`` has recall@10 = 1.

Methods added later are covered automatically. A method may declare ``requires = ("torch",)``
(modules imported only when present) or ``min_dim`` (skipped when 32 < min_dim).
"""

from __future__ import annotations

import os
from typing import Any

import faiss
import numpy as np
import pytest

from harness.method import Method
from harness.registry import all_methods
from tests.conftest import recall_at

DIM = 32
K = 10
ASYMPTOTIC_N = 10**9
BYTES_TOLERANCE = 0.10
RECALL_SLACK = 0.05


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name, cls in all_methods().items():
        if getattr(cls, "input_kind", "dense") != "dense":
            continue
        cases += [(name, metric) for metric in cls.metrics]
    return cases


CASES = _cases()


def sample_configs(cls: type[Method], dim: int = DIM) -> list[dict[str, Any]]:
    """Smallest, middle and largest valid build configs by asymptotic bytes (deterministic)."""
    configs = cls.build_configs(dim)
    if not configs:
        return []
    order = sorted(range(len(configs)),
                   key=lambda i: (cls.bytes_per_vector(dim, ASYMPTOTIC_N, **configs[i]), i))
    picks = sorted({order[0], order[len(order) // 2], order[-1]}, key=order.index)
    return [configs[i] for i in picks]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One faiss / BLAS thread: the machine running the suite is shared, and oversubscribed
    OpenMP pools slow tiny builds down by orders of magnitude."""
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            yield
    except ImportError:
        yield
    faiss.omp_set_num_threads(old)


class Built:
    """One built configuration and its search results."""

    def __init__(self, index: Method, params: dict[str, Any], search: dict[str, Any],
                 scores: np.ndarray, ids: np.ndarray, recall: float):
        self.index, self.params, self.search = index, params, search
        self.scores, self.ids, self.recall = scores, ids, recall


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{metric}" for m, metric in CASES])
def built(request, tiny) -> tuple[type[Method], str, list[Built]]:
    name, metric = request.param
    cls = all_methods()[name]
    for module in getattr(cls, "requires", ()):
        pytest.importorskip(module)
    if getattr(cls, "min_dim", 0) > DIM:
        pytest.skip(f"{name} needs d >= {cls.min_dim}")
    configs = sample_configs(cls)
    if not configs:
        pytest.skip(f"{name} has no build configuration valid at d={DIM}")
    base, queries = tiny.data(metric)
    rng = np.random.default_rng(1)
    train_q = base[rng.choice(base.shape[0], 100, replace=False)] + 0.3 * rng.normal(size=(100, DIM))
    train_q = train_q.astype(np.float32)
    if metric == "ip":
        train_q /= np.linalg.norm(train_q, axis=1, keepdims=True)
    gt = tiny.gt(metric, K)
    out = []
    for params in configs:
        index = cls(DIM, metric, **params)
        index.expected_n = base.shape[0]
        index.set_num_threads(1)
        index.fit(base, train_q if cls.uses_train_queries else None)
        index.add(base)
        search = cls.search_configs(**params)[-1]
        scores, ids = index.search(queries, K, **search)
        out.append(Built(index, params, search, np.asarray(scores), np.asarray(ids),
                         recall_at(np.asarray(ids), gt, K)))
    return cls, metric, out


def test_search_results_well_formed(built, tiny):
    cls, metric, runs = built
    n, nq = tiny.base.shape[0], tiny.queries.shape[0]
    for r in runs:
        label = f"{cls.name} {r.params} {r.search}"
        assert r.ids.shape == (nq, K) and r.scores.shape == (nq, K), label
        assert np.all((r.ids >= -1) & (r.ids < n)), label
        for row in r.ids:
            real = row[row >= 0]
            assert len(np.unique(real)) == len(real), f"{label}: duplicate ids {row}"
        valid = r.ids >= 0
        s = np.where(valid, r.scores, np.nan)
        steps = np.diff(s, axis=1)
        steps = steps[~np.isnan(steps)]
        tol = 1e-4 * (1.0 + np.nanmax(np.abs(s)))
        if metric == "l2":
            assert np.all(steps >= -tol), f"{label}: l2 scores not ascending"
        else:
            assert np.all(steps <= tol), f"{label}: ip scores not descending"


def test_measured_bytes_match_formula(built, tiny):
    cls, _, runs = built
    n = tiny.base.shape[0]
    for r in runs:
        measured = r.index.memory().ram / n
        analytic = cls.bytes_per_vector(DIM, n, **r.params)
        assert abs(measured - analytic) <= BYTES_TOLERANCE * analytic, (
            f"{cls.name} {r.params}: measured {measured:.2f} B/vector vs formula {analytic:.2f}")


def test_more_bytes_not_markedly_worse(built):
    cls, _, runs = built
    sized = [(cls.bytes_per_vector(DIM, ASYMPTOTIC_N, **r.params), r) for r in runs]
    for i, (b_small, small) in enumerate(sized):
        for b_large, large in sized[i + 1:]:
            if b_large > b_small:
                assert large.recall >= small.recall - RECALL_SLACK, (
                    f"{cls.name}: {large.params} ({b_large:.1f} B) recall {large.recall:.3f} < "
                    f"{small.params} ({b_small:.1f} B) recall {small.recall:.3f}")


def test_save_writes_file(built, tmp_path):
    cls, metric, runs = built
    for j, r in enumerate(runs):
        path = os.path.join(tmp_path, f"{cls.name}-{metric}-{j}.bin")
        size = r.index.save(path)
        assert os.path.isfile(path), f"{cls.name} {r.params}: no file written"
        assert size > 0 and size == os.path.getsize(path), f"{cls.name} {r.params}: size {size}"


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_exact_recall_is_one(tiny, metric):
    cls = all_methods()["exact"]
    base, queries = tiny.data(metric)
    index = cls(DIM, metric)
    index.fit(base)
    index.add(base)
    _, ids = index.search(queries, K)
    assert recall_at(ids, tiny.gt(metric, K), K) == 1.0


def test_sampling_is_deterministic_and_ordered():
    cls = all_methods()["pq"]
    picks = sample_configs(cls)
    assert picks == sample_configs(cls)
    sizes = [cls.bytes_per_vector(DIM, ASYMPTOTIC_N, **c) for c in picks]
    assert sizes == sorted(sizes) and len(picks) == 3
