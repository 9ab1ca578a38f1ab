"""Binary (sign) codes searched by Hamming distance, with optional re-scoring of the top
k·factor candidates: against the float32 query and the candidates' own sign bits (asymmetric,
no extra bytes), or against int8 or float32 copies of the vectors.

Paper: Shakir, Aarsen & Lee, "Binary and Scalar Embedding Quantization for Significantly Faster
& Cheaper Retrieval", Hugging Face blog, 2024 (binary retrieval + rescoring with float32 or int8
document embeddings; sentence-transformers ``quantize_embeddings`` and ``semantic_search_faiss``);
sign codes as 1-bit quantization of embeddings: Yamada, Asai & Hajishirzi, "Efficient Passage
Retrieval with Hashing for Open-domain Question Answering" (BPR), ACL 2021. faiss
``IndexBinaryFlat``.

The recipe (default, ``variant="paper"``), as sentence-transformers runs it:

* codes: ``np.packbits(x > 0)`` (``quantize_embeddings(..., "ubinary")``), the query likewise;
  exhaustive Hamming search (faiss ``IndexBinaryFlat``) for the top k·factor candidates
  (``rescore_multiplier``; the blog's demo and measurements re-score 4× as many documents as
  it returns; the library's default is 2; both are in the search grid);
* ``rescore="bits"``: the float32 query times the candidates' unpacked bits, q·unpackbits(b)
  (``corpus_precision="ubinary"``), no second copy of the vectors;
* ``rescore="int8"``: an int8 copy calibrated on the training vectors as ``quantize_embeddings``
  does (per-dimension [min, max], step (max − min)/255, floor), dequantized
  (x̂ = min + (c + 128)·step, as ``semantic_search_faiss`` restores scalar-quantized candidates)
  and scored by the exact metric against the float32 query;
* ``rescore="float32"``: the exact metric to float32 copies;
* ``rescore="none"``: Hamming ranking alone (factor ignored).

For metric "l2" (the blog only treats normalised embeddings) the sign-bit re-scoring returns the
squared L2 distance to the ±1 sign vector, ‖q − s‖²: every s has norm √d, so it ranks exactly as
q·s and as the blog's q·unpackbits(b) = (q·s + Σq)/2.

Variants: ``variant="centred"`` takes the signs of x − μ (μ the training mean): centring balances
the bits and is needed for data that are not centred at 0 (SIFT is non-negative, so every
coordinate's sign is the same); its ``bits`` re-scoring reads a candidate back as x̂ = μ + σ ⊙ s
(σ the per-dimension mean absolute deviation from μ, the least-L1 scale for sign codes), an L2
estimate as well as an inner-product one; its int8 copy rounds to nearest. On SciFact
(all-MiniLM-L6-v2) centring loses about 2 points of nDCG@10 against the recipe.

Bytes per vector: ⌈d/8⌉ (sign bits) + {0 | 0 | d | 4·d} (re-scoring copy: none | bits | int8 |
float32, it is held in RAM and counts) + shared/n: paper 8·d for int8 (min, step), else 0;
centred 4·d (mean) + {0 | 4·d (σ) | 8·d (min, step) | 0}.

Scores: squared L2 / inner product for re-scored results (the blog's q·unpackbits(b) for paper
``bits`` with "ip"); for "none", the Hamming distance (l2) or its negative (ip).
"""

from __future__ import annotations

import os
from typing import Any

import faiss
import numpy as np

from harness.method import PAPER_VARIANT, MemoryAccount, Method, expand_grid
from harness.registry import register

#: bytes of gathered candidate vectors per re-scoring chunk
CHUNK_BYTES = 64 << 20
#: bytes of float32 input encoded at a time by ``add`` (bounds its temporaries)
ENCODE_CHUNK_BYTES = 4 << 20
RESCORE_BYTES = {"none": 0, "bits": 0, "int8": 1, "float32": 4}
#: shared float32 arrays per dimension besides the mean: σ for bits; min and step for int8
RESCORE_SHARED = {"none": 0, "bits": 1, "int8": 2, "float32": 0}
CENTRED = "centred"
VARIANTS = (PAPER_VARIANT, CENTRED)


