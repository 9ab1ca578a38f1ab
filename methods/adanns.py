"""AdANNS: adaptive ANN search with Matryoshka prefixes (IVF and OPQ variants).

Paper: A. Rege, A. Kusupati, S. Sharan S, A. Fan, Q. Cao, S. Kakade, P. Jain, A. Farhadi,
"AdANNS: A Framework for Adaptive Semantic Search", NeurIPS 2023. Reference code: RAIVNLab/AdANNS
(``adanns-ivf-optimized.ipynb``: a d_c-dim "construct" coarse quantizer, vectors pre-assigned
with it, a d_s-dim "search" index, ``search_preassigned``).

* ``adanns-ivf``: IVF whose k-means clustering (and the query's choice of the ``nprobe`` lists)
  uses the first d_c dims, while the in-list linear scan uses the first d_s dims, stored as
  float32 or float16 (build param ``dtype``; faiss ``IndexIVFFlat`` / ``IndexIVFScalarQuantizer``
  QT_fp16, not by residual). Any d_c, d_s (the paper's "unoptimized", fully decoupled variant).
* ``adanns-opq``: OPQ + PQ (m bytes) learned on the first d_p dims (the paper's AdANNS-OPQ: the
  quantizer's budget m is fixed and the prefix it sees varies). In the PCA basis this is the same
  pipeline as ``lr2vq`` with ``rotation="opq"``.

**Basis.** Prefixes only make sense for a Matryoshka-trained model; all-MiniLM-L6-v2 is not one,
so by default (build param ``basis="pca"``, the only value in the default grid) every prefix is
taken in the PCA basis of the data (the PCA-prefix variant). ``basis="raw"`` takes raw prefixes
and, for inner product, L2-normalises each prefix (cosine, as the paper does).

Bytes per vector:
* adanns-ivf: d_s·s (s = 4 float32 | 2 float16) + 8 (int64 id in the inverted list) + shared/n,
  shared = 4·nlist·d_c (centroids) + [PCA: 4·d·max(d_c, d_s) + 4·d];
* adanns-opq: m + (4·256·d_p + 4·d_p² + [PCA: 4·d·d_p + 4·d])/n.

Post-hoc: AdANNS needs a Matryoshka-trained encoder; the encoders here are not, so prefixes are
taken in the data's PCA basis by default (``basis="pca"``), the closest post-hoc stand-in.
Variants: none. The in-list scan is on d_s-dim floats, as in the paper's AdANNS-IVF without
compression.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from harness.method import MemoryAccount, Method
from harness.registry import register
from methods import _faiss
from methods._lvq_codec import PrefixBasis, faiss_blas_always, set_threads
from methods.lr2vq import ProjectedPQ

PAPER = (
    "Rege, Kusupati, Sharan S, Fan, Cao, Kakade, Jain, Farhadi, 'AdANNS: A Framework for "
    "Adaptive Semantic Search', NeurIPS 2023"
)
DTYPES = {"float32": 4, "fp16": 2}


@register
class AdANNSIVF(Method):
    """IVF clustered and routed on a d_c prefix, scanned on a d_s prefix."""

    name = "adanns-ivf"
    family = "ivf"
    paper = PAPER
    bytes_formula = "d_s·s + 8 (id) + (4·nlist·d_c + [PCA] 4·d·max(d_c,d_s) + 4·d)/n"
    post_hoc = ("the encoder is not Matryoshka-trained: prefixes are taken in the data's PCA basis "
                "(basis='pca', the default grid); basis='raw' takes the paper's raw prefixes")
    build_grid = {
        "d_c": [32, 64],
        "d_s": [32, 64, 128, 256, 384],
        "dtype": ["fp16", "float32"],
        "nlist": [256],
        "basis": ["pca"],
    }
    search_grid = {"nprobe": [1, 2, 4, 8, 16, 32, 64]}

    @staticmethod
    def _parse(dim: int, p: dict[str, Any]) -> tuple[int, int, str, int, str]:
        return (
            int(p.get("d_c", min(dim, 32))),
            int(p.get("d_s", min(dim, 64))),
            p.get("dtype", "fp16"),
            int(p.get("nlist", 256)),
            p.get("basis", "pca"),
        )

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        d_c, d_s, dtype, nlist, basis = cls._parse(dim, build_params)
        return (
            1 <= d_c <= dim
            and 1 <= d_s <= dim
            and dtype in DTYPES
            and nlist >= 1
            and basis in ("pca", "raw")
        )

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        d_c, d_s, dtype, nlist, basis = cls._parse(dim, build_params)
        shared = 4 * nlist * d_c + PrefixBasis.shared_bytes(dim, max(d_c, d_s), basis)
        return d_s * DTYPES[dtype] + 8 + shared / max(n, 1)

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.d_c, self.d_s, self.dtype, self.nlist, basis = self._parse(dim, build_params)
        if not self.is_valid(dim, **build_params):
            raise ValueError(f"adanns-ivf: invalid configuration {build_params} for d={dim}")
        self.proj = PrefixBasis(dim, max(self.d_c, self.d_s), basis, metric)
        self.fmetric = _faiss.faiss_metric(metric)
        self.coarse = faiss.IndexFlat(self.d_c, self.fmetric)  # the d_c "construct" quantizer
        # the d_s "search" index; its own quantizer stays empty (lists are pre-assigned)
        self._empty_quantizer = faiss.IndexFlat(self.d_s, self.fmetric)
        if self.dtype == "float32":
            self.ivf = faiss.IndexIVFFlat(self._empty_quantizer, self.d_s, self.nlist, self.fmetric)
        else:
            self.ivf = faiss.IndexIVFScalarQuantizer(
                self._empty_quantizer,
                self.d_s,
                self.nlist,
                faiss.ScalarQuantizer.QT_fp16,
                self.fmetric,
                False,
            )
        self.ivf.is_trained = True

    # each prefix (d_c for routing, d_s for scanning) is normalised separately in the raw basis
    def _prefix(self, z: np.ndarray, d: int) -> np.ndarray:
        z = np.ascontiguousarray(z[:, :d], dtype=np.float32)
        if self.proj.basis == "raw" and self.metric == "ip":
            faiss.normalize_L2(z)
        return z

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        self.proj.fit(train)
        zc = self._prefix(self.proj.docs(train), self.d_c)
        if zc.shape[0] < self.nlist:
            raise ValueError(f"adanns-ivf needs at least nlist={self.nlist} training vectors")
        km = faiss.Kmeans(
            self.d_c,
            self.nlist,
            niter=20,
            seed=1234,
            min_points_per_centroid=1,
            spherical=(self.metric == "ip" and self.proj.basis == "raw"),
        )
        with faiss_blas_always():
            km.train(zc)
        sample, self.training_notes = _faiss.codebook_training(zc.shape[0], self.nlist)
        self.train_sample = int(sample)  # faiss k-means subsamples to 256 points per centroid
        self.training_notes = self.training_notes.replace("codebooks of", "coarse quantizer of").replace(
            "the codebooks fit noise", "the lists fit noise")
        self.coarse.reset()
        self.coarse.add(km.centroids)

    def add(self, vectors: np.ndarray) -> None:
        if self.coarse.ntotal == 0:
            self.fit(vectors)
        z = self.proj.docs(vectors)
        _, assign = self.coarse.search(self._prefix(z, self.d_c), 1)
        x = self._prefix(z, self.d_s)
        ids = np.arange(self.ntotal, self.ntotal + x.shape[0], dtype=np.int64)
        lists = np.ascontiguousarray(assign.ravel(), dtype=np.int64)  # held while faiss reads it
        self.ivf.add_core(x.shape[0], faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
        self.ntotal = int(self.ivf.ntotal)

    def search(
        self, queries: np.ndarray, k: int, **search_params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        nprobe = max(1, min(int(search_params.get("nprobe", 8)), self.nlist))
        z = self.proj.queries(queries)
        coarse_d, lists = self.coarse.search(self._prefix(z, self.d_c), nprobe)
        self.ivf.nprobe = nprobe
        return self.ivf.search_preassigned(self._prefix(z, self.d_s), k, lists, coarse_d)

    def memory(self) -> MemoryAccount:
        codes, ids = _faiss.invlists_bytes(self.ivf)
        shared = self.coarse.ntotal * self.d_c * 4 + self.proj.shared_nbytes()
        return MemoryAccount(codes=codes, structure=ids, shared=int(shared))

    def set_num_threads(self, n: int) -> None:
        set_threads(n)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["coarse"] = faiss.serialize_index(self.coarse)
        state["ivf"] = faiss.serialize_index(self.ivf)
        del state["_empty_quantizer"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["coarse"] = faiss.deserialize_index(state["coarse"])
        state["ivf"] = faiss.deserialize_index(state["ivf"])
        state["_empty_quantizer"] = faiss.downcast_index(state["ivf"].quantizer)
        self.__dict__.update(state)


@register
class AdANNSOPQ(ProjectedPQ):
    """OPQ + PQ with m bytes learned on a d_p-dim prefix (PCA basis by default)."""

    name = "adanns-opq"
    paper = PAPER
    bytes_formula = "m + (4·256·d_p + 4·d_p² + [PCA] 4·d·d_p + 4·d)/n"
    post_hoc = ("the encoder is not Matryoshka-trained: prefixes are taken in the data's PCA basis "
                "(basis='pca', the default grid); basis='raw' takes the paper's raw prefixes")
    dims_key = "d_p"
    build_grid = {"d_p": [32, 64, 128, 256, 384], "m": [8, 16, 32, 64], "basis": ["pca"]}
    search_grid: dict[str, list[Any]] = {}

    @classmethod
    def _parse(cls, dim: int, params: dict[str, Any]) -> tuple[int, int, str, str]:
        d_p, m, basis, _ = super()._parse(dim, params)
        return d_p, m, basis, "opq"
