"""Compiled scan kernels (numba) for the own scans of small query batches.

The numpy scans of LVQ, OSQ, KVQuant-NUQ, NUPES and BEBR decode a block of codes to float32 and
score it with one GEMM: fast for a large batch of queries (the decode is shared), but a single
query pays for decoding the whole index. These kernels score the *codes* directly, without a
decoded copy of anything (what a method keeps in RAM is unchanged):

* :func:`lut_scores` — per-query lookup tables for codes made of per-dimension scalar codes
  packed into a bit stream (OSQ's variable widths, KVQuant-NUQ / NUPES's b bits): the stream is
  cut into groups of whole dimensions of at most 8 bits (:func:`lut_groups`), the table of group
  g holds, for each of its 2^w bit patterns, the sum of the dimensions' per-code scores, and a
  vector's score is ``sum_g LUT[g, bits_g]`` (byte groups: tiles of vectors per table row;
  groups at any bit offset: one unaligned 64-bit load per group, 4 vectors at a time, the
  tables packed end to end so that they take 2^bits entries each, not 256);
* :func:`dot_u8` / :func:`dot_u4` — ``q . c`` over LVQ's 8-bit or nibble-packed 4-bit codes (plus
  ``sum c`` and ``sum c^2`` for L2); the per-vector affine constants are applied by the caller;
* :func:`sdc_topk` — BEBR's symmetric distance ``sum_{a,b} qw_a xw_b (m - 2 popcount(q_a ^ x_b))``
  over 64-bit words (scalar ``popcnt``), plane weights from the fp16 step scales and the top-k
  heap inside the kernel.

Every kernel is single-threaded (no ``prange``), so the harness's one-thread timings hold. They
are compiled on first use (``cache=True`` keeps the machine code on disk); :func:`warm_up`
compiles them on tiny arrays, which the methods call from ``add`` so that no compile lands in a
timed search. Without numba, :data:`AVAILABLE` is False and the methods use their numpy path.
The numpy references the tests compare against: :func:`lut_scores_numpy` and the methods' GEMM
scans (search parameter ``kernel="numpy"``).
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - exercised by whichever branch the environment has
    import numba
    from llvmlite import ir as llvmir
    from numba import types
    from numba.extending import intrinsic

    AVAILABLE = True
except ImportError:  # pragma: no cover
    numba = None
    AVAILABLE = False

#: widest bit group of a lookup table (2^8 entries per group)
GROUP_BITS = 8
#: query batches up to this size use the compiled kernels by default; larger ones the GEMM scans
SMALL_BATCH = 16
#: vectors scored per kernel call (bounds the (nq, block) score tile)
BLOCK = 32768


# ----- lookup-table layout (numpy, built once per index) --------------------------------------------
def lut_groups(widths: np.ndarray, group_bits: int = GROUP_BITS) -> dict[str, np.ndarray]:
    """Cut a bit stream of per-dimension codes (dimension j: ``widths[j]`` bits, in order, least
    significant bit first) into groups of consecutive dimensions of at most ``group_bits`` bits.

    Returns arrays: per group ``byte`` (first byte), ``shift`` (bit offset in it), ``mask``,
    ``two`` (1 when the group spans two bytes) and ``size`` (2^bits); per dimension ``group`` (its
    group, -1 for zero-width dimensions) and ``pos`` (its bit offset inside the group).
    """
    widths = np.asarray(widths, dtype=np.int64)
    if widths.size and int(widths.max()) > group_bits:
        raise ValueError(f"dimensions wider than {group_bits} bits do not fit a lookup group")
    if widths.size and np.all(widths == widths[0]) and widths[0] > 0:  # uniform: k dimensions a group
        w = int(widths[0])
        k = group_bits // w
        group = np.arange(widths.size, dtype=np.int64) // k
        start = np.arange(0, widths.size, k, dtype=np.int64) * w
        nbits = np.minimum(widths.size - start // w, k) * w
        pos = (np.arange(widths.size, dtype=np.int64) % k) * w
        return _group_arrays(start, nbits, group, pos)
    starts, bits = [], []
    group = np.full(widths.size, -1, dtype=np.int64)
    pos = np.zeros(widths.size, dtype=np.int64)
    offset = 0
    for j, w in enumerate(widths.tolist()):
        if w == 0:
            continue
        if not bits or bits[-1] + w > group_bits:
            starts.append(offset)
            bits.append(0)
        group[j] = len(bits) - 1
        pos[j] = bits[-1]
        bits[-1] += w
        offset += w
    return _group_arrays(np.array(starts, dtype=np.int64), np.array(bits, dtype=np.int64), group, pos)


def _group_arrays(start: np.ndarray, nbits: np.ndarray, group: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
    shift = start % 8
    return {"byte": start // 8, "shift": shift, "mask": (1 << nbits) - 1,
            "two": (shift + nbits > 8).astype(np.int64), "size": 1 << nbits, "group": group, "pos": pos}


def build_luts(dim_scores: np.ndarray, offsets: np.ndarray, widths: np.ndarray,
               groups: dict[str, np.ndarray]) -> np.ndarray:
    """Group tables (nq, G, 2^GROUP_BITS) float32 from per-dimension code scores.

    ``dim_scores`` (nq, L): query q's score of code c on dimension j at ``offsets[j] + c`` (the
    flat layout of :class:`methods._bits.LevelTable`). Zero-width dimensions are left out (the
    caller adds their constant).
    """
    ds = np.ascontiguousarray(dim_scores, dtype=np.float32)
    nq = ds.shape[0]
    out = np.zeros((nq, groups["byte"].size, 1 << GROUP_BITS), dtype=np.float32)
    if AVAILABLE:
        _build_luts(ds, np.asarray(offsets, np.int64), np.asarray(widths, np.int64), groups["group"],
                    groups["pos"], groups["size"], out)
        return out
    v = np.arange(1 << GROUP_BITS)
    for j in np.flatnonzero(np.asarray(widths) > 0):  # pragma: no cover - without numba only
        g, p, w = groups["group"][j], groups["pos"][j], widths[j]
        out[:, g, :] += ds[:, offsets[j] + ((v >> p) & ((1 << w) - 1))]
    return out


def group_values(codes: np.ndarray, groups: dict[str, np.ndarray]) -> np.ndarray:
    """Bit pattern of every group of every packed code row, (n, G) int64 (numpy reference)."""
    c = codes.astype(np.int64)
    padded = np.hstack([c, np.zeros((c.shape[0], 1), np.int64)])
    v = padded[:, groups["byte"]] | (padded[:, groups["byte"] + 1] << 8) * groups["two"]
    return (v >> groups["shift"]) & groups["mask"]


def lut_scores_numpy(codes: np.ndarray, luts: np.ndarray, groups: dict[str, np.ndarray]) -> np.ndarray:
    """Reference for :func:`lut_scores`: (nq, n) float32 scores ``sum_g LUT[q, g, bits_g]``."""
    vals = group_values(codes, groups)
    g = np.arange(vals.shape[1])
    return np.stack([luts[q][g[None, :], vals].sum(axis=1, dtype=np.float64) for q in range(luts.shape[0])]
                    ).astype(np.float32)


# ----- compiled kernels ---------------------------------------------------------------------------
if AVAILABLE:
    _jit = numba.njit(cache=True, nogil=True)
    _jit_fast = numba.njit(cache=True, nogil=True, fastmath=True)

    @intrinsic
    def _popc(typingctx, x):  # noqa: ANN001, ANN202 - numba intrinsic signature
        sig = types.uint64(types.uint64)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            return builder.ctpop(args[0])

        return sig, codegen

    def _has_popcnt() -> bool:
        try:
            from llvmlite import binding as llvm

            if not llvm.get_host_cpu_features().get("popcnt", False):
                return False
            llvm.initialize_native_asmparser()  # the JIT assembles the inline popcnt below
            return True
        except Exception:  # noqa: BLE001 - unknown host: LLVM's generic ctpop  # pragma: no cover
            return False

    if _has_popcnt():

        @intrinsic
        def _popc1(typingctx, x):  # noqa: ANN001, ANN202 - numba intrinsic signature
            # one scalar popcnt instruction, opaque to LLVM's loop vectorizer (which would turn a
            # loop of a few words into byte-shuffle popcounts and a horizontal sum: slower here)
            sig = types.int64(types.uint64)

            def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
                i64 = llvmir.IntType(64)
                return builder.asm(llvmir.FunctionType(i64, [i64]), "popcntq $1, $0", "=r,r", [args[0]], False)

            return sig, codegen
    else:  # pragma: no cover - hosts without popcnt

        @numba.njit(cache=True, nogil=True)
        def _popc1(x):  # noqa: ANN001, ANN202
            return np.int64(_popc(x))

    @_jit
    def _build_luts(ds, offsets, widths, group, pos, size, out):  # noqa: ANN001, ANN202
        nq = ds.shape[0]
        for q in range(nq):
            for j in range(widths.shape[0]):
                w = widths[j]
                if w == 0:
                    continue
                g, p, o = group[j], pos[j], offsets[j]
                m = (1 << w) - 1
                for v in range(size[g]):
                    out[q, g, v] += ds[q, o + ((v >> p) & m)]

    @intrinsic
    def _load_u64(typingctx, arr, off):  # noqa: ANN001, ANN202 - numba intrinsic signature
        # 8 bytes of a 1-d uint8 array from byte ``off`` on (unaligned little-endian load); the
        # caller keeps off + 8 within the array
        sig = types.uint64(arr, off)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            ptr = builder.bitcast(builder.gep(data, [args[1]]), llvmir.IntType(64).as_pointer())
            return builder.load(ptr, align=1)

        return sig, codegen

    @_jit
    def _compact_luts(luts, size, offs, out):  # noqa: ANN001, ANN202
        # (nq, G, 256) tables -> (nq, sum size) with group g's size[g] entries from offs[g]
        for q in range(luts.shape[0]):
            for g in range(size.shape[0]):
                for v in range(size[g]):
                    out[q, offs[g] + v] = luts[q, g, v]

    @_jit_fast
    def _lut_scores_words(codes, flat_luts, gdesc, out):  # noqa: ANN001, ANN202
        # groups at arbitrary bit offsets: each group's bits from one unaligned 64-bit load of its
        # first byte on (a group spans at most 15 bits from there); the tables packed end to end
        # (a compact, cache-friendly block); gdesc[g] = byte | shift << 16 | mask << 24 |
        # table offset << 32. 4 vectors at a time, one running sum per vector (groups in order);
        # rows whose 8-byte window would leave the array (the last one) read bytes.
        n, nb = codes.shape
        ng = gdesc.shape[0]
        nq = flat_luts.shape[0]
        flat = codes.reshape(n * nb)
        safe = n - 1 if n > 0 else 0  # rows below this have a whole next row after them
        for q in range(nq):
            lut = flat_luts[q]
            i = 0
            while i + 4 <= safe:
                a0 = a1 = a2 = a3 = np.float32(0.0)
                r0 = i * nb
                for g in range(ng):
                    d = gdesc[g]
                    o = r0 + np.int64(d & np.uint64(0xFFFF))
                    sh = (d >> np.uint64(16)) & np.uint64(255)
                    m = (d >> np.uint64(24)) & np.uint64(255)
                    base = np.int64(d >> np.uint64(32))
                    a0 += lut[base + np.int64((_load_u64(flat, o) >> sh) & m)]
                    a1 += lut[base + np.int64((_load_u64(flat, o + nb) >> sh) & m)]
                    a2 += lut[base + np.int64((_load_u64(flat, o + 2 * nb) >> sh) & m)]
                    a3 += lut[base + np.int64((_load_u64(flat, o + 3 * nb) >> sh) & m)]
                out[q, i] = a0
                out[q, i + 1] = a1
                out[q, i + 2] = a2
                out[q, i + 3] = a3
                i += 4
            while i < n:
                a = np.float32(0.0)
                for g in range(ng):
                    d = gdesc[g]
                    b = np.int64(d & np.uint64(0xFFFF))
                    b2 = min(b + 1, nb - 1)
                    v = (np.int64(codes[i, b]) | (np.int64(codes[i, b2]) << 8)) >> np.int64((d >> np.uint64(16)) & np.uint64(255))
                    a += lut[np.int64(d >> np.uint64(32)) + (v & np.int64((d >> np.uint64(24)) & np.uint64(255)))]
                out[q, i] = a
                i += 1

    @_jit_fast
    def _lut_scores(codes, luts, gbyte, gshift, gmask, gnext, bytewise, out):  # noqa: ANN001, ANN202
        # tiles of TILE vectors: the tile's group values are transposed into (G, TILE) bytes once,
        # then each table row stays in L1 while it is applied to the whole tile (one running sum
        # per vector, dimensions added in order)
        n = codes.shape[0]
        ng = gbyte.shape[0]
        nq = luts.shape[0]
        tile = 64
        ct = np.zeros((ng, tile), dtype=np.uint8)
        acc = np.empty(tile, dtype=np.float32)
        for i0 in range(0, n, tile):
            t = min(tile, n - i0)
            if bytewise:
                for r in range(t):
                    for g in range(ng):
                        ct[g, r] = codes[i0 + r, g]
            else:
                for g in range(ng):
                    # gnext: the next byte, or the same one where the group ends inside it (its
                    # copy then lies above the mask)
                    b, b2, sh, m = gbyte[g], gnext[g], gshift[g], gmask[g]
                    for r in range(t):
                        v = np.int32(codes[i0 + r, b]) | (np.int32(codes[i0 + r, b2]) << 8)
                        ct[g, r] = np.uint8((v >> sh) & m)
            for q in range(nq):
                lut = luts[q]
                for r in range(tile):
                    acc[r] = 0.0
                for g in range(ng):
                    for r in range(tile):
                        acc[r] += lut[g, ct[g, r]]
                for r in range(t):
                    out[q, i0 + r] = acc[r]

    @_jit_fast
    def _dot_u8(codes, q, out, csum, csq, want_norms):  # noqa: ANN001, ANN202
        n, d = codes.shape
        nq = q.shape[0]
        for i in range(n):
            for k in range(nq):
                acc = np.float32(0.0)
                for j in range(d):
                    acc += q[k, j] * np.float32(codes[i, j])
                out[k, i] = acc
            if want_norms:
                s1 = 0
                s2 = 0
                for j in range(d):
                    c = np.int64(codes[i, j])
                    s1 += c
                    s2 += c * c
                csum[i] = s1
                csq[i] = s2

    @_jit_fast
    def _dot_u4(codes, qlo, qhi, out, csum, csq, want_norms):  # noqa: ANN001, ANN202
        n, nb = codes.shape
        nq = qlo.shape[0]
        for i in range(n):
            for k in range(nq):
                acc = np.float32(0.0)
                for j in range(nb):
                    c = codes[i, j]
                    acc += qlo[k, j] * np.float32(c & 15) + qhi[k, j] * np.float32(c >> 4)
                out[k, i] = acc
            if want_norms:
                s1 = 0
                s2 = 0
                for j in range(nb):
                    c = np.int64(codes[i, j])
                    lo = c & 15
                    hi = c >> 4
                    s1 += lo + hi
                    s2 += lo * lo + hi * hi
                csum[i] = s1
                csq[i] = s2

    @_jit
    def _outlier_fix(scores, codes, idx, val, q, ds, offsets, bits, ip):  # noqa: ANN001, ANN202
        # replace the dense code's score of each stored outlier by the outlier value's score
        nq, nb = scores.shape
        no = idx.shape[1]
        mask = (1 << bits) - 1
        last = codes.shape[1] - 1
        for i in range(nb):
            for o in range(no):
                p = np.int64(idx[i, o])
                v = val[i, o]
                bit = p * bits
                byte = bit >> 3
                word = np.int64(codes[i, byte]) | (np.int64(codes[i, min(byte + 1, last)]) << 8)
                c = (word >> (bit & 7)) & mask
                for k in range(nq):
                    if ip:
                        good = q[k, p] * v
                    else:
                        good = (q[k, p] - v) * (q[k, p] - v)
                    scores[k, i] += good - ds[k, offsets[p] + c]

    _POW2 = np.ldexp(1.0, np.arange(32) - 25).astype(np.float32)  # 2^(e - 25), e = 0..31

    @_jit
    def _half(h):  # noqa: ANN001, ANN202
        # IEEE binary16 bits (uint16) -> float32, exactly (numba has no float16 on the CPU)
        e = (h >> 10) & 31
        m = np.int32(h & 1023)
        if e == 0:
            v = np.float32(m) * _POW2[1]  # subnormal: m 2^-24
        elif e == 31:
            v = np.float32(np.inf) if m == 0 else np.float32(np.nan)
        else:
            v = np.float32(m + 1024) * _POW2[e]
        return v * np.float32(1 - 2 * np.int32(h >> 15))  # the sign without a branch (random signs)

    @_jit
    def _sift_down(hd, hi, j, k, keep_max):  # noqa: ANN001, ANN202
        # restore the heap below j: root = the worst kept score (smallest for keep_max)
        while True:
            c = 2 * j + 1
            if c >= k:
                return
            if c + 1 < k and ((hd[c + 1] < hd[c]) if keep_max else (hd[c + 1] > hd[c])):
                c += 1
            if (hd[c] >= hd[j]) if keep_max else (hd[c] <= hd[j]):
                return
            hd[c], hd[j] = hd[j], hd[c]
            hi[c], hi[j] = hi[j], hi[c]
            j = c

    @_jit
    def _heap_select(scores, hdq, hiq, ip):  # noqa: ANN001, ANN202
        # push scores[i] (ids i) into the heap (hdq, hiq) of the k best (root: the worst kept),
        # then sort it: best first, ties by id, the unfilled (-1) entries last
        k = hdq.shape[0]
        worst = hdq[0]
        for i in range(scores.shape[0]):
            s = scores[i]
            if (s > worst) if ip else (s < worst):
                hdq[0] = s
                hiq[0] = i
                _sift_down(hdq, hiq, 0, k, ip)
                worst = hdq[0]
        for a in range(1, k):  # insertion sort of k entries
            d, j = hdq[a], hiq[a]
            b = a - 1
            while b >= 0:
                db, jb = hdq[b], hiq[b]
                better = (d > db if ip else d < db) or (d == db and j >= 0 and (jb < 0 or j < jb))
                if not better:
                    break
                hdq[b + 1], hiq[b + 1] = db, jb
                b -= 1
            hdq[b + 1], hiq[b + 1] = d, j

    @_jit
    def _sdc_topk1(x64, scales, aux, q64, qw, m, qsq, ip, hd, hi):  # noqa: ANN001, ANN202
        # _sdc_topk for one plane per side (u = bits = 1): x64 (n, W), scales (n,), q64 (nq, W);
        # one query at a time: a tight scoring loop into a buffer, then the heap pass
        n, w = x64.shape
        nq = hd.shape[0]
        fm = np.float32(m)
        buf = np.empty(n, dtype=np.float32)
        for q in range(nq):
            qq = q64[q]
            wq = qw[q]
            base = np.float32(0.0) if ip else qsq[q]
            mult = np.float32(1.0) if ip else np.float32(-2.0)
            for i in range(n):
                xi = x64[i]
                h = np.int64(0)
                for j in range(w):
                    h += _popc1(qq[j] ^ xi[j])
                buf[i] = base + mult * (_half(scales[i]) * (wq * (fm - np.float32(2.0) * np.float32(h)))) + aux[i]
            _heap_select(buf, hd[q], hi[q], ip)

    @_jit
    def _sdc_topk2(x64, scales, aux, q64, qw, m, qsq, ip, hd, hi):  # noqa: ANN001, ANN202
        # _sdc_topk for two planes per side (u = 2 with 1 bit, or u = 1 with 2 bits): the four
        # plane-pair popcounts in one pass over the words, in registers
        n, _, w = x64.shape
        nq = hd.shape[0]
        two_steps = scales.shape[1] == 2
        fm = np.float32(m)
        buf = np.empty(n, dtype=np.float32)
        for q in range(nq):
            qa, qb = q64[q, 0], q64[q, 1]
            w0, w1 = qw[q, 0], qw[q, 1]
            mq = fm * (w0 + w1)
            base = np.float32(0.0) if ip else qsq[q]
            mult = np.float32(1.0) if ip else np.float32(-2.0)
            for i in range(n):
                x0, x1 = x64[i, 0], x64[i, 1]
                h00 = h01 = h10 = h11 = np.int64(0)
                for j in range(w):
                    a, b, c, d = qa[j], qb[j], x0[j], x1[j]
                    h00 += _popc1(a ^ c)
                    h10 += _popc1(b ^ c)
                    h01 += _popc1(a ^ d)
                    h11 += _popc1(b ^ d)
                xw0 = _half(scales[i, 0])
                xw1 = _half(scales[i, 1]) if two_steps else xw0 * np.float32(2.0)
                i0 = w0 * np.float32(h00) + w1 * np.float32(h10)
                i1 = w0 * np.float32(h01) + w1 * np.float32(h11)
                acc = xw0 * (mq - np.float32(2.0) * i0) + xw1 * (mq - np.float32(2.0) * i1)
                buf[i] = base + mult * acc + aux[i]
            _heap_select(buf, hd[q], hi[q], ip)

    @_jit
    def _sdc_topk(x64, scales, aux, q64, qw, bits, m, qsq, ip, hd, hi):  # noqa: ANN001, ANN202
        # SDC scores of every vector against each query, kept in per-query heaps (hd, hi) (nq, k)
        # that the caller filled with the worst score and id -1:
        #   ip: sum_{a,b} qw_a xw_b (m - 2 H(q_a, x_b)) + aux;  l2: qsq - 2 (the same) + aux
        # x64 (n, P, W) uint64 planes; plane b = t * bits + p has weight scale_t 2^p, scales
        # (n, u) fp16 bits; q64 (nq, P, W), qw (nq, P). One query at a time over all vectors.
        n, p, w = x64.shape
        nq = hd.shape[0]
        u = scales.shape[1]
        fm = np.float32(m)
        xw = np.empty(p, dtype=np.float32)
        buf = np.empty(n, dtype=np.float32)
        for q in range(nq):
            qq = q64[q]
            qsum = np.float32(0.0)
            for a in range(p):
                qsum += qw[q, a]
            base = np.float32(0.0) if ip else qsq[q]
            mult = np.float32(1.0) if ip else np.float32(-2.0)
            for i in range(n):
                for t in range(u):
                    sc = _half(scales[i, t])
                    for b in range(bits):
                        xw[t * bits + b] = sc * np.float32(1 << b)
                xi = x64[i]
                acc = np.float32(0.0)
                for b in range(p):
                    inner = np.float32(0.0)
                    for a in range(p):
                        h = np.int64(0)  # signed: int -> float is one instruction
                        for j in range(w):
                            h += _popc1(qq[a, j] ^ xi[b, j])
                        inner += qw[q, a] * np.float32(h)
                    acc += xw[b] * (fm * qsum - np.float32(2.0) * inner)
                buf[i] = base + mult * acc + aux[i]
            _heap_select(buf, hd[q], hi[q], ip)

# ----- entry points -----------------------------------------------------------------------------------
def lut_scores(codes: np.ndarray, luts: np.ndarray, groups: dict[str, np.ndarray]) -> np.ndarray:
    """(nq, n) float32: ``sum_g luts[q, g, bits_g(code_i)]`` for packed code rows ``codes``."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    out = np.empty((luts.shape[0], codes.shape[0]), dtype=np.float32)
    if not AVAILABLE:  # pragma: no cover
        return lut_scores_numpy(codes, luts, groups)
    if groups.get("bytewise", False) or not 8 <= codes.shape[1] < 1 << 16:
        nxt = np.minimum(groups["byte"] + 1, codes.shape[1] - 1)
        _lut_scores(codes, luts, groups["byte"], groups["shift"], groups["mask"], nxt,
                    bool(groups.get("bytewise", False)), out)
        return out
    # bit-packed groups: 64-bit window loads (rows of 8 bytes to 64 KiB), compact tables
    size = groups["size"]
    offs = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    flat = np.empty((luts.shape[0], int(size.sum())), dtype=np.float32)
    _compact_luts(luts, size, offs, flat)
    gdesc = (groups["byte"].astype(np.uint64) | (groups["shift"].astype(np.uint64) << np.uint64(16))
             | (groups["mask"].astype(np.uint64) << np.uint64(24)) | (offs.astype(np.uint64) << np.uint64(32)))
    _lut_scores_words(codes, flat, gdesc, out)
    return out


