"""OSQ: optimized scalar quantization from SQUASH.

Paper: Oakley, Ferhatosmanoglu, "SQUASH: Serverless and Distributed Quantization-based Attributed
Vector Similarity Search", 2025 (arXiv:2502.01528), Optimized Scalar Quantization (OSQ); code at
github.com/squash-authors/SQUASH.

OSQ quantizes every vector to a fixed budget of ``bits_per_vector`` bits:

1. KLT: centre on the training mean and rotate onto the principal axes (PCA), which decorrelates
   the dimensions and concentrates the variance in the leading ones;
2. non-uniform bit allocation: greedily, each of the B bits goes to the dimension whose
   quantizer gains the most: by SQUASH's Gaussian model (the recipe, below), or (variant) the
   largest drop of the expected distortion
   ``D_j(b_j) - D_j(b_j + 1)``; ``D_j(b)`` is the mean squared error of the b-bit Lloyd-Max
   quantizer of dimension j on the training sample (``D_j(0)`` its variance); at most 8 bits
   per dimension, so ``B <= 8d``; the allocation sums exactly to B;
3. per dimension a Lloyd-Max quantizer (1-D k-means) with ``2^{b_j}`` levels;
4. the codes of all dimensions are bit-packed into one ``ceil(B/8)``-byte string per vector.

Search is asymmetric (ADC): the float query, rotated by the KLT, is compared with each vector's
per-dimension reconstruction levels. Distances use the look-up identity
``sum_j (q_j - level_j[c_j])^2 = |q|^2 + |r|^2 - 2 q.r`` (``r_j = level_j[c_j]``): a block of codes is
decoded through the level tables and scored by one GEMM (``methods/_bits.py``). A dimension that
gets no bit is reconstructed at the mean.

Bytes per vector: ``ceil(B/8) + 4·(m·d + d + L)/n + 16·m/n`` with m = min(d, B) KLT rows kept
(the allocation is restricted to the m leading principal axes; a dimension needs at least one
bit), ``L = sum_j 2^{b_j}`` float32 levels and 16 bytes of table offsets per kept dimension. L depends
on the data; the formula uses the even split ``m·2^{B/m}``, a lower bound that is within a few
bytes of the truth at every budget.

The recipe (default, ``variant="paper"``) allocates the bits as the official code does: greedily
on a Gaussian model, a dimension's energy (its variance) divided by 4 per bit it receives.
Variants: ``variant="measured-allocation"`` uses the measured Lloyd-Max distortion drops of the
training sample instead (step 2 above), which agree with that model on Gaussian data and follow
the data otherwise.

Scope: SQUASH's distributed / serverless search, attribute filtering, segment-based storage and
multi-level search (lower/upper distance bounds from the cell boundaries, then exact re-ranking)
are not part of the quantizer and are out of scope; here the ADC against the Lloyd-Max
reconstruction levels is the whole search, computed by block decode + GEMM for large query
batches and, for up to ``_kernels.SMALL_BATCH`` queries, by per-query lookup tables over the packed
codes (compiled kernel, no decoding; search parameter ``kernel``: ``auto``, ``compiled``, ``numpy``;
same scores up to float rounding). The lookup-table groups (a few integers per dimension) are
kept with the index and counted as shared memory.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar

import numpy as np

from harness.method import PAPER_VARIANT, MemoryAccount, Method, nbytes
from harness.registry import register
from methods import _bits, _kernels
from methods.itq import pca_basis

MAX_BITS_PER_DIM = 8
TRAIN_SAMPLE = 10000


GAUSSIAN = "gaussian"
MEASURED = "measured"


def greedy_allocation(samples: np.ndarray, total_bits: int, max_bits: int = MAX_BITS_PER_DIM,
                      rule: str = MEASURED) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Greedy bit allocation over the columns of ``samples`` (n, m) and their Lloyd-Max levels.

    Returns (bits per dimension (m,), sorted levels per dimension, MSE per dimension). Each of the
    ``total_bits`` steps gives one bit to the dimension whose next bit gains the most:

    * ``rule="gaussian"`` (SQUASH's code): the dimension of largest energy, a dimension's energy
      (its variance) divided by 4 for every bit it has received (the 6 dB-per-bit model);
    * ``rule="measured"``: the largest drop of its Lloyd-Max MSE ``D_j(b_j) - D_j(b_j + 1)``
      (``D_j(0)``: the variance) on the sample.

    The b-bit quantizers of all dimensions are computed together (vectorised Lloyd, warm-started
    by splitting the (b-1)-bit levels), only up to the depth the allocation reaches.
    """
    if rule not in (GAUSSIAN, MEASURED):
        raise ValueError(f"rule must be {GAUSSIAN!r} or {MEASURED!r}, not {rule!r}")
    cs = _bits.ColumnSamples(samples)
    m = cs.m
    if total_bits > max_bits * m:
        raise ValueError(f"{total_bits} bits exceed {max_bits} bits x {m} dimensions")
    mse_tab = [cs.x.var(axis=1)]
    lv_tab = [cs.x.mean(axis=1, keepdims=True)]

    def ensure(depth: int) -> None:
        while len(mse_tab) <= depth:
            b = len(mse_tab)
            lv, mse = cs.lloyd_max(1 << b, init=cs.split(lv_tab[b - 1]))
            lv_tab.append(lv)
            mse_tab.append(mse)

    bits = np.zeros(m, dtype=np.int64)
    if rule == GAUSSIAN:
        energy = mse_tab[0].astype(np.float64)
        heap = [(-float(energy[j]), j) for j in range(m)]  # largest energy pops first
        heapq.heapify(heap)
        for _ in range(total_bits):
            neg, j = heapq.heappop(heap)
            bits[j] += 1
            if bits[j] < max_bits:
                heapq.heappush(heap, (neg / 4.0, j))
        ensure(int(bits.max()))
    else:
        ensure(1)
        heap = [(-(mse_tab[0][j] - mse_tab[1][j]), j) for j in range(m)]  # largest gain pops first
        heapq.heapify(heap)
        for _ in range(total_bits):
            _, j = heapq.heappop(heap)
            bits[j] += 1
            b = int(bits[j])
            if b < max_bits:
                ensure(b + 1)
                heapq.heappush(heap, (-(mse_tab[b][j] - mse_tab[b + 1][j]), j))
    levels = [np.asarray(lv_tab[b][j], dtype=np.float32) for j, b in enumerate(bits)]
    mse = np.array([mse_tab[b][j] for j, b in enumerate(bits)])
    return bits, levels, mse


