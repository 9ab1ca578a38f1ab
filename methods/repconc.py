"""RepCONC: PQ centroids trained by constrained clustering and a contrastive ranking loss, post hoc
on frozen embeddings.

Paper: Zhan, Mao, Liu, Guo, Zhang, Ma, "Learning Discrete Representations via Constrained
Clustering for Effective and Efficient Dense Retrieval", WSDM 2022 (code:
github.com/jingtaozhan/RepCONC, read, not copied).

The paper's recipe (stage 1, "constrained clustering"): start from an OPQ + PQ index (rotation
kept fixed); in every batch, assign the batch's documents to the centroids of each sub-space under
a *uniform* constraint — every centroid receives the same share of the batch — solved as an
entropy-regularised optimal transport by the Sinkhorn-Knopp algorithm on the sub-space distances
(centred and scaled to [-1, 1], ε = 0.003, 100 iterations; the code of a document is the argmax of
its transport plan); decode the documents from those codes and train with a contrastive loss (a
softmax cross-entropy of each query over the batch's positive and hard-negative documents; 11 hard
negatives per query from the warm-up model's retrieval; other queries' documents shared in the
batch; false negatives and duplicates masked; only the top-k hardest negatives of each query kept,
``dynamic_topk_hard_negative``) plus ``mse_loss_weight`` times the squared error between the
documents and their quantization. After training, documents are encoded by nearest centroid (no
constraint), as the paper's evaluation does. (Stage 2 of the paper runs JPQ on the result; see
``jpq``.)

What runs here (``post_hoc``): the encoders are frozen, so only the centroids train (the
gradient that the paper sends into the document encoder through the straight-through estimator
has nowhere to go). Relevance labels are not given to ``fit``: a training query's positive is one
of its exact top-10 neighbours among the training vectors (drawn anew each epoch), its hard
negatives are the initial OPQ index's top 200 minus those 10 (the paper draws them from the
warm-up model's retrieval). Sized for a CPU: 128 queries per batch (paper: 4,096), 7 hard
negatives per query and 7 kept (the paper's hint for limited machines), so a batch holds 1,024
documents, 4 per centroid; Sinkhorn runs on each document's 16 nearest centroids per sub-space
(a sparse kernel: on the [-1, 1] scale at ε = 0.003 an entry 0.03 farther than a document's nearest
centroid weighs e^-10 of it, so the dropped entries hardly carry mass), still 100 iterations.
Scores and the squared error are on the scale of the data (temperature and MSE weight relative
to E‖x‖², learning rate relative to the quantization error, see ``methods/_learned_pq.py``); 6
epochs (the paper: 4 with a far larger query set), at most 72 steps (fewer for n < 5,000); the kept
centroids are those of the epoch with the best recall@10 on held-out training queries (the
initial ones included).

Bytes per vector: m + (4·d² + 256·d·4)/n — exactly those of the ``opq-pq`` (8-bit) index it
replaces. Search: faiss's ADC kernels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import faiss
import numpy as np

from harness.registry import register
from methods import _faiss
from methods._learned_pq import NBITS, TEMPERATURE, LearnedPQ, TrainingData, copy_pq, decode, scores

BATCH = 128
NEG_PER_QUERY = 7
HARD_TOPK = 7  # dynamic_topk_hard_negative
HARDNEG_POOL = 200
N_POS = 10  # a query's positive is drawn from its exact top-N_POS neighbours
SK_EPSILON = 0.003
SK_ITERS = 100
SK_TOP = 16  # centroids per document and sub-space kept in the sparse Sinkhorn kernel
MSE_WEIGHT = 1.0  # relative to E‖x‖² (the paper: 1e-4 on its unnormalised embeddings)


@register
class RepCONC(LearnedPQ):
    name = "repconc"
    paper = ("Zhan, Mao, Liu, Guo, Zhang, Ma, 'Learning Discrete Representations via Constrained Clustering "
             "for Effective and Efficient Dense Retrieval', WSDM 2022")
    bytes_formula = "m + (4·d² + 256·d·4)/n (OPQ rotation + codebooks), as opq-pq 8-bit"
    post_hoc = ("the encoders are frozen: only the PQ centroids are trained, with per-batch uniform (Sinkhorn) "
                "assignment of documents to centroids, the contrastive loss and the MSE term, from opq-pq; "
                "positives are exact top-10 neighbours of the training queries (label-free)")
    build_grid: ClassVar[dict[str, list[Any]]] = {"m": [32, 48, 64], "nbits": [NBITS]}
    neighbours_k = N_POS
    epochs = 6
    max_steps = 72
    lr = 0.05

    def _add_training_data(self, data: TrainingData, x: np.ndarray, rng: np.random.Generator) -> None:
        index = faiss.IndexPQ(self.dim, self.m, NBITS, _faiss.faiss_metric(self.metric))
        index.pq = copy_pq(self._inner().pq)
        index.is_trained = True
        index.add_sa_codes(np.ascontiguousarray(data.codes0))
        _, ret = index.search(data.qr, min(HARDNEG_POOL + N_POS, index.ntotal))
        pool = np.where((ret[:, :, None] == data.neighbours[:, None, :N_POS]).any(2), -1, ret)
        order = np.argsort(pool < 0, axis=1, kind="stable")  # valid negatives first, in rank order
        data.extra["hardneg"] = np.take_along_axis(pool, order, 1)[:, :HARDNEG_POOL]

    def _epoch_batches(self, data: TrainingData, rng: np.random.Generator) -> list[Any]:
        perm = rng.permutation(len(data.qr))
        size = min(BATCH, len(perm))
        return [perm[i:i + size] for i in range(0, len(perm) - size + 1, size)]

    def _loss(self, torch: Any, params: dict[str, Any], data: TrainingData, batch: Any,
              rng: np.random.Generator) -> Any:
        cents = params["centroids"]
        nb = len(batch)
        npos = min(N_POS, data.neighbours.shape[1])
        pos = data.neighbours[batch, rng.integers(0, npos, size=nb)]
        negs = np.stack([_sample_negatives(data.extra["hardneg"][i], NEG_PER_QUERY, len(data.xr), rng)
                         for i in batch])
        docs = np.concatenate([pos, negs.ravel()])
        xd = torch.from_numpy(data.xr[docs])
        codes = constrained_codes(torch, xd, cents.detach())
        quant = decode(torch, codes, cents)
        q = torch.from_numpy(data.qr[batch])
        sim = scores(torch, q, quant, self.metric) / data.tau
        # masks: other pseudo-relevant documents of the query (false negatives) and repeated documents
        relevant = (docs[None, :, None] == data.neighbours[batch][:, None, :npos]).any(2)
        first = np.unique(docs, return_index=True)[1]
        dup = np.ones(len(docs), dtype=bool)
        dup[first] = False
        mask = relevant | dup[None, :]
        mask[np.arange(nb), np.arange(nb)] = False
        sim = sim.masked_fill(torch.from_numpy(mask), -1e4)
        # dynamic top-k hard negatives: keep only each query's HARD_TOPK highest-scoring negatives
        neg_sim = sim.detach().clone()
        neg_sim[torch.arange(nb), torch.arange(nb)] = -1e4
        keep = torch.zeros_like(sim, dtype=torch.bool)
        keep.scatter_(1, torch.topk(neg_sim, min(HARD_TOPK, neg_sim.shape[1] - 1), dim=1).indices, True)
        keep[torch.arange(nb), torch.arange(nb)] = True
        sim = sim.masked_fill(~keep, -1e4)
        ce = torch.nn.functional.cross_entropy(sim, torch.arange(nb))
        mse = (quant - xd).pow(2).sum(1).mean() / (data.tau / TEMPERATURE)
        return ce + MSE_WEIGHT * mse


def _sample_negatives(pool: np.ndarray, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """k hard negatives from a query's pool (valid ids first, -1 padding); random ids if short."""
    valid = pool[pool >= 0]
    if len(valid) >= k:
        return rng.choice(valid, k, replace=False)
    return np.concatenate([valid, rng.integers(0, n, size=k - len(valid))])


