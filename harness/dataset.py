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
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError
from harness.formats import validate_vectors
from harness.groundtruth import exact_knn, same_up_to_ties

GT_K = 128  # neighbours kept per query: recall@100 plus room to extend distance ties
FORMAT_VERSION = 2  # 2: the identity covers judgments, ids and training queries
DATASET_METRICS = ("l2", "ip", "cosine")
CHUNK_ROWS = 65536  # rows per pass over a (possibly memory-mapped) array


def method_metric(metric: str) -> str:
    return "ip" if metric == "cosine" else metric


def check_vectors(x: np.ndarray, what: str, dim: int | None = None) -> None:
    """Raise DataError for a non-2-D, empty, wrong-dimension or non-finite array.

    The dimension check is phrased for a base/query pair; the rest is
    :func:`harness.formats.validate_vectors` (chunked, so memory-mapped arrays stream).
    """
    if x.ndim == 2 and dim is not None and x.shape[1] != dim:
        raise DataError(f"{what}: dimension {x.shape[1]} does not match the base dimension {dim}")
    validate_vectors(x, what, chunk_rows=CHUNK_ROWS)


def _float_rows(x: np.ndarray, start: int, stop: int, normalise: bool) -> np.ndarray:
    """Rows ``start:stop`` as contiguous float32, L2-normalised if asked (row-wise, so chunked
    and whole-array normalisation give identical bytes)."""
    block = np.ascontiguousarray(x[start:stop], dtype=np.float32)
    if normalise:
        block = block / np.linalg.norm(block, axis=1, keepdims=True)
    return block


def _zero_rows(x: np.ndarray, what: str) -> None:
    zero = 0
    first = -1
    for start in range(0, x.shape[0], CHUNK_ROWS):
        block = np.asarray(x[start : start + CHUNK_ROWS], dtype=np.float32)
        z = ~(block != 0).any(axis=1)
        if z.any():
            if first < 0:
                first = start + int(np.argmax(z))
            zero += int(z.sum())
    if zero:
        raise DataError(
            f"{what}: cosine metric: {zero} zero vector(s) cannot be normalised (first at row {first})"
        )