@register
class BinaryRescore(Method):
    name = "binary-rescore"
    family = "binary"
    paper = ("Shakir, Aarsen, Lee, 'Binary and Scalar Embedding Quantization for Significantly Faster & "
             "Cheaper Retrieval', Hugging Face blog 2024; Yamada, Asai, Hajishirzi, BPR, ACL 2021")
    bytes_formula = ("⌈d/8⌉ + {0 | 0 | d | 4·d} (rescore none | bits | int8 | float32) + shared/n, shared = "
                     "paper: {0 | 0 | 8·d | 0}, centred: 4·d·{1 | 2 | 3 | 1}")
    build_grid = {"variant": list(VARIANTS), "rescore": ["none", "bits", "int8", "float32"]}
    search_grid = {"factor": [1, 2, 4, 8, 16, 32]}
    variants = {
        CENTRED: "signs of x − μ (training mean) instead of x > 0: balanced bits, needed for data not "
                 "centred at 0 (e.g. SIFT); 'bits' re-scoring reads x̂ = μ + σ ⊙ s (an L2 estimate too)",
    }

    @classmethod
    def is_valid(cls, dim: int, rescore: str = "float32", variant: str = PAPER_VARIANT, **_: Any) -> bool:
        return rescore in RESCORE_BYTES and variant in VARIANTS

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, rescore: str = "float32", variant: str = PAPER_VARIANT,
                         **_: Any) -> float:
        if variant == CENTRED:
            shared = 4.0 * dim * (1 + RESCORE_SHARED[rescore])
        else:
            shared = 8.0 * dim if rescore == "int8" else 0.0
        return -(-dim // 8) + RESCORE_BYTES[rescore] * dim + shared / n

    @classmethod
    def search_configs(cls, **build_params: Any) -> list[dict[str, Any]]:
        """Without re-scoring the factor changes nothing: one search configuration."""
        if build_params.get("rescore", "float32") == "none":
            return [{"factor": 1}]
        return expand_grid(cls.search_grid)

    def __init__(self, dim: int, metric: str, rescore: str = "float32", variant: str = PAPER_VARIANT,
                 **build_params: Any):
        if rescore not in RESCORE_BYTES:
            raise ValueError(f"rescore must be one of {sorted(RESCORE_BYTES)}, not {rescore!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, not {variant!r}")
        super().__init__(dim, metric, rescore=rescore, variant=variant, **build_params)
        self.rescore = rescore
        self.variant = variant
        self.centred = variant == CENTRED
        self._fitted = False
        self.nbits = 8 * (-(-dim // 8))
        self.binary = faiss.IndexBinaryFlat(self.nbits)
        self.mean: np.ndarray | None = None
        self.sigma: np.ndarray | None = None  # bits: per-dimension scale of the ±1 signs
        self.lo: np.ndarray | None = None  # int8 calibration: per-dimension minimum and step
        self.step: np.ndarray | None = None
        self.store: np.ndarray | None = None  # re-scoring copy (int8 or float32)

    # ----- encoding -------------------------------------------------------------------------
    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        x = np.asarray(train, dtype=np.float32)
        self._fitted = True
        if self.centred:
            self.mean = x.mean(axis=0).astype(np.float32)
            if self.rescore == "bits":
                self.sigma = np.abs(x - self.mean).mean(axis=0).astype(np.float32)
        if self.rescore == "int8":
            self.lo = x.min(axis=0).astype(np.float32)
            hi = x.max(axis=0).astype(np.float32)
            if self.centred:
                self.step = np.maximum((hi - self.lo) / 255.0, np.float32(1e-12)).astype(np.float32)
            else:  # sentence-transformers: steps = (max - min) / 255, a zero step becomes 1
                step = (hi - self.lo) / np.float32(255.0)
                self.step = np.where(step == 0, np.float32(1.0), step).astype(np.float32)

    def sign_codes(self, x: np.ndarray) -> np.ndarray:
        """Packed sign bits: ``x > 0`` (the recipe) or ``x > mean`` (variant "centred")."""
        x = np.asarray(x, dtype=np.float32)
        return np.packbits(x > self.mean if self.centred else x > 0, axis=1)

    def add(self, vectors: np.ndarray) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if not self._fitted:
            self.fit(x)
        # encode in chunks into a store allocated once: the whole-base float temporaries of
        # x - lo, / step, rounding, clipping came to 7x the int8 index at their peak
        n0, n = self.ntotal, x.shape[0]
        if self.rescore in ("int8", "float32"):
            dtype = np.int8 if self.rescore == "int8" else np.float32
            store = np.empty((n0 + n, self.dim), dtype)
            if self.store is not None:
                store[:n0] = self.store
            self.store = store
        rows = max(1, ENCODE_CHUNK_BYTES // (4 * self.dim))
        for r0 in range(0, n, rows):
            chunk = x[r0:r0 + rows]
            self.binary.add(self.sign_codes(chunk))
            dst = self.store[n0 + r0:n0 + r0 + chunk.shape[0]] if self.store is not None else None
            if self.rescore == "int8":
                t = chunk - self.lo
                t /= self.step
                (np.rint if self.centred else np.floor)(t, out=t)  # quantize_embeddings floors
                np.clip(t, 0, 255, out=t)
                t -= 128
                dst[...] = t
            elif self.rescore == "float32":
                dst[...] = chunk
        self.ntotal = int(self.binary.ntotal)
        # zero-copy view of faiss's code array (re-taken after each add: the array may move)
        self._codes = faiss.rev_swig_ptr(self.binary.xb.data(), self.binary.xb.size()).reshape(
            self.ntotal, int(self.binary.code_size)) if self.ntotal else np.zeros((0, self.nbits // 8), np.uint8)

    # ----- search ---------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, factor: int = 4, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = int(k)
        if self.rescore == "none":
            dist, ids = self.binary.search(self.sign_codes(q), k)
            scores = dist.astype(np.float32)
            return (scores if self.metric == "l2" else -scores), ids.astype(np.int64)
        kc = max(k, min(self.ntotal, k * int(factor)))
        _, cand = self.binary.search(self.sign_codes(q), kc)
        cand = cand.astype(np.int64)
        out_s = np.empty((q.shape[0], k), np.float32)
        out_i = np.empty((q.shape[0], k), np.int64)
        rows = max(1, CHUNK_BYTES // max(1, kc * self.dim * 4))
        for r0 in range(0, q.shape[0], rows):
            out_s[r0:r0 + rows], out_i[r0:r0 + rows] = self._rescore(q[r0:r0 + rows], cand[r0:r0 + rows], k)
        return out_s, out_i

    def _rescore(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        valid = cand >= 0
        safe = np.where(valid, cand, 0)
        if self.rescore == "bits" and not self.centred:
            # the blog: the float query times the candidates' unpacked bits b in {0, 1}
            bits = np.unpackbits(self._codes[safe], axis=-1)[..., :self.dim].astype(np.float32)  # (nq, kc, d)
            qb = np.einsum("qkd,qd->qk", bits, q)
            if self.metric == "l2":  # ‖q − s‖², s = 2b − 1: ranks as q·s = 2 q·b − Σq
                scores = (q * q).sum(1, keepdims=True) + self.dim - 2.0 * (2.0 * qb - q.sum(1, keepdims=True))
                key = np.where(valid, scores, np.inf)
            else:
                scores = qb
                key = np.where(valid, -scores, np.inf)
            return self._top(key, scores, cand, valid, k)
        if self.rescore == "bits":
            signs = np.unpackbits(self._codes[safe], axis=-1)[..., :self.dim].astype(np.float32)  # (nq, kc, d)
            signs *= 2.0
            signs -= 1.0
            vecs = signs * self.sigma + self.mean
        else:
            vecs = self.store[safe].astype(np.float32)  # (nq, kc, d)
        if self.rescore == "int8":
            vecs *= self.step
            vecs += self.lo + 128.0 * self.step
        ip = np.einsum("qkd,qd->qk", vecs, q)
        if self.metric == "l2":
            scores = np.einsum("qkd,qkd->qk", vecs, vecs) - 2.0 * ip + (q * q).sum(1, keepdims=True)
            key = np.where(valid, scores, np.inf)
        else:
            scores = ip
            key = np.where(valid, -scores, np.inf)
        return self._top(key, scores, cand, valid, k)

    def _top(self, key: np.ndarray, scores: np.ndarray, cand: np.ndarray, valid: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k candidates of least ``key`` per query (stable: Hamming order breaks ties)."""
        kk = min(k, key.shape[1])
        part = np.argpartition(key, kk - 1, axis=1)[:, :kk] if kk < key.shape[1] else np.arange(kk)[None].repeat(key.shape[0], 0)
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, 1), axis=1, kind="stable"), 1)
        ids = np.take_along_axis(cand, order, 1)
        sc = np.take_along_axis(scores, order, 1).astype(np.float32)
        ok = np.take_along_axis(valid, order, 1)
        ids = np.where(ok, ids, -1)
        if kk < k:
            pad = k - kk
            fill = np.float32(np.inf if self.metric == "l2" else -np.inf)
            ids = np.hstack([ids, np.full((ids.shape[0], pad), -1, np.int64)])
            sc = np.hstack([sc, np.full((sc.shape[0], pad), fill, np.float32)])
        return sc, ids

    # ----- accounting -----------------------------------------------------------------------
    def memory(self) -> MemoryAccount:
        bits = self.ntotal * int(self.binary.code_size)
        store = self.store.nbytes if self.store is not None else 0
        shared = sum(a.nbytes for a in (self.mean, self.sigma, self.lo, self.step) if a is not None)
        return MemoryAccount(codes=bits + store, structure=0, shared=int(shared))

    def save(self, path: str) -> int:
        arrays = {"bits": faiss.vector_to_array(self.binary.xb)}
        for name in ("mean", "sigma", "lo", "step", "store"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return os.path.getsize(path)
