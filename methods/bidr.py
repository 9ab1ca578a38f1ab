"""BiDR: a two-tier index — compact codes in RAM find candidates, full vectors on disk re-rank them.

Paper: Xiao, Liu, Shao, Lian, Xie, Xie et al., "Progressively Optimized Bi-Granular Document
Representation for Scalable Embedding Based Retrieval", WWW 2022 (code: github.com/microsoft/BiDR,
read, not copied). Two representations of each document: "lightweight sparse embeddings" — in the
code, OPQ + PQ codes (``OPQ96,PQ96x8`` for 768-d, i.e. 8 dimensions per sub-space, 8-bit codes,
searched exhaustively by faiss) — indexed in memory for candidate search (top 1,000), and the
heavyweight dense embeddings hosted on disk for "post verification" of the candidates, scored as
``dense + sparse_weight · sparse`` (``test/post_verification.py``, ``sparse_weight`` 0.3).

The recipe's training is *progressive*: (1) the sparse embeddings are learned first, by
*contrastive quantization*: the PQ codebooks, initialised from faiss OPQ, are trained with a
cross-entropy over in-batch and random negatives between the query and the documents'
*quantized* embeddings (codes re-selected by nearest centroid at every step, gradient through a
straight-through estimator, ``model/model.py`` ``ContrasPQ``); (2) the dense embeddings are then
trained on the candidate distribution of the sparse ones (locality-centric sampling).

What runs here (``post_hoc``): the encoder is frozen, so step (2) cannot run and the disk tier holds
the data set's own embeddings; step (1) runs on the frozen embeddings: the codebooks (OPQ rotation
fixed) are trained with the paper's contrastive loss (in-batch + one random negative per query,
straight-through code selection) through the machinery of the learned PQs
(``methods/_learned_pq.py``: Adam with warm-up and decay, scores over a temperature for unit-norm
embeddings, the kept codebooks those with the best recall@10 on held-out training queries). The
harness passes no relevance labels to ``fit``, so each training query's positive is its exact
nearest neighbour among the training vectors: the dense embedding is the teacher.

Variants (the RAM tier; the disk tier and post verification are the same):

* ``opq``: faiss-style OPQ + PQ codes without the contrastive training (the paper's "conventional
  workflow" baseline: unsupervised quantization);
* ``ivf-pq``: IVF + PQ codes (faiss ``IndexIVFPQ``, nlist = 4·√n, searched with ``nprobe``), the
  "with IVF" RAM tier; +8 B/vector ids;
* ``binary``: sign bits ``x > 0`` searched by Hamming distance (the binary-rescore recipe's codes),
  ⌈d/8⌉ B/vector; fusion with the Hamming score is meaningless, so ``sparse_weight`` is 0.

The paper's lightweight *sparse* (lexical) embeddings are not tried: in the paper and its code
"sparse" names the PQ codes, not a term-weight vector; nothing else is meant by it.

Disk tier (``disk`` build parameter): float32 (the paper) or float16 rows in a file of
:class:`harness.disk_tier.VectorFile`, read through a read-only memory map with ``MADV_RANDOM``
(only the touched pages are read), one gather of the query batch's unique candidate ids, sorted
(reads go forward through the file). The file lives in a temporary folder the index owns (under
``$VECBUDGET_DISK_DIR`` when set), removed with the index; ``save()`` writes to the
given path, one ``.npz`` holding both tiers (the RAM tier's serialised form and the rows).

Search: ``factor``: candidates = min(n, max(k, k·factor), 1000) (the paper: top 1,000);
``sparse_weight``: the fusion weight (0.3 the paper's, 0: the dense score alone, as the RAM-copy
re-rankers ``binary-rescore`` and ``ivf-pq`` refine do); ``nprobe`` for ``ivf-pq``.

Bytes per vector (RAM only; this places the run on the budget ladder): the RAM tier's —
paper / opq: m + (4·d² + 256·d·4)/n; ivf-pq: m + 8 + (nlist·(4·d + 8) + 256·d·4)/n;
binary: ⌈d/8⌉. Disk (``memory().disk``, not in the ladder): 4·d (float32) or 2·d (fp16) per vector.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, ClassVar

import numpy as np

from harness.disk_tier import VectorFile
from harness.method import PAPER_VARIANT, MemoryAccount, Method, expand_grid
from harness.registry import register
from methods import _faiss
from methods._learned_pq import LearnedPQ, TrainingData, scores

OPQ, IVF_PQ, BINARY = "opq", "ivf-pq", "binary"
VARIANTS = (PAPER_VARIANT, OPQ, IVF_PQ, BINARY)
#: the paper's candidate list (``--topk 1000``)
MAX_CANDIDATES = 1000
#: bytes of gathered candidate vectors per re-ranking chunk
CHUNK_BYTES = 64 << 20
#: random negatives per query in the contrastive loss (the paper's ``per_query_neg_num``)
NEGATIVES = 1
#: training queries per batch (the paper: 128 per device on 8 GPUs; 32 as the other learned PQs here)
BATCH_QUERIES = 32


class ContrastivePQ(LearnedPQ):
    """BiDR's RAM tier: OPQ + 8-bit PQ whose codebooks are trained by contrastive quantization."""

    name = "bidr-contrastive-pq"  # not registered: the RAM tier of ``bidr``
    paper = "Xiao et al., WWW 2022 (contrastive quantization)"
    bytes_formula = "m + (4·d² + 256·d·4)/n"
    fixed_codes = False  # ContrasPQ re-selects codes by nearest centroid
    neighbours_k = 10
    epochs = 6
    max_steps = 300
    lr = 0.02

    def _epoch_batches(self, data: TrainingData, rng: np.random.Generator) -> list[Any]:
        perm = rng.permutation(len(data.qr))
        return [perm[i:i + BATCH_QUERIES] for i in range(0, len(perm), BATCH_QUERIES)
                if len(perm[i:i + BATCH_QUERIES]) > 1]

    def _loss(self, torch: Any, params: dict[str, Any], data: TrainingData, batch: Any,
              rng: np.random.Generator) -> Any:
        cents = params["centroids"]  # (m, K, dsub)
        m, ksub, dsub = cents.shape
        nb = len(batch)
        pos = data.neighbours[batch, 0]
        neg = rng.integers(0, len(data.xr), size=nb * NEGATIVES)
        docs = torch.from_numpy(data.xr[np.concatenate([pos, neg])]).reshape(-1, m, dsub)
        # ContrasPQ: code selection by softmax over negative squared distances, hard by argmax,
        # gradient through the straight-through estimator
        d2 = ((docs[:, :, None, :] - cents[None]) ** 2).sum(-1)  # (D, m, K)
        proba = torch.softmax(-d2, -1)
        hard = torch.nn.functional.one_hot(proba.argmax(-1), ksub).to(proba.dtype)
        ste = hard - proba.detach() + proba
        quant = torch.einsum("dmk,mkc->dmc", ste, cents).reshape(docs.shape[0], -1)
        q = torch.from_numpy(data.qr[batch])
        s = scores(torch, q, quant, self.metric) / data.tau  # (B, B + B·NEG)
        # another query's positive that is this query's positive too is not a negative
        ids = np.concatenate([pos, neg])
        clash = (ids[None, :] == pos[:, None]) & ~np.eye(nb, ids.size, dtype=bool)
        s = s.masked_fill(torch.from_numpy(clash), float("-inf"))
        return torch.nn.functional.cross_entropy(s, torch.arange(nb))


