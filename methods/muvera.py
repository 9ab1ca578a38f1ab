"""MUVERA: fixed dimensional encodings (FDEs) of token sets, searched as single vectors.

Paper: Dhulipala, Hadian, Jayaram, Lee & Mirrokni, "MUVERA: Multi-Vector Retrieval via Fixed
Dimensional Encodings", NeurIPS 2024 (reference code: google/graph-mining,
``sketching/point_cloud/fixed_dimensional_encoding.cc``).

Encoding (paper §2 / Algorithm, per repetition r = 1..R):

* **SimHash partitions**: ``k_sim`` Gaussian hyperplanes; a token's sign bits (first hyperplane
  the most significant) give a number b, and its partition is b's Gray code (as the reference
  code's ``AppendToGrayCode``), so 2^k_sim partitions;
* **inner projection** ψ: a dense random ±1 matrix scaled by 1/√d_proj, d → d_proj (none when
  d_proj = d);
* **query**: the *sum* of the projected query tokens in each partition;
  **document**: the *average* of the projected document tokens in each partition, and
  ``fill_empty_partitions``: an empty partition takes the projected token whose sign bits are
  nearest in Hamming distance to the partition's (the lowest token index on ties, as the
  reference code);
* the R blocks of 2^k_sim · d_proj are concatenated (D = R·2^k_sim·d_proj), then the optional
  **final projection** to ``final_dim`` coordinates: a Count-Sketch (each coordinate added with a
  random sign into one random output coordinate), the reference code's final projection.

Randomness: one ``numpy.random.default_rng(seed)`` draws, in order, the R SimHash matrices
``normal(size=(d, k_sim))``, then the ±1 projections ``choice([-1, 1], size=(R, d, d_proj))``
(the order of fastembed's ``fastembed.postprocess.muvera.Muvera``, so equal seeds give equal
FDEs up to the partition order: fastembed numbers partitions by plain binary with the first
hyperplane as the least significant bit, and on an empty document partition it copies the first
token of the nearest *occupied partition*, which picks a different token only when two occupied
partitions are equally near; it has no final projection), then the Count-Sketch's buckets and
signs.

Search: the document FDEs are stored as float32 (faiss ``IndexFlatIP``), 8-bit scalar
quantized (``sq8``) or product quantized with 8-dimensional sub-spaces of 256 centroids
(``pq``: D/8 bytes, the paper's "PQ-256-8"), and searched by inner product with the query FDE.
With ``rerank = "fp16"`` the document tokens are also kept (float16) and the top ``candidates``
FDE results are re-ranked by exact Chamfer, as the paper's retrieval pipeline does.
Bytes per document: the FDE code (4·D, D, D/8, or with a final projection the same of
final_dim) + (rerank) tokens/doc·d·2 + 8.
"""

from __future__ import annotations

from typing import Any

import faiss
import numba
import numpy as np

from harness.chamfer import rerank
from harness.method import MemoryAccount, nbytes
from harness.multivector import RaggedVectors
from harness.registry import register
from methods._multivector import (
    NOMINAL_TOKENS_PER_DOC,
    MultiVectorMethod,
    TokenStore,
    token_store_bytes,
)

PQ_DSUB = 8  # dimensions per PQ sub-space ("PQ-256-8")
PQ_TRAIN = 4096  # FDEs sampled to train SQ / PQ
PQ_NITER = 10  # k-means iterations per PQ sub-space (faiss's default is 25)
ENCODE_BLOCK = 4096  # texts per encoding block


@numba.njit(cache=True)
def _count_sketch(x: np.ndarray, bucket: np.ndarray, sign: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, bucket[j]] += sign[j] * x[i, j]


def gray_code(b: np.ndarray) -> np.ndarray:
    return b ^ (b >> 1)


