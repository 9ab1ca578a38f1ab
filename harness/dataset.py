"""Prepared data sets: validated vectors, exact ground truth and relevance judgments on disk.

A prepared data set is a folder ``<cache>/<name>-<fingerprint>/`` holding ``meta.json`` and
memory-mappable ``.npy`` files. It is the unit handed to workers (by path), so a sweep's worker
processes — or, later, remote executors — read the same bytes without pickling arrays.

Metric handling: a data set's metric is ``l2``, ``ip`` or ``cosine``. For cosine the vectors are
L2-normalised once here and methods see ``ip``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError
from harness.groundtruth import exact_knn, same_up_to_ties

GT_K = 128  # neighbours kept per query: recall@100 plus room to extend distance ties
FORMAT_VERSION = 1
DATASET_METRICS = ("l2", "ip", "cosine")


def method_metric(metric: str) -> str:
    return "ip" if metric == "cosine" else metric


def check_vectors(x: np.ndarray, what: str, dim: int | None = None) -> None:
    """Raise DataError for a non-2-D, empty, wrong-dimension or non-finite array."""
    if x.ndim != 2:
        raise DataError(f"{what}: expected a 2-D array of vectors, got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{what}: empty (0 vectors)")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{what}: dimension {x.shape[1]} does not match the base dimension {dim}")
    bad_rows = []
    for start in range(0, x.shape[0], 65536):
        block = np.asarray(x[start : start + 65536], dtype=np.float32)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            bad_rows.extend((np.flatnonzero(bad) + start).tolist())
    if bad_rows:
        raise DataError(
            f"{what}: {len(bad_rows)} vector(s) contain NaN or infinite values "
            f"(first at row {bad_rows[0]})"
        )


def fingerprint(metric: str, *arrays: np.ndarray) -> str:
    h = hashlib.sha256(f"v{FORMAT_VERSION}:{metric}".encode())
    for a in arrays:
        h.update(str(a.shape).encode())
        for start in range(0, a.shape[0], 65536):
            h.update(np.ascontiguousarray(a[start : start + 65536], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise DataError(f"cosine metric: {(norms == 0).sum()} zero vector(s) cannot be normalised")
    return x / norms


@dataclass
class RawDataset:
    """Vectors (and optional judgments) before preparation."""

    name: str
    base: np.ndarray
    queries: np.ndarray
    metric: str
    train_queries: np.ndarray | None = None
    doc_ids: list[str] | None = None
    query_ids: list[str] | None = None
    qrels: dict[str, dict[str, int]] | None = None
    shipped_neighbors: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)  # source, encoder, licence, citation


class PreparedDataset:
    """A prepared data set folder, arrays memory-mapped on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise DataError(
                f"prepared data set {self.path} is unreadable ({exc}); delete the folder to rebuild it"
            ) from exc
        self.name: str = self.meta["name"]
        self.metric: str = self.meta["metric"]
        self.method_metric: str = method_metric(self.metric)
        self.fingerprint: str = self.meta["fingerprint"]

    def _load(self, stem: str, mmap: bool = True) -> np.ndarray:
        f = self.path / f"{stem}.npy"
        try:
            arr = np.load(f, mmap_mode="r" if mmap else None)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"cache file {f} is corrupt ({exc}); delete {self.path} to rebuild it") from exc
        expected = self.meta["shapes"].get(stem)
        if expected is not None and list(arr.shape) != expected:
            raise DataError(
                f"cache file {f} is corrupt: shape {list(arr.shape)}, expected {expected}; "
                f"delete {self.path} to rebuild it"
            )
        return arr

    @cached_property
    def base(self) -> np.ndarray:
        return self._load("base")

    @cached_property
    def queries(self) -> np.ndarray:
        return np.ascontiguousarray(self._load("queries", mmap=False))

    @cached_property
    def train_queries(self) -> np.ndarray | None:
        return self._load("train_queries", mmap=False) if self.meta["has_train_queries"] else None

    @cached_property
    def gt_ids(self) -> np.ndarray:
        return self._load("gt_ids", mmap=False)

    @cached_property
    def gt_dist(self) -> np.ndarray:
        return self._load("gt_dist", mmap=False)

    @cached_property
    def qrels(self) -> dict[str, dict[str, int]] | None:
        return self._json("qrels") if self.meta["has_qrels"] else None

    @cached_property
    def doc_ids(self) -> list[str] | None:
        return self._json("doc_ids") if self.meta["has_qrels"] else None

    @cached_property
    def query_ids(self) -> list[str] | None:
        return self._json("query_ids") if self.meta["has_qrels"] else None

    def _json(self, stem: str) -> Any:
        f = self.path / f"{stem}.json"
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"cache file {f} is corrupt ({exc}); delete {self.path} to rebuild it") from exc

    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def nq(self) -> int:
        return int(self.meta["nq"])

    @property
    def has_qrels(self) -> bool:
        return bool(self.meta["has_qrels"])


