"""Synthetic data sets: Gaussian mixtures of controlled intrinsic dimensionality, and LIMIT.

:func:`gaussian_mixture` places clustered points on a random ``intrinsic_dim``-dimensional linear
subspace of R^dim (plus small isotropic noise), so the local intrinsic dimensionality measured by
:mod:`harness.intrinsic` follows ``intrinsic_dim`` rather than ``dim``. ``query_shift`` moves the
queries partly out of that subspace: an out-of-distribution (OOD) query set in the sense of
LeanVec (Tepper et al., TMLR 2024), whose nearest documents are still well defined.

:func:`limit_dataset` builds the combinatorial core of LIMIT from Weller, Boratko, Naim & Lee,
"On the Theoretical Limitations of Embedding-Based Retrieval" (arXiv:2508.21038, 2025): ``n``
documents and one query for each of the C(n, k) k-subsets, whose relevant set is exactly that
subset. :func:`fit_free_embeddings` is the paper's "free embedding" experiment (§4): query and
document vectors are optimised directly on these qrels, unit-normalised after every update,
with Adam on the full-batch InfoNCE loss

    L = -(1/M) * sum_i log( sum_{r in R_i} exp(s_ir / tau) / sum_{j} exp(s_ij / tau) ),

stopping when every query's top-k is exactly its relevant set, or when the loss has not improved
for ``patience`` steps. :func:`critical_n` repeats it for n = k+1, k+2, ... at a fixed dimension
until it fails (the paper's critical-n point; its fit is n ≈ -10.53 + 4.03d + 0.052d² + 0.0037d³).
Departures from the paper: the natural-language LIMIT corpus (names and "likes" attributes) is
not generated, only its qrel structure; tau, learning rate and patience default to small values
that keep the helpers fast (the paper's patience is 1000 steps); success is judged strictly
(ties count as failures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from harness.errors import VecbudgetError

MAX_QUERIES = 2_000_000


# --------------------------------------------------------------------------------------------
# Gaussian mixtures


def _orthonormal(rng: np.random.Generator, dim: int, cols: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, cols)))
    return q * np.sign(np.diag(r))  # unique, uniformly distributed


def gaussian_mixture(
    n: int,
    nq: int,
    dim: int,
    intrinsic_dim: int,
    clusters: int = 10,
    seed: int = 0,
    *,
    spread: float = 4.0,
    noise: float = 0.01,
    query_shift: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered base (n, dim) and queries (nq, dim), float32, of intrinsic dimension ``intrinsic_dim``.

    Latent points z ~ N(c, I) around ``clusters`` centres c ~ N(0, spread² I) in
    R^intrinsic_dim are mapped by a random orthonormal basis U (dim × intrinsic_dim): x = U z + e,
    e ~ N(0, noise² I_dim). Queries are drawn the same way, then for ``query_shift`` s in [0, 1]
    expressed as q = sqrt(1-s)·U z + sqrt(s)·W z + e, with W a second orthonormal basis
    (orthogonal to U when dim >= 2·intrinsic_dim): s = 0 gives in-distribution queries; s > 0
    keeps ||q|| and the ranking signal U z but puts a fraction s of each query's energy outside
    the documents' subspace.
    """
    if not 1 <= intrinsic_dim <= dim:
        raise ValueError(f"intrinsic_dim must be in [1, dim={dim}], got {intrinsic_dim}")
    if not 0.0 <= query_shift <= 1.0:
        raise ValueError(f"query_shift must be in [0, 1], got {query_shift}")
    if n < 1 or nq < 0 or clusters < 1:
        raise ValueError("need n >= 1, nq >= 0 and clusters >= 1")
    rng = np.random.default_rng(seed)
    r = intrinsic_dim
    if dim >= 2 * r:
        basis = _orthonormal(rng, dim, 2 * r)
        u, w = basis[:, :r], basis[:, r:]
    else:
        u, w = _orthonormal(rng, dim, r), _orthonormal(rng, dim, r)
    centres = rng.normal(scale=spread, size=(clusters, r))

    def latent(m: int) -> np.ndarray:
        return centres[rng.integers(clusters, size=m)] + rng.normal(size=(m, r))

    base = latent(n) @ u.T + noise * rng.normal(size=(n, dim))
    zq = latent(nq)
    queries = (
        math.sqrt(1.0 - query_shift) * (zq @ u.T)
        + math.sqrt(query_shift) * (zq @ w.T)
        + noise * rng.normal(size=(nq, dim))
    )
    return base.astype(np.float32), queries.astype(np.float32)


