"""Product quantization: the vector is cut into m sub-vectors of d/m dimensions, each replaced
by the index of its nearest of 2^nbits sub-centroids (k-means per sub-space); search is
exhaustive with asymmetric distances (float query against the codes, via lookup tables).

Paper: Jégou, Douze & Schmid, "Product Quantization for Nearest Neighbor Search", IEEE TPAMI
33(1), 2011. nbits = 4 uses the SIMD fast-scan layout (André, Kermarrec & Le Scouarnec, "Cache
locality is not enough: high-performance nearest neighbor search with product quantization fast
scan", VLDB 2015) through faiss ``IndexPQFastScan``; nbits = 8 uses faiss ``IndexPQ``.

Bytes per vector: m·nbits/8 + 2^nbits·d·4/n (codebooks: 2^nbits centroids of d/m floats per
sub-space, shared). Fast scan stores codes in blocks of 32 vectors, so its code term is
⌈n/32⌉·32·⌈m/2⌉/n.

Variants: none; this is the recipe (exhaustive ADC search). Fast scan quantizes the lookup tables
to 8 bits (as André et al. do), which costs a little accuracy against exact 4-bit ADC. Codebooks
are trained on the harness's training sample (faiss k-means, 25 iterations, ≤ 256 points per
centroid); ``training_notes`` says how many vectors per centroid the data gave, and flags
codebooks trained on fewer than faiss's 39 per centroid (they fit noise). Vectors are added in
chunks (``_faiss.add_chunk_rows``): with 16 or more dimensions per sub-vector faiss encodes
through distance tables of the whole batch (n·2^nbits·m floats, 1.64 GB at 200k for m = 8).
"""

from __future__ import annotations

from typing import Any

import faiss

from harness.method import MemoryAccount
from harness.registry import register
from methods import _faiss

FASTSCAN_BLOCK = 32


def pq_code_bytes(n: int, m: int, nbits: int) -> float:
    """Per-vector code bytes of faiss PQ (8-bit: packed m·nbits bits; 4-bit: fast-scan blocks)."""
    if nbits == 4:
        blocks = -(-n // FASTSCAN_BLOCK)
        return blocks * FASTSCAN_BLOCK * ((m + 1) // 2) / n
    return float(-(-m * nbits // 8))


@register
class ProductQuantizer(_faiss.FaissMethod):
    name = "pq"
    family = "pq"
    paper = ("Jégou, Douze, Schmid, 'Product Quantization for Nearest Neighbor Search', IEEE TPAMI 2011; "
             "4-bit: André, Kermarrec, Le Scouarnec, 'Cache locality is not enough' (PQ fast scan), VLDB 2015")
    bytes_formula = "m·nbits/8 + 2^nbits·d·4/n (codebooks); 4-bit codes padded to blocks of 32 vectors"
    build_grid = {"m": [8, 16, 32, 48, 64, 96, 128, 192], "nbits": [4, 8]}

    @classmethod
    def is_valid(cls, dim: int, m: int = 8, nbits: int = 8, **_: Any) -> bool:
        return nbits in (4, 8) and m <= dim and dim % m == 0

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, m: int = 8, nbits: int = 8, **_: Any) -> float:
        return pq_code_bytes(n, m, nbits) + _faiss.pq_codebook_bytes(dim, nbits) / n

    def make_index(self, n: int) -> faiss.Index:
        m, nbits = int(self.params.get("m", 8)), int(self.params.get("nbits", 8))
        fm = _faiss.faiss_metric(self.metric)
        if nbits == 4:
            index = faiss.IndexPQFastScan(self.dim, m, 4, fm, FASTSCAN_BLOCK)
        else:
            index = faiss.IndexPQ(self.dim, m, nbits, fm)
        _faiss.quiet_pq(index.pq)
        return index

    def memory(self) -> MemoryAccount:
        return _faiss.account(self.index, codes=flat_code_bytes(self.index), structure=0)


def flat_code_bytes(index: faiss.Index) -> int:
    """Bytes of the codes array a flat-codes index (IndexPQ, IndexPQFastScan, ...) holds."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFastScan):
        return int(index.codes.size())  # packed blocks, padding included
    return int(index.ntotal) * int(index.code_size)
