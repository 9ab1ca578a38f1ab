"""LeanVec: linear dimensionality reduction + compressed primary vectors + full-dim re-ranking.

Paper: M. Tepper, I. S. Bhati, C. Aguerrebere, M. Hildebrand, T. Willke, "LeanVec: Searching
vectors faster by making them fit", TMLR 2024 (arXiv:2312.16335). Reference code: Intel's
ScalableVectorSearch (``svs/leanvec``) and its Python ``compute_leanvec_matrices`` (LeanVec-OOD).

Two copies of every vector are held in RAM: the *primary* reduced vectors (k dims, LVQ-8 or
float16), scanned exhaustively for the best k_search·``rerank_factor`` candidates, and the
*secondary* full-dimension vectors (float16, float32 or LVQ-8) that re-rank them.

* ``leanvec-id``: the projection is PCA to k dims (eigenvectors of the covariance of the
  centred training vectors); queries and documents use the same matrix P.
* ``leanvec-ood``: a query matrix A and a data matrix B (d×k each) minimising the paper's loss
  f(A, B) = ‖Qᵀ X − Qᵀ A Bᵀ X‖²_F = tr(AᵀK_Q A · BᵀK_X B) − 2·tr(BᵀK_X K_Q A) + tr(K_Q K_X),
  with K_Q = QᵀQ/m and K_X = XᵀX/n the (uncentred) second moments of the training queries and
  of the data, over the relaxation {‖A‖₂ ≤ 1, ‖B‖₂ ≤ 1} (spectral-norm balls, the convex hull of
  matrices with orthonormal columns). What is implemented, exactly:

  1. *Frank–Wolfe block-coordinate descent* as in the paper and Intel's reference code: A = B = 0,
     then for t = 0, 1, …: γ = (t+1)^−0.999; A ← (1−γ)A + γ·(−UVᵀ) where UΣVᵀ is the SVD of
     ∇_A f (the linear-minimisation oracle of the spectral-norm ball); then the same for B with
     the new A; stop when the loss changes by less than 1e-3 (relative) or after 500 steps.
  2. *Eigenvector search* (the paper's second technique, as we read it): A = B = P with P the
     top-k eigenvectors of β·K_Q/‖K_Q‖_F + (1−β)·K_X/‖K_X‖_F for β ∈ {0, 0.1, …, 1}.
  The pair with the lower loss f is kept (``self.notes`` records both losses).

  Without training queries ``leanvec-ood`` falls back to LeanVec-ID (A = B = PCA matrix, both
  held, so the size formula is unchanged) and says so in ``self.notes``.

Queries are mapped with P (ID) or A (OOD), documents with P or B; as in SVS the documents are
not mean-centred for the projection (a constant shift changes no ranking for inner product and
cancels for L2), and L2 is computed between the reduced query and reduced document.

Bytes per vector: primary (LVQ-8: k + 4, float16: 2k) + secondary (LVQ-8: d + 4, float16: 2d,
float32: 4d) + shared/n, shared = projection matrices (ID: 4·d·k, OOD: 8·d·k) + the LVQ means
(4·k for an LVQ primary, 4·d for an LVQ secondary).

Post-hoc: the primary vectors are scanned exhaustively (flat) instead of through the paper's
graph (Intel's SVS is not installed here). Variants: none. The projections are learned on frozen
embeddings, as in the paper.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.method import MemoryAccount, Method
from harness.registry import register
from methods import _kernels
from methods._lvq_codec import LVQStore, blocked_knn, fit_pca, rerank, set_threads

PAPER = (
    "Tepper, Bhati, Aguerrebere, Hildebrand, Willke, 'LeanVec: Searching vectors faster by "
    "making them fit', TMLR 2024"
)


# --------------------------------------------------------------------------------------------
# LeanVec-OOD optimisation
# --------------------------------------------------------------------------------------------
def ood_loss(
    kq: np.ndarray, kx: np.ndarray, kxq: np.ndarray, a: np.ndarray, b: np.ndarray, const: float
) -> float:
    """f(A, B) = tr(AᵀK_Q A · BᵀK_X B) − 2 tr(Bᵀ K_X K_Q A) + tr(K_Q K_X); ``kxq`` = K_X K_Q."""
    return float(np.sum((a.T @ kq @ a) * (b.T @ kx @ b)) - 2 * np.sum(b * (kxq @ a)) + const)


def _lmo(grad: np.ndarray) -> np.ndarray:
    """argmin over the spectral-norm unit ball of <grad, S>: −U Vᵀ."""
    u, _, vt = np.linalg.svd(grad, full_matrices=False)
    return -(u @ vt)


def frank_wolfe_bcd(
    kq: np.ndarray, kx: np.ndarray, k: int, max_steps: int = 500, rel_tol: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """LeanVec-OOD Frank–Wolfe BCD from A = B = 0 with γ_t = (t+1)^−0.999. Returns (A, B, loss, steps)."""
    d = kq.shape[0]
    kxq = kx @ kq
    const = float(np.sum(kq * kx))
    a = np.zeros((d, k))
    b = np.zeros((d, k))
    prev = None
    loss = const
    t = 0
    for t in range(max_steps):  # noqa: B007
        gamma = 1.0 / (t + 1) ** 0.999
        kxb = kx @ b
        grad_a = 2 * kq @ (a @ (b.T @ kxb) - kxb)
        a = (1 - gamma) * a + gamma * _lmo(grad_a)
        kqa = kq @ a
        grad_b = 2 * kx @ (b @ (a.T @ kqa) - kqa)
        b = (1 - gamma) * b + gamma * _lmo(grad_b)
        loss = ood_loss(kq, kx, kxq, a, b, const)
        if prev is not None and t > 1 and abs(loss - prev) < rel_tol * abs(prev):
            break
        prev = loss
    return a, b, loss, t + 1


def eigenvector_search(
    kq: np.ndarray, kx: np.ndarray, k: int, betas: int = 11
) -> tuple[np.ndarray, float, float]:
    """A = B = P, P the top-k eigenvectors of β·K_Q/‖K_Q‖ + (1−β)·K_X/‖K_X‖, best β on a grid."""
    kxq = kx @ kq
    const = float(np.sum(kq * kx))
    nq, nx = np.linalg.norm(kq) or 1.0, np.linalg.norm(kx) or 1.0
    best: tuple[np.ndarray, float, float] | None = None
    for beta in np.linspace(0.0, 1.0, betas):
        _, vecs = np.linalg.eigh(beta * kq / nq + (1 - beta) * kx / nx)
        p = vecs[:, ::-1][:, :k]
        loss = ood_loss(kq, kx, kxq, p, p, const)
        if best is None or loss < best[1]:
            best = (p, loss, float(beta))
    assert best is not None
    return best


def leanvec_ood_matrices(
    data: np.ndarray, queries: np.ndarray, k: int, max_steps: int = 500, rel_tol: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Query matrix A and data matrix B (d×k, float32) of LeanVec-OOD, and a summary."""
    x = np.asarray(data, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    kx = x.T @ x / x.shape[0]
    kq = q.T @ q / q.shape[0]
    a_fw, b_fw, loss_fw, steps = frank_wolfe_bcd(kq, kx, k, max_steps, rel_tol)
    p, loss_es, beta = eigenvector_search(kq, kx, k)
    info = {"loss_fw": loss_fw, "fw_steps": steps, "loss_es": loss_es, "es_beta": beta}
    if loss_fw <= loss_es:
        info["chosen"] = "frank-wolfe"
        a, b = a_fw, b_fw
    else:
        info["chosen"] = "eigenvector-search"
        a, b = p, p
    return np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32), info


