"""8-bit scalar quantization: each dimension mapped linearly onto 256 levels between its
trained minimum and maximum.

Paper: per-dimension uniform scalar quantization as in faiss ``IndexScalarQuantizer(QT_8bit)``
(Douze et al., "The Faiss library", arXiv:2401.08281, 2024; the int8 embedding quantization of
Shakir, Aarsen & Lee, "Binary and Scalar Embedding Quantization", Hugging Face blog, 2024, is the
same scheme with calibration ranges).
Bytes per vector: d + 8·d/n (one byte per dimension; per-dimension min and range as float32,
shared).

Variants: none; this is the recipe (faiss defaults: range = [min, max] of the training vectors per
dimension).
"""

from __future__ import annotations

from typing import Any

import faiss

from harness.registry import register
from methods._faiss import ScalarQuantizerMethod


@register
class SQ8(ScalarQuantizerMethod):
    name = "sq8"
    family = "scalar"
    paper = "Per-dimension 8-bit scalar quantization (faiss IndexScalarQuantizer QT_8bit; Douze et al., 'The Faiss library', 2024)"
    bytes_formula = "d + 8·d/n (per-dimension min/range, float32)"
    qtype = faiss.ScalarQuantizer.QT_8bit

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        return float(dim) + 8.0 * dim / n
