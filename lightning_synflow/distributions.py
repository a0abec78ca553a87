"""Layerwise sparsity distributions: how many weights each prunable tensor keeps at a global density.

``erk_densities`` is the Erdős–Rényi-Kernel distribution of RigL (Evci et al., "Rigging the lottery",
ICML 2020): a tensor's density is proportional to ``(Σ dims) / (Π dims)`` — for a conv weight
``(out, in, kh, kw)`` that is ``(out + in + kh + kw) / (out·in·kh·kw)``, for a Linear weight
``(out, in)`` ``(out + in) / (out·in)`` — scaled so that the expected number kept is ``density·N``;
tensors that would exceed density 1 are made dense and the scale is re-solved over the others, until
none exceeds 1. ``uniform_densities`` gives every tensor the global density.

``kept_counts`` turns such densities into integer counts that sum to exactly ``round(density·N)``
(:func:`~lightning_synflow.num_kept`), by the largest-remainder method: every tensor gets the floor of
its ideal count ``d_l·n_l`` and the remaining weights go one each to the tensors with the largest
fractional parts (ties: the earlier tensor). Each count is therefore the floor or the ceiling of its
ideal count, unless a tensor has fewer weights left (``available``) than its share, in which case its
count is capped there and the difference is shared among the other tensors in proportion to their
ideal counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional


def _check(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, int]:
    """Sizes of the tensors, after checking ``shapes`` and ``density``."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < density <= 1.0:
        raise ValueError(f"`density` must be a number in (0, 1] (the fraction of weights kept), got {density!r}")
    if not shapes:
        raise ValueError("`shapes` is empty: give the shape of at least one prunable tensor")
    sizes = {}
    for name, shape in shapes.items():
        dims = list(shape)
        if not dims or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in dims):
            raise ValueError(f"`shapes[{name!r}]` must be a non-empty sequence of positive ints, got {shape!r}")
        sizes[name] = math.prod(dims)
    return sizes


def check_power_scale(power_scale: float) -> float:
    """``power_scale`` of :func:`erk_densities`, checked: a finite number >= 0."""
    if isinstance(power_scale, bool) or not isinstance(power_scale, (int, float)) or not 0.0 <= power_scale < math.inf:
        raise ValueError(f"`power_scale` must be a finite number >= 0, got {power_scale!r}")
    return float(power_scale)


