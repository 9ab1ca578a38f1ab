"""The disk tier of two-tier (RAM + disk) indexes, and what it costs, measured.

:class:`VectorFile` keeps vectors (float32 or float16) in a file and reads them through a read-only
memory map, one gather of candidate rows at a time (sorted ids: reads go forward through the
file). The map is advised ``MADV_RANDOM`` so the kernel reads only the pages a gather touches
(no read-ahead), as a disk tier read per candidate should. Pages of a file map are page cache,
not anonymous memory: they do not count in ``RssAnon``, the worker's RAM measurement.

:func:`measure` is the worker's hook for methods whose ``memory().disk`` is non-zero (they expose
their :class:`VectorFile` as ``index.disk_file``). It times single queries with a warm page cache
(the whole file read first) and with a cold one: before each cold query the file's pages are
dropped from this process's map (``madvise(MADV_DONTNEED)``) and from the page cache
(``posix_fadvise(POSIX_FADV_DONTNEED)`` on a fresh descriptor, after the file was fsynced), and
``mincore`` checks that none is resident; a query starts cold only if that check passes
(``cache_eviction_verified``). Bytes read per cold query are reported three ways: the candidate
rows the tier gathered × bytes per row (logical), the distinct 4 KiB pages those rows span
(what the kernel must read without read-ahead), and ``/proc/self/io`` ``read_bytes`` (what the
block layer actually read for this process; NaN where the file is absent).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

PAGE = mmap.PAGESIZE
#: environment variable naming a folder for disk tiers (default: the system's temporary folder)
DISK_DIR_ENV = "VECBUDGET_DISK_DIR"
#: single queries timed cold and warm per search configuration (each cold one needs an eviction)
COLD_QUERIES = 100
WARM_QUERIES = 100
#: stop timing cold queries after this long (at least MIN_COLD are timed)
COLD_SECONDS = 5.0
MIN_COLD = 20
DTYPES = {"float32": np.float32, "fp16": np.float16}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
_libc.mincore.restype = ctypes.c_int


class VectorFile:
    """Vectors in a file the object owns (removed with it), read by memory-mapped gathers."""

    def __init__(self, dim: int, dtype: str = "float32", folder: str | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"disk dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        self.dim, self.dtype_name, self.dtype = int(dim), dtype, np.dtype(DTYPES[dtype])
        parent = folder or os.environ.get(DISK_DIR_ENV) or None
        self.folder = tempfile.mkdtemp(prefix="vecbudget-disk-", dir=parent)
        self.path = os.path.join(self.folder, "vectors.bin")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
        Path(self.path).touch()
        self.n = 0
        self._mm: mmap.mmap | None = None
        self._arr: np.ndarray | None = None
        #: counters of what gathers read: candidate rows and distinct pages
        self.rows_read = 0
        self.pages_read = 0

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.n * self.row_bytes

    def append(self, x: np.ndarray, chunk_rows: int = 8192) -> None:
        """Write rows at the end of the file (in chunks: no whole-base temporary), fsync, re-map."""
        self._unmap()
        with open(self.path, "ab") as f:
            for r0 in range(0, x.shape[0], chunk_rows):
                f.write(np.ascontiguousarray(x[r0:r0 + chunk_rows], dtype=self.dtype).tobytes())
            f.flush()
            os.fsync(f.fileno())  # dirty pages cannot be evicted: the file is written out now
        self.n += int(x.shape[0])
        self._map()

    def _map(self) -> None:
        if self.n == 0:
            return
        with open(self.path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), self.nbytes, prot=mmap.PROT_READ)
        self._mm.madvise(mmap.MADV_RANDOM)  # read only the pages touched: no read-ahead
        self._arr = np.frombuffer(self._mm, dtype=self.dtype).reshape(self.n, self.dim)

    def _unmap(self) -> None:
        self._arr = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows of sorted, unique, valid ``ids`` (read from the file through the map)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return np.zeros((0, self.dim), np.float32)
        self.rows_read += int(ids.size)
        first = ids * self.row_bytes // PAGE
        last = (ids * self.row_bytes + self.row_bytes - 1) // PAGE
        self.pages_read += int(np.unique(np.concatenate([first, last])).size)
        return self._arr[ids].astype(np.float32)

    # ----- the page cache --------------------------------------------------------------------
    def resident_pages(self) -> int:
        """Pages of the file in the page cache (``mincore`` on the map)."""
        if self._arr is None:
            return 0
        npages = -(-self.nbytes // PAGE)
        vec = (ctypes.c_ubyte * npages)()
        addr = self._arr.__array_interface__["data"][0]  # the map's start (page-aligned, offset 0)
        if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(self.nbytes), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return int(sum(b & 1 for b in bytes(vec)))

    def evict(self) -> None:
        """Drop the file's pages: from this process's map, then from the page cache."""
        if self._mm is not None:
            self._mm.madvise(mmap.MADV_DONTNEED)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def warm(self) -> None:
        """Read the whole file into the page cache (and this map)."""
        if self._arr is not None:
            float(self._arr.sum(dtype=np.float64))

    @property
    def array(self) -> np.ndarray:
        """The rows as a read-only array backed by the file map (nothing is read until used)."""
        if self._arr is None:
            return np.zeros((0, self.dim), self.dtype)
        return self._arr

    # ----- pickling: the file travels by path, re-mapped on load ------------------------------
    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a VectorFile is not pickled; an index saves its rows (see methods/bidr.py save)")

    def close(self) -> None:
        self._unmap()
        self._cleanup()


def process_read_bytes() -> float:
    """Bytes this process made the block layer read (``/proc/self/io``); NaN where unavailable."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def measure(index: Any, queries: np.ndarray, k: int, params: dict[str, Any]) -> dict[str, Any]:
    """Warm and cold single-query latency and bytes read per cold query (see the module doc)."""
    vf: VectorFile = index.disk_file
    nq = queries.shape[0]
    vf.warm()
    warm = np.empty(min(WARM_QUERIES, nq))
    for i in range(warm.size):
        t = time.perf_counter_ns()
        index.search(queries[i:i + 1], k, **params)
        warm[i] = (time.perf_counter_ns() - t) / 1e6
    cold: list[float] = []
    verified = True
    rows0, pages0, io0 = vf.rows_read, vf.pages_read, process_read_bytes()
    spent = 0.0
    for i in range(min(COLD_QUERIES, nq)):
        vf.evict()
        verified &= vf.resident_pages() == 0
        t = time.perf_counter_ns()
        index.search(queries[i:i + 1], k, **params)
        cold.append((time.perf_counter_ns() - t) / 1e6)
        spent += cold[-1] / 1e3
        if spent >= COLD_SECONDS and len(cold) >= MIN_COLD:
            break
    nc = len(cold)
    io = process_read_bytes() - io0
    return {
        "latency_warm_p50_ms": float(np.percentile(warm, 50)),
        "latency_cold_p50_ms": float(np.percentile(cold, 50)),
        "latency_cold_p95_ms": float(np.percentile(cold, 95)),
        "cold_queries": nc,
        "disk_read_bytes_per_query": (vf.rows_read - rows0) * vf.row_bytes / nc,
        "disk_pages_bytes_per_query": (vf.pages_read - pages0) * PAGE / nc,
        "io_read_bytes_per_query": io / nc,
        "cache_eviction_verified": bool(verified),
        "disk_bytes_per_vector": vf.nbytes / max(vf.n, 1),
    }


