"""4-bit scalar quantization: each dimension mapped linearly onto 16 levels between its
trained minimum and maximum; two codes per byte.

Paper: per-dimension uniform scalar quantization as in faiss ``IndexScalarQuantizer(QT_4bit)``
(Douze et al., "The Faiss library", arXiv:2401.08281, 2024).
Bytes per vector: ⌈d/2⌉ + 8·d/n (per-dimension min and range as float32, shared).

Variants: none; this is the recipe (faiss defaults: range = [min, max] of the training vectors per
dimension).
"""

from __future__ import annotations

from typing import Any

import faiss

from harness.registry import register
from methods._faiss import ScalarQuantizerMethod


@register
class SQ4(ScalarQuantizerMethod):
    name = "sq4"
    family = "scalar"
    paper = "Per-dimension 4-bit scalar quantization (faiss IndexScalarQuantizer QT_4bit; Douze et al., 'The Faiss library', 2024)"
    bytes_formula = "⌈d/2⌉ + 8·d/n (per-dimension min/range, float32)"
    qtype = faiss.ScalarQuantizer.QT_4bit

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        return float((dim + 1) // 2) + 8.0 * dim / n
