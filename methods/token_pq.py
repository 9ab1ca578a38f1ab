"""Token-level compression: every document token quantised, Chamfer over the decoded tokens.

Baselines for the multi-vector track: the token vectors ColBERT-style late interaction keeps,
compressed one token at a time with a codec trained on a sample of document tokens (65,536):

* ``token-sq``: faiss scalar quantizer, 8 or 4 bits per dimension (min/max per dimension);
  bytes per document = tokens/doc · d · bits/8 + 8 (offsets) + 8·d/n (trained ranges).
* ``token-pq``: product quantization (Jégou, Douze & Schmid, "Product Quantization for Nearest
  Neighbor Search", TPAMI 2011), m sub-quantizers of 256 centroids; bytes per document =
  tokens/doc · m + 8 + 4·256·d/n (codebooks).

Queries stay float32; a document block is decoded and scored exactly against them
(:func:`harness.chamfer.chamfer_topk`). ColBERTv2 / PLAID residual compression (centroid id +
1–2-bit residuals) is not implemented here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.chamfer import chamfer_topk
from harness.method import MemoryAccount
from harness.multivector import RaggedVectors
from harness.registry import register
from methods._multivector import (
    NOMINAL_TOKENS_PER_DOC,
    MultiVectorMethod,
    TokenStore,
    sample_tokens,
    token_store_bytes,
)


class _TokenCodec(MultiVectorMethod):
    family = "multivector"

    def _encoding(self) -> tuple[str, int]:
        raise NotImplementedError

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        enc, m = self._encoding()
        self.store = TokenStore(dim, enc, m)
        self.train_sample = 0

    def fit(self, train: Any, train_queries: Any = None) -> None:
        sample = sample_tokens(train)
        self.train_sample = sample.shape[0]
        self.store.train(sample)

    def add(self, vectors: RaggedVectors) -> None:
        self.store.add(vectors)
        self.ntotal = len(vectors)

    def search(self, queries: RaggedVectors, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        return chamfer_topk(queries.flat, queries.offsets, self.store.codes, self.store.offsets, k,
                            self.store.decode)

    def memory(self) -> MemoryAccount:
        return self.store.memory()


@register
class TokenSQ(_TokenCodec):
    name = "token-sq"
    paper = "per-token scalar quantization (faiss IndexScalarQuantizer QT_8bit / QT_4bit; Douze et al., 'The Faiss library', 2024)"
    bytes_formula = "tokens/doc·d·bits/8 + 8 + 8·d/n"
    build_grid = {"bits": [8, 4]}

    def _encoding(self) -> tuple[str, int]:
        return f"sq{int(self.params.get('bits', 8))}", 0

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, tokens_per_doc: float = NOMINAL_TOKENS_PER_DOC,
                         **p: Any) -> float:
        return token_store_bytes(dim, n, tokens_per_doc, f"sq{int(p.get('bits', 8))}")


@register
class TokenPQ(_TokenCodec):
    name = "token-pq"
    paper = "Jégou, Douze & Schmid, 'Product Quantization for Nearest Neighbor Search', TPAMI 2011 (per token)"
    bytes_formula = "tokens/doc·m + 8 + 4·256·d/n"
    build_grid = {"m": [16, 32, 64, 96]}

    @classmethod
    def is_valid(cls, dim: int, **p: Any) -> bool:
        return dim % int(p.get("m", 16)) == 0

    def _encoding(self) -> tuple[str, int]:
        return "pq", int(self.params.get("m", 16))

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, tokens_per_doc: float = NOMINAL_TOKENS_PER_DOC,
                         **p: Any) -> float:
        return token_store_bytes(dim, n, tokens_per_doc, "pq", int(p.get("m", 16)))
