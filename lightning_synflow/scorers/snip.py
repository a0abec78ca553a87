"""SNIP (Lee, Ajanthan & Torr, ICLR 2019): connection sensitivity from labelled data."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from lightning_synflow.scorers.base import Scorer, ScoringContext, register_scorer
from lightning_synflow.scorers.functional import Mode, check_mode, loss_gradients


@register_scorer("snip")
class SNIP(Scorer):
    """``|θ ⊙ ∂L/∂θ|`` (equivalently ``|∂L/∂c|`` at mask ``c``), gradients summed over the scoring batches
    and over all ranks. One round by default, as in the paper.

    Args:
        mode: The model's mode while scoring. ``"eval"`` (BatchNorm on its running statistics) follows the
            official code and the SynFlow code base; ``"train"`` uses batch statistics (running
            statistics are never updated by scoring either way).
    """

    needs_data = True
    supports_sharding = True

    def __init__(self, mode: Mode = "eval") -> None:
        self.mode = check_mode(mode)

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        weights, grads = loss_gradients(model, masks, context, self.mode)
        return {n: weights[n].mul_(grads.pop(n)).abs_() for n in masks}  # in place: w is a copy