def bytewise(groups: dict[str, np.ndarray], code_bytes: int) -> bool:
    """Whether group g is exactly byte g for every byte of the code (uniform 4- or 8-bit codes)."""
    g = groups["byte"].size
    return bool(g == code_bytes and np.array_equal(groups["byte"], np.arange(g))
                and not groups["shift"].any() and not groups["two"].any() and np.all(groups["mask"] == 255))


def outlier_fix(scores: np.ndarray, codes: np.ndarray, idx: np.ndarray, val: np.ndarray,
                q: np.ndarray, ds: np.ndarray, offsets: np.ndarray, bits: int, metric: str) -> None:
    """KVQuant's dense-and-sparse scores, in place: for the vectors of ``scores`` (nq, b) with
    packed ``codes`` (b, nb), each stored outlier (position ``idx``, value ``val``, (b, o))
    replaces the score of its dense code (``ds``: per-level scores, flat layout with ``offsets``)
    by the score of its exact value."""
    if idx.shape[1] == 0:
        return
    _outlier_fix(scores, np.ascontiguousarray(codes), np.ascontiguousarray(idx, np.uint16),
                 np.ascontiguousarray(val, np.float32), np.ascontiguousarray(q, np.float32),
                 np.ascontiguousarray(ds, np.float32), np.asarray(offsets, np.int64), int(bits), metric == "ip")


