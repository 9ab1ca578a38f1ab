"""The method plugin contract.

A method is one compression or search technique from the literature. It declares

* identity: ``name``, ``family``, ``paper`` (citation), ``bytes_formula`` (human-readable);
* a parameter grid split into ``build_grid`` (needs a rebuild) and ``search_grid`` (query time);
* an analytic size, :meth:`Method.bytes_per_vector`, from the paper's formula;

and implements ``fit`` (train on vectors, optionally with training queries), ``add``, ``search``
and a *measured* memory account, :meth:`Method.memory`, split into per-vector codes, index
structure (graph links, inverted lists, ids) and shared parts (codebooks, rotations), plus bytes
that live on disk only (two-tier methods such as BiDR keep those out of the RAM budget).

Conventions
-----------
* Vectors are float32, C-contiguous, shape (n, d). The harness normalises vectors for the
  ``cosine`` metric and hands methods ``metric="ip"``; methods see only ``"l2"`` or ``"ip"``.
* ``search`` returns ``(scores, ids)``, each (nq, k), best first. ``scores`` follow faiss:
  squared L2 distances (ascending) for ``l2``, inner products (descending) for ``ip``.
  Missing results are id ``-1``. The harness scores *ranks*, so any monotone score is fine.
* Whatever a method keeps in RAM to answer a query (re-scoring floats included) belongs in
  :meth:`memory`; it is what places the run on the budget ladder.
"""

from __future__ import annotations

import itertools
import os
import pickle
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

METRICS = ("l2", "ip")
#: the build parameter naming a departure from the paper, and its value for the paper's recipe
VARIANT_PARAM = "variant"
PAPER_VARIANT = "paper"


@dataclass(frozen=True)
class MemoryAccount:
    """Measured bytes held by a built index, by part."""

    codes: int = 0  # per-vector codes / stored vectors in RAM
    structure: int = 0  # graph links, inverted-list ids and offsets, hash tables
    shared: int = 0  # codebooks, centroids, rotations, means: independent of n
    disk: int = 0  # bytes kept on disk only (second tier); not counted in RAM

    @property
    def ram(self) -> int:
        return int(self.codes + self.structure + self.shared)

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "ram": self.ram}


def nbytes(*arrays: Any) -> int:
    """Total bytes of numpy arrays (None is skipped)."""
    return int(sum(a.nbytes for a in arrays if a is not None))


class Method(ABC):
    """Base class of every method plugin. Subclass, fill the class attributes, register."""

    name: ClassVar[str]
    family: ClassVar[str]  # e.g. "exact", "scalar", "pq", "graph", "binary", "learned-vq"
    paper: ClassVar[str]  # citation of the paper the implementation follows
    bytes_formula: ClassVar[str]  # e.g. "d/2 bytes (4-bit codes) + 8·d·4/n (min/max)"
    build_grid: ClassVar[dict[str, list[Any]]] = {}
    search_grid: ClassVar[dict[str, list[Any]]] = {}
    metrics: ClassVar[tuple[str, ...]] = METRICS
    #: the data layout a method consumes: "dense" (n, d) vectors or "multivector" (ragged tokens)
    input_kind: ClassVar[str] = "dense"
    #: whether the method uses training queries when given them (LeanVec-OOD, JPQ, ...)
    uses_train_queries: ClassVar[bool] = False
    #: named departures from the paper's recipe: value of the ``variant`` build parameter -> why it
    #: exists. The default value of ``variant`` (first in the build grid, or absent) is the paper's
    #: recipe, :data:`PAPER_VARIANT`; every other value must be listed here. Leaderboards show a
    #: variant as its own entry, ``method[variant]``, beside the faithful one.
    variants: ClassVar[dict[str, str]] = {}
    #: non-empty when the paper's recipe cannot run here (e.g. the encoder is not Matryoshka-trained):
    #: one sentence saying what runs instead, shown on the method page. The default variant is then
    #: the closest post-hoc version of the paper's recipe.
    post_hoc: ClassVar[str] = ""

    def __init__(self, dim: int, metric: str, **build_params: Any):
        if metric not in self.metrics:
            raise ValueError(f"{self.name} does not support metric {metric!r}")
        self.dim = int(dim)
        self.metric = metric
        self.params = dict(build_params)
        self.ntotal = 0
        #: number of vectors that ``add`` will receive, set by the harness before ``fit`` (the
        #: training set may be a sample); methods sizing structures by n (IVF lists) use it
        self.expected_n: int | None = None

    # ----- declared sizes ---------------------------------------------------------------
    @classmethod
    @abstractmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        """Analytic RAM bytes per vector for n vectors (shared parts amortised over n)."""

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        """Whether a build configuration applies to this dimension (e.g. PQ's m divides d)."""
        return True

    @classmethod
    def build_configs(cls, dim: int) -> list[dict[str, Any]]:
        """All valid configurations of the declared build grid for dimension ``dim``."""
        return [c for c in expand_grid(cls.build_grid) if cls.is_valid(dim, **c)]

    @classmethod
    def search_configs(cls, **build_params: Any) -> list[dict[str, Any]]:
        """Search configurations to evaluate on an index built with ``build_params``.

        Default: the whole declared search grid. Override when a search parameter only applies
        to some builds (e.g. a re-rank factor without a re-rank tier).
        """
        return expand_grid(cls.search_grid)

    # ----- lifecycle --------------------------------------------------------------------
    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:  # noqa: B027
        """Learn codebooks, rotations, projections. Default: nothing to learn."""

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Load or compile what searching needs that is not index memory (JIT kernels). The harness
        calls it after ``fit`` and before it measures RSS around ``add``, so a compiler's memory is
        never taken for the index's. Default: nothing."""

    @abstractmethod
    def add(self, vectors: np.ndarray) -> None:
        """Encode and store vectors; ids are assigned in insertion order from 0."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Return (scores, ids), each of shape (nq, k), best first."""

    @abstractmethod
    def memory(self) -> MemoryAccount:
        """Measured bytes of what the built index holds, by part."""

    def set_num_threads(self, n: int) -> None:
        """Threads used by search and build. Default sets faiss's OpenMP pool."""
        import faiss

        faiss.omp_set_num_threads(int(n))

    def save(self, path: str) -> int:
        """Write the index to ``path`` and return the bytes written on disk.

        The default pickles the object, which suits numpy-based methods; faiss- and
        hnswlib-backed methods write their native format.
        """
        with open(path, "wb") as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
        return os.path.getsize(path)

    @classmethod
    def variant_of(cls, build_params: dict[str, Any]) -> str:
        """The variant a build configuration runs: :data:`PAPER_VARIANT` or a key of ``variants``."""
        return str(build_params.get(VARIANT_PARAM, PAPER_VARIANT))

    # ----- description ------------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "family": cls.family,
            "paper": cls.paper,
            "bytes_formula": cls.bytes_formula,
            "build_grid": cls.build_grid,
            "search_grid": cls.search_grid,
            "metrics": list(cls.metrics),
            "input_kind": cls.input_kind,
            "variants": dict(cls.variants),
            "post_hoc": cls.post_hoc,
        }


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a parameter grid, as a list of dicts (one empty dict if no keys)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]