# --------------------------------------------------------------------------------------------
# storage of the primary / secondary copies
# --------------------------------------------------------------------------------------------
class _Copy:
    """A set of vectors held as LVQ-8, float16 or float32, decodable to float32."""

    def __init__(self, dim: int, kind: str):
        if kind not in ("lvq8", "fp16", "float32"):
            raise ValueError(f"storage must be lvq8, fp16 or float32, not {kind!r}")
        self.dim, self.kind = dim, kind
        self.lvq = LVQStore(dim, 8) if kind == "lvq8" else None
        self.array: np.ndarray | None = None

    @staticmethod
    def bytes_per_vector(dim: int, kind: str) -> int:
        return {"lvq8": LVQStore.bytes_per_vector(dim, 8), "fp16": 2 * dim, "float32": 4 * dim}[
            kind
        ]

    @staticmethod
    def shared_bytes(dim: int, kind: str) -> int:
        return LVQStore.shared_bytes(dim) if kind == "lvq8" else 0

    def fit(self, x: np.ndarray) -> None:
        if self.lvq is not None:
            self.lvq.fit(x)

    def add(self, x: np.ndarray) -> None:
        if self.lvq is not None:
            self.lvq.add(x)
            return
        dtype = np.float16 if self.kind == "fp16" else np.float32
        new = np.asarray(x, dtype=dtype)
        self.array = new if self.array is None else np.concatenate([self.array, new])
        self.array = np.ascontiguousarray(self.array)

    @property
    def ntotal(self) -> int:
        if self.lvq is not None:
            return self.lvq.ntotal
        return 0 if self.array is None else int(self.array.shape[0])

    def code_nbytes(self) -> int:
        if self.lvq is not None:
            return self.lvq.code_nbytes()
        return 0 if self.array is None else int(self.array.nbytes)

    def shared_nbytes(self) -> int:
        return self.lvq.shared_nbytes() if self.lvq is not None else 0

    def decode(self, b0: int, b1: int) -> np.ndarray:
        if self.lvq is not None:
            return self.lvq.decode_block(b0, b1, centred=False)
        return self.array[b0:b1].astype(np.float32, copy=False)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        if self.lvq is not None:
            return self.lvq.rows(ids)
        return self.array[ids].astype(np.float32, copy=False)

    def search(self, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        if self.lvq is not None:
            return self.lvq.search(q, k, metric)
        return blocked_knn(q, self.ntotal, self.decode, k, metric, self.dim)


# --------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------
class _LeanVecBase(Method):
    family = "dim-reduction"
    paper = PAPER
    post_hoc = "the reduced primary vectors are scanned exhaustively (flat), not through the paper's graph (SVS)"
    build_grid = {
        "k": [16, 32, 64, 96, 128, 192],
        "primary": ["lvq8", "fp16"],
        "secondary": ["lvq8", "fp16", "float32"],
    }
    search_grid = {"rerank_factor": [1, 2, 4, 8, 16]}
    n_matrices = 1

    def warm_up(self) -> None:
        _kernels.warm_up()  # compiled before the harness measures RSS around add()

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.k = int(build_params.get("k", min(dim, 128)))
        if not 1 <= self.k <= dim:
            raise ValueError(f"LeanVec target dimension k={self.k} must be in 1..{dim}")
        self.primary_kind = build_params.get("primary", "lvq8")
        self.secondary_kind = build_params.get("secondary", "fp16")
        self.primary = _Copy(self.k, self.primary_kind)
        self.secondary = _Copy(dim, self.secondary_kind)
        self.query_matrix: np.ndarray | None = None  # d×k
        self.data_matrix: np.ndarray | None = None  # d×k (a separate array only for OOD)
        self.notes: list[str] = []

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        return 1 <= int(build_params.get("k", 128)) < dim

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        k = int(build_params.get("k", min(dim, 128)))
        prim = build_params.get("primary", "lvq8")
        sec = build_params.get("secondary", "fp16")
        shared = (
            4 * dim * k * cls.n_matrices
            + _Copy.shared_bytes(k, prim)
            + _Copy.shared_bytes(dim, sec)
        )
        return (
            _Copy.bytes_per_vector(k, prim) + _Copy.bytes_per_vector(dim, sec) + shared / max(n, 1)
        )

    def _pca(self, train: np.ndarray) -> np.ndarray:
        _, p, _ = fit_pca(train, self.k)
        return p

    def _reduce_docs(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.data_matrix

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        self._fit_matrices(np.asarray(train, dtype=np.float32), train_queries)
        self.primary.fit(self._reduce_docs(train))
        self.secondary.fit(train)

    def _fit_matrices(self, train: np.ndarray, train_queries: np.ndarray | None) -> None:
        raise NotImplementedError

    def add(self, vectors: np.ndarray) -> None:
        x = np.asarray(vectors, dtype=np.float32)
        if self.data_matrix is None:
            self.fit(x)
        self.primary.add(self._reduce_docs(x))
        self.secondary.add(x)
        self.ntotal = self.secondary.ntotal

    def search(
        self, queries: np.ndarray, k: int, **search_params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        factor = max(1, int(search_params.get("rerank_factor", 4)))
        q = np.ascontiguousarray(queries, dtype=np.float32)
        qr = np.ascontiguousarray(q @ self.query_matrix)
        _, cand = self.primary.search(qr, k * factor, self.metric)
        return rerank(q, cand, self.secondary.rows, k, self.metric)

    def search_primary(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k from the reduced primary vectors alone (no re-ranking)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return self.primary.search(np.ascontiguousarray(q @ self.query_matrix), k, self.metric)

    def memory(self) -> MemoryAccount:
        mats = {id(m): m.nbytes for m in (self.query_matrix, self.data_matrix) if m is not None}
        shared = sum(mats.values()) + self.primary.shared_nbytes() + self.secondary.shared_nbytes()
        return MemoryAccount(
            codes=self.primary.code_nbytes() + self.secondary.code_nbytes(),
            structure=0,
            shared=int(shared),
        )

    def set_num_threads(self, n: int) -> None:
        set_threads(n)


@register
class LeanVecID(_LeanVecBase):
    """LeanVec-ID: PCA to k dims for queries and documents alike."""

    name = "leanvec-id"
    bytes_formula = "primary (LVQ-8: k+4 | fp16: 2k) + secondary (LVQ-8: d+4 | fp16: 2d | fp32: 4d) + (4·d·k + LVQ means)/n"

    def _fit_matrices(self, train: np.ndarray, train_queries: np.ndarray | None) -> None:
        p = self._pca(train)
        self.query_matrix = p
        self.data_matrix = p  # one matrix, held once


@register
class LeanVecOOD(_LeanVecBase):
    """LeanVec-OOD: query-aware projection pair (A for queries, B for documents)."""

    name = "leanvec-ood"
    bytes_formula = "primary (LVQ-8: k+4 | fp16: 2k) + secondary (LVQ-8: d+4 | fp16: 2d | fp32: 4d) + (8·d·k + LVQ means)/n"
    uses_train_queries = True
    n_matrices = 2

    def _fit_matrices(self, train: np.ndarray, train_queries: np.ndarray | None) -> None:
        if train_queries is None or len(train_queries) == 0:
            p = self._pca(train)
            self.query_matrix, self.data_matrix = p, p.copy()
            self.notes.append("no training queries: fell back to LeanVec-ID (PCA) matrices")
            return
        a, b, info = leanvec_ood_matrices(train, train_queries, self.k)
        self.query_matrix, self.data_matrix = a, b
        self.notes.append(
            "LeanVec-OOD: chose {chosen}; loss FW {loss_fw:.6g} ({fw_steps} steps), "
            "eigenvector search {loss_es:.6g} (beta={es_beta:.1f})".format(**info)
        )
