"""Readers and writers for the vector file formats that ANN and embedding benchmarks ship in.

Every reader checks what it reads and raises :class:`~harness.errors.DataError` with a message
that names the file and the problem (empty, truncated, wrong header, inconsistent dimensions,
NaN/inf rows with their count and first row index). Large files are memory-mapped, never read
whole.

Formats (chosen by suffix in :func:`read_vectors` / :func:`write_vectors`):

* texmex ``.fvecs`` (float32), ``.bvecs`` (uint8), ``.ivecs`` (int32): each row is an int32
  dimension ``d`` followed by ``d`` values (http://corpus-texmex.irisa.fr/). Read through a
  memory map with a structured dtype, so the returned array is a strided view (no copy).
* big-ann ``.fbin`` (float32), ``.u8bin`` (uint8), ``.i8bin`` (int8), ``.ibin`` (int32):
  header ``uint32 n, uint32 d`` then ``n*d`` values, row-major (big-ann-benchmarks). A row
  range maps only those rows. :func:`read_bigann_groundtruth` reads its ground-truth files
  (``n, k``, then ``n*k`` int32 ids, then ``n*k`` float32 distances).
* ann-benchmarks HDF5 ``.hdf5``/``.h5``: datasets ``train``, ``test``, ``neighbors``,
  ``distances`` and attribute ``distance``; see :func:`read_ann_hdf5`. Contiguous uncompressed
  datasets (the ann-benchmarks layout) are memory-mapped straight from the file.
* NumPy ``.npy`` (memory-mapped) and ``.npz`` (``key=`` picks an array).
* Parquet ``.parquet``/``.pq``: one list / fixed-size-list column of vectors, or one numeric
  column per dimension.

Writers are atomic: the data go to a temporary file in the target folder, which then replaces
the target with :func:`os.replace`, so an interrupted write never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError

TEXMEX_DTYPES: dict[str, np.dtype] = {
    ".fvecs": np.dtype("<f4"),
    ".bvecs": np.dtype("u1"),
    ".ivecs": np.dtype("<i4"),
}
BIGANN_DTYPES: dict[str, np.dtype] = {
    ".fbin": np.dtype("<f4"),
    ".u8bin": np.dtype("u1"),
    ".i8bin": np.dtype("i1"),
    ".ibin": np.dtype("<i4"),
}
HDF5_SUFFIXES = (".hdf5", ".h5")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUFFIXES = (
    *TEXMEX_DTYPES,
    *BIGANN_DTYPES,
    *HDF5_SUFFIXES,
    ".npy",
    ".npz",
    *PARQUET_SUFFIXES,
)

#: ann-benchmarks ``distance`` attribute → harness metric
HDF5_METRICS: dict[str, str] = {
    "euclidean": "l2",
    "l2": "l2",
    "angular": "cosine",
    "cosine": "cosine",
    "dot": "ip",
    "ip": "ip",
    "inner_product": "ip",
    "innerproduct": "ip",
}
#: harness metric → the ``distance`` attribute written by :func:`write_ann_hdf5`
METRIC_TO_HDF5 = {"l2": "euclidean", "cosine": "angular", "ip": "dot"}

_CHECK_CHUNK_BYTES = 64 << 20  # finiteness checks touch at most this much at a time


# --------------------------------------------------------------------------------------------
# validation


def validate_vectors(x: Any, name: str, dim: int | None = None, *, chunk_rows: int | None = None) -> np.ndarray:
    """Check that ``x`` is a non-empty, finite 2-D numeric array (of ``dim`` columns if given),
    small enough for float32 arithmetic.

    ``name`` (a file name or a label such as ``"queries"``) starts every error message.
    The finiteness and magnitude checks are vectorised and run in chunks of rows (``chunk_rows``,
    else about 64 MiB), so a memory-mapped array is streamed rather than loaded. Vectors whose
    squared norm (computed in float64) exceeds :data:`MAX_SQUARED_NORM` are refused: every
    method and the exact ground truth compute in float32, where their distances and inner
    products would overflow to inf and rank nonsense (a silent recall@10 of 0.1 on such data).
    Returns ``x`` unchanged.
    """
    # any array-like with shape, ndim, dtype and row slicing (ndarray, memmap, chunked readers)
    if not all(hasattr(x, a) for a in ("shape", "ndim", "dtype", "__getitem__")):
        raise DataError(f"{name}: expected an array of vectors, got {type(x).__name__}")
    if x.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array (rows × dimensions), got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise DataError(f"{name}: expected numeric vectors, got dtype {x.dtype}")
    n, d = x.shape
    if n == 0:
        raise DataError(f"{name}: empty — no vectors (shape {x.shape})")
    if d == 0:
        raise DataError(f"{name}: empty — vectors have dimension 0 (shape {x.shape})")
    if dim is not None and d != dim:
        raise DataError(f"{name}: dimension mismatch — vectors have {d} dimensions, expected {dim}")
    if x.dtype.kind == "f" or x.dtype.itemsize >= 8:  # int8..int32 rows cannot overflow float32
        count, first, top, top_row = _scan_rows(x, chunk_rows)
        if count:
            rows = "row" if count == 1 else "rows"
            verb = "contains" if count == 1 else "contain"
            raise DataError(
                f"{name}: {count} {rows} of {n} {verb} NaN or infinite values "
                f"(first at row {first})"
            )
        if top > MAX_SQUARED_NORM:
            scale = 10.0 ** np.ceil(np.log10(np.sqrt(top)))  # brings the largest norm to ≤ 1
            raise DataError(
                f"{name}: values too large for float32 arithmetic — row {top_row} has squared norm "
                f"{top:.3g}, above the {MAX_SQUARED_NORM:.3g} limit (float32 max / {OVERFLOW_MARGIN:,.0f}); "
                f"distances and inner products would overflow. Divide all vectors (base and queries) "
                f"by a common factor such as {scale:.0e}: rankings under l2, ip and cosine are unchanged"
            )
    return x


#: Squared norms above float32 max / OVERFLOW_MARGIN are refused by :func:`validate_vectors`.
#: A squared L2 distance is at most 4 × the larger squared norm (and faiss forms it as
#: ‖x‖² + ‖q‖² − 2x·q); the rest of the margin leaves room for float32 sums over many rows
#: (covariances, k-means objectives). It refuses norms above ~1.8e16, far beyond real embeddings.
OVERFLOW_MARGIN = float(2**20)
MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / OVERFLOW_MARGIN


def _scan_rows(x: np.ndarray, chunk_rows: int | None = None) -> tuple[int, int, float, int]:
    """One chunked pass: (rows holding a NaN/inf, first such row or -1, largest squared norm of
    the finite rows computed in float64, its row)."""
    step = chunk_rows or max(1, _CHECK_CHUNK_BYTES // max(1, x.shape[1] * 8))
    count, first, top, top_row = 0, -1, 0.0, -1
    for s in range(0, x.shape[0], step):
        block = np.asarray(x[s : s + step], dtype=np.float64)
        bad = ~np.isfinite(block).all(axis=1)
        c = int(np.count_nonzero(bad))
        if c:
            if first < 0:
                first = s + int(np.argmax(bad))
            count += c
            block = np.where(bad[:, None], 0.0, block)
        sq = np.einsum("ij,ij->i", block, block)
        i = int(np.argmax(sq))
        if sq[i] > top:
            top, top_row = float(sq[i]), s + i
    return count, first, top, top_row



def check_same_dim(
    base: np.ndarray, queries: np.ndarray, names: tuple[str, str] = ("base", "queries")
) -> None:
    """Raise DataError unless ``base`` and ``queries`` have the same number of columns."""
    db, dq = base.shape[-1], queries.shape[-1]
    if db != dq:
        raise DataError(
            f"dimension mismatch: {names[0]} has {db} dimensions but {names[1]} has {dq}"
        )


# --------------------------------------------------------------------------------------------
# dispatch


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _require_file(path: Path) -> int:
    """Size of ``path`` in bytes; DataError if it is missing, not a file or empty."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    return size


