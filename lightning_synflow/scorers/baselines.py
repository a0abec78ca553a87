"""The trivial baselines every pruning paper compares against: weight magnitude and random."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_synflow.scorers.base import Scorer, ScoringContext, register_scorer
from lightning_synflow.validation import check_seed


def _score_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@register_scorer("magnitude")
class Magnitude(Scorer):
    """|θ| at initialization."""

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        return {n: params[n].detach().to(_score_dtype(params[n])).abs() * m for n, m in masks.items()}


@register_scorer("random")
class Random(Scorer):
    """A uniformly random ranking: random pruning at the requested density.

    Args:
        seed: Seed of the scorer's own generator; ``None`` draws from torch's global generator (so
            ``seed_everything`` controls it).
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        self.seed = check_seed("seed", seed)
        self._generators = DeviceGenerators(seed)

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        return random_scores(masks, self._generators)


class DeviceGenerators:
    """Generators seeded with ``seed``, one per device, each made when that device first asks: random scores
    are drawn where the masks live instead of on the host and copied over, and on CPU the draws are those
    of ``torch.Generator().manual_seed(seed)``. Without a seed, each device's default generator (which
    ``seed_everything`` seeds)."""

    def __init__(self, seed: Optional[int]) -> None:
        self.seed = seed
        self._made: dict[torch.device, torch.Generator] = {}

    def on(self, device: torch.device) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        if device not in self._made:
            self._made[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._made[device]


def random_scores(masks: Mapping[str, Tensor], generators: DeviceGenerators) -> dict[str, Tensor]:
    """Uniform random scores in [0, 1) on each mask's device, zero where the mask is False (pruned)."""
    return {
        n: torch.rand(m.shape, generator=generators.on(m.device), device=m.device).mul_(m) for n, m in masks.items()
    }