def constrained_codes(torch: Any, x: Any, centroids: Any, eps: float = SK_EPSILON, iters: int = SK_ITERS,
                      top: int = SK_TOP) -> Any:
    """Codes (B, m) of the batch's vectors under the uniform-assignment constraint per sub-space.

    Sinkhorn-Knopp on exp(-D'/ε), D' the squared distances centred and scaled to [-1, 1] per
    sub-space (as RepCONC), with the row marginal 1/K per centroid and 1/B per vector; the code is
    the argmax of each vector's transport plan. The kernel is kept sparse, on each vector's ``top``
    nearest centroids per sub-space, and run in float64.
    """
    m, ksub, dsub = centroids.shape
    b = x.shape[0]
    xs = x.reshape(b, m, dsub)
    dist = (xs.pow(2).sum(-1)[:, :, None] - 2 * torch.einsum("bmd,mkd->bmk", xs, centroids)
            + centroids.pow(2).sum(-1)[None, :, :])  # (B, m, K)
    hi = dist.amax(dim=(0, 2))
    lo = dist.amin(dim=(0, 2))
    mid = (hi + lo) / 2
    amp = hi - mid + 1e-5
    dn = (dist - mid[None, :, None]) / amp[None, :, None]
    top = min(top, ksub)
    negd, idx = torch.topk(-dn, top, dim=2)  # nearest centroids: (B, m, top)
    logits = (negd - negd[:, :, :1]).double() / eps  # shifted per vector: the nearest weighs 1
    kern = torch.exp(logits)
    flat = (torch.arange(m)[None, :, None] * ksub + idx).reshape(-1)
    u = torch.ones(m * ksub, dtype=torch.float64)
    tiny = 1e-300
    for _ in range(iters):  # index_select: ~5x faster than advanced indexing here
        v = (1.0 / b) / (kern * u.index_select(0, flat).reshape(b, m, top)).sum(2).clamp_min(tiny)  # (B, m)
        col = torch.zeros(m * ksub, dtype=torch.float64).index_add_(0, flat, (kern * v[:, :, None]).reshape(-1))
        u = torch.where(col > 0, (1.0 / ksub) / col.clamp_min(tiny), u)
    plan = kern * u.index_select(0, flat).reshape(b, m, top)
    return idx.gather(2, plan.argmax(2, keepdim=True)).squeeze(2)
