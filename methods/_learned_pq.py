"""Shared machinery of the learned product quantizers (JPQ, RepCONC, Distill-VQ) trained post hoc
on frozen embeddings.

All three papers start from a faiss OPQ + PQ index, keep the OPQ rotation fixed and train the PQ
centroids (and, in the papers, the encoders) for *ranking*. Here the encoders are frozen, so only
the centroids (and JPQ's optional query-side linear map) are trained. This module provides:

* :class:`LearnedPQ`, the faiss-backed plugin base: initialisation from the registered ``opq-pq``
  method (the very index that method builds: non-parametric OPQ + 8-bit ``IndexPQ``), training by
  the subclass's loss, and the trained codebooks written back into the faiss ``IndexPQ`` so that
  search runs in faiss's own ADC kernels with exactly the bytes of the OPQ + PQ it replaces;
* the label-free training signal: exact nearest neighbours of the training queries among the
  training vectors (the frozen embeddings' own ranking) are the pseudo-relevant documents; the
  harness never passes relevance judgments to ``fit``;
* a seeded training loop (Adam with linear warm-up and decay, as the papers' AdamW schedules) that
  is resumable: with ``VECBUDGET_CHECKPOINT_DIR`` set (or the ``checkpoint_dir`` attribute), the
  state after every epoch is written there and an interrupted ``fit`` of the same configuration on
  the same data continues from its last epoch; the checkpoint is removed when training completes;
* model selection on held-out *training* queries: before training and after every epoch the
  recall@10 (against exact neighbours among the training vectors) of the current codebooks is
  measured on a held-out fifth of the training queries and the best state is kept, so training
  never ends below its initialisation on that measure. Test queries are never seen.

Score scale: the papers use temperature 1 on raw dot products of unnormalised BERT embeddings,
whose scores span tens of units; our embeddings are unit-norm (cosine), scores span [-1, 1], and a
softmax at temperature 1 would be almost uniform. Scores are therefore divided by
``τ = TEMPERATURE · E‖x‖²`` (0.05 for unit vectors, the scale sentence-transformers trains with).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import faiss
import numpy as np

from harness.errors import VecbudgetError
from harness.groundtruth import exact_knn
from harness.method import MemoryAccount
from methods import _faiss
from methods.opq_pq import OPQProductQuantizer
from methods.pq import flat_code_bytes

#: optional dependency group these modules need
EXTRA = "learned"
NBITS = 8
KSUB = 1 << NBITS
#: scores are divided by TEMPERATURE · E‖x‖² (see the module docstring)
TEMPERATURE = 0.05
#: share of the training queries held out for model selection (at most VAL_MAX queries)
VAL_SHARE = 0.2
VAL_MAX = 400
VAL_K = 10
#: environment variable naming a folder for resumable training checkpoints
CHECKPOINT_ENV = "VECBUDGET_CHECKPOINT_DIR"
WARMUP_SHARE = 0.1
#: training-set size from which the full step budget (``max_steps``) runs; smaller sets get fewer steps
#: (tiny test sets train fast). Was 20,000 at first: on SciFact (n = 5,183) that left 3 epochs and the
#: held-out *training-query* recall was still rising (repconc m=32: 0.7111 kept vs 0.7204 with the full
#: budget; distill-vq: 0.7167 vs 0.7284), so the budget no longer shrinks from n = 5,000
FULL_N = 5000
MIN_STEPS = 10


def require_torch(name: str) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise VecbudgetError(f"{name} needs PyTorch (CPU), which is not installed: pip install '.[learned]'") from exc
    return torch


@dataclass
class TrainingData:
    """Everything a learned PQ trains on, in the OPQ-rotated space."""

    xr: np.ndarray  # (n, d) rotated training vectors
    qr: np.ndarray  # (nq, d) rotated training (pseudo-)queries
    q_raw: np.ndarray  # (nq, d) the same queries before rotation (for the query-side map)
    neighbours: np.ndarray  # (nq, k) exact neighbours of each query among xr, best first
    val_qr: np.ndarray  # held-out queries (rotated)
    val_raw: np.ndarray
    val_truth: np.ndarray  # (nval, VAL_K) exact neighbours
    codes0: np.ndarray  # (n, m) uint8 initial codes of xr
    centroids0: np.ndarray  # (m, KSUB, dsub)
    tau: float
    coord_scale: float  # RMS quantization error per coordinate of the initial codes
    metric: str
    source: str  # what the queries are ("training queries", "training vectors")
    extra: dict[str, Any] = field(default_factory=dict)


class LearnedPQ(_faiss.FaissMethod):
    """Base of the post-hoc learned PQs: OPQ + 8-bit IndexPQ initialised by ``opq-pq``."""

    family = "learned-vq"
    build_grid: ClassVar[dict[str, list[Any]]] = {"m": [32, 48, 64], "nbits": [NBITS]}
    uses_train_queries = True
    requires = ("torch",)
    #: exact neighbours per training query the subclass needs (pseudo-labels, candidates)
    neighbours_k: ClassVar[int] = 10
    #: training schedule, overridden by each method
    epochs: ClassVar[int] = 10
    max_steps: ClassVar[int] = 2000  # at n = FULL_N; scaled down with n
    lr: ClassVar[float] = 0.02  # relative to the RMS quantization error per coordinate
    #: whether the documents keep their initial codes (JPQ) or are re-encoded by nearest centroid
    fixed_codes: ClassVar[bool] = False

    @classmethod
    def is_valid(cls, dim: int, m: int = 32, nbits: int = NBITS, **params: Any) -> bool:
        variant = cls.variant_of(params)
        return nbits == NBITS and m <= dim and dim % m == 0 and (variant == "paper" or variant in cls.variants)

    @classmethod
    def shared_extra_bytes(cls, dim: int, **params: Any) -> int:
        """Shared bytes beyond the OPQ rotation and the codebooks (e.g. JPQ's query map)."""
        return 0

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, m: int = 32, nbits: int = NBITS, **params: Any) -> float:
        shared = 4.0 * dim * dim + _faiss.pq_codebook_bytes(dim, nbits) + cls.shared_extra_bytes(dim, **params)
        return float(m * nbits // 8) + shared / n

    def __init__(self, dim: int, metric: str, **build_params: Any):
        require_torch(self.name)
        super().__init__(dim, metric, **build_params)
        self.m = int(build_params.get("m", 32))
        self.seed = int(build_params.get("seed", 0))
        self.threads = 1
        self.checkpoint_dir: str | None = os.environ.get(CHECKPOINT_ENV) or None
        self.history: list[float] = []  # mean training loss per epoch
        self.val_history: list[float] = []  # held-out recall@10: init, then after every epoch
        self._init_pq: faiss.ProductQuantizer | None = None  # initial codebooks (fixed-code methods)

    def set_num_threads(self, n: int) -> None:
        super().set_num_threads(n)
        self.threads = int(n)

    # ----- faiss parts ---------------------------------------------------------------------------
    def _inner(self) -> faiss.IndexPQ:
        return faiss.downcast_index(faiss.downcast_index(self.index).index)

    def _rotation(self) -> np.ndarray:
        opq = self._parts[0]
        return faiss.vector_to_array(opq.A).reshape(opq.d_out, opq.d_in).astype(np.float32)

    def _set_centroids(self, centroids: np.ndarray) -> None:
        pq = self._inner().pq
        faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(), pq.centroids)
        if pq.transposed_centroids.size():
            pq.sync_transposed_centroids()

    # ----- lifecycle -----------------------------------------------------------------------------
    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        x = _faiss.as_float32(train)
        t0 = time.perf_counter()
        init = OPQProductQuantizer(self.dim, self.metric, m=self.m, nbits=NBITS)
        init.expected_n = self.expected_n or x.shape[0]
        init.set_num_threads(self.threads)
        init.fit(x)
        self.index, self._parts = init.index, init._parts
        init_note = str(getattr(init, "training_notes", ""))
        init_s = time.perf_counter() - t0
        pq = self._inner().pq
        #: digest of the initial codebooks, to check that an ``opq-pq`` build is this one's initialisation
        self.init_digest = hashlib.sha256(faiss.vector_to_array(pq.centroids).tobytes()).hexdigest()[:16]
        if self.fixed_codes:
            self._init_pq = copy_pq(pq)  # a copy: the documents keep these codes
        data = self._training_data(x, train_queries)
        centroids, info = self._train(data)
        self._set_centroids(centroids)
        self.train_sample = int(x.shape[0])
        self.training_notes = (
            f"init opq-pq ({init_s:.1f} s): {init_note}; {self.name}: {info['note']}")

    def add(self, vectors: np.ndarray) -> None:
        x = _faiss.as_float32(vectors)
        if self.index is None:
            self.fit(x)
        if self.fixed_codes and self._init_pq is not None:
            xr = np.ascontiguousarray(x @ self._rotation().T)
            codes = self._init_pq.compute_codes(xr)
            inner = self._inner()
            inner.add_sa_codes(codes)
            self.index.ntotal = inner.ntotal
        else:
            self.index.add(x)
        self.ntotal = int(self.index.ntotal)

    def memory(self) -> MemoryAccount:
        return _faiss.account(self.index, codes=flat_code_bytes(self._inner()), structure=0)

    # ----- training data -------------------------------------------------------------------------
    def _training_data(self, x: np.ndarray, train_queries: np.ndarray | None) -> TrainingData:
        rng = np.random.default_rng(self.seed)
        rot = self._rotation()
        n = x.shape[0]
        if train_queries is not None and len(train_queries) >= 10:
            q = _faiss.as_float32(train_queries)
            self_ids = None
            source = f"{len(q)} training queries"
        else:  # no training queries: training vectors stand in (excluded from their own lists)
            rows = np.sort(rng.choice(n, min(n, 2000), replace=False))
            q, self_ids = x[rows], rows
            source = f"{len(q)} training vectors as pseudo-queries (no training queries given)"
        perm = rng.permutation(len(q))
        nval = max(1, min(VAL_MAX, int(round(VAL_SHARE * len(q)))))
        val_rows, tr_rows = np.sort(perm[:nval]), np.sort(perm[nval:])
        k = min(max(self.neighbours_k, VAL_K), n - 1)
        nn = _neighbours(x, q, k, self.metric, self_ids)
        xr = np.ascontiguousarray(x @ rot.T)
        qr = np.ascontiguousarray(q @ rot.T)
        pq = self._inner().pq
        centroids0 = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub).copy()
        with _faiss.blas_distances():
            codes0 = pq.compute_codes(xr).reshape(n, pq.M)
        energy = float((x * x).sum(1).mean())
        recon = centroids0[np.arange(pq.M)[None, :], codes0.astype(np.int64)].reshape(n, -1)
        coord_scale = float(np.sqrt(np.mean((xr - recon) ** 2)))
        data = TrainingData(
            xr=xr, qr=qr[tr_rows], q_raw=q[tr_rows], neighbours=nn[tr_rows], val_qr=qr[val_rows],
            val_raw=q[val_rows], val_truth=nn[val_rows, :VAL_K], codes0=codes0, centroids0=centroids0,
            tau=TEMPERATURE * max(energy, 1e-12),
            coord_scale=max(coord_scale, 1e-12), metric=self.metric, source=source)
        data.extra["self_ids"] = None if self_ids is None else self_ids[tr_rows]
        self._add_training_data(data, x, rng)
        return data

    def _add_training_data(self, data: TrainingData, x: np.ndarray, rng: np.random.Generator) -> None:
        """Hook for method-specific data (hard negatives, extra pseudo-queries)."""

    # ----- evaluation on held-out training queries -------------------------------------------
    def _val_recall(self, data: TrainingData, centroids: np.ndarray, qmap: np.ndarray | None = None) -> float:
        pq = faiss.ProductQuantizer(self.dim, self.m, NBITS)
        faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(), pq.centroids)
        index = faiss.IndexPQ(self.dim, self.m, NBITS, _faiss.faiss_metric(self.metric))
        index.pq = pq
        index.is_trained = True
        if self.fixed_codes:
            codes = data.codes0
        else:
            with _faiss.blas_distances():
                codes = pq.compute_codes(data.xr)
        index.add_sa_codes(np.ascontiguousarray(codes))
        q = data.val_qr if qmap is None else np.ascontiguousarray((data.val_raw @ qmap) @ self._rotation().T)
        k = min(VAL_K, data.val_truth.shape[1])
        _, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        hits = (ids[:, :, None] == data.val_truth[:, None, :k]).any(axis=2).sum()
        return float(hits) / (len(q) * k)

    # ----- the training loop -----------------------------------------------------------------
    def _new_state(self, torch: Any, data: TrainingData) -> dict[str, Any]:
        """Trainable tensors by name (subclasses may add e.g. a query map)."""
        c = torch.tensor(data.centroids0, dtype=torch.float32, requires_grad=True)
        return {"centroids": c}

    def _epoch_batches(self, data: TrainingData, rng: np.random.Generator) -> list[Any]:
        """The batches of one epoch (indices into the training queries, plus sampled extras)."""
        raise NotImplementedError

    def _loss(self, torch: Any, params: dict[str, Any], data: TrainingData, batch: Any,
              rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def _lrs(self, data: TrainingData) -> dict[str, float]:
        """Learning rates: ``lr`` is relative to the RMS quantization error per coordinate, so a
        step moves a centroid by a fixed share of the cell size whatever the data's scale (Adam
        steps are ~lr in absolute terms; the papers' absolute rates suit their embeddings only)."""
        return {"centroids": self.lr * data.coord_scale}

    def _export(self, params: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in params.items()}

    def _score_state(self, data: TrainingData, state: dict[str, np.ndarray]) -> float:
        return self._val_recall(data, state["centroids"], state.get("qmap"))

    def _adopt(self, state: dict[str, np.ndarray]) -> None:
        """Keep non-centroid parts of the selected state (e.g. the query map)."""

    def _checkpoint_path(self, data: TrainingData) -> str | None:
        if not self.checkpoint_dir:
            return None
        h = hashlib.sha256()
        h.update(json.dumps([self.name, sorted(self.params.items()), self.metric, self.seed],
                            default=str).encode())
        for a in (data.xr, data.qr, data.val_qr):
            h.update(np.ascontiguousarray(a).tobytes())
        return os.path.join(self.checkpoint_dir, f"{self.name}-{h.hexdigest()[:16]}.ckpt")

    def _train(self, data: TrainingData) -> tuple[np.ndarray, dict[str, Any]]:
        torch = require_torch(self.name)
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(max(self.threads, 1))
        torch.manual_seed(self.seed)
        try:
            return self._train_loop(torch, data)
        finally:
            torch.set_num_threads(prev_threads)

    def _train_loop(self, torch: Any, data: TrainingData) -> tuple[np.ndarray, dict[str, Any]]:
        rng = np.random.default_rng(self.seed + 1)
        params = self._new_state(torch, data)
        lrs = self._lrs(data)
        steps_per_epoch = max(1, len(self._epoch_batches(data, np.random.default_rng(0))))
        # the step budget is sized for n = 20,000 and shrinks with smaller training sets
        budget = max(MIN_STEPS, int(self.max_steps * min(1.0, len(data.xr) / FULL_N)))
        epochs = max(1, min(self.epochs, budget // steps_per_epoch))
        total = epochs * steps_per_epoch
        opt = Adam(torch, params, lrs)
        best = self._export(params)
        best_score = self._score_state(data, best)
        best_epoch, start_epoch = 0, 0
        self.history, self.val_history = [], [best_score]
        path = self._checkpoint_path(data)
        if path and os.path.isfile(path):  # resume an interrupted training of this configuration
            with open(path, "rb") as f:
                ck = pickle.load(f)
            with torch.no_grad():
                for k, v in ck["params"].items():
                    params[k].copy_(torch.from_numpy(v))
            opt.load(ck["opt"])
            rng.bit_generator.state = ck["rng"]
            best, best_score, best_epoch = ck["best"], ck["best_score"], ck["best_epoch"]
            self.history, self.val_history = ck["history"], ck["val_history"]
            start_epoch = ck["epoch"]
        t0 = time.perf_counter()
        for epoch in range(start_epoch, epochs):
            losses = []
            for batch in self._epoch_batches(data, rng):
                loss = self._loss(torch, params, data, batch, rng)
                opt.zero_grad()
                loss.backward()
                opt.step(_schedule(opt.t + 1, total))
                losses.append(float(loss.detach()))
            self.history.append(float(np.mean(losses)) if losses else float("nan"))
            state = self._export(params)
            score = self._score_state(data, state)
            self.val_history.append(score)
            if score > best_score:
                best, best_score, best_epoch = state, score, epoch + 1
            if path:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "wb") as f:
                    pickle.dump({"params": state, "opt": opt.dump(), "rng": rng.bit_generator.state,
                                 "best": best, "best_score": best_score, "best_epoch": best_epoch,
                                 "history": self.history, "val_history": self.val_history,
                                 "epoch": epoch + 1}, f)
                os.replace(tmp, path)
        if path and os.path.isfile(path):
            os.remove(path)
        self._adopt(best)
        train_s = time.perf_counter() - t0
        note = (f"post hoc on frozen embeddings; label-free: pseudo-relevant = exact top-"
                f"{self.neighbours_k} neighbours of {data.source} among the {len(data.xr)} training vectors; "
                f"{epochs} epochs x {steps_per_epoch} steps ({train_s:.1f} s); held-out recall@10 "
                f"({len(data.val_qr)} training queries) {self.val_history[0]:.4f} at init -> "
                f"{best_score:.4f} kept (epoch {best_epoch}); loss {_fmt(self.history[:1])} -> {_fmt(self.history[-1:])}")
        return best["centroids"], {"note": note, "best_epoch": best_epoch, "epochs": epochs}


def copy_pq(pq: faiss.ProductQuantizer) -> faiss.ProductQuantizer:
    """A trained copy of a faiss ProductQuantizer (its centroids)."""
    out = faiss.ProductQuantizer(pq.d, pq.M, pq.nbits)
    faiss.copy_array_to_vector(faiss.vector_to_array(pq.centroids), out.centroids)
    return out


def _schedule(step: int, total: int) -> float:
    """Linear warm-up over the first WARMUP_SHARE of the steps, then linear decay to 0 (the
    papers' ``get_linear_schedule_with_warmup``)."""
    warm = max(1, int(WARMUP_SHARE * total))
    if step <= warm:
        return step / warm
    return max(0.0, (total - step) / max(total - warm, 1))


def _fmt(values: list[float]) -> str:
    return f"{values[0]:.4f}" if values else "-"


def _neighbours(x: np.ndarray, q: np.ndarray, k: int, metric: str, self_ids: np.ndarray | None) -> np.ndarray:
    """Exact k nearest rows of x for each query, excluding each query's own row when given."""
    kk = min(k + int(self_ids is not None), x.shape[0])
    _, ids = exact_knn(x, q, kk, metric)
    if self_ids is not None:
        order = np.argsort(ids == self_ids[:, None], axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, 1)[:, : kk - 1]
    return np.ascontiguousarray(ids[:, :k])


def scores(torch: Any, q: Any, docs: Any, metric: str) -> Any:
    """Similarity (higher is better) of queries (B, d) to documents (L, d) or (B, L, d)."""
    if docs.dim() == 3:
        ip = torch.einsum("bd,bld->bl", q, docs)
        if metric == "l2":
            ip = 2 * ip - docs.pow(2).sum(-1)
        return ip
    ip = q @ docs.T
    if metric == "l2":
        ip = 2 * ip - docs.pow(2).sum(-1)[None, :]
    return ip


def decode(torch: Any, codes: Any, centroids: Any) -> Any:
    """Reconstruction (..., d) of integer codes (..., m) from centroids (m, K, dsub), differentiable."""
    m = centroids.shape[0]
    sub = centroids[torch.arange(m), codes]  # (..., m, dsub)
    return sub.reshape(*codes.shape[:-1], -1)


class Adam:
    """Adam with per-group learning rates and a step-wise scale (warm-up/decay), written out:
    torch.optim's first use imports torch._dynamo (~6 s). State can be dumped for resuming."""

    def __init__(self, torch: Any, params: dict[str, Any], lrs: dict[str, float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.torch, self.params, self.lrs, self.betas, self.eps = torch, params, lrs, betas, eps
        self.m = {k: torch.zeros_like(p) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def step(self, scale: float = 1.0) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        with self.torch.no_grad():
            for k, p in self.params.items():
                if p.grad is None:
                    continue
                m, v = self.m[k], self.v[k]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lrs[k] * scale)

    def dump(self) -> dict[str, Any]:
        return {"t": self.t, "m": {k: v.numpy().copy() for k, v in self.m.items()},
                "v": {k: v.numpy().copy() for k, v in self.v.items()}}

    def load(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        for k in self.m:
            self.m[k].copy_(self.torch.from_numpy(state["m"][k]))
            self.v[k].copy_(self.torch.from_numpy(state["v"][k]))
