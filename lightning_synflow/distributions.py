"""Layer budgets: how many weights each prunable tensor keeps in a pruning round.

A :class:`Distribution` turns a round's global density into a :data:`Budget`: one count for a single
ranking over all tensors (:class:`Global`, the default), or a count per tensor (:class:`Uniform`,
:class:`ERK`, :class:`DensityMap`, or your own :class:`LayerDensities`). Scorers only rank weights; the
budget says how many survive where, so every scorer works with every distribution (Frankle et al.,
ICLR 2021, and Liu et al., ICLR 2022, compare methods at the same per-layer densities this way).

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
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Callable, Optional, Union

from lightning_synflow.schedules import num_kept
from lightning_synflow.validation import check_bool, check_number

#: Weights to keep after a round: one count for a single ranking over all tensors, or a count per tensor.
Budget = Union[int, dict[str, int]]
#: Tensor name -> shape, in the model's order.
Shapes = Mapping[str, Sequence[int]]


def _check(shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, int]:
    """Sizes of the tensors, after checking ``shapes`` and ``density``."""
    check_number("density", density, "a number in (0, 1] (the fraction of weights kept)", low=0.0, high=1.0, open_low=True)
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
    return check_number("power_scale", power_scale, "a finite number >= 0", low=0.0)


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


def erk_group_densities(
    sizes: Mapping[str, int], spans: Mapping[str, Sequence[Sequence[int]]], density: float, power_scale: float = 1.0
) -> dict[str, float]:
    """ERK densities for groups of whole channels (or any units each spanning rows of several weights).

    A group of ``sizes[g]`` channels holds rows of the weights whose shapes are ``spans[g]``; all of its rows
    share one density. ERK would give each of those weights ``ε·e_l`` with ``e_l = ((Σ dims)/(Π dims))^power_scale``;
    a group takes the density that keeps as many of its weights as that, ``ε·Σ n_l e_l / Σ n_l`` (``n_l`` the
    weight's size), and ``ε`` is solved so that ``density·Σ sizes`` channels are kept, groups that would
    exceed 1 kept whole."""
    check_power_scale(power_scale)
    _check({g: (n,) for g, n in sizes.items()}, density)
    empty = [g for g in sizes if not spans.get(g)]
    if empty:
        raise ValueError(f"ERK over channel groups needs the weight shapes each group spans; none for {empty}")
    names = list(sizes)
    raw = []
    for g in names:
        weights = [math.prod(s) for s in spans[g]]
        raw.append(sum(n * (sum(s) / n) ** power_scale for n, s in zip(weights, spans[g])) / sum(weights))
    kept = proportional_fill([r * sizes[g] for r, g in zip(raw, names)], [sizes[g] for g in names], density * sum(sizes.values()))
    return {g: min(1.0, k / sizes[g]) for g, k in zip(names, kept)}


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


class Distribution(ABC):
    """How the weights kept in a pruning round are shared among the prunable tensors.

    The pruning loop calls :meth:`budget` once per round with that round's global density (the schedule's),
    so a distribution shapes every round of an iterative scorer, not only the last.
    """

    @abstractmethod
    def budget(self, shapes: Shapes, density: float, alive: Optional[Mapping[str, int]]) -> Budget:
        """The round's budget at global ``density``.

        Args:
            shapes: The prunable tensors' shapes, in the model's order.
            density: The round's global fraction of weights kept, in (0, 1].
            alive: Weights still alive per tensor when pruned weights stay pruned (a monotone scorer), so
                that no count exceeds them; ``None`` when every weight competes again.
        """

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Global(Distribution):
    """One ranking over all tensors keeps ``round(density·N)`` weights: each tensor's share follows from the
    scores (SynFlow's, SNIP's and GraSP's published setting)."""

    def budget(self, shapes: Shapes, density: float, alive: Optional[Mapping[str, int]]) -> Budget:
        return num_kept(density, sum(_check(shapes, density).values()))


class LayerDensities(Distribution):
    """Per-tensor densities at a global density; subclass and implement :meth:`densities` for your own.

    Args:
        exact_total: ``False``: each tensor keeps ``round(d_l·n_l)`` on its own, so the per-tensor density
            is as close as it can be. ``True``: the counts are each the floor or the ceiling of ``d_l·n_l`` and
            sum to exactly ``round(Σ d_l·n_l)`` (largest remainder, see :func:`kept_counts`). Either way no
            count exceeds the weights still alive in its tensor.
    """

    def __init__(self, exact_total: bool = False) -> None:
        self.exact_total = check_bool("exact_total", exact_total)

    @abstractmethod
    def densities(self, shapes: Shapes, density: float) -> dict[str, float]:
        """Each tensor's density in [0, 1] at the global ``density``."""

    def budget(self, shapes: Shapes, density: float, alive: Optional[Mapping[str, int]]) -> Budget:
        sizes = _check(shapes, density)
        densities = self.densities(shapes, density)
        bad = {n: densities.get(n) for n in sizes if not _is_density(densities.get(n), low=0.0)}
        if bad:
            raise ValueError(f"{self!r} gave densities outside [0, 1] or none for {bad}")
        if self.exact_total:
            return kept_counts(sizes, densities, self.total(sizes, density, densities), alive)
        return {n: min(num_kept(densities[n], size), size if alive is None else alive[n]) for n, size in sizes.items()}

    def total(self, sizes: Mapping[str, int], density: float, densities: Mapping[str, float]) -> int:
        """Weights kept in all with ``exact_total``: ``round(Σ d_l·n_l)``."""
        return math.floor(sum(densities[n] * sizes[n] for n in sizes) + 0.5)


class _GlobalTotal:
    """For distributions whose densities keep ``density·N`` by construction: the total counted directly,
    free of the float error of summing the per-tensor products."""

    def total(self, sizes: Mapping[str, int], density: float, densities: Mapping[str, float]) -> int:
        return num_kept(density, sum(sizes.values()))


class Uniform(_GlobalTotal, LayerDensities):
    """Every tensor at the global density (the layerwise pruning of SNIP's ablations and of Frankle et al.);
    first and last layers included: leave a layer out of pruning to keep it dense."""

    def densities(self, shapes: Shapes, density: float) -> dict[str, float]:
        return uniform_densities(shapes, density)


class ERK(_GlobalTotal, LayerDensities):
    """Erdős–Rényi-Kernel densities (RigL): ``d_l ∝ ((Σ dims)/(Π dims))^power_scale``, scaled so that
    ``density·N`` weights are kept, tensors that would exceed 1 kept dense; small tensors (first conv,
    classifier) stay denser than large ones. Counts sum to exactly ``round(density·N)``.

    Args:
        power_scale: RigL's ``erk_power_scale``: 1 is ERK, 0 gives every tensor the same density.
    """

    def __init__(self, power_scale: float = 1.0) -> None:
        super().__init__(exact_total=True)
        self.power_scale = check_power_scale(power_scale)

    def densities(self, shapes: Shapes, density: float) -> dict[str, float]:
        return erk_densities(shapes, density, self.power_scale)

    def __repr__(self) -> str:
        return f"ERK(power_scale={self.power_scale!r})"


class GroupERK(_GlobalTotal, LayerDensities):
    """:class:`ERK` for groups of whole channels (:func:`erk_group_densities`): a group's "shape" is one
    dimension, its channel count, so ERK's ``(Σ dims)/(Π dims)`` is taken on the weights it spans.
    ``compute_masks`` uses it in place of :class:`ERK` with ``granularity="channel"``.

    Args:
        spans: Group name -> the shapes of the weights whose rows are its channels.
        power_scale: As :class:`ERK`'s.
    """

    def __init__(self, spans: Mapping[str, Sequence[Sequence[int]]], power_scale: float = 1.0) -> None:
        super().__init__(exact_total=True)
        self.spans = {g: [tuple(s) for s in shapes] for g, shapes in spans.items()}
        self.power_scale = check_power_scale(power_scale)

    def densities(self, shapes: Shapes, density: float) -> dict[str, float]:
        sizes = {g: math.prod(s) for g, s in shapes.items()}
        return erk_group_densities(sizes, self.spans, density, self.power_scale)

    def __repr__(self) -> str:
        return f"GroupERK(power_scale={self.power_scale!r})"


class DensityMap(LayerDensities):
    """Densities by tensor name: ``{"conv1.*": 1.0, "fc.*": 0.5}`` (glob patterns, the first that matches
    wins); tensors no pattern names follow the global density.

    In iterative pruning a tensor bound for density ``D`` moves along the schedule with the global density:
    at a round where the global density is ``d_t`` of a final ``d`` it is at ``D ** (ln d_t / ln d)``, which is
    ``D ** (t / T)`` on the exponential schedule (with ``d = 1`` it is at ``D`` from the first round).

    Args:
        densities: Glob pattern -> final density in (0, 1].
        final_density: The global density of the last round (``compute_masks`` passes it).
    """

    def __init__(self, densities: Mapping[str, float], final_density: float = 1.0) -> None:
        super().__init__(exact_total=False)
        if not isinstance(densities, Mapping) or not densities:
            raise ValueError(f"`distribution` as a mapping must map glob patterns to densities, got {densities!r}")
        bad = {k: v for k, v in densities.items() if not isinstance(k, str) or not _is_density(v, low=None)}
        if bad:
            raise ValueError(f"`distribution` maps tensor-name patterns to densities in (0, 1]; not allowed: {bad}")
        self.patterns = {k: float(v) for k, v in densities.items()}
        self.final_density = final_density

    def densities(self, shapes: Shapes, density: float) -> dict[str, float]:
        unused = [p for p in self.patterns if not any(fnmatchcase(n, p) for n in shapes)]
        if unused:
            raise ValueError(f"`distribution` patterns {unused} match no prunable tensor; the tensors are {list(shapes)}")
        progress = math.log(density) / math.log(self.final_density) if self.final_density < 1.0 else 1.0
        out = {}
        for name in shapes:
            target = next((d for p, d in self.patterns.items() if fnmatchcase(name, p)), None)
            out[name] = density if target is None else target**progress
        return out


class DensityFunction(LayerDensities):
    """A plain function ``fn(shapes, density) -> {name: density}`` as a distribution (each tensor keeps
    ``round(d_l·n_l)``)."""

    def __init__(self, fn: Callable[[Shapes, float], Mapping[str, float]]) -> None:
        super().__init__(exact_total=False)
        self.fn = fn

    def densities(self, shapes: Shapes, density: float) -> dict[str, float]:
        return dict(self.fn(shapes, density))


#: Distributions by name, for ``distribution="erk"`` in Python or YAML.
DISTRIBUTIONS: dict[str, type[Distribution]] = {"global": Global, "uniform": Uniform, "erk": ERK}
#: What ``distribution`` may be: a name, a mapping of glob -> density, a :class:`Distribution`, or a function.
DistributionSpec = Union[str, Mapping[str, float], Distribution, Callable[[Shapes, float], Mapping[str, float]]]


def get_distribution(spec: DistributionSpec, final_density: float = 1.0) -> Distribution:
    """A :class:`Distribution` from a registered name (``"global"``, ``"uniform"``, ``"erk"``), a mapping of
    tensor-name glob -> density, a function ``fn(shapes, density)``, or an instance (returned as it is).
    ``final_density`` is the last round's global density, which a mapping schedules towards."""
    if isinstance(spec, Distribution):
        return spec
    if isinstance(spec, str):
        if spec in DISTRIBUTIONS:
            return DISTRIBUTIONS[spec]()
    elif isinstance(spec, Mapping):
        return DensityMap(spec, final_density)
    elif callable(spec):
        return DensityFunction(spec)
    raise ValueError(
        f"`distribution` must be one of {list(DISTRIBUTIONS)}, a mapping of tensor-name patterns to densities,"
        f" a lightning_synflow.distributions.Distribution or a function (shapes, density) -> densities; got {spec!r}"
    )


def _is_density(value: object, low: Optional[float]) -> bool:
    """A number in (0, 1] (``low=None``) or in [low, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value <= 1.0:
        return False
    return value > 0.0 if low is None else value >= low
