"""Data-set statistics for ``vecbudget datasets info``: norms, intrinsic dimensionality, query shift.

These are the quantities tied to ANN recall in the literature: local intrinsic dimensionality
(Aumüller & Ceccarello, "The role of local dimensionality measures in benchmarking nearest
neighbor search", Information Systems 2021) and out-of-distribution queries (Tepper et al.,
"LeanVec", TMLR 2024). :func:`dataset_stats` returns a nested dict of plain floats/ints;
:data:`DEFINITIONS` documents every entry and :func:`flatten_stats` gives dotted keys for
printing.

Geometry. All distances are Euclidean, measured in the space the search runs in: raw vectors
for ``l2``, L2-normalised vectors for ``cosine`` (where Euclidean distance is monotone in the
angle). Inner product defines no distance, so for ``ip`` the raw vectors' Euclidean geometry is
used. Norms are always those of the raw vectors.

Local intrinsic dimensionality (LID). Maximum-likelihood estimator of Levina & Bickel (NIPS
2004) in the form of Amsaleg et al. (KDD 2015)::

    LID(x) = -( (1/k) * sum_{i=1..k} log(r_i(x) / r_k(x)) )^-1

with r_1 <= ... <= r_k the distances from x to its k nearest base vectors, found exactly with
faiss (:func:`harness.groundtruth.exact_knn`) and recomputed in float64. The point itself and
exact duplicates of it (distance 0, where the logarithm is undefined) are excluded, so r_i are
the k smallest *positive* distances. Base LID is estimated on a random sample of base vectors
(each against the whole base); query LID for a sample of queries against the whole base.
A point whose k distances are all equal (the estimate is infinite) or that has fewer than k
positive distances among its ``2k+1`` nearest neighbours is skipped and counted.

Query-versus-document shift (all in the search space; "base" = the documents):

* ``mean_shift`` = ||mean(queries) - mean(base)|| / sqrt(trace Cov(base)): the distance between
  the two means in units of the base's root-mean-square spread. ~0 when queries are drawn like
  the base, where its expected size is about ``mean_shift_iid`` = sqrt(1/n_queries + 1/n_base)
  (sampling noise alone); >= ~1 is a large shift.
* ``centroid_cosine_base`` / ``centroid_cosine_queries``: mean cosine similarity of base vectors /
  queries to the base centroid. A gap between the two means the queries point elsewhere.
* ``nn1_ratio`` / ``nnk_ratio``: mean distance from a query to its 1st / k-th nearest base vector,
  divided by the same mean for sampled base vectors (leave-one-out, duplicates excluded as for
  LID). If queries and base are i.i.d. from one distribution both ratios are ~1; queries lying
  away from the data (out of distribution) give ratios well above 1.
* ``base_residual_90`` / ``query_residual_90``: fraction of the (uncentred) energy sum ||x||^2
  outside the base's principal subspace of dimension ``subspace_dim_90`` (the fewest principal
  directions of the base sample's second-moment matrix holding >= 90% of its energy). The base
  value is ~0.10 by construction; a query value far above it means the queries live partly
  outside the documents' subspace — the case LeanVec's OOD projection addresses.
* ``queries_in_base``: fraction of queries whose nearest base vector is at distance 0 (e.g. the
  queries are copies of base rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.errors import DataError
from harness.formats import check_same_dim, validate_vectors
from harness.groundtruth import exact_knn

METRICS = ("l2", "ip", "cosine")
_ROWS = 16384  # rows per chunk for full-base passes

DEFINITIONS: dict[str, str] = {
    "norms.*": "mean/std/min/max of the L2 norms of the raw vectors",
    "lid.base_mean/base_median": "MLE LID (k nearest positive distances) of sampled base vectors vs the base",
    "lid.queries_mean/queries_median": "MLE LID of sampled queries vs the base",
    "lid.*_skipped": "points skipped (too many duplicates, or all k distances equal)",
    "shift.mean_shift": "||mean(q) - mean(base)|| / sqrt(trace Cov(base))",
    "shift.mean_shift_iid": "sqrt(1/n_queries + 1/n_base): typical mean_shift from sampling noise alone",
    "shift.centroid_cosine_*": "mean cosine of vectors to the base centroid",
    "shift.nn1_ratio": "mean query 1-NN distance / mean base leave-one-out 1-NN distance",
    "shift.nnk_ratio": "same with the k-th neighbour",
    "shift.*_residual_90": "energy fraction outside the base's 90%-energy principal subspace",
    "shift.queries_in_base": "fraction of queries with an exact copy in the base",
}


class _Space:
    """Row access to vectors in the search space: float32, L2-normalised for cosine."""

    def __init__(self, x: np.ndarray, normalise: bool):
        self.x, self.normalise = x, normalise

    @property
    def shape(self) -> tuple[int, ...]:
        return self.x.shape

    def __getitem__(self, idx: Any) -> np.ndarray:
        rows = np.asarray(self.x[idx], dtype=np.float32)
        if self.normalise:
            norms = np.linalg.norm(rows, axis=-1, keepdims=True)
            rows = rows / np.where(norms > 0, norms, 1.0)
        return rows


def _summary(v: np.ndarray) -> dict[str, float]:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "median": float("nan")}
    return {"mean": float(v.mean()), "median": float(np.median(v))}


def _norms(x: np.ndarray) -> dict[str, float]:
    parts = [
        np.linalg.norm(np.asarray(x[s : s + _ROWS], dtype=np.float64), axis=1)
        for s in range(0, x.shape[0], _ROWS)
    ]
    v = np.concatenate(parts)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}


def _moments(space: _Space) -> tuple[np.ndarray, float]:
    """(mean vector, mean squared norm) over all rows, float64, one chunked pass."""
    n, d = space.shape
    total = np.zeros(d)
    sq = 0.0
    for s in range(0, n, _ROWS):
        c = space[s : s + _ROWS].astype(np.float64)
        total += c.sum(0)
        sq += float(np.einsum("ij,ij->", c, c))
    return total / n, sq / n


def _mean_cosine(space: _Space, centre: np.ndarray) -> float:
    cn = np.linalg.norm(centre)
    if cn == 0:
        return float("nan")
    acc, cnt = 0.0, 0
    for s in range(0, space.shape[0], _ROWS):
        c = space[s : s + _ROWS].astype(np.float64)
        norms = np.linalg.norm(c, axis=1)
        ok = norms > 0
        acc += float(((c[ok] @ centre) / (norms[ok] * cn)).sum())
        cnt += int(ok.sum())
    return acc / max(cnt, 1)


def _positive_knn(
    space: _Space, points: np.ndarray, self_ids: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per point: its k smallest positive Euclidean distances to the base (NaN rows where fewer
    than k exist among the ``2k+1`` nearest), and whether it has an exact copy in the base
    (other than itself: ``self_ids`` gives each point's own base row, or None for queries)."""
    n = space.shape[0]
    k_search = min(n, 2 * k + 1)
    _, ids = exact_knn(space, points, k_search, "l2")
    out = np.full((points.shape[0], k), np.nan)
    dup = np.zeros(points.shape[0], dtype=bool)
    step = max(1, (32 << 20) // max(1, k_search * points.shape[1] * 8))
    for s in range(0, points.shape[0], step):
        idc = ids[s : s + step]
        safe = np.where(idc >= 0, idc, 0)
        flat = safe.reshape(-1)
        order = np.argsort(flat, kind="stable")
        vecs = np.empty((flat.size, points.shape[1]), dtype=np.float64)
        vecs[order] = space[flat[order]]  # sorted gather: memory-map friendly
        vecs = vecs.reshape(idc.shape[0], k_search, -1)
        dist = np.linalg.norm(vecs - points[s : s + step, None, :].astype(np.float64), axis=2)
        invalid = idc < 0
        if self_ids is not None:
            invalid |= idc == self_ids[s : s + step, None]
        dup[s : s + step] = ((dist == 0) & ~invalid).any(axis=1)
        dist = np.where(invalid | (dist <= 0), np.inf, dist)
        dist.sort(axis=1)
        kept = dist[:, :k]
        full = np.isfinite(kept).all(axis=1)
        out[s : s + step][full] = kept[full]
    return out, dup


def lid_mle(dist: np.ndarray) -> np.ndarray:
    """MLE LID per row of ascending positive distances (n, k): ``-1 / mean(log(r_i / r_k))``.

    Rows with NaN, or with all distances equal, give NaN.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.log(dist / dist[:, -1:]).mean(axis=1)
        lid = -1.0 / m
    lid[~np.isfinite(lid)] = np.nan
    return lid


def _residual_fraction(space: _Space, basis: np.ndarray) -> float:
    """Fraction of sum ||x||^2 outside span(basis) (orthonormal columns), chunked."""
    tot = inside = 0.0
    for s in range(0, space.shape[0], _ROWS):
        c = space[s : s + _ROWS].astype(np.float64)
        tot += float(np.einsum("ij,ij->", c, c))
        proj = c @ basis
        inside += float(np.einsum("ij,ij->", proj, proj))
    return 1.0 - inside / tot if tot > 0 else float("nan")


def dataset_stats(
    base: np.ndarray,
    queries: np.ndarray | None,
    metric: str,
    k: int = 20,
    sample: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Norms, LID (MLE, k nearest positive distances) and query-vs-base shift; see the module doc.

    ``base`` may be memory-mapped (it is streamed in chunks); ``sample`` base vectors and up to
    ``sample`` queries are used for the k-NN based statistics. ``queries=None`` skips the query
    statistics. Returns a nested dict: ``{"n_base", "n_queries", "dim", "metric", "norms",
    "lid", "shift"}``.
    """
    if metric not in METRICS:
        raise DataError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    if k < 2:
        raise ValueError("k must be at least 2 for the LID estimator")
    validate_vectors(base, "base")
    if queries is not None:
        validate_vectors(queries, "queries")
        check_same_dim(base, queries)
    n, d = base.shape
    rng = np.random.default_rng(seed)
    space = _Space(base, metric == "cosine")

    stats: dict[str, Any] = {
        "n_base": int(n),
        "n_queries": int(queries.shape[0]) if queries is not None else 0,
        "dim": int(d),
        "metric": metric,
        "norms": {"base": _norms(base)},
    }

    idx = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    pts = space[idx]
    base_r, _ = _positive_knn(space, pts, idx, k)
    base_lid = lid_mle(base_r)
    lid: dict[str, Any] = {"k": k, "base_sampled": int(idx.size)}
    lid.update({f"base_{s}": v for s, v in _summary(base_lid).items()})
    lid["base_skipped"] = int(np.isnan(base_lid).sum())
    stats["lid"] = lid

    mean_b, sq_b = _moments(space)
    var_b = max(sq_b - float(mean_b @ mean_b), 0.0)
    # principal subspace of the sample's uncentred second moment
    pts64 = pts.astype(np.float64)
    evals, evecs = np.linalg.eigh(pts64.T @ pts64)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    energy = np.cumsum(np.clip(evals, 0, None))
    m90 = int(np.searchsorted(energy, 0.9 * energy[-1]) + 1) if energy[-1] > 0 else d
    basis = evecs[:, :m90]
    shift: dict[str, Any] = {
        "centroid_cosine_base": _mean_cosine(space, mean_b),
        "subspace_dim_90": m90,
        "base_residual_90": _residual_fraction(space, basis),
    }

    if queries is not None:
        stats["norms"]["queries"] = _norms(queries)
        qspace = _Space(queries, metric == "cosine")
        qidx = np.sort(rng.choice(queries.shape[0], size=min(sample, queries.shape[0]), replace=False))
        qpts = qspace[qidx]
        q_r, q_dup = _positive_knn(space, qpts, None, k)
        q_lid = lid_mle(q_r)
        lid["queries_sampled"] = int(qidx.size)
        lid.update({f"queries_{s}": v for s, v in _summary(q_lid).items()})
        lid["queries_skipped"] = int(np.isnan(q_lid).sum())

        mean_q, _ = _moments(qspace)
        shift["mean_shift"] = (
            float(np.linalg.norm(mean_q - mean_b) / np.sqrt(var_b)) if var_b > 0 else float("nan")
        )
        nq = queries.shape[0]
        shift["mean_shift_iid"] = float(np.sqrt(1.0 / nq + 1.0 / n))
        shift["centroid_cosine_queries"] = _mean_cosine(qspace, mean_b)
        b1, bk = np.nanmean(base_r[:, 0]), np.nanmean(base_r[:, -1])
        shift["nn1_ratio"] = float(np.nanmean(q_r[:, 0]) / b1) if b1 > 0 else float("nan")
        shift["nnk_ratio"] = float(np.nanmean(q_r[:, -1]) / bk) if bk > 0 else float("nan")
        shift["query_residual_90"] = _residual_fraction(qspace, basis)
        shift["queries_in_base"] = float(q_dup.mean())
    stats["shift"] = shift
    return stats


def flatten_stats(stats: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested stats → ``{"lid.base_mean": 12.3, ...}`` for tables and JSON lines."""
    out: dict[str, Any] = {}
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_stats(value, name + "."))
        else:
            out[name] = value
    return out


def pointwise_lid(base: np.ndarray, k: int = 20, metric: str = "l2", ids: np.ndarray | None = None) -> np.ndarray:
    """MLE LID (:func:`lid_mle`) of every base vector, or of the rows ``ids``, against the whole base.

    The same estimator as ``vecbudget datasets info`` (:func:`dataset_stats`): the k smallest
    positive Euclidean distances to the other base vectors, found exactly with faiss in chunks
    (O(n²·d) work: meant for the 10⁴–10⁵ vectors of this project's data sets), the point itself
    and its exact copies excluded. Geometry as in the module doc: L2-normalised vectors for
    ``cosine``, raw vectors for ``l2`` and ``ip`` (harness data of a cosine data set reach the
    methods already normalised as ``ip``, so both give the same LID there). Returns float64 of
    shape (len(ids),); NaN where the estimate does not exist (fewer than k positive distances
    among the ``2k+1`` nearest, or all k equal).
    """
    if metric not in METRICS:
        raise DataError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    if k < 2:
        raise ValueError("k must be at least 2 for the LID estimator")
    validate_vectors(base, "base")
    space = _Space(base, metric == "cosine")
    rows = np.arange(base.shape[0]) if ids is None else np.asarray(ids, dtype=np.int64)
    out = np.full(rows.size, np.nan)
    step = max(1, _ROWS // 4)
    for s in range(0, rows.size, step):
        idc = rows[s : s + step]
        dist, _ = _positive_knn(space, space[idc], idc, k)
        out[s : s + step] = lid_mle(dist)
    return out
