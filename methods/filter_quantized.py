"""Quantized codes behind an exact pre-filter: only the codes of the passing ids are scanned.

The base is encoded once with a faiss codec (build parameter ``codec``: ``sq8`` 8-bit scalar,
``sq4`` 4-bit scalar, ``pq<m>`` product quantization with m sub-quantizers of 256 centroids);
a filtered search gathers the codes of the passing ids, decodes them (faiss ``sa_decode``) and
scans them exactly against the float query. Distances equal faiss's asymmetric scans of the same
codes (SQ: the decoded value; PQ: ADC = distance to the reconstruction) up to float rounding, so
quality is the codec's, cost grows with the number of passing ids (no graph, no lists), and RAM
is the codes plus the codec's trained parameters. faiss's ``IndexPQ`` takes no search-time
selector, which is one reason the scan is done here over the gathered codes.
Paper: scalar quantization as in faiss ``IndexScalarQuantizer``; PQ: Jégou, Douze, Schmid,
"Product Quantization for Nearest Neighbor Search", TPAMI 2011; pre-filtering as in Iff et al. 2025.
Bytes per vector: sq8 d; sq4 d/2; pq<m> m + 256·d·4/n (codebooks).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.filters import FAMILIES, Allowed, knn_in_subset
from harness.method import MemoryAccount
from harness.registry import register
from methods import _faiss

CODECS = ("sq8", "sq4", "pq48")


def _pq_m(codec: str) -> int:
    return int(codec[2:])


@register
class FilterQuantized(_faiss.FaissMethod):
    name = "filter-quantized"
    family = "filtered"
    input_kind = "filtered"
    paper = ("Pre-filter over quantized codes: faiss scalar quantization / PQ (Jégou, Douze, Schmid, "
             "TPAMI 2011), codes of the passing ids decoded and scanned")
    bytes_formula = "sq8: d; sq4: d/2; pq<m>: m + 256·d·4/n"
    build_grid = {"codec": list(CODECS)}
    search_grid = {"filter": FAMILIES}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, codec: str = "sq8", **_: Any) -> float:
        if codec == "sq8":
            return float(dim) + 8.0 * dim / n
        if codec == "sq4":
            return dim / 2.0 + 8.0 * dim / n
        return float(_pq_m(codec)) + _faiss.pq_codebook_bytes(dim, 8) / n

    @classmethod
    def is_valid(cls, dim: int, codec: str = "sq8", **_: Any) -> bool:
        if codec in ("sq8", "sq4"):
            return True
        return codec.startswith("pq") and codec[2:].isdigit() and dim % _pq_m(codec) == 0

    def make_index(self, n: int) -> faiss.Index:
        codec = self.params.get("codec", "sq8")
        fm = _faiss.faiss_metric(self.metric)
        if codec == "sq8":
            return faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_8bit, fm)
        if codec == "sq4":
            return faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_4bit, fm)
        index = faiss.IndexPQ(self.dim, _pq_m(codec), 8, fm)
        _faiss.quiet_pq(index.pq)
        return index

    def add(self, vectors: np.ndarray) -> None:
        super().add(vectors)
        size = self.ntotal * int(self.index.code_size)  # a view of faiss's codes, not a copy
        self.codes = faiss.rev_swig_ptr(self.index.codes.data(), size).reshape(self.ntotal, -1)

    def search(self, queries: np.ndarray, k: int, allowed: Allowed | None = None,
               **_: Any) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            raise ValueError("filter-quantized searches with a filter (allowed=...)")
        decoded = self.index.sa_decode(np.ascontiguousarray(self.codes[allowed.ids]))
        return knn_in_subset(decoded, queries, allowed.ids, k, self.metric)

    def memory(self) -> MemoryAccount:
        return _faiss.account(self.index, codes=self.ntotal * int(self.index.code_size), structure=0)