@register
class BiDR(Method):
    name = "bidr"
    family = "two-tier"
    paper = ("Xiao, Liu, Shao, Lian, Xie et al., 'Progressively Optimized Bi-Granular Document Representation "
             "for Scalable Embedding Based Retrieval', WWW 2022")
    bytes_formula = ("RAM only: m + (4·d² + 256·d·4)/n (OPQ-PQ codes); ivf-pq: m + 8 + (nlist·(4·d+8) + "
                     "256·d·4)/n; binary: ⌈d/8⌉. Disk (not in the budget): {4·d | 2·d} (float32 | fp16)")
    build_grid: ClassVar[dict[str, list[Any]]] = {"variant": list(VARIANTS), "m": [48],
                                                  "disk": ["float32", "fp16"]}
    search_grid: ClassVar[dict[str, list[Any]]] = {"factor": [4, 16, 64], "sparse_weight": [0.3, 0.0],
                                                   "nprobe": [32, 128]}
    uses_train_queries = True
    post_hoc = ("the encoder is frozen: the dense (disk) tier holds the given embeddings (no training on the "
                "sparse tier's candidates); only the RAM tier's PQ codebooks are trained with the paper's "
                "contrastive quantization, with each training query's exact nearest neighbour as its positive")
    variants: ClassVar[dict[str, str]] = {
        OPQ: "RAM tier of faiss-style OPQ + PQ codes without contrastive training (the paper's unsupervised "
             "quantization baseline)",
        IVF_PQ: "RAM tier of IVF + PQ codes (faiss IndexIVFPQ, nlist = 4·√n, nprobe searched): candidate "
                "search without scanning every code; +8 B/vector ids",
        BINARY: "RAM tier of sign bits (x > 0) searched by Hamming distance, ⌈d/8⌉ B/vector; the Hamming "
                "score is not fused (sparse_weight 0)",
    }

    @classmethod
    def is_valid(cls, dim: int, variant: str = PAPER_VARIANT, m: int = 48, disk: str = "float32",
                 **_: Any) -> bool:
        if variant not in VARIANTS or disk not in ("float32", "fp16"):
            return False
        if variant == BINARY:  # m does not apply: one configuration
            return m == cls.build_grid["m"][0]
        return m <= dim and dim % m == 0

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, variant: str = PAPER_VARIANT, m: int = 48, **_: Any) -> float:
        if variant == BINARY:
            return float(-(-dim // 8))
        if variant == IVF_PQ:
            return _faiss.ivf_bytes_per_vector(dim, n, 4, float(m)) + _faiss.pq_codebook_bytes(dim, 8) / n
        return float(m) + (4.0 * dim * dim + _faiss.pq_codebook_bytes(dim, 8)) / n

    @classmethod
    def search_configs(cls, **build_params: Any) -> list[dict[str, Any]]:
        """``nprobe`` applies to ivf-pq only; the binary tier's Hamming score is never fused."""
        grid = dict(cls.search_grid)
        variant = cls.variant_of(build_params)
        if variant != IVF_PQ:
            grid.pop("nprobe")
        if variant == BINARY:
            grid["sparse_weight"] = [0.0]
        return expand_grid(grid)

    def __init__(self, dim: int, metric: str, variant: str = PAPER_VARIANT, m: int = 48, disk: str = "float32",
                 **build_params: Any):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, not {variant!r}")
        if disk not in ("float32", "fp16"):
            raise ValueError(f"disk must be 'float32' or 'fp16', not {disk!r}")
        super().__init__(dim, metric, variant=variant, m=m, disk=disk, **build_params)
        self.variant, self.m, self.disk = variant, int(m), disk
        self.ram: Method | None = None
        self.disk_file: VectorFile | None = None
        #: folder for the disk tier (None: $VECBUDGET_DISK_DIR, else the system's temporary folder)
        self.disk_dir: str | None = None
        self.threads = 1

    def _make_ram_tier(self) -> Method:
        from harness.registry import get_method

        if self.variant == PAPER_VARIANT:
            return ContrastivePQ(self.dim, self.metric, m=self.m)
        if self.variant == OPQ:
            return get_method("opq-pq")(self.dim, self.metric, m=self.m, nbits=8)
        if self.variant == IVF_PQ:
            return get_method("ivf-pq")(self.dim, self.metric, m=self.m, nlist_c=4, refine=False)
        return get_method("binary-rescore")(self.dim, self.metric, rescore="none")

    def set_num_threads(self, n: int) -> None:
        super().set_num_threads(n)
        self.threads = int(n)
        if self.ram is not None:
            self.ram.set_num_threads(n)

    # ----- lifecycle --------------------------------------------------------------------------
    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        self.ram = self._make_ram_tier()
        self.ram.expected_n = self.expected_n
        self.ram.set_num_threads(self.threads)
        self.ram.fit(train, train_queries if self.ram.uses_train_queries else None)
        for attr in ("train_sample", "training_notes"):
            if getattr(self.ram, attr, None):
                setattr(self, attr, getattr(self.ram, attr))

    def add(self, vectors: np.ndarray) -> None:
        x = _faiss.as_float32(vectors)
        if self.ram is None:
            self.fit(x)
        self.ram.add(x)
        if self.disk_file is None:
            self.disk_file = VectorFile(self.dim, self.disk, self.disk_dir)
        self.disk_file.append(x)
        self.ntotal = int(self.ram.ntotal)

    # ----- search -----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, factor: int = 16, sparse_weight: float = 0.3,
               nprobe: int = 32, **_: Any) -> tuple[np.ndarray, np.ndarray]:
        q = _faiss.as_float32(queries)
        k = int(k)
        kc = min(self.ntotal, max(k, k * int(factor)), max(k, MAX_CANDIDATES))
        w = 0.0 if self.variant == BINARY else float(sparse_weight)
        ram_params = {"nprobe": int(nprobe)} if self.variant == IVF_PQ else {}
        ram_scores, cand = self.ram.search(q, kc, **ram_params)
        cand = np.asarray(cand, dtype=np.int64)
        ram_scores = np.asarray(ram_scores, dtype=np.float32)
        out_s = np.empty((q.shape[0], k), np.float32)
        out_i = np.empty((q.shape[0], k), np.int64)
        rows = max(1, CHUNK_BYTES // max(1, kc * self.dim * 4))
        for r0 in range(0, q.shape[0], rows):
            sl = slice(r0, r0 + rows)
            out_s[sl], out_i[sl] = self._rerank(q[sl], cand[sl], ram_scores[sl], w, k)
        return out_s, out_i

    def _rerank(self, q: np.ndarray, cand: np.ndarray, ram_scores: np.ndarray, w: float,
                k: int) -> tuple[np.ndarray, np.ndarray]:
        """Post verification: candidates' rows read from the disk tier (one sorted gather), scored
        by the exact metric (+ w · the RAM tier's score), best k kept."""
        valid = cand >= 0
        uniq, inv = np.unique(cand[valid], return_inverse=True)
        rows = self.disk_file.gather(uniq)  # sorted ids: reads go forward through the file
        vecs = np.zeros(cand.shape + (self.dim,), np.float32)
        vecs[valid] = rows[inv]
        ip = np.einsum("qkd,qd->qk", vecs, q)
        if self.metric == "l2":
            dense = np.einsum("qkd,qkd->qk", vecs, vecs) - 2.0 * ip + (q * q).sum(1, keepdims=True)
            score = dense + w * ram_scores if w else dense
            key = np.where(valid, score, np.inf)
        else:
            score = ip + w * ram_scores if w else ip
            key = np.where(valid, -score, np.inf)
        kk = min(k, key.shape[1])
        order = np.argsort(key, axis=1, kind="stable")[:, :kk]
        ids = np.where(np.take_along_axis(valid, order, 1), np.take_along_axis(cand, order, 1), -1)
        sc = np.take_along_axis(score, order, 1).astype(np.float32)
        if kk < k:
            fill = np.float32(np.inf if self.metric == "l2" else -np.inf)
            ids = np.hstack([ids, np.full((ids.shape[0], k - kk), -1, np.int64)])
            sc = np.hstack([sc, np.full((sc.shape[0], k - kk), fill, np.float32)])
        return sc, ids

    # ----- accounting and storage -------------------------------------------------------------
    def memory(self) -> MemoryAccount:
        acc = self.ram.memory()
        disk = self.disk_file.nbytes if self.disk_file is not None else 0
        return MemoryAccount(codes=acc.codes, structure=acc.structure, shared=acc.shared, disk=int(disk))

    def save(self, path: str) -> int:
        """Both tiers in one ``.npz`` file at ``path``: the RAM tier's own serialised form
        (``ram``) and the disk tier's rows (``vectors``, streamed from the file map)."""
        with tempfile.TemporaryDirectory() as tmp:
            ram_path = os.path.join(tmp, "ram.bin")
            self.ram.save(ram_path)
            ram = np.fromfile(ram_path, dtype=np.uint8)
        arrays = {"ram": ram, "variant": np.array(self.variant)}
        if self.disk_file is not None and self.disk_file.n:
            arrays["vectors"] = self.disk_file.array
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return os.path.getsize(path)

    def close(self) -> None:
        """Remove the disk tier's file now (it is also removed when the index is collected)."""
        if self.disk_file is not None:
            self.disk_file.close()
            self.disk_file = None

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(f"{self.name} is not pickled: save() writes its RAM tier and its disk file")
