"""Zero-cost baselines: random positions at the per-layer densities of ERK or of a uniform distribution.

ERK is the Erdős–Rényi-Kernel distribution of RigL (Evci et al., "Rigging the lottery: making all tickets
winners", ICML 2020); Frankle et al. ("Pruning neural networks at initialization: why are we missing the
mark?", ICLR 2021) found that the per-layer densities decide most of what pruning at initialization
achieves, which makes random pruning at good per-layer densities a strong baseline. Each is the
:class:`~lightning_synflow.scorers.baselines.Random` scorer in a distribution of
:mod:`lightning_synflow.distributions`, by one name; any other scorer can use those distributions too
(``distribution="erk"``).
"""

from __future__ import annotations

from typing import Optional

from lightning_synflow import distributions
from lightning_synflow._moved import renamed_attributes
from lightning_synflow.scorers.base import register_scorer
from lightning_synflow.scorers.baselines import Random


@register_scorer("erk")
class ERKRandom(Random):
    """Random pruning at Erdős–Rényi-Kernel densities (RigL): ``scorer="random", distribution="erk"``.
    ``d_l ∝ (Σ dims)/(Π dims)`` — for a conv weight ``(out, in, kh, kw)`` ``(out+in+kh+kw)/(out·in·kh·kw)``,
    for a Linear ``(out+in)/(out·in)`` — scaled so that exactly ``round(density·N)`` weights are kept;
    tensors that would exceed density 1 are kept dense. Small tensors (first conv, classifier) stay denser
    than large ones. Data-free, one round by default; positions are uniformly random within each tensor.

    Args:
        seed: Seed of the scorer's own generator for the positions; ``None`` draws from torch's global
            generator (so ``seed_everything`` controls it).
        power_scale: RigL's ``erk_power_scale``, the exponent on ``(Σ dims)/(Π dims)``: 1 (the default)
            is ERK, 0 gives every tensor the same density.
    """

    def __init__(self, seed: Optional[int] = None, power_scale: float = 1.0) -> None:
        super().__init__(seed)
        self.distribution = distributions.ERK(power_scale)


@register_scorer("uniform")
class UniformRandom(Random):
    """Random pruning with every tensor at the global density (first and last layers included: leave a
    layer out of pruning to keep it dense): ``scorer="random"`` with ``distributions.Uniform(exact_total=True)``,
    per-tensor counts ``d·n_l`` rounded down or up so that they sum to exactly ``round(d·N)``. Data-free, one
    round by default.

    Args:
        seed: Seed of the scorer's own generator for the positions; ``None`` draws from torch's global
            generator (so ``seed_everything`` controls it).
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(seed)
        self.distribution = distributions.Uniform(exact_total=True)


#: The names these scorers had, which read as the distributions ``distributions.ERK`` and ``distributions.Uniform``.
__getattr__ = renamed_attributes(__name__, {"ERK": "lightning_synflow.scorers.erk.ERKRandom", "Uniform": "lightning_synflow.scorers.erk.UniformRandom"})