# --------------------------------------------------------------------------------------------
# LIMIT


@dataclass
class LimitDataset:
    """LIMIT-style qrels: query i's relevant documents are exactly ``qrels[i]`` (a k-subset).

    ``docs``/``queries`` hold free embeddings of dimension ``dim`` fitted to the qrels when one
    was requested (else None); ``solved_fraction`` is the share of queries they realise exactly.
    """

    n_docs: int
    k: int
    qrels: np.ndarray  # (C(n, k), k) int64, all k-subsets in lexicographic order
    docs: np.ndarray | None = None
    queries: np.ndarray | None = None
    solved_fraction: float | None = None

    @property
    def n_queries(self) -> int:
        return int(self.qrels.shape[0])

    def relevance_matrix(self) -> np.ndarray:
        """Binary qrel matrix A (n_queries, n_docs), as in the paper's §3."""
        return relevance_matrix(self.qrels, self.n_docs)

    def qrels_dict(self) -> dict[str, dict[str, int]]:
        """BEIR/pytrec_eval form: ``{"q0": {"d0": 1, "d1": 1}, ...}``."""
        return {f"q{i}": {f"d{j}": 1 for j in row} for i, row in enumerate(self.qrels.tolist())}


def all_topk_sets(n_docs: int, k: int = 2) -> np.ndarray:
    """Every k-subset of ``range(n_docs)``, lexicographic, as an int64 array (C(n, k), k)."""
    if not 1 <= k <= n_docs:
        raise ValueError(f"need 1 <= k <= n_docs, got k={k}, n_docs={n_docs}")
    m = math.comb(n_docs, k)
    if m > MAX_QUERIES:
        raise VecbudgetError(
            f"C({n_docs}, {k}) = {m} queries is more than the {MAX_QUERIES} this generator builds"
        )
    flat = np.fromiter(
        (j for combo in combinations(range(n_docs), k) for j in combo), dtype=np.int64, count=m * k
    )
    return flat.reshape(m, k)


def relevance_matrix(qrels: np.ndarray, n_docs: int) -> np.ndarray:
    """Binary (n_queries, n_docs) matrix with A[i, j] = 1 iff document j is relevant to query i."""
    qrels = np.asarray(qrels)
    a = np.zeros((qrels.shape[0], n_docs), dtype=bool)
    a[np.arange(qrels.shape[0])[:, None], qrels] = True
    return a


def realised(queries: np.ndarray, docs: np.ndarray, qrels: np.ndarray) -> np.ndarray:
    """Per query: whether inner-product search returns exactly its relevant set as the top-k,
    i.e. every relevant score is strictly above every other score (ties fail)."""
    rel = relevance_matrix(qrels, docs.shape[0])
    s = np.asarray(queries, dtype=np.float64) @ np.asarray(docs, dtype=np.float64).T
    lo = np.where(rel, s, np.inf).min(axis=1)
    hi = np.where(rel, -np.inf, s).max(axis=1)
    return lo > hi


def limit_dataset(
    n_docs: int,
    k: int = 2,
    dim: int | None = None,
    seed: int = 0,
    **fit_options: Any,
) -> LimitDataset:
    """All C(n_docs, k) top-k sets as queries. With ``dim``, also fit free embeddings of that
    dimension (:func:`fit_free_embeddings`, options passed through) so the set can be searched."""
    qrels = all_topk_sets(n_docs, k)
    ds = LimitDataset(n_docs=n_docs, k=k, qrels=qrels)
    if dim is not None:
        fit = fit_free_embeddings(qrels, n_docs, dim, seed=seed, **fit_options)
        ds.docs, ds.queries, ds.solved_fraction = fit.docs, fit.queries, fit.solved_fraction
    return ds