def proportional_fill(weights: Sequence[float], caps: Sequence[float], total: float) -> list[float]:
    """Real amounts ``x_l = min(cap_l, s·w_l)`` with ``Σ x_l = total``: share ``total`` in proportion to
    ``weights``, capping at ``caps``; capped entries are fixed and the scale ``s`` is re-solved over the
    others until none exceeds its cap (every entry that exceeds its cap at some scale also exceeds it at
    the final, larger scale, so capping all of them at once is exact). Entries whose weights are all zero
    share what is left in proportion to their remaining capacity."""
    if not 0.0 <= total <= sum(caps) * (1 + 1e-12):
        raise ValueError(f"cannot share {total} among entries whose capacities sum to {sum(caps)}")
    x = [0.0] * len(weights)
    free = [i for i in range(len(weights)) if caps[i] > 0]
    left = float(total)
    while free:
        mass = sum(weights[i] for i in free)
        if mass <= 0:  # nothing to be proportional to: fill by remaining capacity
            weights = list(caps)
            mass = sum(caps[i] for i in free)
        scale = left / mass
        over = [i for i in free if scale * weights[i] >= caps[i]]
        if not over:
            for i in free:
                x[i] = scale * weights[i]
            break
        for i in over:
            x[i] = float(caps[i])
            left -= caps[i]
        capped = set(over)
        free = [i for i in free if i not in capped]
        left = max(left, 0.0)
    return x


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float, power_scale: float = 1.0) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (RigL): ``d_l = min(1, ε·((Σ dims)/(Π dims))^power_scale)`` with ``ε``
    solved so that ``Σ d_l·n_l = density·N``; tensors reaching 1 are dense and ``ε`` is re-solved over
    the rest.

    Args:
        shapes: Tensor name -> shape (e.g. ``{"conv.weight": (64, 3, 3, 3)}``).
        density: Global fraction of weights kept, in (0, 1].
        power_scale: RigL's ``erk_power_scale``: the exponent on ``(Σ dims)/(Π dims)``; 1 is ERK, 0 uniform.

    Returns:
        ``dict[name, float]`` of densities in (0, 1], in the order of ``shapes``.
    """
    sizes = _check(shapes, density)
    check_power_scale(power_scale)
    names = list(shapes)
    raw = [(sum(shapes[n]) / sizes[n]) ** power_scale for n in names]
    kept = proportional_fill([r * sizes[n] for r, n in zip(raw, names)], [sizes[n] for n in names], density * sum(sizes.values()))
    return {n: min(1.0, k / sizes[n]) for n, k in zip(names, kept)}


def uniform_densities(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
    """Every tensor at the global ``density`` (no tensor kept dense; exclude one from pruning to keep it so)."""
    _check(shapes, density)
    return {n: float(density) for n in shapes}


def kept_counts(
    sizes: Mapping[str, int],
    densities: Mapping[str, float],
    total: Optional[int] = None,
    available: Optional[Mapping[str, int]] = None,
) -> dict[str, int]:
    """Integer counts per tensor summing to exactly ``total``, as close as possible to ``densities[n]·sizes[n]``
    (largest-remainder method; ties go to the earlier tensor).

    Args:
        sizes: Tensor name -> number of weights.
        densities: Tensor name -> density in [0, 1].
        total: Weights to keep in all; default ``round(Σ d_l·n_l)`` (half up). A distribution from
            :func:`erk_densities` or :func:`uniform_densities` at density ``d`` is passed
            ``num_kept(d, N)``.
        available: Tensor name -> weights still available (e.g. alive under the current masks); a count
            never exceeds it. The excess of a capped tensor is shared among the others in proportion
            to their ideal counts.
    """
    names = list(sizes)
    missing = [n for n in names if n not in densities]
    if missing:
        raise ValueError(f"`densities` has no density for {missing}")
    ideal = [densities[n] * sizes[n] for n in names]
    if total is None:
        total = math.floor(sum(ideal) + 0.5)
    caps = [sizes[n] if available is None else min(sizes[n], int(available[n])) for n in names]
    if not 0 <= total <= sum(caps):
        raise ValueError(f"cannot keep {total} weights: only {sum(caps)} are available in {len(names)} tensors")
    # Within 1 of the total (always so for a distribution at density d and total num_kept(d, N)) the
    # ideal counts are used as they are, so that each count is their floor or ceiling; otherwise (caps,
    # or densities that do not add up to the total) they are first rescaled to sum to it.
    if any(i > c for i, c in zip(ideal, caps)) or abs(sum(ideal) - total) >= 1:
        ideal = proportional_fill(ideal, caps, total)
    counts = [min(c, math.floor(i)) for i, c in zip(ideal, caps)]
    remainder = total - sum(counts)
    # Largest remainders first; ties by position. Float error can leave |remainder| up to the number of
    # tensors, or make it negative: then take back from the smallest fractional parts.
    frac = [i - math.floor(i) for i in ideal]
    while remainder > 0:
        order = sorted((k for k in range(len(names)) if counts[k] < caps[k]), key=lambda k: (-frac[k], k))
        for k in order[:remainder]:
            counts[k] += 1
            frac[k] = -1.0  # a tensor gets a second extra weight only after every other one had its turn
        remainder = total - sum(counts)
    while remainder < 0:
        order = sorted((k for k in range(len(names)) if counts[k] > 0), key=lambda k: (frac[k], -k))
        for k in order[:-remainder]:
            counts[k] -= 1
            frac[k] = 2.0
        remainder = total - sum(counts)
    return dict(zip(names, counts))
