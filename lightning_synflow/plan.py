"""The pruning plan: what a run asks for, resolved and checked once, before any model is touched.

Users say the same thing several ways (``sparsity`` or ``compression``, a scorer's name or instance, a
distribution's name, mapping or object, a granularity string). :func:`resolve_plan` turns them into one
:class:`PruningPlan`; :func:`~lightning_synflow.compute_masks` and
:class:`~lightning_synflow.PruneAtInit` both build it and hand it to the same round loop, so that they refuse
the same inputs with the same messages and neither re-derives the other's values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Union

from lightning_synflow.distributions import (
    ERK,
    DensityMap,
    Distribution,
    DistributionSpec,
    get_distribution,
)
from lightning_synflow.schedules import Schedule, density_schedule, resolve_density
from lightning_synflow.scorers.base import Scorer, get_scorer
from lightning_synflow.selection.granularity import (
    NM,
    Channels,
    GranularitySpec,
    get_granularity,
    resolve_pattern_density,
)
from lightning_synflow.validation import check_bool, check_choice


@dataclass(frozen=True)
class PruningPlan:
    """A resolved pruning request.

    Attributes:
        scorer: The scorer instance.
        density: Final fraction of the prunable units kept (weights; channels with ``granularity="channel"``;
            ``N/M`` with an N:M pattern).
        iterations: Pruning rounds.
        schedule: How the density falls over the rounds.
        distribution: How each round's budget is shared among the tensors (or channel groups).
        granularity: ``None`` for single weights, else :class:`~lightning_synflow.selection.granularity.NM`
            or :class:`~lightning_synflow.selection.granularity.Channels`.
        invert: Ablation: keep the lowest scores.
        shuffle: Ablation: move each tensor's kept positions to random places at the end.
    """

    scorer: Scorer
    density: float
    iterations: int
    schedule: Schedule
    distribution: Distribution
    granularity: Optional[Union[NM, Channels]] = None
    invert: bool = False
    shuffle: bool = False

    @property
    def rounds(self) -> list[float]:
        """The density to reach after each round; the last is :attr:`density`."""
        return self.scorer.densities(self.density, self.iterations, self.schedule)

    @property
    def granularity_name(self) -> str:
        """``"weight"``, ``"channel"`` or ``"N:M"``: the granularity as a user writes it."""
        return "weight" if self.granularity is None else str(self.granularity)


def resolve_plan(
    scorer: Union[str, Scorer] = "synflow",
    *,
    sparsity: Optional[float] = None,
    compression: Optional[float] = None,
    iterations: Optional[int] = None,
    schedule: Schedule = "exponential",
    distribution: Optional[DistributionSpec] = None,
    scope: Optional[str] = None,
    granularity: GranularitySpec = "weight",
    invert: bool = False,
    shuffle: bool = False,
) -> PruningPlan:
    """The plan for these arguments (as :func:`~lightning_synflow.compute_masks` takes them), or a
    ``ValueError`` naming the argument, its value and what is allowed."""
    pattern = get_granularity(granularity)
    if isinstance(pattern, NM):
        density = resolve_pattern_density(pattern, sparsity, compression)
    else:
        density = resolve_density(sparsity, compression)
    scorer = get_scorer(scorer)
    iterations = scorer.default_iterations if iterations is None else iterations
    density_schedule(density, iterations, schedule)  # checks iterations and schedule
    layers = resolve_distribution(scorer, distribution, scope, density)
    plan = PruningPlan(
        scorer, density, iterations, schedule, layers, pattern, check_bool("invert", invert), check_bool("shuffle", shuffle)
    )
    _check_combination(plan)
    return plan


def _check_combination(plan: PruningPlan) -> None:
    """Refuse what no model could be pruned with, before any work."""
    name = plan.granularity_name
    off_pattern = isinstance(plan.distribution, ERK) or (
        isinstance(plan.distribution, DensityMap) and any(d != plan.density for d in plan.distribution.patterns.values())
    )
    if isinstance(plan.granularity, NM) and off_pattern:  # per-tensor densities other than N/M
        raise ValueError(
            f"granularity {name!r} keeps {plan.granularity.n} of every {plan.granularity.m} weights of each tensor it"
            f" groups, which distribution {plan.distribution!r} does not at density {plan.density:g}; use 'global' or"
            f" 'uniform'"
        )
    if plan.granularity is not None and plan.shuffle:  # shuffle moves single weights
        raise ValueError(f"granularity {name!r} is not supported with shuffle=True")


def resolve_distribution(
    scorer: Scorer, distribution: Optional[DistributionSpec], scope: Optional[str], density: float
) -> Distribution:
    """The distribution asked for: ``distribution``, else the deprecated ``scope``'s, else the scorer's own
    (the random baselines), else global. A scorer with its own distribution takes no other."""
    if scope is not None:
        check_choice("scope", scope, list(_SCOPES))
        warnings.warn(
            f"`scope` is deprecated: write distribution={_SCOPES[scope]!r} instead of scope={scope!r}",
            DeprecationWarning,
            stacklevel=4,
        )
        if distribution is not None:
            raise ValueError(f"give `distribution` or the deprecated `scope`, not both; got scope={scope!r}")
        if scorer.distribution is None:
            distribution = _SCOPES[scope]
    if scorer.distribution is not None:
        if distribution is not None and distribution is not scorer.distribution:
            raise ValueError(
                f"scorer {scorer.name!r} is random pruning in its own distribution {scorer.distribution!r};"
                f" for random scores in distribution={distribution!r} use scorer='random'"
            )
        return scorer.distribution
    return get_distribution("global" if distribution is None else distribution, density)


#: The deprecated ``scope`` values and the distributions they now are.
_SCOPES = {"global": "global", "layerwise": "uniform"}
