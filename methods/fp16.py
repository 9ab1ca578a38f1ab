"""Half-precision storage: every component rounded to IEEE-754 binary16.

Paper: no method paper; IEEE 754-2008 binary16, as implemented by faiss
``IndexScalarQuantizer(QT_fp16)`` (Douze et al., "The Faiss library", arXiv:2401.08281, 2024).
Bytes per vector: 2·d (no trained parameters; the serialised header is ~100 bytes in all).

Variants: none; this is the recipe. Distances are computed between the float32 query and the
decoded fp16 vectors.
"""

from __future__ import annotations

from typing import Any

import faiss

from harness.registry import register
from methods._faiss import ScalarQuantizerMethod


@register
class FP16(ScalarQuantizerMethod):
    name = "fp16"
    family = "scalar"
    paper = "IEEE 754 binary16 storage (faiss IndexScalarQuantizer QT_fp16; Douze et al., 'The Faiss library', 2024)"
    bytes_formula = "2·d"
    qtype = faiss.ScalarQuantizer.QT_fp16

    @classmethod
    def bytes_per_vector(cls, dim: int, n: int, **build_params: Any) -> float:
        return 2.0 * dim
