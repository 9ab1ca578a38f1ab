"""JPQ: product-quantization centroids trained with a ranking loss, post hoc on frozen embeddings.

Paper: Zhan, Mao, Liu, Guo, Zhang, Ma, "Jointly Optimizing Query Encoder and Product Quantization
to Improve Retrieval Performance", CIKM 2021 (code: github.com/jingtaozhan/JPQ, read, not copied).

The paper's recipe: build a faiss OPQ + PQ index of the documents (``OPQ{m},IVF1,PQ{m}x8``), keep
the rotation and every document's PQ codes fixed, and train the PQ centroid embeddings together
with the query encoder on the ranking task. For each training query the *current* PQ index is
searched (top 200, the "loss_neg_topK" negatives: dynamic hard negatives, refreshed at every step
as the centroids move); relevant documents missing from that list are appended; every
(relevant, irrelevant) pair in the list contributes ``log(1 + exp(s_irrel - s_rel))`` weighted by
``|1/rank_rel - 1/rank_irrel|`` with ranks beyond 10 weighted 0 ("lambda_cut", a LambdaRank-style
MRR@10 weight); AdamW with linear warm-up and decay.

What runs here (``post_hoc``): the encoders are frozen, so only the centroids train; the OPQ
rotation and the document codes stay those of ``opq-pq`` (the initialisation; documents added
later are encoded by the initial codebooks, as JPQ's index is). The harness gives ``fit`` no
relevance labels, so the relevant set of a training query is its exact top-10 neighbours among the
training vectors (label-free pseudo-labels); scores are divided by a temperature suited to
unit-norm embeddings and the learning rate is relative to the quantization error (see
``methods/_learned_pq.py``); sized for a 2-core CPU: 6 epochs (the paper: 6) of batches of 32
queries, at most 300 steps (fewer for n < 5,000); the kept centroids are those of
the epoch with the best recall@10 on held-out training queries (the initial ones included).

Variant ``query-map``: the stand-in for the paper's query-encoder training — a d×d linear map
applied to the query embedding before search (initialised to the identity, trained jointly with
the centroids). It is a stand-in, not the paper's encoder fine-tuning; it costs 4·d² shared bytes.

Bytes per vector: m + (4·d² + 256·d·4)/n — exactly those of the ``opq-pq`` (8-bit) index it
replaces (plus 4·d²/n for the query map of the variant). Search: faiss's ADC kernels.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, ClassVar

import faiss
import numpy as np

from harness.method import PAPER_VARIANT, MemoryAccount, nbytes
from harness.registry import register
from methods import _faiss
from methods._learned_pq import NBITS, LearnedPQ, TrainingData, copy_pq

QUERY_MAP = "query-map"
BATCH = 32
NEG_TOPK = 200  # the paper's loss_neg_topK
LAMBDA_CUT = 10  # the paper's lambda_cut: ranks beyond it get weight 0
QMAP_LR = 1e-4  # query-map learning rate (absolute: the map starts at the identity)


@register
class JPQ(LearnedPQ):
    name = "jpq"
    paper = ("Zhan, Mao, Liu, Guo, Zhang, Ma, 'Jointly Optimizing Query Encoder and Product Quantization "
             "to Improve Retrieval Performance', CIKM 2021")
    bytes_formula = "m + (4·d² + 256·d·4)/n (OPQ rotation + codebooks), as opq-pq 8-bit; query-map: + 4·d²/n"
    post_hoc = ("the encoders are frozen: only the PQ centroids are trained with JPQ's ranking loss and dynamic "
                "top-200 negatives (document codes and OPQ rotation fixed, initialised from opq-pq), with the "
                "exact top-10 neighbours of the training queries as label-free relevance")
    build_grid: ClassVar[dict[str, list[Any]]] = {"variant": [PAPER_VARIANT, QUERY_MAP], "m": [32, 48, 64],
                                                  "nbits": [NBITS]}
    variants: ClassVar[dict[str, str]] = {
        QUERY_MAP: "a trained d×d linear map on the query embedding stands in for the paper's query-encoder "
                   "training (the encoder cannot be fine-tuned here); +4·d² shared bytes"}
    fixed_codes = True
    neighbours_k = 10
    epochs = 6
    max_steps = 300
    lr = 0.02

    @classmethod
    def shared_extra_bytes(cls, dim: int, **params: Any) -> int:
        return 4 * dim * dim if cls.variant_of(params) == QUERY_MAP else 0

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.qmap: np.ndarray | None = None

    @property
    def _use_qmap(self) -> bool:
        return self.variant_of(self.params) == QUERY_MAP

    # ----- training ----------------------------------------------------------------------------
    def _add_training_data(self, data: TrainingData, x: np.ndarray, rng: np.random.Generator) -> None:
        index = faiss.IndexPQ(self.dim, self.m, NBITS, _faiss.faiss_metric(self.metric))
        index.pq = copy_pq(self._inner().pq)
        index.is_trained = True
        index.add_sa_codes(np.ascontiguousarray(data.codes0))
        data.extra["index"] = index  # the training documents' fixed codes, searched at every step
        data.extra["rot"] = self._rotation()

    def _new_state(self, torch: Any, data: TrainingData) -> dict[str, Any]:
        state = super()._new_state(torch, data)
        if self._use_qmap:
            state["qmap"] = torch.eye(self.dim, dtype=torch.float32, requires_grad=True)
        return state

    def _lrs(self, data: TrainingData) -> dict[str, float]:
        return {**super()._lrs(data), "qmap": QMAP_LR}

    def _epoch_batches(self, data: TrainingData, rng: np.random.Generator) -> list[Any]:
        perm = rng.permutation(len(data.qr))
        return [perm[i:i + BATCH] for i in range(0, len(perm), BATCH) if len(perm[i:i + BATCH]) > 1]

    def _loss(self, torch: Any, params: dict[str, Any], data: TrainingData, batch: Any,
              rng: np.random.Generator) -> Any:
        cents = params["centroids"]
        m, ksub, dsub = cents.shape
        if "qmap" in params:
            rot = torch.from_numpy(data.extra["rot"])
            q = (torch.from_numpy(data.q_raw[batch]) @ params["qmap"]) @ rot.T
        else:
            q = torch.from_numpy(data.qr[batch])
        # dynamic negatives: the current PQ index's top 200 for the current query embedding
        index = data.extra["index"]
        faiss.copy_array_to_vector(cents.detach().numpy().ravel(), index.pq.centroids)
        topk = min(NEG_TOPK, index.ntotal)
        _, retrieved = index.search(np.ascontiguousarray(q.detach().numpy()), topk)
        pos = data.neighbours[batch]
        cand, rel, valid = _candidates(retrieved, pos)
        nb, lc = cand.shape
        positions = np.broadcast_to(np.arange(1, lc + 1), (nb, lc))
        w = np.where(positions <= LAMBDA_CUT, 1.0 / positions, 0.0) * valid
        # scores of the candidates from their fixed codes and the current centroids (ADC tables)
        lut = torch.einsum("bmd,mkd->bmk", q.reshape(nb, m, dsub), cents)
        codes = torch.from_numpy(data.codes0[cand].astype(np.int64))  # (B, L, m)
        s = lut.gather(2, codes.permute(0, 2, 1)).sum(1)
        if self.metric == "l2":
            norms = cents.pow(2).sum(-1)  # (m, K)
            s = 2 * s - norms[torch.arange(m)[None, None, :], codes].sum(-1)
        s = s / data.tau
        rel_t = torch.from_numpy(rel & valid)
        irrel_t = torch.from_numpy(~rel & valid)
        pair = rel_t[:, :, None] & irrel_t[:, None, :]  # (B, rel i, irrel j)
        wt = torch.from_numpy(w.astype(np.float32))
        pair_w = (wt[:, None, :] - wt[:, :, None]).abs() * pair
        diff = s[:, None, :] - s[:, :, None]  # s_irrel - s_rel
        per_q = (torch.nn.functional.softplus(diff) * pair_w).sum((1, 2)) / pair.sum((1, 2)).clamp_min(1)
        return per_q.mean()

    def _adopt(self, state: dict[str, np.ndarray]) -> None:
        self.qmap = state.get("qmap")
        if self.qmap is not None:
            self.qmap = np.ascontiguousarray(self.qmap, dtype=np.float32)

    # ----- search and storage ------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        q = _faiss.as_float32(queries)
        if self.qmap is not None:
            q = np.ascontiguousarray(q @ self.qmap)
        return super().search(q, k, **search_params)

    def memory(self) -> MemoryAccount:
        acc = super().memory()
        return MemoryAccount(codes=acc.codes, structure=acc.structure, shared=acc.shared + nbytes(self.qmap))

    def save(self, path: str) -> int:
        if self.qmap is None:
            return super().save(path)
        blob = faiss.serialize_index(self.index)
        with open(path, "wb") as f:
            pickle.dump({"index": np.asarray(blob), "qmap": self.qmap}, f, protocol=pickle.HIGHEST_PROTOCOL)
        return os.path.getsize(path)


def _candidates(retrieved: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """JPQ's candidate list per query: the retrieved ranking, then the relevant documents it
    missed. Returns (ids (B, L+P), relevant mask, valid mask); padding ids are 0 and invalid."""
    nb, top = retrieved.shape
    rel_retrieved = (retrieved[:, :, None] == pos[:, None, :]).any(2)
    missed = ~(pos[:, :, None] == retrieved[:, None, :]).any(2)
    cand = np.concatenate([np.maximum(retrieved, 0), pos], axis=1)
    rel = np.concatenate([rel_retrieved, np.ones_like(missed)], axis=1)
    valid = np.concatenate([retrieved >= 0, missed], axis=1)
    # appended documents take the ranks right after the retrieved list, in order
    order = np.argsort(~valid, axis=1, kind="stable")
    return (np.take_along_axis(cand, order, 1), np.take_along_axis(rel, order, 1),
            np.take_along_axis(valid, order, 1))
