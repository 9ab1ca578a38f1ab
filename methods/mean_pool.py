"""Mean-pooled single vector: the dense path, as a multi-vector baseline.

No paper of its own: all-MiniLM-L6-v2 is trained to mean-pool its token embeddings into one
sentence vector (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019), which is what the dense track
searches. Here each document's (L2-normalised) token vectors and each query's are averaged and
L2-normalised, stored float32 and searched exactly (faiss ``IndexFlatIP``), so this row answers:
how close does one vector per text come to the exact Chamfer ranking, and to the judgments?
(Pooling normalised tokens is not bit-identical to the model's own pooling of raw tokens.)
Bytes per document: 4·d.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount
from harness.multivector import RaggedVectors
from harness.registry import register
from methods._multivector import MultiVectorMethod


def mean_pool(rv: RaggedVectors, block: int = 1 << 16) -> np.ndarray:
    """Per text: the mean of its token vectors, L2-normalised (float32, (n, d))."""
    out = np.zeros((len(rv), rv.dim), dtype=np.float32)
    owners = rv.owners()
    for s in range(0, rv.n_tokens, block):
        np.add.at(out, owners[s : s + block], np.asarray(rv.flat[s : s + block], dtype=np.float32))
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


@register
class MeanPool(MultiVectorMethod):
    name = "mean-pool"
    family = "multivector"
    paper = "Reimers & Gurevych, 'Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks', EMNLP 2019 (mean pooling)"
    bytes_formula = "4·d"

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **p: Any) -> float:
        return 4.0 * dim

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.index = faiss.IndexFlatIP(dim)

    def add(self, vectors: RaggedVectors) -> None:
        self.index.add(mean_pool(vectors))
        self.ntotal = self.index.ntotal

    def search(self, queries: RaggedVectors, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(mean_pool(queries), k)

    def memory(self) -> MemoryAccount:
        return MemoryAccount(codes=self.index.ntotal * self.dim * 4)
