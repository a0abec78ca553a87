"""The round loop, written once: score the network as masked so far, ask the distribution for the round's
budget, keep that many units (SynFlow's Algorithm 1, for every scorer).

Granularity and layout are not forks of this loop but :class:`~lightning_synflow.selection.selector.Selector` objects:
single weights, an N:M pattern, whole channels or shards over processes each say what their units are and
how to keep them. The ablation ``invert``, incremental scoring, the progress bar and the budget call are here,
for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_synflow.ablations import shuffle_masks
from lightning_synflow.distributed.sharding import local
from lightning_synflow.distributions import Distribution
from lightning_synflow.model_state import preserved_model_state
from lightning_synflow.plan import PruningPlan
from lightning_synflow.schedules import num_kept
from lightning_synflow.scorers.base import (
    IncrementalScorer,
    LivingWeights,
    Scorer,
    ScoringContext,
)
from lightning_synflow.selection.selector import Selector, select_within


def prune_rounds(
    model: nn.Module, plan: PruningPlan, selector: Selector, context: ScoringContext, *, progress: bool = False
) -> dict[str, Tensor]:
    """Run ``plan``'s rounds on ``selector``'s units and return the final masks (the model is not changed)."""
    scorer = plan.scorer
    layers = selector.distribution(plan.distribution)
    rounds = reachable_rounds(plan.rounds, selector, layers, scorer.monotone)
    incremental = isinstance(scorer, IncrementalScorer) and selector.incremental
    state = scorer.start(model, selector.masks, context) if incremental else None
    label = f"pruning {selector.label} " if selector.label else "pruning "
    for density in tqdm(rounds, desc=f"{label}({scorer.name or type(scorer).__name__})", disable=not progress, leave=False):
        living = None if state is None else (LivingWeights(selector.masks, selector.pruned, selector.positions), state)
        scores = selector.unit_scores(score_round(model, scorer, selector.masks, context, living, selector.all_reduce))
        if plan.invert:  # the ablation negates the ranking, nothing else
            scores = {n: -s for n, s in scores.items()}
        budget = layers.budget(selector.shapes, density, selector.alive_counts() if scorer.monotone else None)
        select_within(selector, scores, budget)
        del scores  # before the next round scores: one round's scores in memory at a time
    if plan.shuffle:
        selector.masks = shuffle_masks(selector.masks)
    return selector.finish(model, layers, rounds[-1])


def score_round(
    model: nn.Module,
    scorer: Scorer,
    masks: Mapping[str, Tensor],
    context: ScoringContext,
    incremental: Optional[tuple[LivingWeights, Any]] = None,
    all_reduce: Optional[Callable[[Tensor], Tensor]] = None,
) -> dict[str, Tensor]:
    """One round's scores: ``scorer.score``, or ``score_round`` on ``(living weights, state)`` for an
    :class:`IncrementalScorer`; checked to cover every tensor of ``masks`` and to be finite (on every rank's
    shards, through ``all_reduce``, when they are sharded)."""
    with preserved_model_state(model):
        if incremental is None:
            scores = scorer.score(model, masks, context)
        else:
            scores = scorer.score_round(model, *incremental, context)
    missing = [n for n in masks if n not in scores]
    if missing:
        raise ValueError(f"scorer {scorer!r} returned no scores for {missing}")
    # A NaN or inf anywhere makes the sum non-finite; only then look closer (large finite scores can overflow
    # a sum). An element-wise check of every score would cost more than a SynFlow round's bookkeeping.
    bad = [] if scorer.checks_finite else [
        n for n in masks if not torch.isfinite(local(scores[n]).sum()) and not torch.isfinite(local(scores[n])).all()
    ]
    if all_reduce is not None and not scorer.checks_finite and scores:  # every rank joins, so that none waits
        device = local(next(iter(scores.values()))).device
        if int(all_reduce(torch.tensor([len(bad)], device=device))[0]) and not bad:
            raise FloatingPointError(f"scorer {scorer!r} produced non-finite scores on another rank")
    if bad:
        raise FloatingPointError(f"scorer {scorer!r} produced non-finite scores for {bad}")
    return {n: scores[n] for n in masks}


def reachable_rounds(rounds: list[float], selector: Selector, layers: Distribution, monotone: bool) -> list[float]:
    """The round densities, checked to keep at least one unit and, for a monotone scorer continuing from given
    masks, lowered to what those keep so that no round asks for more than is still alive."""
    total = sum(math.prod(s) for s in selector.shapes.values())
    final = layers.budget(selector.shapes, rounds[-1], None)
    if (final if isinstance(final, int) else sum(final.values())) == 0:
        raise ValueError(
            f"sparsity {1 - rounds[-1]!r} keeps 0 of the {total} prunable weights with {layers!r}; allowed: a"
            f" sparsity below {1 - 0.5 / total}"
        )
    if not monotone:
        return rounds
    kept = sum(selector.alive_counts().values())
    if kept < num_kept(rounds[-1], total):
        raise ValueError(f"the given `masks` keep {kept} weights, fewer than the {num_kept(rounds[-1], total)} requested")
    return [min(d, kept / total) for d in rounds]
