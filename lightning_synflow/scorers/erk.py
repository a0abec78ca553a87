"""Zero-cost baselines that prescribe each tensor's density and pick positions at random: ERK and uniform.

ERK is the Erdős–Rényi-Kernel distribution of RigL (Evci et al., "Rigging the lottery: making all tickets
winners", ICML 2020); Frankle et al. ("Pruning neural networks at initialization: why are we missing the
mark?", ICLR 2021) found that the per-layer densities decide most of what pruning at initialization
achieves, which makes random pruning at good per-layer densities a strong baseline.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_synflow.distributions import check_power_scale, erk_densities, kept_counts, uniform_densities
from lightning_synflow.ranking import Scope, top_k_mask
from lightning_synflow.schedules import num_kept
from lightning_synflow.scorers.base import Scorer, ScoringContext, register_scorer
from lightning_synflow.scorers.baselines import DeviceGenerators, random_scores


class LayerwiseRandom(Scorer):
    """Random positions at per-tensor densities that :meth:`layer_densities` prescribes.

    The scores are uniform random numbers; :meth:`allocate` keeps, in each tensor, the number of weights
    its density gives, the counts summing to exactly ``round(density·N)`` (largest-remainder rounding, see
    :func:`~lightning_synflow.distributions.kept_counts`). The ``scope`` of
    :func:`~lightning_synflow.compute_masks` is ignored: the distribution decides the per-tensor counts.
    Pruned weights stay pruned (monotone): a tensor with fewer weights left than its share keeps all of
    them and the others make up the difference. Subclass and implement :meth:`layer_densities` for a
    distribution of your own.

    Args:
        seed: Seed of the scorer's own generator for the positions; ``None`` draws from torch's global
            generator (so ``seed_everything`` controls it).
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an int or None, got {seed!r}")
        self.seed = seed
        self._generators = DeviceGenerators(seed)

    @abstractmethod
    def layer_densities(self, shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
        """Each tensor's density (in [0, 1]) at the global ``density``; ``Σ d_l·n_l`` should be ``density·N``."""

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        return random_scores(masks, self._generators)

    def allocate(
        self, scores: Mapping[str, Tensor], density: float, scope: Scope, candidates: Optional[Mapping[str, Tensor]]
    ) -> dict[str, Tensor]:
        sizes = {n: s.numel() for n, s in scores.items()}
        densities = self.layer_densities({n: tuple(s.shape) for n, s in scores.items()}, density)
        available = None if candidates is None else {n: int(torch.count_nonzero(candidates[n])) for n in scores}
        counts = kept_counts(sizes, densities, num_kept(density, sum(sizes.values())), available)
        return {
            n: top_k_mask(s, counts[n], None if candidates is None else candidates[n]) for n, s in scores.items()
        }


@register_scorer("erk")
class ERK(LayerwiseRandom):
    """Random pruning at Erdős–Rényi-Kernel densities (RigL): ``d_l ∝ (Σ dims)/(Π dims)`` — for a conv
    weight ``(out, in, kh, kw)`` ``(out+in+kh+kw)/(out·in·kh·kw)``, for a Linear ``(out+in)/(out·in)`` —
    scaled so that ``density·N`` weights are kept; tensors that would exceed density 1 are kept dense and
    the scale is re-solved over the others. Small tensors (first conv, classifier) stay denser than
    large ones. Data-free, one round by default; positions are uniformly random within each tensor.

    Args:
        seed: Seed of the scorer's own generator for the positions; ``None`` draws from torch's global
            generator (so ``seed_everything`` controls it).
        power_scale: RigL's ``erk_power_scale``, the exponent on ``(Σ dims)/(Π dims)``: 1 (the default)
            is ERK, 0 gives every tensor the same density.
    """

    def __init__(self, seed: Optional[int] = None, power_scale: float = 1.0) -> None:
        super().__init__(seed)
        self.power_scale = check_power_scale(power_scale)

    def layer_densities(self, shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
        return erk_densities(shapes, density, self.power_scale)


@register_scorer("uniform")
class Uniform(LayerwiseRandom):
    """Random pruning with every tensor at the global density (first and last layers included: leave a
    layer out of pruning to keep it dense). Per-tensor counts are ``d·n_l`` rounded down or up so that
    they sum to exactly ``round(d·N)``. Data-free, one round by default.

    Args:
        seed: Seed of the scorer's own generator for the positions; ``None`` draws from torch's global
            generator (so ``seed_everything`` controls it).
    """

    def layer_densities(self, shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
        return uniform_densities(shapes, density)
