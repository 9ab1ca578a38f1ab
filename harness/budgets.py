"""Memory budgets in bytes per vector, and the mapping of a method's grid onto them.

A run is *placed* by its measured RAM bytes per vector (all index memory / n): at budget B, a
method competes with its configurations whose measured bytes per vector are at most B. Before
running, each method's declared build grid is mapped onto the ladder by the analytic formula:
for every budget, the ``per_budget`` configurations with the largest analytic size that fits
are built, so each budget is filled as well as the method allows and the sweep stays small. Only
the paper's recipe is planned by default; with ``variants`` each named departure is planned like a
method of its own, beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.errors import BudgetError
from harness.method import PAPER_VARIANT, Method

DEFAULT_BUDGETS: tuple[float, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_PER_BUDGET = 1


@dataclass(frozen=True)
class PlannedBuild:
    method: str
    build_params: dict[str, Any]
    bytes_analytic: float


def plan_method(cls: type[Method], dim: int, n: int, budgets: tuple[float, ...],
                per_budget: int = DEFAULT_PER_BUDGET, variants: bool = False) -> list[PlannedBuild]:
    """Build configurations of ``cls`` chosen for ``budgets`` (largest analytic sizes that fit)."""
    sized = sorted(
        ((float(cls.bytes_per_vector(dim, n, **c)), c) for c in cls.build_configs(dim)),
        key=lambda sc: -sc[0],
    )
    chosen: dict[str, PlannedBuild] = {}
    # each named variant (a departure from the paper) is planned like a method of its own, so it
    # is measured beside the paper's recipe at every budget
    if not variants:  # the paper's recipe only (configurations without a variant count as the paper's)
        sized = [(s, c) for s, c in sized if cls.variant_of(c) == PAPER_VARIANT] or sized[:0]
    for budget in budgets:
        for variant in sorted({cls.variant_of(c) for _, c in sized}):
            fitting = [(s, c) for s, c in sized if s <= budget and cls.variant_of(c) == variant]
            for s, c in fitting[:per_budget]:
                key = repr(sorted(c.items()))
                chosen.setdefault(key, PlannedBuild(cls.name, c, s))
    return sorted(chosen.values(), key=lambda p: p.bytes_analytic)


def smallest_size(cls: type[Method], dim: int, n: int) -> float | None:
    sizes = [cls.bytes_per_vector(dim, n, **c) for c in cls.build_configs(dim)]
    return min(sizes) if sizes else None


def plan(methods: list[type[Method]], dim: int, n: int, budgets: tuple[float, ...],
         per_budget: int = DEFAULT_PER_BUDGET, variants: bool = False) -> list[PlannedBuild]:
    """Plan every method; raise BudgetError when no configuration of any method fits."""
    builds = [b for cls in methods for b in plan_method(cls, dim, n, budgets, per_budget, variants)]
    if not builds:
        smallest = {cls.name: smallest_size(cls, dim, n) for cls in methods}
        detail = ", ".join(f"{m}: {s:.1f}" if s is not None else f"{m}: no valid config"
                           for m, s in smallest.items())
        raise BudgetError(
            f"no configuration fits the budget(s) {', '.join(f'{b:g}' for b in budgets)} bytes/vector "
            f"at d={dim}, n={n}; smallest sizes (bytes/vector): {detail}"
        )
    return builds
