"""faiss's own filtered search: an ``IDSelector`` passed in the search parameters, with a flat,
an IVF-Flat or an HNSW-Flat index (build parameter ``index``).

The selector is faiss's ``IDSelectorBitmap`` over the filter's packed bitmap (one bit per id)
by default; on the flat index the search grid also tries ``IDSelectorBatch`` (the passing ids
in a hash set with a Bloom pre-filter). Every index still visits what it would visit without a
filter and drops the ids the selector rejects: the flat index computes only passing distances;
IVF scans its nprobe lists and keeps passing entries (few results when the filter is selective
and nprobe small); HNSW traverses the whole graph as usual but returns only passing nodes, so
at low selectivity its candidate list holds few or none (padded with -1).
Paper: Douze et al., "The Faiss library", 2024 (search-time ID selectors); IVF: Jégou, Douze,
Schmid, TPAMI 2011; HNSW: Malkov & Yashunin, TPAMI 2020 (faiss IndexHNSWFlat,
efConstruction 100 as the other HNSW methods here).
Bytes per vector: flat 4·d; IVF 4·d + 8 + nlist·(4·d + 8)/n with nlist = round(4·√n);
HNSW 4·d + 4·(2·M + M/(M−1)) + 12 (links, offsets, levels).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.filters import FAMILIES, Allowed, pad_results
from harness.method import MemoryAccount
from harness.registry import register
from methods import _faiss

EF_CONSTRUCTION = 100
NLIST_C = 4
INDEXES = ("flat", "ivf", "hnsw")
SEARCH = {
    "flat": {"selector": ["bitmap", "batch"]},
    "ivf": {"nprobe": [16, 64]},
    "hnsw": {"efSearch": [32, 128]},
}


@register
class FilterFaiss(_faiss.FaissMethod):
    name = "filter-faiss"
    family = "filtered"
    input_kind = "filtered"
    paper = ("Douze et al., 'The Faiss library', 2024 (IDSelector in SearchParameters) over IndexFlat, "
             "IndexIVFFlat (Jégou et al., TPAMI 2011), IndexHNSWFlat (Malkov & Yashunin, TPAMI 2020)")
    bytes_formula = "flat 4·d; ivf 4·d + 8 + nlist·(4·d + 8)/n; hnsw 4·d + 4·(2M + M/(M−1)) + 12"
    build_grid = {"index": list(INDEXES), "M": [16]}
    search_grid = {"selector": ["bitmap"], "filter": FAMILIES}

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, index: str = "flat", M: int = 16, **_: Any) -> float:
        if index == "ivf":
            return _faiss.ivf_bytes_per_vector(dim, n, NLIST_C, 4.0 * dim)
        if index == "hnsw":
            return 4.0 * dim + 4.0 * (2 * int(M) + _faiss.hnsw_expected_upper_links(int(M))) + 12.0
        return 4.0 * dim

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        return build_params.get("index", "flat") in INDEXES

    @classmethod
    def search_configs(cls, **build_params: Any) -> list[dict[str, Any]]:
        grid = {**SEARCH[build_params.get("index", "flat")], "filter": FAMILIES}
        from harness.method import expand_grid

        return expand_grid(grid)

    def make_index(self, n: int) -> faiss.Index:
        fm = _faiss.faiss_metric(self.metric)
        kind = self.params.get("index", "flat")
        if kind == "ivf":
            self.quantizer = faiss.IndexFlat(self.dim, fm)
            return faiss.IndexIVFFlat(self.quantizer, self.dim, _faiss.nlist_for(n, NLIST_C), fm)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, int(self.params.get("M", 16)), fm)
            index.hnsw.efConstruction = EF_CONSTRUCTION
            return index
        return faiss.IndexFlat(self.dim, fm)

    def search(self, queries: np.ndarray, k: int, allowed: Allowed | None = None, selector: str = "bitmap",
               nprobe: int | None = None, efSearch: int | None = None, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            raise ValueError("filter-faiss searches with a filter (allowed=...)")
        if selector == "batch":
            sel = faiss.IDSelectorBatch(allowed.count, faiss.swig_ptr(allowed.ids))
        else:
            sel = faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(allowed.bitmap))
        kind = self.params.get("index", "flat")
        if kind == "ivf":
            params = faiss.SearchParametersIVF(sel=sel, nprobe=min(int(nprobe or 1), self.index.nlist))
        elif kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(int(efSearch or 16), int(k)))
        else:
            params = faiss.SearchParameters(sel=sel)
        kk = min(int(k), self.ntotal)
        scores, ids = self.index.search(_faiss.as_float32(queries), kk, params=params)
        return pad_results(scores, ids, int(k), self.metric)

    def memory(self) -> MemoryAccount:
        kind = self.params.get("index", "flat")
        if kind == "ivf":
            return _faiss.ivf_account(self.index)
        if kind == "hnsw":
            return _faiss.account(self.index, codes=self.ntotal * 4 * self.dim,
                                  structure=_faiss.hnsw_link_bytes(self.index.hnsw))
        return _faiss.account(self.index, codes=self.ntotal * 4 * self.dim, structure=0)
