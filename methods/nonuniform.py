"""Non-uniform scalar quantizers applied to embedding vectors: KVQuant-NUQ and NUPES.

Both store ``b`` bits per dimension, bit-packed (``ceil(d·b/8)`` bytes per vector), decode through
a per-dimension level table and search by asymmetric distance: the float query against the
decoded levels, one GEMM per block of vectors (``methods/_bits.py``) for large query batches; up
to ``_kernels.SMALL_BATCH`` queries are scored by per-query lookup tables over the packed codes
(compiled kernel, no decoding; KVQuant's outliers corrected per vector), the same scores up to
float rounding (search parameter ``kernel``: ``auto``, ``compiled``, ``numpy``, ``fastscan``); the
lookup-table groups of the uniform layout are derived per search (nothing more is kept with the
index). Codes of 1, 2 or 4 bits are kept in the fast-scan layout of ``methods/_fastscan.py`` (the
same bytes, permuted into blocks of 32 vectors; ``codes`` converts back) and small batches take
its certified shuffle scan (``auto``/``fastscan``; ``compiled``: every vector by exact nibble
tables); the result is the exact scan's, up to float rounding.

kvquant-nuq
    Hooper, Kim, Mohammadzadeh, Mahoney, Shao, Keutzer, Gholami, "KVQuant: Towards 10 Million
    Context Length LLM Inference with KV Cache Quantization", NeurIPS 2024.
    Per-channel non-uniform quantization (NUQ: levels learned by k-means on calibration data)
    plus dense-and-sparse decomposition. Here a channel is an embedding dimension:

    * sparse part: in each vector the ``ceil(outlier_frac·d)`` values that lie farthest outside
      their dimension's typical range (``|x_j - median_j| / IQR_j``, largest first) are kept
      exactly, as fp16 values with uint16 positions (4 bytes each);
    * dense part: every dimension gets ``2^b`` levels by 1-D k-means (Lloyd-Max) on the
      training values with the outliers removed, so the levels cover the inlier range only;
      all d values are coded (the outlier positions' dense codes are overwritten at decode).

    Bytes per vector: ``ceil(d·b/8) + 4·ceil(f·d) + (4·d·2^b + 16·d)/n`` (level table and its
    offsets). Post-hoc: KVQuant's k-means is sensitivity-weighted (Fisher information of the
    LLM loss); embeddings have no downstream loss here, so it is unweighted ("sensitivity-free",
    as the paper's ablation). Adaptations to embeddings (no variants): its keys are quantized pre-RoPE per channel and its values per
    token, which has no counterpart for embeddings; outliers use a fixed count per vector (so the
    size is exact) ranked by per-dimension-normalised deviation, where the paper thresholds
    per-channel (keys) or per-token (values) percentiles.

nupes
    Yvinec, Dapogny, Bailly, "NUPES: Non-Uniform Post-Training Quantization via Power Exponent
    Search", 2023 (arXiv:2308.05600).
    Companding ``x -> sign(x)|x|^a`` (here of ``x - mean_j``, per dimension), uniform ``2^b``-level
    quantization of the companded values on each dimension's min/max range, decoding by the inverse
    power ``sign(y)|y|^{1/a}``. The exponent ``a`` (one for the whole matrix, as the paper uses one
    per layer) is searched on a grid to minimise the reconstruction error on the training sample;
    ``a = 1`` is plain min/max uniform scalar quantization.

    Bytes per vector: ``ceil(d·b/8) + 4·(3d + 1)/n`` (mean, range start, step per dimension and
    the exponent; the decoding table is derived from them at query time). Post-hoc: the paper
    searches the exponent by gradient descent jointly with the rounding of LLM weights, against
    the network's loss; there is no network here, so the exponent is grid-searched for the least
    reconstruction MSE of the frozen embeddings. Variants: none.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from harness.method import MemoryAccount, Method, nbytes
from harness.registry import register
from methods import _bits, _fastscan, _kernels

TRAIN_SAMPLE = 10000
EXPONENT_SAMPLE = 2000  # vectors on which the exponent grid is scored
EXPONENTS = np.round(np.arange(0.20, 1.6001, 0.05), 2)


def _sample(train: np.ndarray, size: int = TRAIN_SAMPLE) -> np.ndarray:
    train = np.asarray(train, dtype=np.float32)
    if train.shape[0] <= size:
        return train
    rows = np.random.default_rng(0).choice(train.shape[0], size, replace=False)
    return train[np.sort(rows)]


class _LevelCoded(Method):
    """b-bit codes per dimension, packed, decoded through per-dimension levels; GEMM search."""

    family = "scalar"
    build_grid: ClassVar[dict[str, list[Any]]] = {"bits": [2, 3, 4, 8]}

    def warm_up(self) -> None:
        _kernels.warm_up()  # compiled before the harness measures RSS around add()

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        return 1 <= int(build_params.get("bits", 4)) <= 8

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.bits = int(build_params.get("bits", 4))
        if not self.is_valid(dim, **build_params):
            raise ValueError(f"{self.name} needs 1 <= bits <= 8")
        self.widths = np.full(dim, self.bits, dtype=np.int64)
        # 1-, 2- and 4-bit codes are kept in the fast-scan layout (the same bytes, permuted)
        self.nibble_layout = _fastscan.eligible(self.widths)
        self.codes = np.zeros((0, _bits.code_bytes(self.widths)), dtype=np.uint8)

    @property
    def codes(self) -> np.ndarray:
        """Packed code rows (n, ceil(d·b/8)); from the fast-scan layout a converted copy."""
        return self._codes.packed() if isinstance(self._codes, _fastscan.NibbleCodes) else self._codes

    @codes.setter
    def codes(self, packed: np.ndarray) -> None:
        self._codes = _fastscan.NibbleCodes(packed) if self.nibble_layout else np.asarray(packed, dtype=np.uint8)

    def __setstate__(self, state: dict[str, Any]) -> None:
        codes = state.pop("codes", None)  # an index pickled before the fast-scan layout
        self.__dict__.update(state)
        if "_codes" not in state:
            self.nibble_layout = _fastscan.eligible(self.widths)
            self.codes = codes

    def _append_codes(self, packed: np.ndarray) -> None:
        if isinstance(self._codes, _fastscan.NibbleCodes):
            self._codes.append(packed)
        else:
            self._codes = np.concatenate([self._codes, packed])

    def _rows(self, b0: int, b1: int) -> np.ndarray:
        """Packed code rows b0..b1-1."""
        return self._codes.rows(b0, b1) if isinstance(self._codes, _fastscan.NibbleCodes) else self._codes[b0:b1]

    def _ready(self) -> None:
        """After ``add``: the scan kernels compiled (or loaded), so no timed search pays for it."""
        _kernels.warm_up()
        _fastscan.warm_up()

    def _table(self) -> _bits.LevelTable:
        raise NotImplementedError

    def _decode_block(self, b0: int, b1: int, table: _bits.LevelTable) -> np.ndarray:
        return table.decode(_bits.unpack_codes(self._rows(b0, b1), self.widths))

    def reconstruct(self) -> np.ndarray:
        """Decoded vectors of the whole index (float32, n x d)."""
        return self._decode_block(0, self.ntotal, self._table())

    def _fix(self, queries: np.ndarray) -> _bits.Fix | None:
        """Per-vector score corrections of the lookup-table scan (KVQuant's outliers)."""
        return None

    def _outliers(self) -> _fastscan.Outliers | None:
        """KVQuant's sparse part for the fast-scan search (None: no outliers)."""
        return None

    def _layout(self) -> _bits.LUTLayout:
        """Lookup-table groups of the uniform b-bit layout: a few vectorised integer ops per
        search, so nothing is kept with the index."""
        return _bits.LUTLayout(self.widths)

    def search(self, queries: np.ndarray, k: int, **search_params: Any) -> tuple[np.ndarray, np.ndarray]:
        table = self._table()
        queries = np.asarray(queries, dtype=np.float32)
        kernel = search_params.get("kernel", "auto")
        nibble = isinstance(self._codes, _fastscan.NibbleCodes)
        if kernel == "fastscan":
            if not (nibble and _fastscan.AVAILABLE):
                raise ValueError("kernel='fastscan' needs 1-, 2- or 4-bit codes, numba and AVX2")
            return _fastscan.search(queries, self._codes, table, k, self.metric, self._outliers())
        if nibble and _kernels.use_kernels(queries.shape[0], kernel):
            # auto: the certified shuffle scan; compiled: every vector by the exact nibble tables
            return _fastscan.search(queries, self._codes, table, k, self.metric, self._outliers(),
                                    certified=kernel == "auto")
        if _kernels.use_kernels(queries.shape[0], kernel):
            return _bits.lut_search(queries, self.codes, table, self._layout(), k, self.metric,
                                    self._fix(queries))

        def decode(b0: int, b1: int) -> tuple[np.ndarray, None]:
            return self._decode_block(b0, b1, table), None

        return _bits.blocked_search(np.asarray(queries, dtype=np.float32), self.ntotal, k, self.metric, decode)


# ----- KVQuant: per-channel NUQ + dense-and-sparse ---------------------------------------------
def outlier_positions(x: np.ndarray, center: np.ndarray, scale: np.ndarray, count: int) -> np.ndarray:
    """Per row, the ``count`` positions with the largest |x - center| / scale, (n, count) int64."""
    if count <= 0:
        return np.zeros((x.shape[0], 0), dtype=np.int64)
    z = np.abs(x - center) / scale
    pos = np.argpartition(-z, count - 1, axis=1)[:, :count]
    return np.sort(pos, axis=1)


@register
class KVQuantNUQ(_LevelCoded):
    name = "kvquant-nuq"
    paper = ("Hooper et al., 'KVQuant: Towards 10 Million Context Length LLM Inference with KV Cache "
             "Quantization', NeurIPS 2024 (per-channel NUQ + dense-and-sparse outliers)")
    bytes_formula = "ceil(d·b/8) + 4·ceil(f·d) (fp16 value + uint16 index per outlier) + (4·d·2^b + 16·d)/n"
    post_hoc = ("no LLM loss here: KVQuant's sensitivity-weighted (Fisher) k-means runs unweighted, the "
                "paper's sensitivity-free ablation; a channel is an embedding dimension, outliers a fixed count "
                "per vector")
    build_grid: ClassVar[dict[str, list[Any]]] = {"bits": [2, 3, 4, 8], "outlier_frac": [0.01]}

    @classmethod
    def n_outliers(cls, dim: int, frac: float) -> int:
        return int(np.ceil(frac * dim - 1e-9)) if frac > 0 else 0

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        b = int(build_params.get("bits", 4))
        k = cls.n_outliers(dim, float(build_params.get("outlier_frac", 0.01)))
        return -(-dim * b // 8) + 4.0 * k + (4.0 * dim * (1 << b) + 16.0 * dim) / n

    @classmethod
    def is_valid(cls, dim: int, **build_params: Any) -> bool:
        frac = float(build_params.get("outlier_frac", 0.01))
        return super().is_valid(dim, **build_params) and 0 <= frac < 1 and dim < 65536

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        self.outlier_frac = float(build_params.get("outlier_frac", 0.01))
        self.n_out = self.n_outliers(dim, self.outlier_frac)
        self.table: _bits.LevelTable | None = None
        self.center: np.ndarray | None = None  # per-dimension median and IQR rank the outliers
        self.scale: np.ndarray | None = None
        self.out_idx = np.zeros((0, self.n_out), dtype=np.uint16)
        self.out_val = np.zeros((0, self.n_out), dtype=np.float16)

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        x = _sample(train)
        q25, self.center, q75 = np.percentile(x, [25, 50, 75], axis=0).astype(np.float32)
        self.scale = np.maximum(q75 - q25, 1e-12).astype(np.float32)
        pos = outlier_positions(x, self.center, self.scale, self.n_out)
        # k-means on the inliers only: replace each outlier by a random inlier of its dimension
        inl = x.copy()
        if self.n_out:
            rng = np.random.default_rng(0)
            rows = np.repeat(np.arange(x.shape[0]), self.n_out)
            cols = pos.ravel()
            mask = np.ones_like(x, dtype=bool)
            mask[rows, cols] = False
            donors = rng.integers(0, x.shape[0], size=rows.size)
            for _ in range(8):  # redraw donors that are themselves outliers in that column
                bad = ~mask[donors, cols]
                if not bad.any():
                    break
                donors[bad] = rng.integers(0, x.shape[0], size=int(bad.sum()))
            inl[rows, cols] = x[donors, cols]
        cs = _bits.ColumnSamples(inl)
        levels, _ = cs.lloyd_max(1 << self.bits)
        self.table = _bits.LevelTable(list(levels))

    def add(self, vectors: np.ndarray) -> None:
        x = np.asarray(vectors, dtype=np.float32)
        if self.table is None:
            self.fit(x)
        for r0 in range(0, x.shape[0], _bits.ADD_CHUNK):
            c = x[r0 : r0 + _bits.ADD_CHUNK]
            pos = outlier_positions(c, self.center, self.scale, self.n_out)
            self.out_idx = np.concatenate([self.out_idx, pos.astype(np.uint16)])
            self.out_val = np.concatenate([self.out_val, np.take_along_axis(c, pos, 1).astype(np.float16)])
            self._append_codes(_bits.pack_codes(self.table.encode_nearest(c), self.widths))
        self.ntotal = len(self._codes)
        self._ready()

    def _fix(self, queries: np.ndarray) -> _bits.Fix | None:
        if not self.n_out:
            return None

        def fix(scores: np.ndarray, b0: int, b1: int, ds: np.ndarray) -> None:
            _kernels.outlier_fix(scores, self._rows(b0, b1), self.out_idx[b0:b1], self.out_val[b0:b1], queries,
                                 ds, self.table.offsets, self.bits, self.metric)

        return fix

    def _outliers(self) -> _fastscan.Outliers | None:
        return _fastscan.Outliers(self.out_idx, self.out_val) if self.n_out else None

    def _table(self) -> _bits.LevelTable:
        return self.table

    def _decode_block(self, b0: int, b1: int, table: _bits.LevelTable) -> np.ndarray:
        rec = super()._decode_block(b0, b1, table)
        if self.n_out:
            rows = np.arange(b1 - b0)[:, None]
            rec[rows, self.out_idx[b0:b1].astype(np.int64)] = self.out_val[b0:b1].astype(np.float32)
        return rec

    def memory(self) -> MemoryAccount:
        codes = nbytes(self._codes, self.out_idx, self.out_val)
        shared = self.table.nbytes if self.table is not None else 0
        return MemoryAccount(codes=codes, structure=0, shared=shared)


# ----- NUPES: power-exponent companding ----------------------------------------------------------
def compand(x: np.ndarray, a: float) -> np.ndarray:
    return np.sign(x) * np.abs(x) ** a


def nupes_quantizer(xc: np.ndarray, bits: int, a: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension uniform grid of the companded centred data: (start (d,), step (d,))."""
    y = compand(xc, a)
    lo, hi = y.min(axis=0), y.max(axis=0)
    step = (hi - lo) / ((1 << bits) - 1)
    return lo.astype(np.float32), np.where(step > 0, step, 1.0).astype(np.float32)


def nupes_encode(xc: np.ndarray, lo: np.ndarray, step: np.ndarray, bits: int, a: float) -> np.ndarray:
    """Uniform rounding in the companded domain: codes (n, d) in [0, 2^b - 1]."""
    y = compand(xc, a)
    return np.clip(np.rint((y - lo) / step), 0, (1 << bits) - 1).astype(np.uint8)


def nupes_levels(lo: np.ndarray, step: np.ndarray, bits: int, a: float) -> np.ndarray:
    """Decoded (centred) value of every code, per dimension: (d, 2^b)."""
    y = lo[:, None] + step[:, None] * np.arange(1 << bits, dtype=np.float32)[None, :]
    return compand(y, 1.0 / a).astype(np.float32)


def nupes_mse(xc: np.ndarray, bits: int, a: float) -> float:
    lo, step = nupes_quantizer(xc, bits, a)
    codes = nupes_encode(xc, lo, step, bits, a)
    lv = nupes_levels(lo, step, bits, a)
    rec = lv[np.arange(xc.shape[1])[None, :], codes]
    return float(np.mean((rec - xc) ** 2))


def search_exponent(xc: np.ndarray, bits: int, grid: np.ndarray = EXPONENTS) -> tuple[float, dict[float, float]]:
    """The exponent of ``grid`` with the least reconstruction MSE (ties: closest to 1)."""
    errs = {float(a): nupes_mse(xc, bits, float(a)) for a in grid}
    best = min(errs, key=lambda a: (errs[a], abs(a - 1.0)))
    return best, errs


@register
class NUPES(_LevelCoded):
    name = "nupes"
    paper = ("Yvinec, Dapogny, Bailly, 'NUPES: Non-Uniform Post-Training Quantization via Power "
             "Exponent Search', 2023 (arXiv:2308.05600)")
    bytes_formula = "ceil(d·b/8) + 4·(3d + 1)/n (mean, start, step per dimension; exponent)"
    post_hoc = ("no network or loss here: the power exponent is grid-searched for the least reconstruction "
                "MSE of the frozen embeddings instead of learned by gradient descent with the rounding")

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        b = int(build_params.get("bits", 4))
        return -(-dim * b // 8) + 4.0 * (3 * dim + 1) / n

    def __init__(self, dim: int, metric: str, **build_params: Any):
        super().__init__(dim, metric, **build_params)
        fixed = build_params.get("exponent")
        self.fixed_exponent = None if fixed is None else float(fixed)
        self.mean: np.ndarray | None = None
        self.lo: np.ndarray | None = None
        self.step: np.ndarray | None = None
        self.exponent = np.ones(1, dtype=np.float32)
        self.search_errors: dict[float, float] = {}

    def fit(self, train: np.ndarray, train_queries: np.ndarray | None = None) -> None:
        x = np.asarray(train, dtype=np.float32)
        self.mean = x.mean(axis=0).astype(np.float32)
        xc = _sample(x, EXPONENT_SAMPLE) - self.mean
        if self.fixed_exponent is None:
            a, self.search_errors = search_exponent(xc, self.bits)
        else:
            a = self.fixed_exponent
        self.exponent = np.array([a], dtype=np.float32)
        # the range comes from all training vectors, so no training value is clipped
        self.lo, self.step = nupes_quantizer(x - self.mean, self.bits, a)

    @property
    def a(self) -> float:
        return float(self.exponent[0])

    def add(self, vectors: np.ndarray) -> None:
        x = np.asarray(vectors, dtype=np.float32)
        if self.mean is None:
            self.fit(x)
        codes = _bits.encode_chunked(lambda c: _bits.pack_codes(
            nupes_encode(c - self.mean, self.lo, self.step, self.bits, self.a), self.widths), x)
        self._append_codes(codes)
        self.ntotal = len(self._codes)
        self._ready()

    def _table(self) -> _bits.LevelTable:
        lv = nupes_levels(self.lo, self.step, self.bits, self.a) + self.mean[:, None]
        return _bits.LevelTable.uniform(lv)

    def memory(self) -> MemoryAccount:
        return MemoryAccount(codes=nbytes(self._codes), structure=0,
                             shared=nbytes(self.mean, self.lo, self.step, self.exponent))
