"""Shared parts of the multi-vector methods: the base class and token stores.

The contract (see :mod:`harness.tracks.multivector`): ``fit(docs, train_queries)`` and
``add(docs)`` take a :class:`harness.multivector.RaggedVectors` of document token vectors,
``search(queries, k)`` a RaggedVectors of query tokens, and return ``(scores, ids)`` (nq, k), best
first, higher Chamfer-like scores better. Sizes are bytes per **document**.

A :class:`TokenStore` keeps every document's tokens in RAM in one encoding — float32, float16,
faiss scalar quantizer (8 / 4 bit) or PQ codes — plus the int64 offsets, and decodes rows block by
block for :mod:`harness.chamfer`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import faiss
import numpy as np

from harness.method import MemoryAccount, Method, nbytes
from harness.multivector import RaggedVectors

#: tokens per document assumed when a sweep is *planned* (the analytic size needs it before the
#: data are read): WordNet definitions with all-MiniLM-L6-v2 average ~15 tokens ([CLS]/[SEP]
#: included). Rows recompute ``bytes_analytic`` with the measured mean.
NOMINAL_TOKENS_PER_DOC = 15.0
OFFSET_BYTES = 8  # int64 offsets: one per document
TRAIN_TOKENS = 65536  # tokens sampled to train token quantizers


def sample_tokens(docs: RaggedVectors, n: int = TRAIN_TOKENS, seed: int = 0) -> np.ndarray:
    """A seeded sample of at most ``n`` token vectors (float32, sorted rows)."""
    total = docs.n_tokens
    if total <= n:
        return np.ascontiguousarray(docs.flat, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    return np.ascontiguousarray(docs.flat[rows], dtype=np.float32)


class MultiVectorMethod(Method):
    """Base of methods whose input is token vectors (``input_kind = "multivector"``)."""

    input_kind = "multivector"
    metrics: ClassVar[tuple[str, ...]] = ("ip",)  # Chamfer is a sum of inner products

    def set_num_threads(self, n: int) -> None:
        faiss.omp_set_num_threads(int(n))

    def fit(self, train: Any, train_queries: Any = None) -> None:  # noqa: B027 - optional
        """Learn codebooks from document tokens ``train`` (a RaggedVectors). Default: nothing."""


class TokenStore:
    """Document token vectors in RAM in one encoding, decoded block by block."""

    ENCODINGS = ("fp32", "fp16", "sq8", "sq4", "pq")

    def __init__(self, dim: int, encoding: str = "fp32", pq_m: int = 0):
        if encoding not in self.ENCODINGS:
            raise ValueError(f"token encoding {encoding!r}; known: {', '.join(self.ENCODINGS)}")
        self.dim, self.encoding = dim, encoding
        self.codec: Any = None
        if encoding == "sq8":
            self.codec = faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit)
        elif encoding == "sq4":
            self.codec = faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_4bit)
        elif encoding == "pq":
            self.codec = faiss.ProductQuantizer(dim, pq_m, 8)
        self.offsets: np.ndarray | None = None
        self.codes: np.ndarray | None = None

    @staticmethod
    def bytes_per_token(dim: int, encoding: str, pq_m: int = 0) -> float:
        return {"fp32": 4.0 * dim, "fp16": 2.0 * dim, "sq8": float(dim), "sq4": dim / 2.0,
                "pq": float(pq_m)}[encoding]

    def __getstate__(self) -> dict[str, Any]:  # faiss codecs do not pickle: keep their trained arrays
        state = {k: v for k, v in self.__dict__.items() if k != "codec"}
        if self.encoding in ("sq8", "sq4"):
            state["codec_arrays"] = faiss.vector_to_array(self.codec.trained)
        elif self.encoding == "pq":
            state["codec_arrays"] = faiss.vector_to_array(self.codec.centroids)
            state["pq_m"] = self.codec.M
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        arrays = state.pop("codec_arrays", None)
        pq_m = state.pop("pq_m", 0)
        self.__init__(state["dim"], state["encoding"], pq_m)  # type: ignore[misc]
        self.__dict__.update(state)
        if arrays is not None:
            faiss.copy_array_to_vector(arrays, self.codec.trained if self.encoding != "pq" else self.codec.centroids)
            self.codec.is_trained = True

    def train(self, sample: np.ndarray) -> None:
        if self.codec is not None:
            self.codec.train(np.ascontiguousarray(sample, dtype=np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.encoding == "fp32":
            return x.copy()
        if self.encoding == "fp16":
            return x.astype(np.float16)
        return self.codec.compute_codes(x)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        if self.encoding in ("fp32", "fp16"):
            return np.ascontiguousarray(rows, dtype=np.float32)
        return self.codec.decode(np.ascontiguousarray(rows))

    def add(self, docs: RaggedVectors, block: int = 1 << 16) -> None:
        """Encode every token of ``docs`` (streamed in blocks of rows)."""
        parts = [self.encode(docs.flat[s : s + block]) for s in range(0, docs.n_tokens, block)]
        self.codes = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        self.offsets = np.asarray(docs.offsets, dtype=np.int64).copy()

    def memory(self) -> MemoryAccount:
        shared = 0
        if self.encoding in ("sq8", "sq4"):
            shared = int(np.asarray(faiss.vector_to_array(self.codec.trained)).nbytes)
        elif self.encoding == "pq":
            shared = int(faiss.vector_to_array(self.codec.centroids).nbytes)
        return MemoryAccount(codes=nbytes(self.codes), structure=nbytes(self.offsets), shared=shared)


def token_store_bytes(dim: int, n: int, tokens_per_doc: float, encoding: str, pq_m: int = 0) -> float:
    """Analytic bytes per document of a :class:`TokenStore`."""
    shared = {"sq8": 8.0 * dim, "sq4": 8.0 * dim, "pq": 4.0 * 256 * dim}.get(encoding, 0.0)
    return tokens_per_doc * TokenStore.bytes_per_token(dim, encoding, pq_m) + OFFSET_BYTES + shared / max(n, 1)