@register
class OSQ(Method):
    name = "osq"
    family = "scalar"
    paper = ("Oakley & Ferhatosmanoglu, 'SQUASH: Serverless and Distributed Quantization-based Attributed "
             "Vector Similarity Search', 2025, arXiv:2502.01528 (Optimized Scalar Quantization: KLT + greedy "
             "non-uniform bit allocation + per-dimension Lloyd-Max quantizers)")
    bytes_formula = "ceil(B/8) + 4·(m·d + d + L)/n + 16·m/n, m = min(d, B) KLT rows, L = sum_j 2^b_j levels"
    build_grid: ClassVar[dict[str, list[Any]]] = {
        "variant": [PAPER_VARIANT, "measured-allocation"],
        "bits_per_vector": [64, 128, 256, 512, 1024, 2048, 3072],
    }
    variants: ClassVar[dict[str, str]] = {
        "measured-allocation": "bits allocated by the measured Lloyd-Max distortion drops of the training "
                               "sample instead of SQUASH's Gaussian model (energy ÷ 4 per bit); same "
                               "on Gaussian data, follows the data otherwise",
    }

    def warm_up(self) -> None:
        _kernels.warm_up()  # compiled before the harness measures RSS around add()

    @classmethod
    def kept_dims(cls, dim: int, total_bits: int) -> int:
        return min(dim, total_bits)

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        b = int(build_params.get("bits_per_vector", 256))
        m = cls.kept_dims(dim, b)
        levels = m * 2.0 ** (b / m)
        return -(-b // 8) + (4.0 * (m * dim + dim + levels) + 16.0 * m) / n

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        b = int(build_params.get("bits_per_vector", 256))
        return 1 <= b <= MAX_BITS_PER_DIM * dim and cls.variant_of(build_params) in (PAPER_VARIANT, *cls.variants)

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.total_bits = int(build_params.get("bits_per_vector", 256))
        self.variant = self.variant_of(build_params)
        if not self.is_valid(dim, bits_per_vector=self.total_bits, variant=self.variant):
            raise ValueError(f"osq needs 1 <= bits_per_vector <= {MAX_BITS_PER_DIM * dim} and variant in "
                             f"{[PAPER_VARIANT, *self.variants]}")
        self.mean: np.ndarray | None = None
        self.klt: np.ndarray | None = None  # (d, m) leading principal axes
        self.table: _bits.LevelTable | None = None
        self.layout: _bits.LUTLayout | None = None  # lookup-table groups of the small-batch scan
        self.codes = np.zeros((0, -(-self.total_bits // 8)), dtype=np.uint8)

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        train = np.asarray(train, dtype=np.float32)
        self.mean = train.mean(axis=0).astype(np.float32)
        m = self.kept_dims(self.dim, self.total_bits)
        self.klt = pca_basis(train - self.mean, m).astype(np.float32)
        if train.shape[0] > TRAIN_SAMPLE:
            rows = np.random.default_rng(0).choice(train.shape[0], TRAIN_SAMPLE, replace=False)
            train = train[np.sort(rows)]
        y = (train - self.mean) @ self.klt
        rule = GAUSSIAN if self.variant == PAPER_VARIANT else MEASURED
        _, levels, _ = greedy_allocation(y, self.total_bits, rule=rule)
        self.train_sample = int(train.shape[0])
        self.table = _bits.LevelTable(levels)

    @property
    def allocation(self) -> np.ndarray:
        """Bits of each kept principal axis (sums to ``bits_per_vector``)."""
        return self.table.widths

    def encode(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.klt
        return _bits.pack_codes(self.table.encode_nearest(y), self.table.widths)

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Packed codes -> vectors in the original space (float32)."""
        return self.table.decode(_bits.unpack_codes(codes, self.table.widths)) @ self.klt.T + self.mean

    def add(self, vectors: np.ndarray) -> None:
        if self.table is None:
            self.fit(vectors)
        self.codes = np.concatenate([self.codes, _bits.encode_chunked(self.encode, np.asarray(vectors))])
        self.ntotal = self.codes.shape[0]
        self._layout()
        _kernels.warm_up()  # compile the scan kernels here, not in a timed search

    def search(self, queries: np.ndarray, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        queries = np.asarray(queries, dtype=np.float32)
        qc = queries - self.mean
        # ip: <q, mean + K y> = <q, mean> + <K^T q, y>;  l2: |K^T (q - mean) - y|^2 + the rest of q
        qy = (queries if self.metric == "ip" else qc) @ self.klt
        widths = self.table.widths
        if _kernels.use_kernels(queries.shape[0], search_params.get("kernel", "auto")):
            dist, ids = _bits.lut_search(qy, self.codes, self.table, self._layout(), k, self.metric)
        else:
            def decode(b0: int, b1: int) -> tuple[np.ndarray, None]:
                return self.table.decode(_bits.unpack_codes(self.codes[b0:b1], widths)), None

            dist, ids = _bits.blocked_search(qy, self.ntotal, k, self.metric, decode)
        if self.metric == "ip":
            dist += (queries @ self.mean)[:, None]
        else:
            dist += np.maximum((qc * qc).sum(1) - (qy * qy).sum(1), 0)[:, None]
        return dist, ids

    def _layout(self) -> _bits.LUTLayout:
        if getattr(self, "layout", None) is None:
            self.layout = _bits.LUTLayout(self.table.widths)
        return self.layout

    def memory(self) -> MemoryAccount:
        shared = nbytes(self.mean, self.klt) + (self.table.nbytes if self.table is not None else 0)
        shared += self.layout.nbytes if getattr(self, "layout", None) is not None else 0
        return MemoryAccount(codes=nbytes(self.codes), structure=0, shared=shared)