def read_vectors(
    path: str | os.PathLike[str],
    *,
    start: int = 0,
    stop: int | None = None,
    key: str | None = None,
    column: str | None = None,
    mmap: bool = True,
    dim: int | None = None,
    check: bool = True,
) -> np.ndarray:
    """Read a 2-D array of vectors from any supported format, chosen by the file's suffix.

    ``start``/``stop`` select a row range (mapped without reading other rows where the format
    allows); ``key`` names the HDF5 dataset (default ``"train"``) or the ``.npz`` array;
    ``column`` names the Parquet column; ``mmap=False`` loads the data into memory.
    With ``check`` (default) the result is validated by :func:`validate_vectors` (non-empty,
    finite, ``dim`` columns if given). The dtype is the file's own (uint8 for ``.bvecs``...).
    """
    p = Path(path)
    suf = _suffix(p)
    if suf not in SUFFIXES:
        raise DataError(
            f"{p}: unsupported vector file suffix {p.suffix!r}; supported: {', '.join(SUFFIXES)}"
        )
    rows = slice(start, stop)
    if suf in TEXMEX_DTYPES:
        x = read_texmex(p, start=start, stop=stop)
    elif suf in BIGANN_DTYPES:
        x = read_bigann(p, start=start, stop=stop)
    elif suf in HDF5_SUFFIXES:
        x = _read_hdf5_dataset(p, key or "train", mmap=mmap)[rows]
    elif suf == ".npy":
        x = read_npy(p, mmap=mmap)[rows]
    elif suf == ".npz":
        x = read_npz(p, key=key)[rows]
    else:
        x = read_parquet(p, column=column)[rows]
    if not mmap and isinstance(x, np.ndarray) and not x.flags.owndata:
        x = np.array(x)
    if check:
        validate_vectors(x, str(p), dim)
    elif dim is not None and x.shape[1] != dim:
        raise DataError(f"{p}: dimension mismatch — vectors have {x.shape[1]} dimensions, expected {dim}")
    return x


