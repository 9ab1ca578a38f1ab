"""LVQ: Locally-adaptive Vector Quantization, one level and two levels.

Paper: C. Aguerrebere, I. Bhati, M. Hildebrand, M. Tepper, T. Willke, "Similarity search in the
blink of an eye with compressed indices", VLDB 2023 (arXiv:2304.04759). Reference code: Intel's
ScalableVectorSearch (``svs/quantization/lvq``).

Encoding (as in the paper): the data are mean-centred with a global mean μ; each centred vector
x is quantised with B1 bits per coordinate between its own minimum ℓ and maximum u,
Δ = (u − ℓ)/(2^B1 − 1), c_j = round((x_j − ℓ)/Δ). The two per-vector constants, the lower
bound ℓ and the step Δ, are stored as **float16** (as SVS's ``ScaledBiasedVector`` stores its
bias and scale). Two-level LVQ-B1×B2 quantises the residual r = x − (ℓ + Δ·c), which lies in
[−Δ/2, Δ/2], with B2 more bits uniformly over that per-vector range (2^B2 levels, step
Δ/(2^B2 − 1)), as the paper describes it; it needs no extra constants. (SVS's residual encoder
uses signed codes with step Δ/2^B2 instead; the error bounds differ by a factor 2^B2/(2^B2−1).)

Search: the float query is scored against the first-level codes exhaustively (flat scan). The
inner product decomposes as q·x̂ = ℓ·Σq + Δ·(q·c) + q·μ: each block of codes is converted to
float32 once, q·c is a BLAS GEMM, the per-vector ℓ and Δ are applied to the (nq, block) result
(L2 adds ‖x̂‖² from Σc and Σc² of the same block), and blocks are merged in faiss's heap.
Up to ``_kernels.SMALL_BATCH`` queries skip the conversion to float32: q·c, Σc and Σc² come from a
compiled dot product over the packed 8- or 4-bit codes (search parameter ``kernel``: ``auto``,
``compiled``, ``numpy``; the same scores up to float rounding).
Two-level LVQ re-ranks the best k·``rerank_factor`` candidates with the two-level
reconstruction (search grid ``rerank_factor``; one-level builds have no search parameter).

Build grid: ``bits1`` in (4, 8), ``bits2`` in (0, 4, 8), 0 meaning one level; valid pairs are
LVQ-4, LVQ-8, LVQ-4x4, LVQ-4x8, LVQ-8x8.

Bytes per vector: ceil(d·B1/8) + 4 (two float16 constants) [+ ceil(d·B2/8)] + 4·d/n (the float32
mean, shared).

Post-hoc: the search here is a flat scan of the codes, not the paper's graph (Vamana) index:
Intel's SVS is not installed here, and the scan measures the codec's quality without the graph's
own approximation. Variants: none. Implementation notes: codes are not padded to SVS's 32-byte alignment; ℓ is rounded down and Δ up to float16 *before*
encoding, so the per-coordinate error bound Δ/2 holds exactly for the stored Δ (SVS rounds after
encoding). Scores are those of the LVQ reconstruction (exact IP / squared L2 to x̂).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.method import MemoryAccount, Method
from harness.registry import register
from methods import _kernels
from methods._lvq_codec import LVQStore, rerank, set_threads

PAPER = (
    "Aguerrebere, Bhati, Hildebrand, Tepper, Willke, 'Similarity search in the blink of an eye "
    "with compressed indices', VLDB 2023"
)


@register
class LVQ(Method):
    """LVQ-B1 (B2 = 0: 4 or 8 bits) and two-level LVQ-B1×B2 (4x4, 4x8, 8x8) with re-ranking."""

    name = "lvq"
    family = "scalar"
    paper = PAPER
    bytes_formula = "ceil(d·B1/8) [+ ceil(d·B2/8)] + 4 (float16 ℓ, Δ) + 4·d/n (mean)"
    post_hoc = "the paper's LVQ codes are scanned exhaustively (flat), not through its Vamana graph (SVS)"
    build_grid = {"bits1": [4, 8], "bits2": [0, 4, 8]}
    search_grid = {"rerank_factor": [1, 2, 4, 8]}

    def warm_up(self) -> None:
        _kernels.warm_up()  # compiled before the harness measures RSS around add()

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.bits1 = int(build_params.get("bits1", 8))
        self.bits2 = int(build_params.get("bits2", 0))
        self.store = LVQStore(dim, self.bits1, self.bits2)

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        b1, b2 = int(build_params.get("bits1", 8)), int(build_params.get("bits2", 0))
        # one level: LVQ-4, LVQ-8; two levels: 4x4, 4x8, 8x8 as in the paper
        return b1 in (4, 8) and (b2 == 0 or (b2 in (4, 8) and b1 <= b2))

    @classmethod
    def search_configs(cls, **build_params: Any) -> list[dict[str, Any]]:
        if not int(build_params.get("bits2", 0)):
            return [{}]  # nothing to re-rank with
        return super().search_configs(**build_params)

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        b1 = int(build_params.get("bits1", 8))
        b2 = int(build_params.get("bits2", 0))
        return LVQStore.bytes_per_vector(dim, b1, b2) + LVQStore.shared_bytes(dim) / max(n, 1)

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        self.store.fit(train)

    def add(self, vectors: np.ndarray) -> None:
        self.store.add(vectors)
        self.ntotal = self.store.ntotal

    def search(
        self, queries: np.ndarray, k: int, **search_params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        kernel = search_params.get("kernel", "auto")
        if not self.bits2:
            return self.store.search(q, k, self.metric, kernel)
        factor = max(1, int(search_params.get("rerank_factor", 4)))
        _, cand = self.store.search(q, k * factor, self.metric, kernel)
        return rerank(q, cand, lambda ids: self.store.rows(ids, level=2), k, self.metric)

    def memory(self) -> MemoryAccount:
        return MemoryAccount(
            codes=self.store.code_nbytes(), structure=0, shared=self.store.shared_nbytes()
        )

    def set_num_threads(self, n: int) -> None:
        set_threads(n)
