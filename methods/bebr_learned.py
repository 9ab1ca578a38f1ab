"""BEBR, learned variant: recurrent binarization head trained on frozen embeddings.

Paper: Gan, Ge, Zhou, Su, Xu, Xu, Hui, Chen, Wang, Shan, "Binary Embedding-based Retrieval at
Tencent", KDD 2023 (arXiv:2302.08714).

Needs the ``learned`` extra (PyTorch, CPU): ``pip install '.[learned]'``. PyTorch is imported
lazily, only to train; encoding and search are numpy.

The paper compresses a float embedding into ``u`` binary vectors with a light model of residual
MLP blocks: step t binarizes (sign, trained with a straight-through estimator) an MLP transform of
the residual left by steps 0..t-1, and documents and queries are compared by symmetric distance
calculation (SDC) between their recurrent binary codes. It trains "embedding-to-embedding"
(task-agnostic, from the frozen embeddings alone). Our head, per step t:

    r_0 = (x - mean) P                     P: learned d x d orthogonal map (Cayley parametrised)
    v_t = r_t / rms(r_t)
    b_t = sign(v_t + W2_t relu(W1_t v_t + c1_t) + c2_t)    residual MLP block, STE for the sign
    a_t = max(<r_t, b_t> / d, 0)           least-squares step scale (stored per vector, fp16)
    r_{t+1} = r_t - a_t b_t

so ``x ≈ mean + P^T sum_t a_t b_t``. Because P is orthogonal, the inner product of two
reconstructions equals the SDC of the codes, ``sum_{s,t} a_s a'_t <b_s, b'_t>`` (popcounts), and
storage and search are exactly those of the training-free variant (``methods/bebr.py``): same
bytes per code, same kernels. Training (Adam, 150 steps of 32 anchors, seeded, PyTorch CPU):

* initialisation: P = PCA basis x ITQ rotation (the sign-friendly rotation of Gong & Lazebnik)
  and zero MLP outputs, i.e. training starts from residual binarization in the ITQ basis;
* loss = reconstruction error ``|r_0 - sum_t a_t b_t|^2 / E|r_0|^2`` (embedding-to-embedding)
  + 0.1 x a listwise similarity-preservation term: for anchor vectors, the KL divergence between
  the softmax of exact similarities and of SDC similarities over candidates made of each
  anchor's 10 exact nearest training neighbours plus random vectors. Anchors are training
  vectors; when training queries are given, half the anchors are queries (query-neighbour
  pairs);
* model selection: every 50 steps (and at the start) the SDC recall@10 of held-out anchors
  (held-out training queries if given, else training vectors) against 5000 training vectors
  is measured and the best checkpoint is kept, so training never ends below its ITQ start on
  that measure.

Bytes per vector: ``u·ceil(d/8) + 2u + 4 + 4·(d² + d + u·(2·h·d + h + d))/n`` (codes, fp16
scales, aux scalar; shared: P, mean, the u MLPs of hidden size h, needed to encode queries).

Post-hoc: the paper trains a full MLP binarizer and an MLP reconstruction block end to end
inside its retrieval system with a contrastive loss (and backward-compatible training), which
cannot run on frozen embeddings alone; we keep the binarizer's residual MLP blocks but make the reconstruction an
orthogonal linear map so that SDC is exact, initialise from ITQ, and train briefly on the
frozen embeddings only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from harness.errors import VecbudgetError
from harness.groundtruth import exact_knn
from harness.method import nbytes
from harness.registry import register
from methods import _bits
from methods.bebr import RecurrentBinaryIndex
from methods.itq import itq_rotation, pca_basis

#: optional dependency group this module needs
EXTRA = "learned"
TRAIN_SAMPLE = 20000
KL_WEIGHT = 0.1  # weight of the listwise similarity term next to the reconstruction error
LR = 2e-3
ANCHORS = 32  # anchors per step; each brings its 10 exact neighbours and 3 random vectors
ANCHOR_POOL = 2000  # training vectors (and queries) whose exact neighbours anchor the ranking loss
VAL_DOCS = 5000  # vectors searched during validation
VAL_ANCHORS = 300  # held-out anchors whose SDC recall picks the checkpoint
EVAL_EVERY = 50


def _require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise VecbudgetError(
            "bebr-learned needs PyTorch (CPU), which is not installed: pip install '.[learned]'"
        ) from exc
    return torch


def _mlp_forward(v: np.ndarray, w1: np.ndarray, c1: np.ndarray, w2: np.ndarray, c2: np.ndarray) -> np.ndarray:
    return np.maximum(v @ w1.T + c1, 0.0) @ w2.T + c2


@register
class BEBRLearned(RecurrentBinaryIndex):
    name = "bebr-learned"
    paper = ("Gan et al., 'Binary Embedding-based Retrieval at Tencent', KDD 2023 (arXiv:2302.08714); "
             "learned recurrent binarization (residual MLP blocks, STE), SDC search")
    bytes_formula = "u·ceil(d/8) + 2u + 4 + 4·(d² + d + u·(2hd + h + d))/n"
    post_hoc = ("trained briefly on the frozen embeddings only (no retrieval system, contrastive data or "
                "backward-compatible training): the paper's residual MLP binarizer blocks with an orthogonal "
                "linear reconstruction (so SDC is exact), initialised from ITQ")
    build_grid: ClassVar[dict[str, list[Any]]] = {"u": [1, 2, 4]}
    uses_train_queries = True
    hidden_default = 64
    steps_default = 150

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        u = int(build_params.get("u", 1))
        h = int(build_params.get("hidden", cls.hidden_default))
        shared = 4.0 * (dim * dim + dim + u * (2 * h * dim + h + dim))
        return cls.per_vector_bytes(dim, u, 1, int(build_params.get("rerank", 0))) + shared / n

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        return int(build_params.get("bits", 1)) == 1

    def __init__(self, dim: int, metric: str, **build_params: Any):
        _require_torch()
        if int(build_params.get("bits", 1)) != 1:
            raise ValueError("bebr-learned codes one bit per dimension per step (bits=1)")
        super().__init__(dim, metric, **build_params)
        self.hidden = int(build_params.get("hidden", self.hidden_default))
        self.train_steps = int(build_params.get("steps", self.steps_default))
        self.seed = int(build_params.get("seed", 0))
        self.rotation: np.ndarray | None = None
        self.mlps: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.threads = 1
        self.history: list[tuple[float, float]] = []  # (reconstruction, KL) loss per step

    def set_num_threads(self, n: int) -> None:
        super().set_num_threads(n)
        self.threads = int(n)

    # ----- encoder -------------------------------------------------------------------------------
    def _encode_centred(self, xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = (xc @ self.rotation).astype(np.float32)
        planes, scales = [], []
        for w1, c1, w2, c2 in self.mlps:
            v = r / np.maximum(np.sqrt((r * r).mean(axis=1, keepdims=True)), 1e-12)
            z = v + _mlp_forward(v, w1, c1, w2, c2)
            b = np.where(z >= 0, 1.0, -1.0).astype(np.float32)
            a = np.maximum((r * b).mean(axis=1), 0.0).astype(np.float16)
            r -= a.astype(np.float32)[:, None] * b
            planes.append((z >= 0)[:, None, :])
            scales.append(a)
        return np.concatenate(planes, axis=1), np.stack(scales, axis=1)

    def _shared_bytes(self) -> int:
        return nbytes(self.mean, self.rotation) + sum(nbytes(*m) for m in self.mlps)

    # ----- training ------------------------------------------------------------------------------
    def _fit_encoder(self, xc: np.ndarray, qc: np.ndarray | None) -> None:
        torch = _require_torch()
        rng = np.random.default_rng(self.seed)
        if xc.shape[0] > TRAIN_SAMPLE:
            xc = xc[np.sort(rng.choice(xc.shape[0], TRAIN_SAMPLE, replace=False))]
        d, u, h = self.dim, self.u, self.hidden
        w = pca_basis(xc, d)
        r_itq, _ = itq_rotation(xc[: min(xc.shape[0], 3000)] @ w, n_iter=20, seed=self.seed)
        p0 = w @ r_itq
        n = xc.shape[0]
        anchor_rows = np.sort(rng.choice(n, min(ANCHOR_POOL, n), replace=False))
        nn_x = _neighbours(xc[anchor_rows], xc, 10, self.metric, self_ids=anchor_rows)
        # validation: SDC recall@10 within a subset of the training vectors, for held-out training
        # queries when given (what the index will be asked), else for vectors of the subset
        val_docs = xc[np.sort(rng.choice(n, min(VAL_DOCS, n), replace=False))]
        nn_q = None
        if qc is not None and len(qc) >= 8:
            qperm = rng.permutation(qc.shape[0])
            nq_val = min(VAL_ANCHORS, qc.shape[0] // 4)
            val_x, val_self = qc[np.sort(qperm[:nq_val])], None
            qc = qc[np.sort(qperm[nq_val:][:ANCHOR_POOL])]
            nn_q = _neighbours(qc, xc, 10, self.metric)
        else:
            qc = None
            val_self = np.sort(rng.choice(val_docs.shape[0], min(VAL_ANCHORS, val_docs.shape[0]), replace=False))
            val_x = val_docs[val_self]
        val_nn = _neighbours(val_x, val_docs, 10, self.metric, val_self)

        def validate(p: np.ndarray, mlps: list) -> float:
            """Recall@10 of SDC search over the validation vectors for the validation anchors."""
            self.rotation, self.mlps = _orthogonalize(p), mlps
            return _sdc_recall(self, val_docs, val_x, val_nn, val_self)

        prev_threads = torch.get_num_threads()
        torch.set_num_threads(max(self.threads, 1))
        torch.manual_seed(self.seed)
        try:
            model = _Head(torch, d, u, h, p0)
            self.history, (p, mlps) = _train(torch, model, xc, anchor_rows, nn_x, qc, nn_q, self.metric,
                                             self.train_steps, rng, validate)
        finally:
            torch.set_num_threads(prev_threads)
        self.rotation = _orthogonalize(p)
        self.mlps = mlps


def _orthogonalize(p: np.ndarray) -> np.ndarray:
    """Nearest orthogonal matrix (polar factor), float32."""
    uu, _, vt = np.linalg.svd(p.astype(np.float64))
    return (uu @ vt).astype(np.float32)


def _sdc_recall(index: BEBRLearned, xc: np.ndarray, anchors: np.ndarray, truth: np.ndarray,
                self_ids: np.ndarray | None, k: int = 10) -> float:
    """Recall@k of the current encoder's SDC ranking of ``xc`` for centred ``anchors``."""
    k = min(k, xc.shape[0] - 1, truth.shape[1])
    if k < 1:
        return 0.0
    xp, xs = index._encode_centred(xc)
    ap, as_ = index._encode_centred(anchors)
    x_rec = index.reconstruct_codes(_bits.pack_signs(xp), xs)
    a_rec = index.reconstruct_codes(_bits.pack_signs(ap), as_)
    s = a_rec @ x_rec.T
    if index.metric == "ip":
        s += (xc @ index.mean)[None, :]
    else:
        s = 2 * s - (x_rec * x_rec).sum(1)[None, :]
    if self_ids is not None:
        s[np.arange(len(self_ids)), self_ids] = -np.inf
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    hits = (top[:, :, None] == truth[:, None, :k]).any(axis=2).sum()
    return float(hits) / (len(anchors) * k)


