"""Distill-VQ: PQ centroids trained by distilling the dense embeddings' scores (label-free), post
hoc on frozen embeddings.

Paper: Xiao, Liu, Han, Zhang, Lian, Gong, Wang, Zhang, Yang, Xie, "Distill-VQ: Learning Retrieval
Oriented Vector Quantization By Distilling Knowledge from Dense Embeddings", SIGIR 2022; its
label-free recipe as released in LibVQ (github.com/staoxiao/LibVQ, ``distill_index_nolabel``; read,
not copied).

The recipe: start from a faiss OPQ + PQ index (rotation fixed, codebooks trainable). The teacher
is the dense embeddings themselves: for a query, the exact inner products with a candidate list of
documents; the student is the same query against the *quantized* documents, whose codes are chosen
by nearest centroid with a straight-through estimator (forward: the hard code; backward: through
the softmax over negative squared distances to the centroids). The loss is the listwise KL
divergence between the softmax of the teacher's and of the student's scores over the candidates,
so no relevance label is needed. LibVQ's label-free recipe makes the training data from the
embeddings: each training query's exact top 400 documents, the first as its positive and the
rest as its hard negatives; a batch holds every query's positive and one sampled hard negative,
and every query is scored against all of the batch's documents (in-batch candidates); AdamW with
10% linear warm-up then decay, 30 epochs. As the issue asks, documents also serve as pseudo-queries
with their exact neighbours (beside the training queries).

What runs here (``post_hoc``): the encoders are frozen (the paper may also train them), so only
the PQ centroids train; no IVF is trained (this is the PQ-only setting of LibVQ's 32 B/vector
anchor). Temperatures and the learning rate are on the data's scale (see
``methods/_learned_pq.py``); sized for a 2-core CPU: 10 epochs (LibVQ: 30) of at most 430 steps of
128 queries in all (fewer for n < 5,000); the kept centroids are those of the
epoch with the best recall@10 on held-out training queries (the initial ones included).

Bytes per vector: m + (4·d² + 256·d·4)/n — exactly those of the ``opq-pq`` (8-bit) index it
replaces. Search: faiss's ADC kernels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from harness.registry import register
from methods._learned_pq import NBITS, LearnedPQ, TrainingData, _neighbours, scores

BATCH = 128
TOPK = 400  # LibVQ's label-free top-k: the first is the positive, the rest hard negatives
NEG_PER_QUERY = 1
DOC_QUERIES = 4000  # training vectors used as pseudo-queries beside the training queries


@register
class DistillVQ(LearnedPQ):
    name = "distill-vq"
    paper = ("Xiao, Liu, Han, Zhang, Lian, Gong, Wang, Zhang, Yang, Xie, 'Distill-VQ: Learning Retrieval Oriented "
             "Vector Quantization By Distilling Knowledge from Dense Embeddings', SIGIR 2022; LibVQ label-free recipe")
    bytes_formula = "m + (4·d² + 256·d·4)/n (OPQ rotation + codebooks), as opq-pq 8-bit"
    post_hoc = ("the encoders are frozen: only the PQ centroids are trained, by listwise KL distillation from the "
                "exact dense scores (LibVQ's label-free recipe: exact top-400 of training queries and of training "
                "vectors as pseudo-queries), from opq-pq")
    build_grid: ClassVar[dict[str, list[Any]]] = {"m": [32, 48, 64], "nbits": [NBITS]}
    neighbours_k = TOPK
    epochs = 10
    max_steps = 430
    lr = 0.02

    def _add_training_data(self, data: TrainingData, x: np.ndarray, rng: np.random.Generator) -> None:
        n = len(data.xr)
        rows = np.sort(rng.choice(n, min(n, DOC_QUERIES), replace=False))
        k = min(TOPK, n - 1)
        nn_docs = _neighbours(x, x[rows], k, self.metric, rows)
        nn_q = data.neighbours[:, :k]
        data.extra["pq_queries"] = np.concatenate([data.qr, data.xr[rows]])  # rotated pseudo-queries
        data.extra["pq_raw"] = np.concatenate([data.q_raw, x[rows]])
        data.extra["pq_nn"] = np.concatenate([nn_q, nn_docs])
        data.source = f"{len(data.qr)} training queries and {len(rows)} training vectors"

    def _epoch_batches(self, data: TrainingData, rng: np.random.Generator) -> list[Any]:
        perm = rng.permutation(len(data.extra["pq_queries"]))
        size = min(BATCH, len(perm))
        return [perm[i:i + size] for i in range(0, len(perm) - size + 1, size)]

    def _loss(self, torch: Any, params: dict[str, Any], data: TrainingData, batch: Any,
              rng: np.random.Generator) -> Any:
        cents = params["centroids"]
        m, ksub, dsub = cents.shape
        nn = data.extra["pq_nn"][batch]
        pos = nn[:, 0]
        negs = nn[np.arange(len(batch))[:, None],
                  rng.integers(1, nn.shape[1], size=(len(batch), NEG_PER_QUERY))].ravel()
        docs = np.concatenate([pos, negs])
        q = torch.from_numpy(data.extra["pq_queries"][batch])
        xd = torch.from_numpy(data.xr[docs])
        teacher = scores(torch, q, xd, self.metric) / data.tau  # exact dense scores
        student = scores(torch, q, ste_quantize(torch, xd, cents), self.metric) / data.tau
        log_t = torch.log_softmax(teacher, dim=1)
        kl = (log_t.exp() * (log_t - torch.log_softmax(student, dim=1))).sum(1)
        return kl.mean()


def ste_quantize(torch: Any, x: Any, centroids: Any) -> Any:
    """Quantize x (B, d) by nearest centroid per sub-space with a straight-through estimator:
    forward the hard assignment, backward through softmax(-‖x - c‖²) (LibVQ's)."""
    m, ksub, dsub = centroids.shape
    xs = x.reshape(x.shape[0], m, dsub)
    dist = (xs.pow(2).sum(-1)[:, :, None] - 2 * torch.einsum("bmd,mkd->bmk", xs, centroids)
            + centroids.pow(2).sum(-1)[None, :, :])
    soft = torch.softmax(-dist, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    assign = hard - soft.detach() + soft
    return torch.einsum("bmk,mkd->bmd", assign, centroids).reshape(x.shape[0], -1)
