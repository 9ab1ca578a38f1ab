"""Helpers shared by faiss-backed methods: metric mapping, measured memory, native save."""

from __future__ import annotations

import os

import faiss
import numpy as np

from harness.method import MemoryAccount


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def serialized_bytes(index: faiss.Index) -> int:
    """Bytes of the index's serialised form: its codes, structure and shared parts, as held."""
    return int(faiss.serialize_index(index).size)


def invlists_bytes(ivf: faiss.IndexIVF) -> tuple[int, int]:
    """(code bytes, id bytes) held by an IVF index's inverted lists."""
    invlists = ivf.invlists
    sizes = np.array([invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
    n = int(sizes.sum())
    return n * int(invlists.code_size), n * 8


def hnsw_link_bytes(hnsw: faiss.HNSW) -> int:
    """Bytes of an faiss HNSW graph: neighbour table, offsets and levels."""
    return int(
        hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
    )


def account(index: faiss.Index, codes: int, structure: int) -> MemoryAccount:
    """Memory account whose total is the serialised size; what is not codes or structure is
    shared (headers, codebooks, centroids, rotations)."""
    total = serialized_bytes(index)
    return MemoryAccount(codes=codes, structure=structure, shared=max(total - codes - structure, 0))


def write(index: faiss.Index, path: str) -> int:
    faiss.write_index(index, path)
    return os.path.getsize(path)


def as_float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)