def fingerprint(metric: str, *arrays: np.ndarray, normalise: bool = False, extra: Any = None) -> str:
    """Content hash of the float32 (optionally L2-normalised) arrays, read in chunks, and of
    ``extra`` (any JSON-able value: judgments, ids)."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}:{metric}".encode())
    for a in arrays:
        h.update(str(tuple(a.shape)).encode())
        for start in range(0, a.shape[0], CHUNK_ROWS):
            h.update(_float_rows(a, start, start + CHUNK_ROWS, normalise).tobytes())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def identity(raw: RawDataset) -> str:
    """The data set's identity: everything that changes a result.

    The metric, the base and query vectors (which carry the texts, the encoder, its prompts and
    the subset), the training queries, the relevance judgments and the document and query ids
    they name. Not the name: a copy of the same data under another name is the same data set, and
    its runs are shown under whichever name the user gives. An encoder setting beyond the
    standard embedding (``raw.encoder_identity``: model, layer, pooling — :mod:`harness.layers`)
    is named in it as well; standard embeddings keep the identity they always had. So is what a
    track adds (``raw.track_identity``, e.g. the filter spec: a filtered data set's runs never mix
    with its plain vectors' or with another filter spec's).
    """
    arrays = [raw.base, raw.queries] + ([raw.train_queries] if raw.train_queries is not None else [])
    judgments = None
    if raw.qrels is not None:
        judgments = {"qrels": raw.qrels, "doc_ids": raw.doc_ids, "query_ids": raw.query_ids}
    extra: dict[str, Any] = {"train_queries": raw.train_queries is not None, "judgments": judgments}
    if raw.encoder_identity:
        extra["encoder"] = raw.encoder_identity
    if raw.track_identity:
        extra["track"] = raw.track_identity
    return fingerprint(raw.metric, *arrays, normalise=raw.metric == "cosine", extra=extra)


def _normalise(x: np.ndarray) -> np.ndarray:
    _zero_rows(x, "vectors")
    return _float_rows(x, 0, x.shape[0], True)


def _save_rows(file: Path, x: np.ndarray, normalise: bool) -> list[int]:
    """Write ``x`` as a float32 ``.npy`` chunk by chunk (a memory-mapped source is never loaded
    whole); returns its shape."""
    out = np.lib.format.open_memmap(file, mode="w+", dtype=np.float32, shape=tuple(x.shape))
    for start in range(0, x.shape[0], CHUNK_ROWS):
        out[start : start + CHUNK_ROWS] = _float_rows(x, start, start + CHUNK_ROWS, normalise)
    out.flush()
    del out
    return [int(v) for v in x.shape]


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
    #: encoder settings the vectors depend on beyond the standard embedding (model, layer, pooling);
    #: part of the identity when set (None for standard embeddings and vector data sets)
    encoder_identity: dict[str, Any] | None = None
    #: what an evaluation track adds to the data beyond its vectors and judgments (e.g. the filter
    #: spec of a filtered data set: attributes, families, seeds); part of the identity when set
    track_identity: dict[str, Any] | None = None


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

    MULTIVECTOR_DIR = "multivector"

    def multivector(self, role: str = "document") -> Any:
        """Token-level embeddings (a :class:`harness.multivector.RaggedVectors`, memory-mapped) of
        the documents (row i ↔ base row i) or queries, or None if not prepared
        (``vecbudget datasets prepare NAME --multivector``)."""
        from harness.multivector import RaggedVectors

        index = self.path / self.MULTIVECTOR_DIR / "index.json"
        if not index.exists():
            return None
        try:
            folder = json.loads(index.read_text()).get(role)
        except (OSError, ValueError) as exc:
            raise DataError(f"cache file {index} is corrupt ({exc}); delete it to rebuild") from exc
        return RaggedVectors.load(self.path / self.MULTIVECTOR_DIR / folder) if folder else None

    def stats(self, k: int = 20, sample: int = 2000, seed: int = 0) -> dict[str, Any]:
        """:func:`harness.intrinsic.dataset_stats` of base vs queries, cached in the folder."""
        from harness.intrinsic import dataset_stats
        from harness.io import atomic_write_json

        f = self.path / f"stats-k{k}-s{sample}-r{seed}.json"
        if f.exists():
            try:
                return json.loads(f.read_text())
            except (OSError, ValueError):
                pass
        out = dataset_stats(self.base, self.queries, self.metric, k=k, sample=sample, seed=seed)
        atomic_write_json(f, out)
        return out


def prepare(raw: RawDataset, cache_root: Path, *, progress: bool = True) -> PreparedDataset:
    """Validate, normalise (cosine), fingerprint, compute exact ground truth, and store.

    Memory-mapped inputs of any numeric dtype (uint8 ``.bvecs``, float32 ``.fbin``...) are
    streamed: validation, fingerprint, the float32 copy in the cache and the ground truth all
    work in row chunks, so a base larger than RAM is never loaded whole. The folder is built
    under a temporary name and renamed into place, so a failure leaves nothing behind.
    """
    if raw.metric not in DATASET_METRICS:
        raise DataError(f"{raw.name}: unknown metric {raw.metric!r}; use one of {DATASET_METRICS}")
    check_vectors(raw.base, f"{raw.name} base vectors")
    dim = raw.base.shape[1]
    check_vectors(raw.queries, f"{raw.name} queries", dim)
    if raw.train_queries is not None:
        check_vectors(raw.train_queries, f"{raw.name} training queries", dim)
    cosine = raw.metric == "cosine"
    if cosine:
        _zero_rows(raw.base, f"{raw.name} base vectors")
        _zero_rows(raw.queries, f"{raw.name} queries")
        if raw.train_queries is not None:
            _zero_rows(raw.train_queries, f"{raw.name} training queries")
    if raw.qrels is not None:
        _check_qrels(raw)
    if raw.shipped_neighbors is not None:
        _check_shipped(raw)
    fp = identity(raw)
    target = cache_root / f"{raw.name}-{fp}"
    if (target / "meta.json").exists():
        ds = PreparedDataset(target)
        if warning := (ds.meta.get("shipped_gt") or {}).get("warning"):
            from harness.datawarnings import warn

            warn(warning)  # said again on every run of these data, not only the first
        return ds

    mm = method_metric(raw.metric)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{raw.name}-", dir=cache_root))
    try:
        shapes = {"base": _save_rows(tmp / "base.npy", raw.base, cosine),
                  "queries": _save_rows(tmp / "queries.npy", raw.queries, cosine)}
        if raw.train_queries is not None:
            shapes["train_queries"] = _save_rows(tmp / "train_queries.npy", raw.train_queries, cosine)
        base = np.load(tmp / "base.npy", mmap_mode="r")
        queries = np.load(tmp / "queries.npy")
        t_gt = time.perf_counter()
        gt_dist, gt_ids = exact_knn(base, queries, GT_K, mm, progress=progress)
        phases = {**raw.info.get("phases", {}), "groundtruth_s": time.perf_counter() - t_gt}  # issue 13
        np.save(tmp / "gt_ids.npy", gt_ids.astype(np.int64))
        np.save(tmp / "gt_dist.npy", gt_dist.astype(np.float32))
        shapes["gt_ids"] = list(gt_ids.shape)
        shapes["gt_dist"] = list(gt_dist.shape)
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
            "has_train_queries": raw.train_queries is not None,
            "source_dtype": str(raw.base.dtype),
            "info": {k: v for k, v in raw.info.items() if k != "phases"},
            "shapes": shapes,
            "phases": phases,
        }
        if raw.shipped_neighbors is not None:
            meta["shipped_gt"] = verify_shipped(raw.shipped_neighbors, gt_ids, gt_dist, name=raw.name)
        del base
        if raw.qrels is not None:
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


def _check_shipped(raw: RawDataset) -> None:
    s = raw.shipped_neighbors
    assert s is not None
    nq, n = raw.queries.shape[0], raw.base.shape[0]
    if s.ndim != 2 or s.shape[0] != nq or s.shape[1] == 0:
        raise DataError(
            f"{raw.name}: shipped neighbours have shape {tuple(s.shape)}, expected one row per query ({nq}, k)"
        )
    if s.dtype.kind not in "iu":
        raise DataError(f"{raw.name}: shipped neighbours must be integer ids, got dtype {s.dtype}")
    lo, hi = int(np.min(s)), int(np.max(s))
    if lo < -1 or hi >= n:
        raise DataError(
            f"{raw.name}: shipped neighbours name ids in [{lo}, {hi}], outside the {n} base vectors"
        )


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


SHIPPED_SAMPLE = 1000  # queries compared with the shipped ground truth


def verify_shipped(
    shipped: np.ndarray, gt_ids: np.ndarray, gt_dist: np.ndarray, *, sample: int = SHIPPED_SAMPLE, seed: int = 0,
    min_agreement: float = 0.99, name: str = "",
) -> dict[str, Any]:
    """Compare shipped neighbours with the computed ones, allowing reordering within exact ties.

    With more than ``sample`` queries a seeded random subset of ``sample`` rows is compared.
    When fewer than ``min_agreement`` of the checked rows agree (shuffled rows, another
    metric, another base), the result carries a ``warning`` and a
    :class:`~harness.datawarnings.DataWarning` is raised with the agreement figure: the harness
    scores against its own ground truth, but shipped neighbours that disagree say the files do
    not describe the same data. ``name`` (the data set or file) starts the warning.
    """
    k = min(shipped.shape[1], gt_ids.shape[1])
    if shipped.shape[0] != gt_ids.shape[0]:
        raise DataError(f"shipped ground truth has {shipped.shape[0]} rows for {gt_ids.shape[0]} queries")
    rows = np.arange(gt_ids.shape[0])
    if rows.size > sample:
        rows = np.sort(np.random.default_rng(seed).choice(rows.size, sample, replace=False))
    ship = np.asarray(shipped[rows][:, :k], dtype=np.int64)
    ids, dist = gt_ids[rows, :k], gt_dist[rows, :k]
    agree = same_up_to_ties(ids, ship, dist)
    out: dict[str, Any] = {
        "k": int(k),
        "rows": int(shipped.shape[0]),
        "rows_checked": int(rows.size),
        "rows_equal_up_to_ties": int(agree.sum()),
        "positions_identical": float((ids == ship).mean()),
    }
    if agree.mean() < min_agreement:
        from harness.datawarnings import warn

        out["warning"] = (
            f"{name + ': ' if name else ''}shipped neighbours agree with the recomputed exact ground truth on only "
            f"{int(agree.sum())} of {rows.size} checked rows ({agree.mean():.0%}; "
            f"{out['positions_identical']:.0%} of positions identical, k={k}), so it may not "
            f"describe these base vectors, queries and metric (shuffled rows, another metric or "
            f"another base?); every score uses the recomputed ground truth"
        )
        warn(out["warning"], stacklevel=2)
    return out