# ----- the comparison published in results/two_tier.md ----------------------------------------
#: the RAM-copy re-rankers compared with two-tier entries: (method, build filter, search filter)
RAM_COPY = (("binary-rescore", {"rescore": "float32", "variant": "paper"}, {"factor": (4, 16, 32)}),
            ("ivf-pq", {"refine": True}, {"nprobe": (32, 128)}))


def comparison_table(dataset: str, results_dir: str = "results") -> str:
    """Markdown table of the stored two-tier runs of ``dataset`` beside the re-rankers that keep
    their re-ranking copy in RAM (``python -m harness.disk_tier DATASET``)."""
    import json

    import pandas as pd

    from harness.leaderboard import entry_name, select_runs, variant_of
    from harness.store import ResultStore

    df = select_runs(ResultStore(results_dir).load(), dataset)
    if df.empty:
        return "_no stored runs_\n"
    keep = []
    for _, r in df.iterrows():
        b, s = json.loads(r["build_params"]), json.loads(r["search_params"])
        two = pd.notna(r.get("disk_bytes_per_vector", np.nan))
        ram_copy = any(r["method"] == m and all(b.get(k) == v for k, v in bf.items())
                       and all(s.get(k) in v for k, v in sf.items()) for m, bf, sf in RAM_COPY)
        if two or ram_copy:
            keep.append((r["method"], r["build_params"], s.get("factor", s.get("k_factor", 0)), r["search_params"], r))

    def params(text: str) -> str:
        d = json.loads(text)
        d.pop("variant", None)
        return ",".join(f"{k}={v}" for k, v in d.items()) or "-"

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or pd.isna(v) else format(v, fmt)

    rows = []
    for *_, r in sorted(keep, key=lambda t: t[:4]):
        two = pd.notna(r.get("disk_bytes_per_vector", np.nan))
        rows.append({
            "entry": entry_name(r["method"], variant_of(r)), "build": params(r["build_params"]),
            "search": params(r["search_params"]), "RAM B/vec": num(r["bytes_per_vector"], ".1f"),
            "disk B/vec": num(r.get("disk_bytes_per_vector"), ".0f") if two else "0",
            "recall@10": num(r["recall_at_10"], ".4f"), "nDCG@10": num(r.get("ndcg_at_10"), ".4f"),
            "p50 ms (worker, warm)": num(r["latency_p50_ms"], ".3f"),
            "warm p50 ms": num(r.get("latency_warm_p50_ms"), ".3f") if two else "-",
            "cold p50 ms": num(r.get("latency_cold_p50_ms"), ".3f") if two else "-",
            "read B/query: rows / pages / io": (f"{r['disk_read_bytes_per_query']:,.0f} / "
                                                f"{r['disk_pages_bytes_per_query']:,.0f} / "
                                                f"{num(r['io_read_bytes_per_query'], ',.0f')}") if two else "-",
            "evicted": ("yes" if r["cache_eviction_verified"] else "no") if two else "-",
            "RSS growth MB": num(r["rss_growth_bytes"] / 2**20, ".1f"),
            "config": str(r["config_hash"])[:10],
        })
    return pd.DataFrame(rows).to_markdown(index=False) + "\n"


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or ["wordnet"]:
        print(f"### {name}\n\n{comparison_table(name)}")