def write_vectors(path: str | os.PathLike[str], array: np.ndarray, **opts: Any) -> Path:
    """Write a 2-D array in the format given by ``path``'s suffix, atomically.

    Values are converted to the format's dtype (float32 for ``.fvecs``/``.fbin``, uint8 for
    ``.bvecs``/``.u8bin``...); a conversion that would change integer values raises DataError.
    Options: ``key`` (HDF5 dataset / ``.npz`` array name), ``column`` and ``layout``
    (``"list"`` or ``"columns"``) for Parquet, ``compressed`` for ``.npz``.
    Returns the path written.
    """
    p = Path(path)
    suf = _suffix(p)
    x = np.asarray(array)
    if x.ndim != 2:
        raise DataError(f"{p}: can only write a 2-D array of vectors, got shape {x.shape}")
    if suf in TEXMEX_DTYPES:
        write_texmex(p, x)
    elif suf in BIGANN_DTYPES:
        write_bigann(p, x)
    elif suf in HDF5_SUFFIXES:
        key = opts.get("key", "train")
        with _atomic(p) as tmp:
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset(key, data=x)
                if "distance" in opts:
                    f.attrs["distance"] = opts["distance"]
    elif suf == ".npy":
        with _atomic(p) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(x), allow_pickle=False)
    elif suf == ".npz":
        save = np.savez_compressed if opts.get("compressed") else np.savez
        with _atomic(p) as tmp, open(tmp, "wb") as fh:
            save(fh, **{opts.get("key", "arr_0"): x})
    elif suf in PARQUET_SUFFIXES:
        write_parquet(p, x, column=opts.get("column", "embedding"), layout=opts.get("layout", "list"))
    else:
        raise DataError(
            f"{p}: unsupported vector file suffix {p.suffix!r}; supported: {', '.join(SUFFIXES)}"
        )
    return p


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _cast(x: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    """``x`` as ``dtype``; integer targets must hold the values exactly."""
    if x.dtype == dtype:
        return x
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if x.dtype.kind == "f":
            if not np.isfinite(x).all() or not np.array_equal(np.round(x), x):
                raise DataError(f"{path}: cannot write non-integer values as {dtype}")
        if x.size and (x.min() < info.min or x.max() > info.max):
            raise DataError(
                f"{path}: values in [{x.min()}, {x.max()}] do not fit {dtype} [{info.min}, {info.max}]"
            )
    return x.astype(dtype)


# --------------------------------------------------------------------------------------------
# texmex .fvecs / .bvecs / .ivecs


def read_texmex(path: str | os.PathLike[str], *, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Memory-map a texmex ``.fvecs``/``.bvecs``/``.ivecs`` file; returns a strided (n, d) view.

    Checks that the file is non-empty, that its size is a whole number of rows and that every
    row's int32 dimension header equals the first one.
    """
    p = Path(path)
    vdt = TEXMEX_DTYPES.get(_suffix(p))
    if vdt is None:
        raise DataError(f"{p}: not a texmex file (suffix must be one of {', '.join(TEXMEX_DTYPES)})")
    size = _require_file(p)
    if size < 4:
        raise DataError(f"{p}: truncated — {size} bytes, shorter than one int32 dimension header")
    d = int(np.fromfile(p, dtype="<i4", count=1)[0])
    if d <= 0 or d > 1 << 24:
        raise DataError(
            f"{p}: bad texmex header — first row declares dimension {d} (not a {p.suffix} file?)"
        )
    row_bytes = 4 + d * vdt.itemsize
    n, rest = divmod(size, row_bytes)
    if rest:
        raise DataError(
            f"{p}: truncated or corrupt — {size} bytes is not a whole number of {row_bytes}-byte "
            f"rows (d={d}): {n} full rows and {rest} bytes left over"
        )
    rec = np.dtype([("d", "<i4"), ("v", vdt, (d,))])
    mm = np.memmap(p, dtype=rec, mode="r", shape=(n,))
    step = max(1, _CHECK_CHUNK_BYTES // row_bytes)
    for s in range(0, n, step):
        dims = mm["d"][s : s + step]
        wrong = dims != d
        if wrong.any():
            i = int(np.argmax(wrong))
            raise DataError(
                f"{p}: inconsistent dimensions — row {s + i} declares dimension {int(dims[i])}, "
                f"row 0 declares {d} (corrupt file or mixed dimensions)"
            )
    return mm["v"][start:stop]


def write_texmex(path: str | os.PathLike[str], x: np.ndarray) -> Path:
    """Write ``x`` (n, d) as texmex ``.fvecs``/``.bvecs``/``.ivecs`` (atomically)."""
    p = Path(path)
    vdt = TEXMEX_DTYPES.get(_suffix(p))
    if vdt is None:
        raise DataError(f"{p}: not a texmex file (suffix must be one of {', '.join(TEXMEX_DTYPES)})")
    x = _cast(np.asarray(x), vdt, p)
    n, d = x.shape
    rec = np.empty(n, dtype=[("d", "<i4"), ("v", vdt, (d,))])
    rec["d"] = d
    rec["v"] = x
    with _atomic(p) as tmp, open(tmp, "wb") as fh:
        rec.tofile(fh)
    return p


# --------------------------------------------------------------------------------------------
# big-ann .fbin / .u8bin / .i8bin / .ibin


def _bigann_header(p: Path, size: int) -> tuple[int, int]:
    if size < 8:
        raise DataError(f"{p}: truncated — {size} bytes, shorter than the 8-byte (n, d) header")
    n, d = (int(v) for v in np.fromfile(p, dtype="<u4", count=2))
    return n, d


def read_bigann(path: str | os.PathLike[str], *, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Memory-map rows ``start:stop`` of a big-ann ``.fbin/.u8bin/.i8bin/.ibin`` file.

    Checks that the header's ``n × d`` matches the file size exactly.
    """
    p = Path(path)
    vdt = BIGANN_DTYPES.get(_suffix(p))
    if vdt is None:
        raise DataError(f"{p}: not a big-ann file (suffix must be one of {', '.join(BIGANN_DTYPES)})")
    size = _require_file(p)
    n, d = _bigann_header(p, size)
    if n == 0 or d == 0:
        raise DataError(f"{p}: empty — header declares n={n} vectors of dimension d={d}")
    expect = 8 + n * d * vdt.itemsize
    if size < expect:
        have = (size - 8) // (d * vdt.itemsize)
        raise DataError(
            f"{p}: truncated — header declares n={n}, d={d} ({expect} bytes with the header) "
            f"but the file has {size} bytes ({have} full rows)"
        )
    if size > expect:
        raise DataError(
            f"{p}: wrong header or trailing data — header declares n={n}, d={d} ({expect} bytes "
            f"with the header) but the file has {size} bytes"
        )
    lo, hi, _ = slice(start, stop).indices(n)
    hi = max(hi, lo)
    if hi == lo:
        return np.empty((0, d), dtype=vdt)
    return np.memmap(p, dtype=vdt, mode="r", offset=8 + lo * d * vdt.itemsize, shape=(hi - lo, d))


def write_bigann(path: str | os.PathLike[str], x: np.ndarray) -> Path:
    """Write ``x`` (n, d) as a big-ann ``.fbin/.u8bin/.i8bin/.ibin`` file (atomically)."""
    p = Path(path)
    vdt = BIGANN_DTYPES.get(_suffix(p))
    if vdt is None:
        raise DataError(f"{p}: not a big-ann file (suffix must be one of {', '.join(BIGANN_DTYPES)})")
    x = np.ascontiguousarray(_cast(np.asarray(x), vdt, p))
    with _atomic(p) as tmp, open(tmp, "wb") as fh:
        np.array(x.shape, dtype="<u4").tofile(fh)
        x.tofile(fh)
    return p


def read_bigann_groundtruth(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a big-ann ground-truth file: ``uint32 n, k``, ``n*k`` int32 ids, ``n*k`` float32 distances.

    Returns memory-mapped (ids, distances), each (n, k).
    """
    p = Path(path)
    size = _require_file(p)
    n, k = _bigann_header(p, size)
    if n == 0 or k == 0:
        raise DataError(f"{p}: empty — ground-truth header declares n={n}, k={k}")
    expect = 8 + n * k * 8
    if size != expect:
        raise DataError(
            f"{p}: {'truncated' if size < expect else 'wrong header or trailing data'} — header "
            f"declares n={n}, k={k} ({expect} bytes) but the file has {size} bytes"
        )
    ids = np.memmap(p, dtype="<i4", mode="r", offset=8, shape=(n, k))
    dist = np.memmap(p, dtype="<f4", mode="r", offset=8 + n * k * 4, shape=(n, k))
    return ids, dist


def write_bigann_groundtruth(
    path: str | os.PathLike[str], ids: np.ndarray, distances: np.ndarray
) -> Path:
    """Write a big-ann ground-truth file (atomically); see :func:`read_bigann_groundtruth`."""
    p = Path(path)
    ids = np.asarray(ids)
    distances = np.asarray(distances)
    if ids.ndim != 2 or ids.shape != distances.shape:
        raise DataError(f"{p}: ids {ids.shape} and distances {distances.shape} must be equal 2-D shapes")
    with _atomic(p) as tmp, open(tmp, "wb") as fh:
        np.array(ids.shape, dtype="<u4").tofile(fh)
        np.ascontiguousarray(_cast(ids, np.dtype("<i4"), p)).tofile(fh)
        np.ascontiguousarray(distances, dtype="<f4").tofile(fh)
    return p


# --------------------------------------------------------------------------------------------
# ann-benchmarks HDF5


@dataclass
class AnnH5Data:
    """An ann-benchmarks HDF5 data set.

    ``train`` are the base vectors, ``test`` the queries; ``neighbors``/``distances`` the
    shipped ground truth (None if absent). ``distance`` is the file's attribute verbatim and
    ``metric`` its harness name (``l2``, ``cosine`` or ``ip``).
    """

    path: Path
    train: np.ndarray
    test: np.ndarray
    neighbors: np.ndarray | None
    distances: np.ndarray | None
    distance: str
    metric: str

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])


@contextmanager
def _open_h5(p: Path) -> Iterator[Any]:
    _require_file(p)
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a dev/format dependency
        raise DataError(f"{p}: reading HDF5 needs h5py (pip install h5py)") from e
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise DataError(f"{p}: corrupt or truncated HDF5 file ({e})") from e
    try:
        yield f
    finally:
        f.close()


def _h5_array(p: Path, ds: Any, mmap: bool) -> np.ndarray:
    """A dataset's contents: memory-mapped if stored contiguous and uncompressed, else read."""
    try:
        offset = ds.id.get_offset()
        if (
            mmap
            and ds.chunks is None
            and ds.compression is None
            and offset is not None
            and ds.dtype.kind in "fiu"
            and ds.size > 0
        ):
            mm = np.memmap(p, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
            return mm
        return ds[()]
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: corrupt or truncated HDF5 dataset {ds.name!r} ({e})") from e


def _read_hdf5_dataset(p: Path, key: str, *, mmap: bool = True) -> np.ndarray:
    with _open_h5(p) as f:
        if key not in f:
            raise DataError(f"{p}: no dataset {key!r}; datasets in the file: {', '.join(sorted(f.keys()))}")
        return _h5_array(p, f[key], mmap)


def read_ann_hdf5(
    path: str | os.PathLike[str], *, mmap: bool = True, check: bool = True
) -> AnnH5Data:
    """Read an ann-benchmarks HDF5 file (train/test/neighbors/distances + ``distance`` attribute).

    Checks: ``train`` and ``test`` present, 2-D, non-empty, same dimension (and finite when
    ``check``); ``neighbors``/``distances`` one row per query, equal shapes, ids inside
    ``[0, len(train))`` (``-1`` allowed as padding); a known ``distance`` attribute.
    """
    p = Path(path)
    with _open_h5(p) as f:
        missing = [k for k in ("train", "test") if k not in f]
        if missing:
            raise DataError(
                f"{p}: not an ann-benchmarks file — missing dataset(s) {', '.join(missing)}; "
                f"present: {', '.join(sorted(f.keys())) or 'none'}"
            )
        raw = f.attrs.get("distance")
        if raw is None:
            raise DataError(f"{p}: missing the 'distance' attribute (euclidean, angular, dot...)")
        distance = raw.decode() if isinstance(raw, bytes) else str(raw)
        metric = HDF5_METRICS.get(distance.lower())
        if metric is None:
            raise DataError(
                f"{p}: unsupported distance {distance!r}; supported: {', '.join(sorted(HDF5_METRICS))}"
            )
        arrays = {
            k: (_h5_array(p, f[k], mmap) if k in f else None)
            for k in ("train", "test", "neighbors", "distances")
        }
    train, test = arrays["train"], arrays["test"]
    neighbors, distances = arrays["neighbors"], arrays["distances"]
    assert train is not None and test is not None
    for key, arr in (("train", train), ("test", test)):
        if check:
            validate_vectors(arr, f"{p} [{key}]")
        elif arr.ndim != 2 or arr.shape[0] == 0:
            raise DataError(f"{p} [{key}]: expected a non-empty 2-D array, got shape {arr.shape}")
    check_same_dim(train, test, (f"{p} [train]", f"{p} [test]"))
    if neighbors is not None:
        if neighbors.ndim != 2 or neighbors.shape[0] != test.shape[0]:
            raise DataError(
                f"{p} [neighbors]: shape {neighbors.shape} does not give one row per test vector "
                f"({test.shape[0]})"
            )
        if neighbors.size and (neighbors.min() < -1 or neighbors.max() >= train.shape[0]):
            raise DataError(
                f"{p} [neighbors]: ids in [{neighbors.min()}, {neighbors.max()}] fall outside the "
                f"{train.shape[0]} train vectors"
            )
    if distances is not None and neighbors is not None and distances.shape != neighbors.shape:
        raise DataError(
            f"{p} [distances]: shape {distances.shape} differs from neighbors {neighbors.shape}"
        )
    return AnnH5Data(p, train, test, neighbors, distances, distance, metric)


def write_ann_hdf5(
    path: str | os.PathLike[str],
    train: np.ndarray,
    test: np.ndarray,
    neighbors: np.ndarray | None = None,
    distances: np.ndarray | None = None,
    *,
    metric: str = "l2",
) -> Path:
    """Write an ann-benchmarks-style HDF5 file (atomically). ``metric`` may be a harness metric
    (``l2``/``cosine``/``ip``) or an ann-benchmarks distance name (``euclidean``/``angular``...)."""
    import h5py

    p = Path(path)
    distance = METRIC_TO_HDF5.get(metric, metric)
    if distance.lower() not in HDF5_METRICS:
        raise DataError(f"{p}: unknown metric {metric!r}")
    with _atomic(p) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["distance"] = distance
            f.attrs["type"] = "dense"
            f.attrs["dimension"] = int(np.asarray(train).shape[1])
            f.create_dataset("train", data=np.asarray(train))
            f.create_dataset("test", data=np.asarray(test))
            if neighbors is not None:
                f.create_dataset("neighbors", data=np.asarray(neighbors))
            if distances is not None:
                f.create_dataset("distances", data=np.asarray(distances))
    return p


# --------------------------------------------------------------------------------------------
# .npy / .npz


def read_npy(path: str | os.PathLike[str], *, mmap: bool = True) -> np.ndarray:
    """Load a ``.npy`` array (memory-mapped by default); DataError for truncated/invalid files."""
    p = Path(path)
    size = _require_file(p)
    with open(p, "rb") as fh:
        head = fh.read(len(_NPY_MAGIC))
    if head != _NPY_MAGIC:
        what = "this is a zip (.npz) archive" if head.startswith(b"PK") else f"this one starts with {head!r}"
        raise DataError(
            f"{p}: not a .npy array file — a .npy file starts with the bytes {_NPY_MAGIC!r}, but "
            f"{what}; save the vectors with numpy.save (or use a suffix of the file's real format)"
        )
    try:
        header = _npy_dtype(p)
        if header is not None and header.hasobject:
            raise DataError(f"{p}: holds Python objects (dtype {header}), not numbers; save a numeric array")
        x = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{p}: corrupt or truncated .npy file ({size} bytes: {e})") from e
    if not isinstance(x, np.ndarray):
        raise DataError(f"{p}: not a .npy array")
    return x


_NPY_MAGIC = b"\x93NUMPY"


def _npy_dtype(p: Path) -> np.dtype | None:
    """The dtype in a .npy header (None if the header cannot be read: np.load then says why)."""
    try:
        with open(p, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in reader:
                return None
            return reader[version](fh)[2]
    except (ValueError, OSError, EOFError):
        return None


def read_npz(path: str | os.PathLike[str], *, key: str | None = None) -> np.ndarray:
    """Load one array of a ``.npz`` archive: ``key``, or the only one it holds."""
    p = Path(path)
    _require_file(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.keys())
            if key is None:
                if len(keys) != 1:
                    raise DataError(
                        f"{p}: holds {len(keys)} arrays ({', '.join(keys) or 'none'}); pass key= to pick one"
                    )
                key = keys[0]
            if key not in keys:
                raise DataError(f"{p}: no array {key!r}; arrays in the file: {', '.join(keys)}")
            return z[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{p}: corrupt or truncated .npz file ({e})") from e


# --------------------------------------------------------------------------------------------
# Parquet


def read_parquet(path: str | os.PathLike[str], *, column: str | None = None) -> np.ndarray:
    """Read vectors from Parquet: a list/fixed-size-list ``column`` (or the only list column),
    or, when the table has no list column, every numeric column as one dimension."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    _require_file(p)
    try:
        schema = pq.read_schema(p)
        list_cols = [
            f.name
            for f in schema
            if pa.types.is_list(f.type) or pa.types.is_large_list(f.type) or pa.types.is_fixed_size_list(f.type)
        ]
        if column is None and len(list_cols) > 1:
            raise DataError(
                f"{p}: several vector columns ({', '.join(list_cols)}); pass column= to pick one"
            )
        if column is not None and column not in schema.names:
            raise DataError(f"{p}: no column {column!r}; columns: {', '.join(schema.names)}")
        col = column if column is not None else (list_cols[0] if list_cols else None)
        if col is not None:
            table = pq.read_table(p, columns=[col])
        else:
            table = pq.read_table(p)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise DataError(f"{p}: corrupt or unreadable Parquet file ({e})") from e

    if col is not None:
        return _list_column(p, col, table.column(col))
    bad = [f.name for f in table.schema if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    if bad:
        raise DataError(
            f"{p}: no list column of vectors, and non-numeric column(s) {', '.join(bad)} "
            f"rule out one-column-per-dimension"
        )
    if table.num_columns == 0:
        raise DataError(f"{p}: empty — no columns")
    nulls = [name for name in table.column_names if table.column(name).null_count]
    if nulls:
        raise DataError(f"{p}: null values in column(s) {', '.join(nulls)}")
    out = np.empty((table.num_rows, table.num_columns), dtype=_common_dtype(table))
    for j, name in enumerate(table.column_names):
        out[:, j] = table.column(name).to_numpy()
    return out


def _common_dtype(table: Any) -> np.dtype:
    return np.result_type(*[f.type.to_pandas_dtype() for f in table.schema])


def _list_column(p: Path, name: str, chunked: Any) -> np.ndarray:
    import pyarrow as pa

    arr = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
    n = len(arr)
    if n == 0:
        raise DataError(f"{p}: empty — column {name!r} has no rows")
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise DataError(f"{p}: column {name!r} has type {arr.type}, not a list of numbers")
    if arr.null_count:
        first = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
        raise DataError(f"{p}: column {name!r} has {arr.null_count} null rows (first at row {first})")
    if pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
        values = arr.flatten()
    else:
        offsets = arr.offsets.to_numpy()
        lengths = np.diff(offsets)
        d = int(lengths[0])
        wrong = lengths != d
        if wrong.any():
            i = int(np.argmax(wrong))
            raise DataError(
                f"{p}: inconsistent dimensions in column {name!r} — row {i} has {int(lengths[i])} "
                f"values, row 0 has {d}"
            )
        values = arr.flatten()
    vt = values.type
    if not (pa.types.is_integer(vt) or pa.types.is_floating(vt)):
        raise DataError(f"{p}: column {name!r} holds {vt}, not numbers")
    if values.null_count:
        raise DataError(f"{p}: column {name!r} has {values.null_count} null values inside vectors")
    return values.to_numpy(zero_copy_only=False).reshape(n, d)


def write_parquet(
    path: str | os.PathLike[str],
    x: np.ndarray,
    *,
    column: str = "embedding",
    layout: str = "list",
) -> Path:
    """Write ``x`` (n, d) to Parquet (atomically): ``layout="list"`` stores a fixed-size-list
    ``column``; ``layout="columns"`` stores one column per dimension named ``d0, d1, ...``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    x = np.ascontiguousarray(x)
    n, d = x.shape
    if layout == "list":
        values = pa.array(x.reshape(-1))
        table = pa.table({column: pa.FixedSizeListArray.from_arrays(values, d)})
    elif layout == "columns":
        table = pa.table({f"d{j}": x[:, j] for j in range(d)})
    else:
        raise ValueError(f"layout must be 'list' or 'columns', not {layout!r}")
    with _atomic(p) as tmp:
        pq.write_table(table, tmp)
    return p