def _neighbours(a: np.ndarray, b: np.ndarray, k: int, metric: str,
                self_ids: np.ndarray | None = None) -> np.ndarray:
    """Exact k nearest rows of b for each row of a; ``self_ids``: the row of b that each row of a
    is, excluded from its own list."""
    exclude_self = self_ids is not None
    kk = min(k + int(exclude_self), b.shape[0])
    _, ids = exact_knn(b, a, kk, metric)
    if exclude_self:  # drop each row's own id (wherever ties put it), keep the order of the rest
        order = np.argsort(ids == self_ids[:, None], axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, 1)[:, : kk - 1]
    return ids[:, :k]


class _Head:
    """The torch model: orthogonal P (Cayley) and u residual MLP blocks with zero-initialised output."""

    def __init__(self, torch: Any, d: int, u: int, h: int, p0: np.ndarray):
        nn = torch.nn
        self.torch = torch
        self.lin = nn.Linear(d, d, bias=False)
        nn.utils.parametrizations.orthogonal(self.lin, orthogonal_map="cayley")
        with torch.no_grad():
            self.lin.weight = torch.tensor(p0.T, dtype=torch.float32)
        self.blocks = nn.ModuleList()
        for _ in range(u):
            blk = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d))
            nn.init.zeros_(blk[2].weight)
            nn.init.zeros_(blk[2].bias)
            self.blocks.append(blk)
        self.params = list(self.lin.parameters()) + list(self.blocks.parameters())

    def forward(self, x: Any) -> tuple[Any, Any]:
        """Centred x (B, d) -> (r_0 = x P, reconstruction sum_t a_t b_t) in the rotated space."""
        torch = self.torch
        y = self.lin(x)
        r = y
        rec = torch.zeros_like(y)
        for blk in self.blocks:
            v = r / r.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-24).sqrt()
            z = v + blk(v)
            zc = z.clamp(-1.0, 1.0)
            b = zc + (torch.where(z >= 0, 1.0, -1.0) - zc).detach()  # sign, straight-through
            a = (r * b).mean(dim=1, keepdim=True).clamp_min(0.0)
            rec = rec + a * b
            r = r - a * b
        return y, rec

    def export(self) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]:
        with self.torch.no_grad():
            p = self.lin.weight.detach().numpy().T.copy()
            mlps = [tuple(t.detach().numpy().astype(np.float32).copy()
                          for t in (blk[0].weight, blk[0].bias, blk[2].weight, blk[2].bias))
                    for blk in self.blocks]
        return p, mlps


