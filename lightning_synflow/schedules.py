"""Sparsity schedules: the density to reach after each pruning iteration.

SynFlow's Algorithm 1 prunes to ``d ** (t / T)`` at step ``t`` of ``T`` (exponential), so that each
step removes the same small fraction of what is left; that is what prevents layer collapse.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from lightning_synflow.validation import check_choice, check_int, check_number

Schedule = Literal["exponential", "linear"]
SCHEDULES: tuple[str, ...] = ("exponential", "linear")


def resolve_density(sparsity: Optional[float] = None, compression: Optional[float] = None) -> float:
    """The final density (fraction kept) from exactly one of ``sparsity`` (fraction removed, in
    [0, 1)) or ``compression`` (total / kept, >= 1; the SynFlow paper's 10^x)."""
    if (sparsity is None) == (compression is None):
        raise ValueError(
            f"give exactly one of `sparsity` (fraction removed, in [0, 1)) or `compression` (total/kept, >= 1);"
            f" got sparsity={sparsity!r}, compression={compression!r}"
        )
    if sparsity is not None:
        allowed = "a number in [0, 1) (the fraction of weights removed)"
        return 1.0 - check_number("sparsity", sparsity, allowed, low=0.0, high=1.0, open_high=True)
    return 1.0 / check_number("compression", compression, "a finite number >= 1 (total/kept weights)", low=1.0)


def density_schedule(final_density: float, iterations: int, schedule: Schedule = "exponential") -> list[float]:
    """Densities ``d_1 .. d_T`` after each of ``iterations`` steps; the last is exactly ``final_density``."""
    check_choice("schedule", schedule, SCHEDULES)
    check_int("iterations", iterations)
    if not 0.0 < final_density <= 1.0:
        raise ValueError(f"the final density must be in (0, 1], got {final_density!r}")
    steps = range(1, iterations + 1)
    if schedule == "exponential":
        return [final_density ** (t / iterations) for t in steps]
    return [final_density + (1.0 - final_density) * (iterations - t) / iterations for t in steps]


def num_kept(density: float, total: int) -> int:
    """Weights kept out of ``total`` at ``density``: round half up, so the count never depends on ties."""
    return min(total, math.floor(density * total + 0.5))
