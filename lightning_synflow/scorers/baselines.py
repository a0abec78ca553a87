"""The trivial baselines every pruning paper compares against: weight magnitude and random."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_synflow.scorers.base import Scorer, ScoringContext, register_scorer


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
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        return {n: torch.rand(m.shape, generator=self._generator).to(m.device) * m for n, m in masks.items()}
