"""IVF-PQ (IVFADC): an inverted file whose lists hold PQ codes of each vector's residual to its
cell centroid; optionally the top k·k_factor candidates are re-ranked with exact distances to the
float32 vectors kept in RAM.

Paper: Jégou, Douze & Schmid, "Product Quantization for Nearest Neighbor Search", IEEE TPAMI
2011 (IVFADC); re-ranking: Jégou, Tavenard, Douze & Amsaleg, "Searching in one billion vectors:
re-rank with source coding", ICASSP 2011 (there the re-ranking uses a second code; here, as in
faiss ``IndexRefineFlat``, the exact float32 vectors). faiss ``IndexIVFPQ`` (8-bit sub-codes).

nlist = clamp(round(c·√n), 1, n/39) with c = ``nlist_c`` (n: the announced base size).
Bytes per vector: m + 8 (id) + 4·d if refine + (nlist·(4·d + 8) + 256·d·4)/n (centroids, list
sizes, PQ codebooks).

The recipe is ``refine=False`` (IVFADC); ``refine=True`` adds the re-ranking tier (a build grid
value, reported beside it). Variants: none. Implementation note (results unchanged): faiss's
precomputed residual tables (nlist·m·256 floats, larger than the codes at our n) are disabled
(``use_precomputed_table = -1``) so that RAM is what the formula says; search computes the tables
per probed list instead (slower, same results).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount, expand_grid
from harness.registry import register
from methods import _faiss


@register
class IVFPQ(_faiss.FaissMethod):
    name = "ivf-pq"
    family = "ivf"
    paper = ("Jégou, Douze, Schmid, 'Product Quantization for Nearest Neighbor Search' (IVFADC), IEEE TPAMI 2011; "
             "re-ranking: Jégou, Tavenard, Douze, Amsaleg, ICASSP 2011")
    bytes_formula = ("m + 8 (id) [+ 4·d float re-rank vectors] + (nlist·(4·d + 8) + 256·4·d)/n,  "
                     "nlist = clamp(round(c·√n), 1, n/39)")
    build_grid = {"m": [8, 16, 32, 48, 64, 96, 128], "nlist_c": [4], "refine": [False, True]}
    search_grid = {"nprobe": [1, 2, 4, 8, 16, 32, 64, 128, 256], "k_factor": [4, 16]}

    @classmethod
    def is_valid(cls, dim: int, m: int = 8, **_: Any) -> bool:
        return m <= dim and dim % m == 0

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, m: int = 8, nlist_c: float = 4, refine: bool = False,
                         **_: Any) -> float:
        return (_faiss.ivf_bytes_per_vector(dim, n, nlist_c, float(m))
                + (4.0 * dim if refine else 0.0) + _faiss.pq_codebook_bytes(dim, 8) / n)

    @classmethod
    def search_configs(cls, **build_params: Any) -> list[dict[str, Any]]:
        """k_factor applies only to builds with a re-ranking tier."""
        grid = dict(cls.search_grid)
        if not build_params.get("refine", False):
            grid.pop("k_factor")
        return expand_grid(grid)

    def make_index(self, n: int) -> faiss.Index:
        fm = _faiss.faiss_metric(self.metric)
        nlist = _faiss.nlist_for(n, float(self.params.get("nlist_c", 4)))
        self.quantizer = faiss.IndexFlat(self.dim, fm)
        self.ivf = faiss.IndexIVFPQ(self.quantizer, self.dim, nlist, int(self.params.get("m", 8)), 8, fm)
        self.ivf.use_precomputed_table = -1
        _faiss.quiet_pq(self.ivf.pq)
        if self.params.get("refine", False):
            index = faiss.IndexRefineFlat(self.ivf)
            index.own_fields = False  # self.ivf stays owned by Python
            return index
        return self.ivf

    def search(self, queries: np.ndarray, k: int, nprobe: int = 1, k_factor: float = 4,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        kw: dict[str, Any] = {"nprobe": min(int(nprobe), self.ivf.nlist)}
        if self.params.get("refine", False):
            kw["k_factor"] = float(k_factor)
        return super().search(queries, k, **kw)

    def memory(self) -> MemoryAccount:
        refine = self.ntotal * 4 * self.dim if self.params.get("refine", False) else 0
        table = int(self.ivf.precomputed_table.size()) * 4  # 0: disabled, counted if ever present
        acc = _faiss.ivf_account(self.ivf, whole=self.index, extra_codes=refine)
        return MemoryAccount(codes=acc.codes, structure=acc.structure, shared=acc.shared + table)