def dot_codes(codes: np.ndarray, q: np.ndarray, bits: int, dim: int, norms: bool
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """LVQ's ``q . c`` (nq, n) float32 over packed 8- or 4-bit codes, with per-vector ``sum c`` and
    ``sum c^2`` (int64, n) when ``norms``."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    q = np.ascontiguousarray(q, dtype=np.float32)
    n = codes.shape[0]
    out = np.empty((q.shape[0], n), dtype=np.float32)
    csum = np.empty(n if norms else 0, dtype=np.int64)
    csq = np.empty(n if norms else 0, dtype=np.int64)
    if bits == 8:
        _dot_u8(codes, q, out, csum, csq, norms)
    elif bits == 4:
        nb = codes.shape[1]
        qpad = np.zeros((q.shape[0], 2 * nb), dtype=np.float32)
        qpad[:, :dim] = q
        _dot_u4(codes, np.ascontiguousarray(qpad[:, 0::2]), np.ascontiguousarray(qpad[:, 1::2]), out, csum, csq,
                norms)
    else:
        raise ValueError(f"LVQ kernels take 4- or 8-bit codes, not {bits}")
    return out, (csum if norms else None), (csq if norms else None)


def sdc_topk(xplanes: np.ndarray, scales: np.ndarray, aux: np.ndarray, qplanes: np.ndarray, qw: np.ndarray,
             bits: int, m: int, k: int, metric: str, qsq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of BEBR's SDC scores in one compiled pass (no score array; plane weights from the
    fp16 step ``scales`` (n, u) inside the kernel): ``sum_{a,b} qw_a xw_b (m - 2 H(q_a, x_b)) + aux``
    (ip) or ``qsq - 2 (the same) + aux`` (l2); best first, (nq, k) scores and ids (-1 past n)."""
    nq = qplanes.shape[0]
    ip = metric == "ip"
    hd = np.full((nq, k), -np.inf if ip else np.inf, dtype=np.float32)
    hi = np.full((nq, k), -1, dtype=np.int64)
    x64 = np.ascontiguousarray(xplanes).view(np.uint64)
    sc = np.ascontiguousarray(scales).view(np.uint16)
    q64 = np.ascontiguousarray(qplanes).view(np.uint64)
    qw = np.ascontiguousarray(qw, np.float32)
    aux = np.ascontiguousarray(aux, np.float32)
    qsq = np.zeros(nq, np.float32) if qsq is None else np.ascontiguousarray(qsq, np.float32)
    if x64.shape[1] == 1:  # one plane per side
        _sdc_topk1(x64[:, 0], sc[:, 0], aux, q64[:, 0], qw[:, 0], int(m), qsq, ip, hd, hi)
    elif x64.shape[1] == 2:
        _sdc_topk2(x64, sc, aux, q64, qw, int(m), qsq, ip, hd, hi)
    else:
        _sdc_topk(x64, sc, aux, q64, qw, int(bits), int(m), qsq, ip, hd, hi)
    return hd, hi


def popcount_ready(code_width: int) -> bool:
    """Whether :func:`sdc_topk` can read planes of ``code_width`` bytes as 64-bit words."""
    return AVAILABLE and code_width % 8 == 0


def use_kernels(nq: int, kernel: str) -> bool:
    """Search parameter ``kernel``: ``auto`` (compiled kernels for up to :data:`SMALL_BATCH` queries),
    ``compiled`` or ``numpy`` (the GEMM reference scan)."""
    if kernel not in ("auto", "compiled", "numpy"):
        raise ValueError(f"unknown kernel {kernel!r} (auto, compiled, numpy)")
    if not AVAILABLE:
        return False
    return kernel == "compiled" or (kernel == "auto" and nq <= SMALL_BATCH)


_WARM = False


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel for the argument types the methods
    pass, on tiny arrays, so that the first timed search does not pay for it."""
    global _WARM
    if _WARM or not AVAILABLE:
        return
    rng = np.random.default_rng(0)
    groups = lut_groups(np.array([3, 4, 2, 5, 8, 1]))
    codes = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    luts = np.zeros((1, groups["byte"].size, 1 << GROUP_BITS), np.float32)
    lut_scores(codes, luts, groups)
    wide = lut_groups(np.array([3, 4, 2, 5, 8, 1] * 3))
    lut_scores(rng.integers(0, 256, (9, 9), dtype=np.uint8), np.zeros((1, wide["byte"].size, 256), np.float32), wide)
    lut_scores(codes, luts[:, :1].repeat(3, 1), {**groups, "bytewise": True})
    build_luts(np.zeros((1, 8 + 16 + 4 + 32 + 256 + 2), np.float32), np.zeros(6, np.int64),
               np.array([3, 4, 2, 5, 8, 1]), groups)
    q = np.zeros((1, 6), np.float32)
    for bits in (8, 4):
        for norms in (False, True):
            dot_codes(codes if bits == 4 else rng.integers(0, 256, (5, 6), dtype=np.uint8), q, bits, 6, norms)
    for metric in ("ip", "l2"):
        outlier_fix(np.zeros((1, 5), np.float32), codes, np.zeros((5, 1), np.uint16),
                    np.zeros((5, 1), np.float16), q, np.zeros((1, 96), np.float32), np.arange(6) * 16, 4, metric)
    for metric in ("ip", "l2"):
        for p, u in ((1, 1), (2, 2), (2, 1), (4, 4)):
            pl = rng.integers(0, 256, (5, p, 8), dtype=np.uint8)
            sdc_topk(pl, np.ones((5, u), np.float16), np.zeros(5, np.float32), pl[:1], np.ones((1, p), np.float32),
                     p // u, 64, 3, metric, np.zeros(1, np.float32))
    _WARM = True
