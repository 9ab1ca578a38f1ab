"""RaBitQ: each vector (after a random rotation, relative to a centroid) is stored as the signs
of its normalised residual — 1 bit per dimension — plus two float correction factors, giving an
unbiased inner-product estimator with a theoretical error bound; the extended version stores
nb_bits per dimension (a scalar code found by an optimal rescaling search).

Papers: Gao & Long, "RaBitQ: Quantizing High-Dimensional Vectors with a Theoretical Error Bound
for Approximate Nearest Neighbor Search", SIGMOD 2024 (1 bit); Gao, Gou, Xu, Yang, Long & Wong,
"Practical and Asymptotically Optimal Quantization of High-Dimensional Vectors in Euclidean
Space for Approximate Nearest Neighbor Search", SIGMOD 2025 (extended RaBitQ, nb_bits > 1).
faiss 1.15 ``IndexRaBitQ`` (flat, centroid = training mean) and ``IndexIVFRaBitQ`` (residuals
to the IVF centroid), ``nb_bits`` in 1..9; search parameter ``qb`` = bits of the quantized query
(0 = float query).

Bytes per vector (faiss code layout):
  ⌈d/8⌉ + 8                       sign bits + 2 float32 factors
  + [nb_bits > 1] (⌈d·(nb_bits−1)/8⌉ + 12)   extra bits + 3 float32 factors
  + 4·d/n                          (flat) the centroid
  or + 8 + nlist·(4·d + 8)/n      (IVF, nlist = clamp(round(c·√n), 1, n/39)) id + centroids
  + 4·d²/n                         (variant "paper") the d×d random rotation (faiss
                                   ``RandomRotationMatrix``), shared.

The recipe (default, ``variant="paper"``) rotates every vector and query by a random orthogonal
matrix before quantizing, as the papers' analysis requires; faiss offers only a dense d×d
rotation (the papers' implementations use a fast structured, FHT-based one that costs O(d)
memory; the distribution of the rotated vectors is what the error bound needs, so the
estimates are the same in law).

Variants: ``variant="no-rotation"`` skips the rotation: the dense rotation's 4·d² bytes weigh
heavily per vector at small n (≈ 114 B at d = 384, n = 5 000) and embedding coordinates are
already spread, so the unrotated codes are worth measuring beside the recipe.

Departures: the papers' re-ranking (candidates whose error-bound interval can still enter the
top k are re-scored with the raw vectors) needs the float32 vectors in RAM, 4·d bytes per
vector, which this budgeted index does not hold; the estimate ranks directly.

Implementation notes (rankings unchanged): faiss 1.15's IVF-RaBitQ with METRIC_INNER_PRODUCT ranks much worse than with METRIC_L2 on the
same unit vectors (recall@10 0.08 vs 0.23 at 1 bit, 20k random unit vectors, all lists probed;
the flat index shows no such gap), so for metric "ip" on unit-norm data (the harness's cosine
case) the IVF variant is built with L2 — the same ranking — and reports ip = (‖q‖² + 1 − d²)/2.
``qb`` is searched only for 1-bit codes (faiss scores multi-bit codes against the float query).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import PAPER_VARIANT, MemoryAccount, expand_grid
from harness.registry import register
from methods import _faiss

NO_ROTATION = "no-rotation"


def rabitq_code_bytes(dim: int, nb_bits: int) -> int:
    """faiss RaBitQ code size: sign bits + 2 floats, plus extra bits + 3 floats if nb_bits > 1."""
    size = -(-dim // 8) + 8
    if nb_bits > 1:
        size += -(-dim * (nb_bits - 1) // 8) + 12
    return size


@register
class RaBitQ(_faiss.FaissMethod):
    name = "rabitq"
    family = "binary"
    paper = ("Gao & Long, 'RaBitQ: Quantizing High-Dimensional Vectors with a Theoretical Error Bound for ANN "
             "Search', SIGMOD 2024; Gao et al., 'Practical and Asymptotically Optimal Quantization of "
             "High-Dimensional Vectors in Euclidean Space for ANN Search' (extended RaBitQ), SIGMOD 2025")
    bytes_formula = ("⌈d/8⌉ + 8 [+ ⌈d·(b−1)/8⌉ + 12 if b > 1] + (flat: 4·d/n | IVF: 8 + nlist·(4·d + 8)/n) "
                     "[+ 4·d²/n rotation, variant paper]")
    build_grid = {"variant": [PAPER_VARIANT, NO_ROTATION], "nb_bits": [1, 2, 4, 8], "nlist_c": [0, 4]}
    variants = {NO_ROTATION: "no random rotation: saves the dense d×d rotation's 4·d²/n bytes per vector "
                             "(faiss has no O(d) structured rotation)"}
    search_grid = {"nprobe": [1, 2, 4, 8, 16, 32, 64, 128, 256], "qb": [4, 0]}

    @classmethod
    def is_valid(cls, dim: int, nb_bits: int = 1, variant: str = PAPER_VARIANT, **_: Any) -> bool:
        return 1 <= int(nb_bits) <= 9 and variant in (PAPER_VARIANT, NO_ROTATION)

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, nb_bits: int = 1, nlist_c: float = 0,
                         variant: str = PAPER_VARIANT, **_: Any) -> float:
        rotate = variant == PAPER_VARIANT
        code = rabitq_code_bytes(dim, int(nb_bits))
        if nlist_c:
            size = _faiss.ivf_bytes_per_vector(dim, n, nlist_c, code)
        else:
            size = code + 4.0 * dim / n
        return size + (4.0 * dim * dim / n if rotate else 0.0)

    @classmethod
    def search_configs(cls, **build_params: Any) -> list[dict[str, Any]]:
        """nprobe only for IVF builds; qb only for 1-bit codes."""
        grid = dict(cls.search_grid)
        if not build_params.get("nlist_c", 0):
            grid.pop("nprobe")
        if int(build_params.get("nb_bits", 1)) > 1:
            grid.pop("qb")
        return expand_grid(grid)

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        x = _faiss.as_float32(train)
        norms = np.linalg.norm(x, axis=1)
        # unit-norm ip data through IVF: build with L2 (same ranking; see the module docstring)
        self.unit_ip = bool(self.metric == "ip" and float(self.params.get("nlist_c", 0)) > 0
                            and x.shape[0] > 0 and np.allclose(norms, 1.0, atol=1e-3))
        super().fit(x, train_queries)

    def make_index(self, n: int) -> faiss.Index:
        fm = faiss.METRIC_L2 if getattr(self, "unit_ip", False) else _faiss.faiss_metric(self.metric)
        nb = int(self.params.get("nb_bits", 1))
        c = float(self.params.get("nlist_c", 0))
        if c:
            self.quantizer = faiss.IndexFlat(self.dim, fm)
            self.core = faiss.IndexIVFRaBitQ(self.quantizer, self.dim, _faiss.nlist_for(n, c), fm, True, nb)
        else:
            self.core = faiss.IndexRaBitQ(self.dim, fm, nb)
        if self.params.get("variant", PAPER_VARIANT) == NO_ROTATION:
            return self.core
        self.rotation = faiss.RandomRotationMatrix(self.dim, self.dim)
        with _faiss.single_blas_thread():  # its QR beside faiss's OpenMP pool crawls with BLAS threads
            self.rotation.init(12345)  # the seed faiss's RandomRotationMatrix.train uses
        self.rotation.is_trained = True
        index = faiss.IndexPreTransform(self.rotation, self.core)
        index.own_fields = False  # both parts stay owned by Python
        return index

    def search(self, queries: np.ndarray, k: int, nprobe: int = 1, qb: int = 0,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        kw: dict[str, Any] = {"qb": int(qb)}
        if isinstance(self.core, faiss.IndexIVF):
            kw["nprobe"] = min(int(nprobe), self.core.nlist)
        q = _faiss.as_float32(queries)
        scores, ids = super().search(q, k, **kw)
        if getattr(self, "unit_ip", False):  # squared L2 between unit vectors → inner product
            scores = np.where(ids >= 0, ((q * q).sum(1, keepdims=True) + 1.0 - scores) / 2.0, -np.inf)
            scores = scores.astype(np.float32)
        return scores, ids

    def memory(self) -> MemoryAccount:
        if isinstance(self.core, faiss.IndexIVF):
            return _faiss.ivf_account(self.core, whole=self.index)
        return _faiss.account(self.index, codes=self.ntotal * int(self.core.code_size), structure=0)