@dataclass
class FreeEmbeddingFit:
    """Result of :func:`fit_free_embeddings`: unit vectors and how many qrels they realise."""

    queries: np.ndarray  # (n_queries, dim) float32, unit norm
    docs: np.ndarray  # (n_docs, dim) float32, unit norm
    solved_fraction: float  # share of queries whose top-k is exactly their relevant set
    steps: int  # optimisation steps run
    loss: float  # final InfoNCE loss

    @property
    def solved(self) -> bool:
        return self.solved_fraction == 1.0


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is an optional dependency
        raise VecbudgetError("free-embedding optimisation needs torch (pip install torch)") from e
    return torch


def fit_free_embeddings(
    qrels: np.ndarray,
    n_docs: int,
    dim: int,
    steps: int = 2000,
    seed: int = 0,
    *,
    lr: float = 0.05,
    temperature: float = 0.05,
    patience: int = 300,
    check_every: int = 10,
    loss: str = "pairs",
) -> FreeEmbeddingFit:
    """Optimise unit query and document vectors directly so each query's top-k is its qrel set.

    Adam on the full-batch multi-positive InfoNCE loss (see the module doc), renormalising the
    vectors after every step; stops at ``steps``, when all queries are realised (checked every
    ``check_every`` steps), or after ``patience`` steps without a lower loss. CPU torch, one
    thread per the torch default; seconds for n ≲ 30.
    """
    torch = _torch()
    qrels = np.asarray(qrels, dtype=np.int64)
    if qrels.ndim != 2 or qrels.size == 0:
        raise ValueError("qrels must be a non-empty (n_queries, k) array of document ids")
    if qrels.min() < 0 or qrels.max() >= n_docs:
        raise ValueError(f"qrels name documents outside [0, {n_docs})")
    if loss not in ("pairs", "summed"):
        raise ValueError(f"loss must be 'pairs' or 'summed', not {loss!r}")
    m = qrels.shape[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only add overhead
    try:
        g = torch.Generator().manual_seed(seed)
        q = torch.nn.functional.normalize(torch.randn(m, dim, generator=g, dtype=torch.float64), dim=1)
        d = torch.nn.functional.normalize(torch.randn(n_docs, dim, generator=g, dtype=torch.float64), dim=1)
        q.requires_grad_(True)
        d.requires_grad_(True)
        rel = torch.from_numpy(relevance_matrix(qrels, n_docs))
        pos = torch.from_numpy(qrels)
        opt = torch.optim.Adam([q, d], lr=lr)
        best, since, step, loss_v = math.inf, 0, 0, math.inf
        for step in range(1, steps + 1):  # noqa: B007 - step is reported after the loop
            s = (q @ d.T) / temperature
            if loss == "summed":
                lv = (torch.logsumexp(s, 1) - torch.logsumexp(s.masked_fill(~rel, -math.inf), 1)).mean()
            else:  # one InfoNCE term per (query, relevant document) against the non-relevant ones
                neg = torch.logsumexp(s.masked_fill(rel, -math.inf), 1, keepdim=True)
                sp = torch.gather(s, 1, pos)
                lv = (torch.logaddexp(sp, neg) - sp).mean()
            opt.zero_grad()
            lv.backward()
            opt.step()
            with torch.no_grad():
                q.copy_(torch.nn.functional.normalize(q, dim=1))
                d.copy_(torch.nn.functional.normalize(d, dim=1))
            loss_v = float(lv.detach())
            if loss_v < best - 1e-9:
                best, since = loss_v, 0
            else:
                since += 1
            if step % check_every == 0 or step == steps or since >= patience:
                done = realised(q.detach().numpy(), d.detach().numpy(), qrels).all()
                if done or since >= patience:
                    break
    finally:
        torch.set_num_threads(threads)
    qn, dn = q.detach().numpy(), d.detach().numpy()
    solved = float(realised(qn, dn, qrels).mean())
    return FreeEmbeddingFit(qn.astype(np.float32), dn.astype(np.float32), solved, step, loss_v)


def critical_n(
    dim: int, k: int = 2, n_max: int = 64, seed: int = 0, **fit_options: Any
) -> int:
    """The paper's critical-n at dimension ``dim``: the first n (from k+1 up) for which the free
    embedding optimisation fails to realise all C(n, k) top-k sets; ``n_max + 1`` if none fails."""
    for n in range(k + 1, n_max + 1):
        fit = fit_free_embeddings(all_topk_sets(n, k), n, dim, seed=seed, **fit_options)
        if not fit.solved:
            return n
    return n_max + 1