def _similarity(torch: Any, a: Any, c: Any, metric: str) -> Any:
    s = a @ c.T
    if metric == "l2":
        s = 2 * s - a.pow(2).sum(1, keepdim=True) - c.pow(2).sum(1)[None, :]
    return s


def _train(torch: Any, model: _Head, xc: np.ndarray, anchor_rows: np.ndarray, nn_x: np.ndarray,
           qc: np.ndarray | None, nn_q: np.ndarray | None, metric: str, steps: int,
           rng: np.random.Generator, validate: Any, anchors: int = ANCHORS, extra: int = 3 * ANCHORS,
           lr: float = LR, eval_every: int = EVAL_EVERY) -> tuple[list[tuple[float, float]], Any]:
    """Adam on reconstruction + listwise similarity preservation.

    Every ``eval_every`` steps (and before the first) the model is exported and scored by
    ``validate`` (held-out SDC recall); the best checkpoint is returned with the loss history.
    """
    n = xc.shape[0]
    x_t = torch.from_numpy(np.ascontiguousarray(xc, dtype=np.float32))
    q_t = None if qc is None else torch.from_numpy(np.ascontiguousarray(qc, dtype=np.float32))
    energy = float((xc * xc).sum(1).mean())
    tau = 0.05 * energy  # temperature relative to the typical squared norm
    opt = _Adam(torch, model.params, lr=lr)
    history: list[tuple[float, float]] = []
    best = model.export()
    best_score = validate(*best)
    for step in range(1, steps + 1):
        use_q = q_t is not None and nn_q is not None and rng.random() < 0.5
        if use_q:
            rows = rng.integers(0, q_t.shape[0], size=anchors)
            anchor_x = q_t[rows]
            neigh = nn_q[rows]
        else:
            pick = rng.integers(0, anchor_rows.size, size=anchors)
            rows = anchor_rows[pick]
            anchor_x = x_t[rows]
            neigh = nn_x[pick]
        cand = np.concatenate([neigh.ravel(), rng.integers(0, n, size=extra)])
        y, r = model.forward(torch.cat([anchor_x, x_t[cand]]))  # one pass: P is computed once
        ya, ra, yc, rc = y[:anchors], r[:anchors], y[anchors:], r[anchors:]
        rec_loss = (y - r).pow(2).sum(1).mean() / energy
        t_s = _similarity(torch, ya, yc, metric) / tau
        s_s = _similarity(torch, ra, rc, metric) / tau
        if not use_q:  # an anchor is not its own candidate
            same = torch.from_numpy(rows[:, None] == cand[None, :])
            t_s = t_s.masked_fill(same, -1e9)
            s_s = s_s.masked_fill(same, -1e9)
        p_t = torch.softmax(t_s, dim=1)
        kl = (p_t * (torch.log_softmax(t_s, dim=1) - torch.log_softmax(s_s, dim=1))).sum(1).mean()
        loss = rec_loss + KL_WEIGHT * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((float(rec_loss.detach()), float(kl.detach())))
        if step % eval_every == 0 or step == steps:
            state = model.export()
            score = validate(*state)
            if score > best_score:
                best, best_score = state, score
    return history, best


class _Adam:
    """Plain Adam (Kingma & Ba), written out: torch.optim's first use imports torch._dynamo (~6 s)."""

    def __init__(self, torch: Any, params: list[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.torch, self.params, self.lr, self.betas, self.eps = torch, params, lr, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        with self.torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                if p.grad is None:
                    continue
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)