class FDE:
    """MUVERA's fixed dimensional encoder (see the module docstring)."""

    def __init__(self, dim: int, k_sim: int = 5, d_proj: int = 16, reps: int = 20, final_dim: int = 0,
                 seed: int = 42):
        if d_proj > dim:
            raise ValueError(f"d_proj={d_proj} exceeds the token dimension {dim}")
        self.dim, self.k_sim, self.d_proj, self.reps, self.final_dim = dim, k_sim, d_proj, reps, final_dim
        self.partitions = 2**k_sim
        rng = np.random.default_rng(seed)
        self.simhash = np.stack([rng.normal(size=(dim, k_sim)) for _ in range(reps)]).astype(np.float32)
        proj = rng.choice([-1, 1], size=(reps, dim, d_proj))
        self.proj = (proj / np.sqrt(d_proj)).astype(np.float32) if d_proj < dim else None
        self.raw_dim = reps * self.partitions * d_proj
        if final_dim:
            self.cs_bucket = rng.integers(0, final_dim, size=self.raw_dim)
            self.cs_sign = rng.choice([-1.0, 1.0], size=self.raw_dim).astype(np.float32)
        self.out_dim = final_dim or self.raw_dim
        # the partition's own sign bits (b = Gray-decoded index), first hyperplane most significant
        b = np.arange(self.partitions)
        binary = b.copy()
        shift = b >> 1
        while shift.any():
            binary ^= shift
            shift >>= 1
        self.partition_bits = ((binary[:, None] >> (k_sim - 1 - np.arange(k_sim))[None, :]) & 1).astype(np.int8)

    def _bits(self, tok: np.ndarray, r: int) -> np.ndarray:
        return (tok @ self.simhash[r] > 0).astype(np.int8)  # (T, k_sim)

    def all_bits(self, tok: np.ndarray) -> np.ndarray:
        """Sign bits of every token for every repetition, (R, T, k_sim), from one matrix product."""
        flat = np.ascontiguousarray(self.simhash.transpose(1, 0, 2).reshape(self.dim, -1))
        return (tok @ flat > 0).astype(np.int8).reshape(tok.shape[0], self.reps, self.k_sim).transpose(1, 0, 2)

    def partition(self, tok: np.ndarray, r: int, bits: np.ndarray | None = None) -> np.ndarray:
        bits = (self._bits(tok, r) if bits is None else bits).astype(np.int64)
        b = (bits << (self.k_sim - 1 - np.arange(self.k_sim))[None, :]).sum(axis=1)
        return gray_code(b)

    def encode(self, rv: RaggedVectors, role: str) -> np.ndarray:
        """FDEs (float32, (n, out_dim)) of every text of ``rv``; role "query" or "document"."""
        out = np.empty((len(rv), self.out_dim), dtype=np.float32)
        for a in range(0, len(rv), ENCODE_BLOCK):
            out[a : a + ENCODE_BLOCK] = self._encode_block(rv[a : a + ENCODE_BLOCK], role == "document")
        return out

    def _encode_block(self, rv: RaggedVectors, document: bool) -> np.ndarray:
        n, p, dp = len(rv), self.partitions, self.d_proj
        tok = np.ascontiguousarray(rv.flat, dtype=np.float32)
        owners = rv.owners()
        offsets = np.asarray(rv.offsets, dtype=np.int64)
        raw = np.zeros((n, self.reps, p, dp), dtype=np.float32)
        bits = self.all_bits(tok)
        for r in range(self.reps):
            part = self.partition(tok, r, bits[r])
            projected = tok @ self.proj[r] if self.proj is not None else tok
            key = owners * p + part
            acc = np.stack([np.bincount(key, weights=projected[:, j], minlength=n * p) for j in range(dp)], axis=1)
            if document:
                counts = np.bincount(key, minlength=n * p).astype(np.float64)
                filled = counts > 0
                acc[filled] /= counts[filled, None]
                if (~filled).any():
                    acc[~filled] = self._fill(bits[r], projected, offsets, ~filled.reshape(n, p))
            raw[:, r] = acc.reshape(n, p, dp)
        flat = raw.reshape(n, -1)
        if self.final_dim:
            return self.count_sketch(flat)
        return flat

    def count_sketch(self, x: np.ndarray) -> np.ndarray:
        """The final projection: ``out[:, bucket[j]] += sign[j] · x[:, j]`` for every coordinate j."""
        out = np.zeros((x.shape[0], self.final_dim), dtype=np.float32)
        _count_sketch(np.ascontiguousarray(x, dtype=np.float32), self.cs_bucket, self.cs_sign, out)
        return out

    def _fill(self, bits: np.ndarray, projected: np.ndarray, offsets: np.ndarray, empty: np.ndarray) -> np.ndarray:
        """Projected token nearest (Hamming, lowest index on ties) to each empty (doc, partition)."""
        weights = 1 << np.arange(self.k_sim)
        code = bits.astype(np.int64) @ weights  # the token's sign bits as an integer
        popcount = np.array([bin(v).count("1") for v in range(self.partitions)], dtype=np.int64)
        ham = popcount[code[:, None] ^ (self.partition_bits.astype(np.int64) @ weights)[None, :]]  # (T, P)
        t_local = np.arange(bits.shape[0]) - np.repeat(offsets[:-1], np.diff(offsets))
        key = ham.astype(np.int64) * (1 << 32) + t_local[:, None]  # min: nearest, then lowest index
        best = np.minimum.reduceat(key, offsets[:-1], axis=0)  # (n, P)
        rows = offsets[:-1, None] + (best & ((1 << 32) - 1))
        return projected[rows[empty]]


