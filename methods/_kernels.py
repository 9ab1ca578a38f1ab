"""Compiled scan kernels (numba) for the own scans of small query batches.

The numpy scans of LVQ, OSQ, KVQuant-NUQ, NUPES and BEBR decode a block of codes to float32 and
score it with one GEMM: fast for a large batch of queries (the decode is shared), but a single
query pays for decoding the whole index. These kernels score the *codes* directly, without a
decoded copy of anything (what a method keeps in RAM is unchanged):

* :func:`lut_scores` — per-query lookup tables for codes made of per-dimension scalar codes
  packed into a bit stream (OSQ's variable widths, KVQuant-NUQ / NUPES's b bits): the stream is
  cut into groups of whole dimensions of at most 8 bits (:func:`lut_groups`), the table of group
  g holds, for each of its 2^w bit patterns, the sum of the dimensions' per-code scores, and a
  vector's score is ``sum_g LUT[g, bits_g]``;
* :func:`dot_u8` / :func:`dot_u4` — ``q . c`` over LVQ's 8-bit or nibble-packed 4-bit codes (plus
  ``sum c`` and ``sum c^2`` for L2); the per-vector affine constants are applied by the caller;
* :func:`sdc_popcount` — BEBR's symmetric distance ``sum_{a,b} qw_a xw_b (m - 2 popcount(q_a ^ x_b))``
  over 64-bit words.

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

    @_jit
    def _sdc_popcount(xw64, xw, qw64, qw, m, out):  # noqa: ANN001, ANN202
        # xw64 (n, P, W) uint64 planes, xw (n, P) weights; qw64 (nq, P, W), qw (nq, P)
        n, p, w = xw64.shape
        nq = qw64.shape[0]
        fm = np.float32(m)
        for i in range(n):
            for k in range(nq):
                acc = np.float32(0.0)
                for b in range(p):
                    inner = np.float32(0.0)
                    for a in range(p):
                        h = np.uint64(0)
                        for t in range(w):
                            h += _popc(qw64[k, a, t] ^ xw64[i, b, t])
                        inner += qw[k, a] * (fm - np.float32(2.0) * np.float32(h))
                    acc += xw[i, b] * inner
                out[k, i] = acc


# ----- entry points -----------------------------------------------------------------------------------
def lut_scores(codes: np.ndarray, luts: np.ndarray, groups: dict[str, np.ndarray]) -> np.ndarray:
    """(nq, n) float32: ``sum_g luts[q, g, bits_g(code_i)]`` for packed code rows ``codes``."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    out = np.empty((luts.shape[0], codes.shape[0]), dtype=np.float32)
    if not AVAILABLE:  # pragma: no cover
        return lut_scores_numpy(codes, luts, groups)
    nxt = np.minimum(groups["byte"] + 1, codes.shape[1] - 1)
    _lut_scores(codes, luts, groups["byte"], groups["shift"], groups["mask"], nxt,
                bool(groups.get("bytewise", False)), out)
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


def sdc_popcount(xplanes: np.ndarray, xw: np.ndarray, qplanes: np.ndarray, qw: np.ndarray, m: int) -> np.ndarray:
    """(nq, n) float32 SDC inner products ``sum_{a,b} qw_a xw_b (m - 2 H(q_a, x_b))`` of packed
    planes (n, P, nb) whose byte width nb is a multiple of 8 (see :func:`popcount_ready`)."""
    x64 = np.ascontiguousarray(xplanes).view(np.uint64)
    q64 = np.ascontiguousarray(qplanes).view(np.uint64)
    out = np.empty((qplanes.shape[0], xplanes.shape[0]), dtype=np.float32)
    _sdc_popcount(x64, np.ascontiguousarray(xw, np.float32), q64, np.ascontiguousarray(qw, np.float32),
                  int(m), out)
    return out


def popcount_ready(code_width: int) -> bool:
    """Whether :func:`sdc_popcount` can read planes of ``code_width`` bytes as 64-bit words."""
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
    planes = rng.integers(0, 256, (5, 2, 8), dtype=np.uint8)
    sdc_popcount(planes, np.ones((5, 2), np.float32), planes[:1], np.ones((1, 2), np.float32), 64)
    _WARM = True
