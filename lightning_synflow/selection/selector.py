"""Selectors: what a pruning round keeps or drops, whatever the granularity or the layout.

The round loop (:mod:`lightning_synflow.loop`) is written once: score, ask the distribution for a budget,
keep that many units. What a *unit* is differs: single weights (:class:`~lightning_synflow.selection.alive.AliveSet`
and :class:`~lightning_synflow.selection.topk.WeightSelector`), weights under an N:M pattern
(:class:`~lightning_synflow.selection.granularity.PatternSelector`), whole channels
(:class:`~lightning_synflow.selection.channels.ChannelSelector`), or the shards of weights spread over processes
(:class:`~lightning_synflow.distributed.selection.ShardedSelector`). A selector knows its units, its living set,
how to rank within one ranking of a budget, and how to turn kept units into masks.

:func:`select_within` is the one loop over a budget's rankings (one over all tensors for a single count, one
per tensor for per-tensor counts); every selection in the package goes through it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from lightning_synflow.distributions import Budget, Distribution
from lightning_synflow.parameters import check_weight_norm


class Selector(ABC):
    """The units one pruning run ranks, and the masks they make.

    Attributes:
        names: The tensors a budget counts over (parameter names; for channels, the groups of coupled ones).
        shapes: Their shapes, for the distribution's budget.
        monotone: Whether pruned units stay pruned (ranked among the living only) or all compete each round.
        masks: The weight masks the scorer sees, keyed by parameter name.
    """

    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    monotone: bool = True
    masks: dict[str, Tensor]
    #: Per tensor, the flat positions the last round pruned (for incremental scorers); None: re-read the masks.
    pruned: Optional[dict[str, Tensor]] = None
    #: Per tensor, the sorted flat positions of the living weights, when the selector lists them.
    positions: Optional[dict[str, Tensor]] = None
    #: Whether an incremental scorer may carry its state from round to round with this selector.
    incremental: bool = True
    #: Sums a tensor over the processes that hold the units (sharded selection); None in one process.
    all_reduce: Optional[Callable[[Tensor], Tensor]] = None
    #: A word for the progress bar ("channels", "2:4"); empty for single weights.
    label: str = ""

    @abstractmethod
    def alive_counts(self) -> dict[str, int]:
        """Per name of :attr:`names`, the units alive."""

    def unit_scores(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per name of :attr:`names`, the units' scores, from the weights' scores."""
        return scores

    def begin_round(self) -> None:
        """Called before a round's rankings."""

    @abstractmethod
    def keep(self, names: list[str], scores: MutableMapping[str, Tensor], k: int) -> None:
        """Keep exactly ``k`` units of the tensors ``names`` (one ranking), the highest scores first."""

    def end_round(self) -> None:
        """Called after a round's rankings."""

    def distribution(self, layers: Distribution) -> Distribution:
        """The distribution as these units need it (channels share by the weights each group spans)."""
        return layers

    def finish(self, model: nn.Module, layers: Distribution, density: float) -> dict[str, Tensor]:
        """The final masks, keyed by parameter name, after the checks the granularity asks for (``layers`` and
        ``density``: the last round's)."""
        check_weight_norm(model, self.masks)
        return self.masks


def budget_groups(names: Sequence[str], budget: Budget) -> list[tuple[list[int], int]]:
    """The rankings a budget asks for, as (indices into ``names``, units kept): one over every tensor for a
    single count, one per tensor for per-tensor counts."""
    if isinstance(budget, int):
        return [(list(range(len(names))), budget)]
    missing = [n for n in names if n not in budget]
    if missing:
        raise ValueError(f"the budget has no count for {missing}")
    return [([i], budget[n]) for i, n in enumerate(names)]


def starting_masks(
    scores: Mapping[str, Tensor], candidates: Optional[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """What a one-shot selection starts from: the ``candidates``, or every unit of ``scores`` when there are
    none (then nothing restricts the ranking: the selector is not monotone)."""
    if candidates is None:
        return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    return {n: candidates[n] for n in scores}


def select_within(selector: Selector, scores: MutableMapping[str, Tensor], budget: Budget) -> None:
    """One round's selection: each ranking of ``budget`` keeps exactly its count of ``selector``'s units."""
    selector.begin_round()
    for ids, k in budget_groups(selector.names, budget):
        selector.keep([selector.names[i] for i in ids], scores, k)
    selector.end_round()