def prepare(raw: RawDataset, cache_root: Path, *, progress: bool = True) -> PreparedDataset:
    """Validate, normalise (cosine), fingerprint, compute exact ground truth, and store."""
    if raw.metric not in DATASET_METRICS:
        raise DataError(f"{raw.name}: unknown metric {raw.metric!r}; use one of {DATASET_METRICS}")
    check_vectors(raw.base, f"{raw.name} base vectors")
    dim = raw.base.shape[1]
    check_vectors(raw.queries, f"{raw.name} queries", dim)
    if raw.train_queries is not None:
        check_vectors(raw.train_queries, f"{raw.name} training queries", dim)
    base, queries, train = raw.base, raw.queries, raw.train_queries
    if raw.metric == "cosine":
        base, queries = _normalise(base), _normalise(queries)
        train = _normalise(train) if train is not None else None
    fp = fingerprint(raw.metric, base, queries)
    target = cache_root / f"{raw.name}-{fp}"
    if (target / "meta.json").exists():
        return PreparedDataset(target)

    mm = method_metric(raw.metric)
    gt_dist, gt_ids = exact_knn(base, queries, GT_K, mm, progress=progress)
    meta: dict[str, Any] = {
        "name": raw.name,
        "metric": raw.metric,
        "fingerprint": fp,
        "format_version": FORMAT_VERSION,
        "n": int(base.shape[0]),
        "dim": int(dim),
        "nq": int(queries.shape[0]),
        "gt_k": int(gt_ids.shape[1]),
        "has_qrels": raw.qrels is not None,
        "has_train_queries": train is not None,
        "info": raw.info,
    }
    if raw.shipped_neighbors is not None:
        meta["shipped_gt"] = verify_shipped(raw.shipped_neighbors, gt_ids, gt_dist)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{raw.name}-", dir=cache_root))
    try:
        arrays = {"base": base, "queries": queries, "gt_ids": gt_ids, "gt_dist": gt_dist}
        if train is not None:
            arrays["train_queries"] = train
        meta["shapes"] = {}
        for stem, arr in arrays.items():
            arr = np.asarray(arr, dtype=np.int64 if stem == "gt_ids" else np.float32)
            np.save(tmp / f"{stem}.npy", arr)
            meta["shapes"][stem] = list(arr.shape)
        if raw.qrels is not None:
            _check_qrels(raw)
            for stem, obj in (("qrels", raw.qrels), ("doc_ids", raw.doc_ids), ("query_ids", raw.query_ids)):
                (tmp / f"{stem}.json").write_text(json.dumps(obj))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        try:
            tmp.rename(target)
        except OSError:  # prepared concurrently by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PreparedDataset(target)


def _check_qrels(raw: RawDataset) -> None:
    if raw.doc_ids is None or raw.query_ids is None:
        raise DataError(f"{raw.name}: qrels need doc_ids and query_ids")
    if len(raw.doc_ids) != raw.base.shape[0]:
        raise DataError(f"{raw.name}: {len(raw.doc_ids)} doc ids for {raw.base.shape[0]} vectors")
    if len(raw.query_ids) != raw.queries.shape[0]:
        raise DataError(f"{raw.name}: {len(raw.query_ids)} query ids for {raw.queries.shape[0]} queries")
    docs = set(raw.doc_ids)
    unknown = [(q, d) for q, rel in raw.qrels.items() for d in rel if d not in docs]
    if unknown:
        raise DataError(
            f"{raw.name}: qrels name {len(unknown)} unknown document id(s), e.g. {unknown[0][1]!r} "
            f"(query {unknown[0][0]!r})"
        )
    if not set(raw.qrels) & set(raw.query_ids):
        raise DataError(f"{raw.name}: no query in the qrels is among the queries")


def verify_shipped(shipped: np.ndarray, gt_ids: np.ndarray, gt_dist: np.ndarray) -> dict[str, Any]:
    """Compare shipped neighbours with the computed ones, allowing reordering within exact ties."""
    k = min(shipped.shape[1], gt_ids.shape[1])
    if shipped.shape[0] != gt_ids.shape[0]:
        raise DataError(f"shipped ground truth has {shipped.shape[0]} rows for {gt_ids.shape[0]} queries")
    agree = same_up_to_ties(gt_ids[:, :k], shipped[:, :k].astype(np.int64), gt_dist[:, :k])
    return {
        "k": int(k),
        "rows": int(shipped.shape[0]),
        "rows_equal_up_to_ties": int(agree.sum()),
        "positions_identical": float((gt_ids[:, :k] == shipped[:, :k]).mean()),
    }
