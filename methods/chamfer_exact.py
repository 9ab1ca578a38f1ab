"""Exact Chamfer (late interaction, ColBERT's MaxSim) over every stored document token.

Paper: Khattab & Zaharia, "ColBERT: Efficient and Effective Passage Search via Contextualized Late
Interaction over BERT", SIGIR 2020 (the sum-of-MaxSim score). This is the multi-vector track's
reference: every token of every document is kept, as float32 (bit-exact with the ground truth)
or float16 (``dtype = "fp16"``, half the bytes; scores from the rounded tokens).
Bytes per document: tokens/doc · d · (4 or 2) + 8 (offsets). Search scans every document in blocks
(:func:`harness.chamfer.chamfer_topk`).
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
    token_store_bytes,
)


@register
class ChamferExact(MultiVectorMethod):
    name = "chamfer-exact"
    family = "multivector"
    paper = "Khattab & Zaharia, 'ColBERT: Efficient and Effective Passage Search via Contextualized Late Interaction over BERT', SIGIR 2020"
    bytes_formula = "tokens/doc·d·(4 | 2) + 8 (offsets)"
    build_grid = {"dtype": ["fp32", "fp16"]}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, tokens_per_doc: float = NOMINAL_TOKENS_PER_DOC,
                         **p: Any) -> float:
        return token_store_bytes(dim, n, tokens_per_doc, p.get("dtype", "fp32"))

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.store = TokenStore(dim, build_params.get("dtype", "fp32"))

    def add(self, vectors: RaggedVectors) -> None:
        self.store.add(vectors)
        self.ntotal = len(vectors)

    def search(self, queries: RaggedVectors, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        return chamfer_topk(queries.flat, queries.offsets, self.store.codes, self.store.offsets, k,
                            self.store.decode)

    def memory(self) -> MemoryAccount:
        return self.store.memory()
