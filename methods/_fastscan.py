"""Fast-scan: exact top-k over 4-bit sub-codes by byte shuffles, with a certified candidate bound.

For per-dimension codes of a uniform width of 1, 2 or 4 bits (KVQuant-NUQ / NUPES with ``bits``
in {1, 2, 4}), every 4-bit nibble of the packed code stream holds whole dimensions, so a vector's
score is ``sum_s LUT[s, nibble_s]`` with one 16-entry table per nibble (the sum of its dimensions'
per-code scores). faiss's fast-scan (``IndexPQFastScan``, André et al., "Accelerated nearest
neighbor search with quick ADC", ICMR 2017) evaluates such sums with SIMD byte shuffles on
tables quantized to uint8; :func:`search` does the same in a compiled AVX2 kernel and then makes
the result exact:

1. per query, the float tables are shifted to a minimum of 0 and scaled by ``a`` to uint8
   (rounded); ``E`` = the sum over nibbles of the largest rounding error of its table, so every
   vector's approximate score lies within ``E`` (plus float rounding) of its exact score;
2. the shuffle kernel sums the uint8 tables of 32 vectors at once (16-bit lanes, widened to
   32 bits every 256 nibble pairs, so nothing overflows);
3. with ``t`` the k-th best approximate score, only vectors whose approximate score is within
   ``2E`` of ``t`` can be in the exact top-k (k vectors have an exact score of at least
   ``t - E``); those candidates (and the vectors of the last, partial block) are re-scored with
   the float32 nibble tables (plus KVQuant's per-vector outlier correction, which the
   approximate scores already include exactly) and the exact top-k is taken among them. The
   result is the exact scan's, up to float rounding. On WordNet (20,000 x 384, 4-bit NUPES /
   KVQuant-NUQ) a query keeps a few dozen to a few hundred candidates.

Layout (:class:`NibbleCodes`): the packed code rows permuted, not copied: full blocks of 32
vectors store, per nibble s, 16 bytes whose byte t holds vector t's nibble s (low half) and
vector t+16's (high half); the last ``n % 32`` vectors stay packed rows. The bytes are exactly
the packed codes' (``nbytes`` is ``n · code_bytes``), any row range or id list converts back.

Without AVX2 (:data:`AVAILABLE` False) small batches are scored by the exact nibble-table kernel
over every vector (``certified=False``, also search parameter ``kernel="compiled"``); without
numba the methods use their numpy scan.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from methods import _bits, _kernels

#: vectors per fast-scan block
BLOCK = 32
#: nibble pairs summed in 16-bit lanes before widening (256 x 255 < 2^16)
PAIRS_PER_FLUSH = 256


def _host_has_avx2() -> bool:
    if not _kernels.AVAILABLE:
        return False
    try:
        from llvmlite import binding as llvm

        return bool(llvm.get_host_cpu_features().get("avx2", False))
    except Exception:  # noqa: BLE001 - unknown host: use the exact scan  # pragma: no cover
        return False


AVAILABLE = _host_has_avx2()


def eligible(widths: np.ndarray) -> bool:
    """Whether every nibble of the packed stream holds whole dimensions: one uniform width of 1,
    2 or 4 bits."""
    widths = np.asarray(widths)
    return bool(widths.size and np.all(widths == widths[0]) and int(widths[0]) in (1, 2, 4))


# ----- layout ----------------------------------------------------------------------------------------
def _nibbles(packed: np.ndarray) -> np.ndarray:
    """(n, nb) packed bytes -> (n, 2 nb) nibbles (low half of byte k first)."""
    return np.stack([packed & 15, packed >> 4], axis=2).reshape(packed.shape[0], 2 * packed.shape[1])


def to_blocks(packed: np.ndarray) -> np.ndarray:
    """Packed rows (32 m, nb) -> fast-scan blocks (m, 2 nb · 16) uint8."""
    n, nb = packed.shape
    nib = _nibbles(packed).reshape(n // BLOCK, 2, 16, 2 * nb)
    blocks = nib[:, 0] | (nib[:, 1] << 4)  # (m, 16, S): byte t of nibble s, vectors t and t + 16
    return np.ascontiguousarray(blocks.transpose(0, 2, 1)).reshape(n // BLOCK, 2 * nb * 16)


def from_blocks(blocks: np.ndarray, nb: int) -> np.ndarray:
    """Inverse of :func:`to_blocks`: (m, 2 nb · 16) -> packed rows (32 m, nb)."""
    m = blocks.shape[0]
    b = blocks.reshape(m, 2 * nb, 16)
    nib = np.concatenate([b & 15, b >> 4], axis=2).transpose(0, 2, 1)  # (m, 32, S)
    return np.ascontiguousarray(nib[:, :, 0::2] | (nib[:, :, 1::2] << 4)).reshape(m * BLOCK, nb)


class NibbleCodes:
    """Packed code rows (n, nb) kept in the fast-scan layout (a permutation of the same bytes)."""

    def __init__(self, packed: np.ndarray):
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        self.nb = packed.shape[1]
        full = packed.shape[0] - packed.shape[0] % BLOCK
        self.blocks = to_blocks(packed[:full])
        self.tail = packed[full:].copy()

    @property
    def nfull(self) -> int:
        """Vectors in full blocks (the first ``nfull`` ids)."""
        return self.blocks.shape[0] * BLOCK

    def __len__(self) -> int:
        return self.nfull + self.tail.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.nb)

    @property
    def nbytes(self) -> int:
        return int(self.blocks.nbytes + self.tail.nbytes)

    def append(self, packed: np.ndarray) -> None:
        """Add packed rows at the end (only the old tail is re-laid out)."""
        rows = np.concatenate([self.tail, np.asarray(packed, dtype=np.uint8)])
        full = rows.shape[0] - rows.shape[0] % BLOCK
        if full:
            self.blocks = np.concatenate([self.blocks, to_blocks(rows[:full])])
        self.tail = rows[full:].copy()

    def rows(self, b0: int, b1: int) -> np.ndarray:
        """Packed rows b0..b1-1 (a new array)."""
        b1 = min(b1, len(self))
        if b0 >= b1:
            return np.zeros((0, self.nb), dtype=np.uint8)
        parts = []
        if b0 < self.nfull:
            k0, k1 = b0 // BLOCK, -(-min(b1, self.nfull) // BLOCK)
            dec = from_blocks(self.blocks[k0:k1], self.nb)
            parts.append(dec[b0 - k0 * BLOCK : min(b1, self.nfull) - k0 * BLOCK])
        if b1 > self.nfull:
            parts.append(self.tail[max(b0, self.nfull) - self.nfull : b1 - self.nfull])
        return np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0])

    def packed(self) -> np.ndarray:
        """All packed rows (n, nb) (a new array)."""
        return self.rows(0, len(self))

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Packed rows of ``ids`` (r, nb) (a new array)."""
        ids = np.asarray(ids, dtype=np.int64)
        if _kernels.AVAILABLE:
            out = np.empty((ids.size, self.nb), dtype=np.uint8)
            _take(self.blocks, self.tail, ids, out)
            return out
        out = np.empty((ids.size, self.nb), dtype=np.uint8)  # pragma: no cover - without numba only
        inb = ids < self.nfull
        b, t = ids[inb] // BLOCK, ids[inb] % BLOCK
        cols = (np.arange(2 * self.nb) * 16)[None, :] + (t % 16)[:, None]
        nib = (self.blocks[b[:, None], cols] >> (4 * (t // 16))[:, None]) & 15
        out[inb] = nib[:, 0::2] | (nib[:, 1::2] << 4)
        out[~inb] = self.tail[ids[~inb] - self.nfull]
        return out


# ----- compiled kernels ------------------------------------------------------------------------------
if _kernels.AVAILABLE:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def _shuffle_sum(typingctx, codes, lut, p0, p1, out):  # noqa: ANN001, ANN202 - numba intrinsic
        """out[0:32] += sum over nibble pairs p0..p1-1 (at most PAIRS_PER_FLUSH) of one block:
        per pair, 32 code bytes (nibbles 2p, 2p+1 of 32 vectors) index the pair's 2 x 16 uint8
        table entries by ``vpshufb`` (one 128-bit lane per nibble); 16-bit lane sums."""
        sig = types.void(codes, lut, p0, p1, out)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            codes_v, lut_v, p0_v, p1_v, out_v = args
            data = [context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 1, 4)]
            i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
            v32i8, v32i16, v16i32 = ir.VectorType(i8, 32), ir.VectorType(i16, 32), ir.VectorType(i32, 16)
            fnty = ir.FunctionType(v32i8, [v32i8, v32i8])
            pshufb = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx2.pshuf.b")
            low4 = ir.Constant(v32i8, [15] * 32)
            four = ir.Constant(v32i8, [4] * 32)
            acc_a = cgutils.alloca_once_value(builder, ir.Constant(v32i16, [0] * 32))  # vectors 0..15
            acc_b = cgutils.alloca_once_value(builder, ir.Constant(v32i16, [0] * 32))  # vectors 16..31
            cptr = builder.bitcast(data[0], v32i8.as_pointer())
            lptr = builder.bitcast(data[1], v32i8.as_pointer())
            with cgutils.for_range_slice(builder, p0_v, p1_v, ir.Constant(i64, 1), inc=True) as (p, _):
                c = builder.load(builder.gep(cptr, [p]), align=1)
                t = builder.load(builder.gep(lptr, [p]), align=1)
                lo = builder.and_(c, low4)
                hi = builder.and_(builder.lshr(c, four), low4)
                ra = builder.call(pshufb, [t, lo])
                rb = builder.call(pshufb, [t, hi])
                builder.store(builder.add(builder.load(acc_a), builder.zext(ra, v32i16)), acc_a)
                builder.store(builder.add(builder.load(acc_b), builder.zext(rb, v32i16)), acc_b)
            optr = builder.bitcast(data[2], v16i32.as_pointer())
            first = ir.Constant(ir.VectorType(i32, 16), list(range(16)))
            second = ir.Constant(ir.VectorType(i32, 16), list(range(16, 32)))
            for half, acc in ((0, acc_a), (1, acc_b)):
                a = builder.load(acc)
                # lanes 0..15: nibble 2p of vectors 0..15; lanes 16..31: nibble 2p+1 of the same
                s = builder.add(builder.zext(builder.shuffle_vector(a, a, first), v16i32),
                                builder.zext(builder.shuffle_vector(a, a, second), v16i32))
                ptr = builder.gep(optr, [ir.Constant(i64, half)])
                builder.store(builder.add(builder.load(ptr, align=4), s), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    _half = _kernels._half

    @numba.njit(cache=True, nogil=True)
    def _scan(blocks, lut, inv_a, bias, oidx, oval, q, ds, offsets, width, ip, approx):  # noqa: ANN001, ANN202
        # approx[i] = (shuffle sum of the uint8 tables lut (S*16,)) * inv_a + bias for the 32 m
        # vectors of blocks (m, S*16), plus KVQuant's exact outlier correction (oidx (n, o) uint16
        # positions, oval (n, o) fp16 bits; none when o == 0), read while the block is in cache
        m = blocks.shape[0]
        npairs = blocks.shape[1] // 32
        nout = oidx.shape[1]
        mask = (1 << width) - 1
        acc = np.zeros(32, dtype=np.uint32)
        for b in range(m):
            acc[:] = 0
            blk = blocks[b]
            for p0 in range(0, npairs, PAIRS_PER_FLUSH):
                _shuffle_sum(blk, lut, p0, min(p0 + PAIRS_PER_FLUSH, npairs), acc)
            for t in range(32):
                i = 32 * b + t
                a = acc[t] * inv_a + bias
                sh, col = 4 * (t // 16), t % 16
                for o in range(nout):
                    p = np.int64(oidx[i, o])
                    bit = p * width
                    c = ((blk[16 * (bit >> 2) + col] >> sh) >> (bit & 3)) & mask
                    v = _half(oval[i, o])
                    good = q[p] * v if ip else (q[p] - v) * (q[p] - v)
                    a += good - ds[offsets[p] + c]
                approx[i] = a

    @numba.njit(cache=True, nogil=True)
    def _take(blocks, tail, ids, out):  # noqa: ANN001, ANN202
        nb = out.shape[1]
        nfull = blocks.shape[0] * 32
        for r in range(ids.shape[0]):
            i = ids[r]
            if i >= nfull:
                for j in range(nb):
                    out[r, j] = tail[i - nfull, j]
                continue
            b, t = i // 32, i % 32
            sh, col = 4 * (t // 16), t % 16
            for j in range(nb):
                lo = (blocks[b, 32 * j + col] >> sh) & 15
                hi = (blocks[b, 32 * j + 16 + col] >> sh) & 15
                out[r, j] = lo | (hi << 4)


# ----- search ------------------------------------------------------------------------------------------
class Outliers(NamedTuple):
    """KVQuant's sparse part: per vector positions (n, o) uint16 and fp16 values (n, o)."""

    idx: np.ndarray
    val: np.ndarray


def nibble_luts(ds: np.ndarray, width: int, n_nibbles: int) -> np.ndarray:
    """(nq, n_nibbles, 16) float32 nibble tables from per-code scores ``ds`` (nq, d · 2^w) of d
    dimensions of ``width`` bits: entry v of nibble s sums its dimensions' scores of v's bits."""
    nq = ds.shape[0]
    per = 4 // width
    size = 1 << width
    d = ds.shape[1] // size
    if per == 1 and d == n_nibbles:
        return np.ascontiguousarray(ds, dtype=np.float32).reshape(nq, d, 16)
    padded = np.zeros((nq, n_nibbles * per, size), dtype=np.float32)
    padded[:, :d] = ds.reshape(nq, d, size)
    padded = padded.reshape(nq, n_nibbles, per, size)
    v = np.arange(16)
    out = padded[:, :, 0, v & (size - 1)]
    for i in range(1, per):
        out += padded[:, :, i, (v >> (i * width)) & (size - 1)]
    return out


def quantize(lut: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """uint8 tables of one query's (S, 16) float tables: (tables, scale a, bias, bound E) with
    ``sum_s lut[s, v_s] = sum_s q[s, v_s] / a + bias + err``, ``|err| <= E`` (numpy reference of
    the compiled :func:`_quantize`)."""
    lut = lut.astype(np.float64)
    mins = lut.min(axis=1)
    shifted = lut - mins[:, None]
    span = float(shifted.max(initial=0.0))
    a = 255.0 / span if span > 0 else 1.0
    q = np.minimum(np.floor(shifted * a + 0.5), 255.0)  # round half up, as the kernel
    err = float(np.abs(q / a - shifted).max(axis=1).sum())
    return q.astype(np.uint8), a, float(mins.sum()), err


if _kernels.AVAILABLE:

    @numba.njit(cache=True, nogil=True)
    def _quantize(lut, lq):  # noqa: ANN001, ANN202
        # compiled quantize(): lut (S, 16) float32 -> lq (S*16,) uint8; returns (a, bias, err)
        ns = lut.shape[0]
        mins = np.empty(ns)
        span = 0.0
        bias = 0.0
        for s in range(ns):
            m = np.float64(lut[s, 0])
            hi = m
            for v in range(1, 16):
                x = np.float64(lut[s, v])
                m = min(m, x)
                hi = max(hi, x)
            mins[s] = m
            bias += m
            span = max(span, hi - m)
        a = 255.0 / span if span > 0 else 1.0
        err = 0.0
        mag = 0.0  # sum over tables of the largest |entry|: the scale of float rounding
        for s in range(ns):
            e = 0.0
            big = 0.0
            for v in range(16):
                x = np.float64(lut[s, v]) - mins[s]
                r = min(np.floor(x * a + 0.5), 255.0)
                lq[16 * s + v] = np.uint8(r)
                e = max(e, abs(r / a - x))
                big = max(big, abs(np.float64(lut[s, v])))
            err += e
            mag += big
        return a, bias, err, mag

    @numba.njit(cache=True, nogil=True)
    def _sift_down(heap, j, k):  # noqa: ANN001, ANN202
        # restore the min-heap property of heap[:k] below position j
        while True:
            c = 2 * j + 1
            if c >= k:
                break
            if c + 1 < k and heap[c + 1] < heap[c]:
                c += 1
            if heap[c] >= heap[j]:
                break
            heap[c], heap[j] = heap[j], heap[c]
            j = c

    @numba.njit(cache=True, nogil=True)
    def _candidates(approx, sign, k, margin):  # noqa: ANN001, ANN202
        # ids i with sign * approx[i] >= (k-th largest of sign * approx) - margin, ascending
        n = approx.shape[0]
        heap = np.empty(k)  # min-heap of the k largest values seen
        for i in range(k):
            heap[i] = sign * approx[i]
        for i in range(k // 2 - 1, -1, -1):  # heapify
            _sift_down(heap, i, k)
        for i in range(k, n):
            x = sign * approx[i]
            if x <= heap[0]:
                continue
            heap[0] = x
            _sift_down(heap, 0, k)
        t = heap[0] - margin
        count = 0
        for i in range(n):
            if sign * approx[i] >= t:
                count += 1
        out = np.empty(count, dtype=np.int64)
        count = 0
        for i in range(n):
            if sign * approx[i] >= t:
                out[count] = i
                count += 1
        return out

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def _exact(blocks, tail, ids, lut, out):  # noqa: ANN001, ANN202
        # out[r] = sum_s lut[s, nibble s of vector ids[r]] from the float tables (S, 16)
        ns = lut.shape[0]
        nfull = blocks.shape[0] * 32
        for r in range(ids.shape[0]):
            i = ids[r]
            acc = np.float32(0.0)
            if i < nfull:
                b, t = i // 32, i % 32
                sh, col = 4 * (t // 16), t % 16
                for s in range(ns):
                    acc += lut[s, (blocks[b, 16 * s + col] >> sh) & 15]
            else:
                row = tail[i - nfull]
                for j in range(ns // 2):
                    c = row[j]
                    acc += lut[2 * j, c & 15] + lut[2 * j + 1, c >> 4]
            out[r] = acc


def exact_scores(codes: NibbleCodes, ids: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(r,) float32 exact scores ``sum_s lut[s, nibble_s]`` of vectors ``ids`` (compiled kernel, or
    numpy without numba)."""
    lut = np.ascontiguousarray(lut, dtype=np.float32)
    if _kernels.AVAILABLE:
        out = np.empty(ids.size, dtype=np.float32)
        _exact(codes.blocks, codes.tail, ids, lut, out)
        return out
    nib = _nibbles(codes.take(ids))  # pragma: no cover - without numba only
    return lut[np.arange(lut.shape[0])[None, :], nib].sum(axis=1, dtype=np.float32)


def search(queries: np.ndarray, codes: NibbleCodes, table: _bits.LevelTable, k: int, metric: str,
           outliers: Outliers | None = None, certified: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (as :func:`methods._bits.lut_search`) over codes in the fast-scan layout:
    ``certified`` (needs :data:`AVAILABLE`) scans with the shuffle kernel and re-scores only the
    candidates the bound cannot rule out (see the module); otherwise every vector is scored by the
    exact nibble-table kernel."""
    width = int(table.widths[0])
    nq = queries.shape[0]
    n = len(codes)
    ds = _bits.dim_scores(queries, table, metric)
    nibs = nibble_luts(ds, width, 2 * codes.nb)
    sign = 1.0 if metric == "ip" else -1.0  # larger is better after the sign
    out_d = np.full((nq, k), -np.inf if metric == "ip" else np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    certified = certified and AVAILABLE and codes.nfull > k
    if outliers is not None and outliers.idx.shape[1] == 0:
        outliers = None
    if certified:
        approx = np.empty(codes.nfull, dtype=np.float64)
        lq = np.empty(nibs.shape[1] * 16, dtype=np.uint8)
        tail = np.arange(codes.nfull, n, dtype=np.int64)
        if outliers is not None:
            oidx, oval = outliers.idx, outliers.val.view(np.uint16)
        else:
            oidx, oval = np.zeros((0, 0), np.uint16), np.zeros((0, 0), np.uint16)
    for qi in range(nq):
        if certified:
            a, bias, err, mag = _quantize(nibs[qi], lq)
            _scan(codes.blocks, lq, 1.0 / a, bias, oidx, oval, queries[qi], ds[qi], table.offsets, width,
                  metric == "ip", approx)
            # + float rounding of both sums (float32 tables): far below the quantization bound
            ids = _candidates(approx, sign, k, 2.0 * err + 1e-5 * mag + 1e-30)
            if tail.size:
                ids = np.concatenate([ids, tail])
        else:
            ids = np.arange(n, dtype=np.int64)
        s = exact_scores(codes, ids, nibs[qi])
        if outliers is not None:
            s = s[None, :]
            _kernels.outlier_fix(s, codes.take(ids), outliers.idx[ids], outliers.val[ids], queries[qi : qi + 1],
                                 ds[qi : qi + 1], table.offsets, width, metric)
            s = s[0]
        s = s * sign
        kk = min(k, ids.size)
        top = np.argpartition(-s, kk - 1)[:kk] if kk < ids.size else np.arange(ids.size)
        top = top[np.lexsort((ids[top], -s[top]))]  # best first, ties by id
        out_d[qi, :kk] = s[top] * sign
        out_i[qi, :kk] = ids[top]
    return out_d, out_i


_WARM = [False]


def warm_up() -> None:
    """Compile (or load) the kernels on tiny arrays, so that no timed search pays for it."""
    if not AVAILABLE or _WARM[0]:
        return
    rng = np.random.default_rng(0)
    packed = rng.integers(0, 256, (40, 4), dtype=np.uint8)
    codes = NibbleCodes(packed)
    lq = np.zeros(2 * codes.nb * 16, np.uint8)
    a, bias, _, _ = _quantize(np.ones((2 * codes.nb, 16), np.float32), lq)
    approx = np.zeros(codes.nfull)
    q, ds, offsets = np.zeros(8, np.float32), np.zeros(128, np.float32), np.arange(8) * 16
    for o in (0, 1):
        for ip in (True, False):
            _scan(codes.blocks, lq, 1.0 / a, bias, np.zeros((40, o), np.uint16), np.zeros((40, o), np.uint16), q, ds,
                  offsets, 4, ip, approx)
    codes.take(np.arange(40))
    _candidates(approx, 1.0, 3, 0.0)
    exact_scores(codes, np.arange(40), np.ones((2 * codes.nb, 16), np.float32))
    _WARM[0] = True
