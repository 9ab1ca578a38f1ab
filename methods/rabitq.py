"""RaBitQ: each vector (after a random rotation, relative to a centroid) is stored as the signs
of its normalised residual — 1 bit per dimension — plus two float correction factors, giving an
unbiased inner-product estimator with a theoretical error bound; the extended version stores
nb_bits per dimension (a scalar code found by an optimal rescaling search).

Papers: Gao & Long, "RaBitQ: Quantizing High-Dimensional Vectors with a Theoretical Error Bound
for Approximate Nearest Neighbor Search", SIGMOD 2024 (1 bit); Gao, Gou, Xu, Yang, Long & Wong,
"Practical and Asymptotically Optimal Quantization of High-Dimensional Vectors in Euclidean
Space for Approximate Nearest Neighbor Search", SIGMOD 2025 (extended RaBitQ, nb_bits > 1).
faiss 1.15 ``IndexRaBitQFastScan`` (flat, centroid = training mean; codes scanned 32 at a time
with SIMD look-up tables) and ``IndexIVFRaBitQ`` (residuals to the IVF centroid), ``nb_bits`` in
1..9; search parameter ``qb`` = bits of the quantized query.

Query (the recipe): the papers quantize the rotated query to B_q bits with a uniform scalar
quantizer between its minimum and maximum (faiss ``centered=False``) and estimate the inner
product with bit operations; RaBitQ sets B_q = 4, which loses nothing measurable. The search
grid runs qb = 4 (the paper's B_q) and qb = 8 (faiss's default for the fast-scan index); multi-bit
codes accept qb too (faiss scores their first bit with the quantized query and refines the
candidates the error bound cannot exclude with the extra bits). Measured on WordNet-like 20k × 384
embeddings, one thread: 1-bit fast scan qb = 8 runs at 7,232 queries/s against 22 for the float
query (``IndexRaBitQ``, qb = 0), recall@10 0.704 vs 0.705; 2-bit 5,682 vs 23, 0.838 both;
4-bit 2,882 vs 25, 0.947 both.

The papers' claim at equal code length (1-bit RaBitQ above PQ with 4-bit codes of the same
bits, D/2 sub-spaces) holds narrowly on those embeddings: recall@10 0.700 (qb = 4, 56 B of codes
with its factors) vs 0.688 for PQ m = 96 × 4 bits (48 B); at equal *bytes* it does not: PQ
m = 128 × 4 bits (64 B) reaches 0.744, OPQ m = 96 0.712 (same run, 500 queries).

Bytes per vector (faiss code layout):
  ⌈d/8⌉ + 8                       sign bits + 2 float32 factors
  + [nb_bits > 1] (⌈d·(nb_bits−1)/8⌉ + 12)   extra bits + 3 float32 factors
  + 4·d/n                          (flat) the centroid; codes padded to blocks of 32 vectors
  or + 8 + nlist·(4·d + 8)/n      (IVF, nlist = clamp(round(c·√n), 1, n/39)) id + centroids
  + 4·d²/n                         (all but "no-rotation") the d×d random rotation (faiss
                                   ``RandomRotationMatrix``), shared.

The recipe (default, ``variant="paper"``) rotates every vector and query by a random orthogonal
matrix before quantizing, as the papers' analysis requires; faiss offers only a dense d×d
rotation (the papers' implementations use a fast structured, FHT-based one that costs O(d)
memory; the distribution of the rotated vectors is what the error bound needs, so the
estimates are the same in law).

Variants: ``variant="no-rotation"`` skips the rotation: the dense rotation's 4·d² bytes weigh
heavily per vector at small n (≈ 114 B at d = 384, n = 5 000) and embedding coordinates are
already spread, so the unrotated codes are worth measuring beside the recipe.
``variant="float-query"`` scores the codes against the float query (faiss ``qb=0``, the
non-fast-scan ``IndexIVFRaBitQ``): the same estimator without query quantization, about 300×
slower over a flat scan (≈ 20 queries/s at 20k × 384), so it is measured on IVF builds only, with
nprobe ≤ 16, where each query scans a few percent of the base; it shows what quantizing the
query costs in recall (nothing measurable, above) at the same nprobe.

Departures: the papers' re-ranking (candidates whose error-bound interval can still enter the
top k are re-scored with the raw vectors) needs the float32 vectors in RAM, 4·d bytes per
vector, which this budgeted index does not hold; the estimate ranks directly.

Implementation notes (rankings unchanged): faiss 1.15's IVF-RaBitQ with METRIC_INNER_PRODUCT ranks much worse than with METRIC_L2 on the
same unit vectors (recall@10 0.08 vs 0.23 at 1 bit, 20k random unit vectors, all lists probed;
the flat index shows no such gap), so for metric "ip" on unit-norm data (the harness's cosine
case) the IVF variant is built with L2 — the same ranking — and reports ip = (‖q‖² + 1 − d²)/2.
The fast-scan index pads its code array to blocks of 32 vectors; :meth:`RaBitQ.memory` reports
the array as allocated. faiss aborts the process on a fast-scan search with qb = 0, so such a
search is refused with a ValueError.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import PAPER_VARIANT, MemoryAccount, expand_grid
from harness.registry import register
from methods import _faiss

NO_ROTATION = "no-rotation"
FLOAT_QUERY = "float-query"
VARIANTS = (PAPER_VARIANT, NO_ROTATION, FLOAT_QUERY)
#: fast-scan block size (vectors per SIMD block; faiss pads the code array to a multiple)
FASTSCAN_BLOCK = 32
#: nprobe values searched by the float-query variant (each query scans nprobe/nlist of the base)
FLOAT_QUERY_NPROBE = (1, 2, 4, 8, 16)


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
    bytes_formula = ("⌈d/8⌉ + 8 [+ ⌈d·(b−1)/8⌉ + 12 if b > 1] (flat: in blocks of 32 vectors, + 4·d/n | "
                     "IVF: + 8 + nlist·(4·d + 8)/n) [+ 4·d²/n rotation, unless no-rotation]")
    build_grid = {"variant": list(VARIANTS), "nb_bits": [1, 2, 4, 8], "nlist_c": [0, 4]}
    variants = {NO_ROTATION: "no random rotation: saves the dense d×d rotation's 4·d²/n bytes per vector "
                             "(faiss has no O(d) structured rotation)",
                FLOAT_QUERY: "float query against the codes (faiss qb=0) instead of the papers' B_q-bit "
                             "quantized query: same recall, ~300× slower; IVF builds only, nprobe ≤ 16"}
    search_grid = {"nprobe": [1, 2, 4, 8, 16, 32, 64, 128, 256], "qb": [4, 8]}

    @classmethod
    def is_valid(cls, dim: int, nb_bits: int = 1, variant: str = PAPER_VARIANT, nlist_c: float = 0,
                 **_: Any) -> bool:
        if variant == FLOAT_QUERY and not nlist_c:
            return False  # a flat float-query scan takes minutes per search configuration
        return 1 <= int(nb_bits) <= 9 and variant in VARIANTS

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, nb_bits: int = 1, nlist_c: float = 0,
                         variant: str = PAPER_VARIANT, **_: Any) -> float:
        rotate = variant != NO_ROTATION
        code = rabitq_code_bytes(dim, int(nb_bits))
        if nlist_c:
            size = _faiss.ivf_bytes_per_vector(dim, n, nlist_c, code)
        else:  # fast-scan blocks of 32 vectors
            size = -(-n // FASTSCAN_BLOCK) * FASTSCAN_BLOCK * code / n + 4.0 * dim / n
        return size + (4.0 * dim * dim / n if rotate else 0.0)

    @classmethod
    def search_configs(cls, **build_params: Any) -> list[dict[str, Any]]:
        """nprobe only for IVF builds; the float-query variant: qb = 0 and nprobe ≤ 16."""
        grid = dict(cls.search_grid)
        if not build_params.get("nlist_c", 0):
            grid.pop("nprobe")
        if build_params.get("variant", PAPER_VARIANT) == FLOAT_QUERY:
            grid["qb"] = [0]
            if "nprobe" in grid:
                grid["nprobe"] = [p for p in grid["nprobe"] if p in FLOAT_QUERY_NPROBE]
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
        elif self.params.get("variant", PAPER_VARIANT) == FLOAT_QUERY:
            self.core = faiss.IndexRaBitQ(self.dim, fm, nb)  # the only flat index that takes qb = 0
        else:
            self.core = faiss.IndexRaBitQFastScan(self.dim, fm, FASTSCAN_BLOCK, nb)
        if self.params.get("variant", PAPER_VARIANT) == NO_ROTATION:
            return self.core
        self.rotation = faiss.RandomRotationMatrix(self.dim, self.dim)
        with _faiss.single_blas_thread():  # its QR beside faiss's OpenMP pool crawls with BLAS threads
            self.rotation.init(12345)  # the seed faiss's RandomRotationMatrix.train uses
        self.rotation.is_trained = True
        index = faiss.IndexPreTransform(self.rotation, self.core)
        index.own_fields = False  # both parts stay owned by Python
        return index

    def search(self, queries: np.ndarray, k: int, nprobe: int = 1, qb: int | None = None,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        if qb is None:
            qb = 0 if self.params.get("variant", PAPER_VARIANT) == FLOAT_QUERY else 4
        q = _faiss.as_float32(queries)
        if isinstance(self.core, faiss.IndexRaBitQFastScan):
            if not 1 <= int(qb) <= 8:  # faiss aborts the process on qb = 0 here
                raise ValueError(f"the fast-scan RaBitQ index quantizes the query to 1..8 bits, not qb={qb}")
            self.core.qb = int(qb)  # fast scan takes no search parameters: the index holds qb
            self.core.centered = False  # the papers' min-max query quantizer
            scores, ids = self.index.search(q, int(k))
        else:
            kw: dict[str, Any] = {"qb": int(qb)}
            if isinstance(self.core, faiss.IndexIVF):
                kw["nprobe"] = min(int(nprobe), self.core.nlist)
            scores, ids = super().search(q, k, **kw)
        if getattr(self, "unit_ip", False):  # squared L2 between unit vectors → inner product
            scores = np.where(ids >= 0, ((q * q).sum(1, keepdims=True) + 1.0 - scores) / 2.0, -np.inf)
            scores = scores.astype(np.float32)
        return scores, ids

    def memory(self) -> MemoryAccount:
        if isinstance(self.core, faiss.IndexIVF):
            return _faiss.ivf_account(self.core, whole=self.index)
        if isinstance(self.core, faiss.IndexFastScan):  # blocks of 32 codes, padding included
            return _faiss.account(self.index, codes=int(self.core.codes.size()), structure=0)
        return _faiss.account(self.index, codes=self.ntotal * int(self.core.code_size), structure=0)