@register
class Muvera(MultiVectorMethod):
    name = "muvera"
    family = "multivector"
    paper = ("Dhulipala, Hadian, Jayaram, Lee & Mirrokni, 'MUVERA: Multi-Vector Retrieval via Fixed "
             "Dimensional Encodings', NeurIPS 2024")
    bytes_formula = "FDE code: 4·D (flat) | D (sq8) | D/8 (pq), D = final_dim or R·2^k_sim·d_proj; + tokens/doc·2·d + 8 with rerank"
    # the paper's defaults first (k_sim=5, d_proj=16, R=20): the planner takes the first of equal sizes
    build_grid = {
        "k_sim": [5, 4, 3],
        "d_proj": [16, 8],
        "reps": [20, 10],
        "final_dim": [0, 2048, 1024],
        "codec": ["flat", "sq8", "pq"],
        "rerank": ["none", "fp16"],
    }
    search_grid = {"candidates": [100, 300, 1000]}

    @classmethod
    def fde_dim(cls, **p: Any) -> int:
        return int(p.get("final_dim", 0)) or int(p.get("reps", 20)) * 2 ** int(p.get("k_sim", 5)) * int(p.get("d_proj", 16))

    @classmethod
    def is_valid(cls, dim: int, **p: Any) -> bool:
        raw = int(p.get("reps", 20)) * 2 ** int(p.get("k_sim", 5)) * int(p.get("d_proj", 16))
        final = int(p.get("final_dim", 0))
        if final and final >= raw:
            return False  # a "projection" that does not reduce
        if p.get("codec") == "pq" and cls.fde_dim(**p) > 4096:
            return False  # PQ training cost (D/8 codebooks) kept small for a CPU sweep
        return int(p.get("d_proj", 16)) <= dim

    @classmethod
    def search_configs(cls, **build_params: Any) -> list[dict[str, Any]]:
        return super().search_configs() if build_params.get("rerank", "none") != "none" else [{}]

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, tokens_per_doc: float = NOMINAL_TOKENS_PER_DOC,
                         **p: Any) -> float:
        d_fde = cls.fde_dim(**p)
        codec = p.get("codec", "flat")
        code = {"flat": 4.0 * d_fde, "sq8": float(d_fde), "pq": d_fde / PQ_DSUB}[codec]
        shared = {"flat": 0.0, "sq8": 8.0 * d_fde, "pq": 4.0 * 256 * d_fde}[codec] / max(n, 1)
        tokens = token_store_bytes(dim, n, tokens_per_doc, "fp16") if p.get("rerank", "none") != "none" else 0.0
        return code + shared + tokens

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        p = build_params
        self.fde = FDE(dim, int(p.get("k_sim", 5)), int(p.get("d_proj", 16)), int(p.get("reps", 20)),
                       int(p.get("final_dim", 0)), int(p.get("seed", 42)))
        d_fde = self.fde.out_dim
        self.codec = p.get("codec", "flat")
        if self.codec == "flat":
            self.index = faiss.IndexFlatIP(d_fde)
        elif self.codec == "sq8":
            self.index = faiss.IndexScalarQuantizer(d_fde, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        elif self.codec == "pq":
            self.index = faiss.IndexPQ(d_fde, d_fde // PQ_DSUB, 8, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"muvera: unknown codec {self.codec!r} (flat, sq8, pq)")
        self.tokens = TokenStore(dim, "fp16") if p.get("rerank", "none") != "none" else None
        self.train_sample = 0

    def warm_up(self) -> None:
        _count_sketch(np.zeros((1, 2), np.float32), np.zeros(2, np.int64), np.ones(2, np.float32),
                      np.zeros((1, 1), np.float32))

    def fit(self, train: Any, train_queries: Any = None) -> None:
        if self.codec == "flat":
            return
        n = len(train)
        rows = np.sort(np.random.default_rng(0).choice(n, min(n, PQ_TRAIN), replace=False))
        sample = RaggedVectors.from_list([train[int(i)] for i in rows])
        self.train_sample = len(rows)
        if self.codec == "pq":  # 10 k-means iterations per sub-space, 16+ points per centroid: a CPU budget
            self.index.pq.cp.niter = PQ_NITER
            self.index.pq.cp.min_points_per_centroid = 16
        self.index.train(self.fde.encode(sample, "document"))

    def add(self, vectors: RaggedVectors) -> None:
        self.index.add(self.fde.encode(vectors, "document"))
        if self.tokens is not None:
            self.tokens.add(vectors)
        self.ntotal = len(vectors)

    def search(self, queries: RaggedVectors, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        q = self.fde.encode(queries, "query")
        if self.tokens is None:
            return self.index.search(q, k)
        c = max(k, int(search_params.get("candidates", 100)))
        _, cand = self.index.search(q, min(c, self.ntotal))
        return rerank(queries, self.tokens.codes, self.tokens.offsets, cand, k, self.tokens.decode)

    def memory(self) -> MemoryAccount:
        codes = self.index.sa_code_size() * self.index.ntotal if self.codec != "flat" else 4 * self.fde.out_dim * self.index.ntotal
        shared = 0
        if self.codec == "sq8":
            shared = nbytes(faiss.vector_to_array(self.index.sq.trained))
        elif self.codec == "pq":
            shared = nbytes(faiss.vector_to_array(self.index.pq.centroids))
        tok = self.tokens.memory() if self.tokens is not None else MemoryAccount()
        return MemoryAccount(codes=int(codes) + tok.codes, structure=tok.structure, shared=shared)

    def save(self, path: str) -> int:
        import os
        import pickle

        faiss.write_index(self.index, path)
        if self.tokens is not None:
            with open(path, "ab") as f:
                pickle.dump((self.tokens.codes, self.tokens.offsets), f, protocol=pickle.HIGHEST_PROTOCOL)
        return os.path.getsize(path)
