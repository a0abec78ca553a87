"""The functional core: score once (:func:`compute_scores`) or prune iteratively (:func:`compute_masks`).

Neither needs Lightning; :class:`~lightning_synflow.PruneAtInit` only adapts them to a Trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from lightning_synflow._moved import renamed_attributes
from lightning_synflow.distributed.collectives import ProcessGroupCollectives
from lightning_synflow.distributed.scoring import check_no_casting
from lightning_synflow.distributed.selection import ShardedSelector
from lightning_synflow.distributed.sharding import (
    blocks_of,
    check_shardable_masks,
    is_sharded,
    like,
    local,
)
from lightning_synflow.distributions import DistributionSpec
from lightning_synflow.loop import prune_rounds, score_round
from lightning_synflow.masks import check_masks
from lightning_synflow.parameters import select_prunable, tied_names
from lightning_synflow.plan import PruningPlan, resolve_plan
from lightning_synflow.schedules import Schedule
from lightning_synflow.scorers.base import (
    ExampleInput,
    LossFn,
    Scorer,
    ScoringContext,
    check_scores_shards,
    cross_entropy_loss,
    get_scorer,
)
from lightning_synflow.selection.alive import AliveSet
from lightning_synflow.selection.channels import ChannelSelector, channel_groups
from lightning_synflow.selection.granularity import (
    NM,
    Channels,
    GranularitySpec,
    PatternSelector,
)
from lightning_synflow.selection.selector import Selector
from lightning_synflow.selection.topk import WeightSelector
from lightning_synflow.validation import check_int


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _initial_masks(
    model: nn.Module, parameters: Optional[Sequence[str]], masks: Optional[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """The masks to start from: the given ones (checked), else all-kept masks over ``parameters``
    (default: :func:`select_prunable`)."""
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ValueError(
            f"{type(model).__name__} has parameters on the meta device (shapes without values): {meta[:5]}; materialise"
            f" them first (e.g. model.to_empty(device=...) and initialise), pruning scores their values"
        )
    if masks is not None:
        check_masks(model, masks)
        check_shardable_masks(model, masks)
        return {n: like(m, local(m).contiguous()) for n, m in masks.items()}
    names = select_prunable(model) if parameters is None else list(parameters)
    if not names:
        raise ValueError(
            f"no prunable parameters found in {type(model).__name__}: by default the weight matrices of Linear,"
            f" Conv/ConvTranspose, attention and recurrent layers that require grad are pruned"
            f" (lightning_synflow.parameters.WEIGHT_MATRICES); pass `parameters` (names) to choose others"
        )
    params = dict(model.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        tied = tied_names(model)
        hints = [f"{n!r} is tied to {tied[n]!r}: name it so" for n in unknown if n in tied]
        raise ValueError(
            f"`parameters` names tensors that {type(model).__name__} does not have: {unknown}; allowed are the"
            f" names of model.named_parameters(), e.g. {list(params)[:5]}" + "".join(f"; {h}" for h in hints)
        )
    lazy = [n for n in names if isinstance(params[n], nn.parameter.UninitializedParameter)]
    if lazy:
        raise ValueError(
            f"{type(model).__name__} has uninitialised (lazy) parameters {lazy}: run one forward pass before"
            f" pruning so that their shapes are known"
        )
    blocks_of(model, names)  # a sharded parameter's layout is checked before any work
    # Masks are laid out contiguously whatever the parameter's memory format (channels-last): positions in
    # them are logical flat indices. A sharded parameter's mask is sharded as it is.
    return {n: like(params[n], torch.ones(local(params[n]).shape, dtype=torch.bool, device=params[n].device)) for n in names}


def _context(
    model: nn.Module,
    scorer: Scorer,
    example_input: Optional[ExampleInput],
    dataloader: Optional[Iterable[Any]],
    loss_fn: Optional[LossFn],
    num_batches: Optional[int],
    all_reduce: Optional[Callable[[Tensor], Tensor]],
) -> ScoringContext:
    """Check that the scorer gets what it needs, and fetch its batches once (the same in every round)."""
    if num_batches is not None:
        check_int("num_batches", num_batches)
    if scorer.needs_input and example_input is None:
        raise ValueError(f"scorer {scorer!r} needs `example_input`: any tensor of the model's input shape")
    if scorer.needs_data and dataloader is None:
        raise ValueError(f"scorer {scorer!r} needs data: pass `dataloader` (batches of (input, target) by default)")
    device = next(model.parameters()).device
    batches: list[Any] = []
    if scorer.needs_data:
        n = scorer.default_num_batches if num_batches is None else num_batches
        batches = [_to_device(b, device) for b in islice(dataloader, n)]
        if not batches:
            raise ValueError(f"scorer {scorer!r} needs data, but `dataloader` yielded no batch")
    return ScoringContext(
        example_input=_to_device(example_input, device),
        batches=batches,
        loss_fn=cross_entropy_loss if loss_fn is None else loss_fn,
        all_reduce=all_reduce or (lambda t: t),
    )


def compute_scores(
    model: nn.Module,
    scorer: Union[str, Scorer] = "synflow",
    *,
    masks: Optional[Mapping[str, Tensor]] = None,
    example_input: Optional[ExampleInput] = None,
    dataloader: Optional[Iterable[Any]] = None,
    loss_fn: Optional[LossFn] = None,
    num_batches: Optional[int] = None,
    all_reduce: Optional[Callable[[Tensor], Tensor]] = None,
    parameters: Optional[Sequence[str]] = None,
) -> dict[str, Tensor]:
    """One scoring pass: a score per weight of each prunable tensor (higher = keep).

    Args:
        model: The network; returned exactly as it came (values, dtypes, modes, ``requires_grad``).
        scorer: A registered name (see :func:`available_scorers`) or a :class:`Scorer` instance.
        masks: Current masks (``True`` = kept); pruned weights score 0 where the scorer defines it so.
            Their keys are the prunable tensors. Default: nothing pruned yet.
        example_input: A tensor of the model's input shape (any batch size), for data-free scorers.
        dataloader: Batches for data-driven scorers; the first ``num_batches`` are moved to the model's
            device and used in every round.
        loss_fn: ``loss_fn(model, batch) -> scalar`` for data-driven scorers; default cross-entropy of
            ``model(x)`` against ``y`` for ``(x, y)`` batches.
        num_batches: Batches drawn from ``dataloader``; default the scorer's own (1 for SNIP).
        all_reduce: Sums a tensor over processes (e.g. ``torch.distributed.all_reduce`` wrapped to return
            it), so that each process scores its own shard and all rank the same totals. On a sharded model
            (DTensor parameters) the default sums over the default process group.
        parameters: Names of the prunable tensors when ``masks`` is not given; default
            :func:`select_prunable`.

    Returns:
        ``dict[name, Tensor]`` keyed as ``model.named_parameters()``, prunable tensors only; on a sharded model
        DTensors laid out as the parameters, each rank holding its shards' scores.
    """
    scorer = get_scorer(scorer)
    start = _initial_masks(model, parameters, masks)
    if not any(is_sharded(m) for m in start.values()):
        return score_round(model, scorer, start, _context(model, scorer, example_input, dataloader, loss_fn, num_batches, all_reduce))
    _check_sharded(scorer, model)
    all_reduce = all_reduce or ProcessGroupCollectives().sum
    context = _context(model, scorer, example_input, dataloader, loss_fn, num_batches, all_reduce)
    return score_round(model, scorer, start, context, all_reduce=all_reduce)  # every rank learns of a non-finite score


def compute_masks(
    model: nn.Module,
    scorer: Union[str, Scorer] = "synflow",
    *,
    sparsity: Optional[float] = None,
    compression: Optional[float] = None,
    iterations: Optional[int] = None,
    schedule: Schedule = "exponential",
    distribution: Optional[DistributionSpec] = None,
    example_input: Optional[ExampleInput] = None,
    dataloader: Optional[Iterable[Any]] = None,
    loss_fn: Optional[LossFn] = None,
    num_batches: Optional[int] = None,
    all_reduce: Optional[Callable[[Tensor], Tensor]] = None,
    parameters: Optional[Sequence[str]] = None,
    masks: Optional[Mapping[str, Tensor]] = None,
    invert: bool = False,
    shuffle: bool = False,
    progress: bool = False,
    scope: Optional[str] = None,
    granularity: GranularitySpec = "weight",
) -> dict[str, Tensor]:
    """Prune iteratively (SynFlow's Algorithm 1) and return the masks; the model is not changed.

    Each round scores the network as masked so far, asks the distribution how many weights each tensor
    keeps at the round's density (``d ** (t / T)`` at round ``t`` of ``T`` with ``schedule="exponential"``,
    ``1 - (1 - d) * t / T`` with ``"linear"``) and keeps exactly that many of the highest scores; ties go to
    the earlier tensor and lower index. For monotone scorers a pruned weight never returns.

    Args:
        sparsity: Fraction of weights removed, in [0, 1). Give this or ``compression``.
        compression: total / kept, >= 1 (the SynFlow paper's 10^x).
        iterations: Pruning rounds ``T``; default the scorer's (100 for SynFlow, 1 for magnitude/random).
        distribution: How each round's kept weights are shared among the tensors
            (:mod:`lightning_synflow.distributions`): ``"global"`` (one ranking over all tensors, exactly
            ``round(d * N)`` kept; the default), ``"uniform"`` (``round(d * n_l)`` per tensor), ``"erk"``
            (Erdős–Rényi-Kernel), a mapping of tensor-name glob -> density (others at ``d``), a
            :class:`~lightning_synflow.distributions.Distribution`, or a function ``(shapes, density) ->
            densities``. Default: the scorer's own (``"erk"``, ``"uniform"``), else ``"global"``.
        masks: Masks to continue from (their keys are the prunable tensors).
        invert: Ablation: keep the *lowest* scores instead (the ranking negated, ties as before).
        shuffle: Ablation: finally move each tensor's kept positions to random places in that tensor
            (per-tensor counts kept; torch's global generator).
        progress: Show a progress bar over the iterations.
        scope: Deprecated: ``"global"`` or ``"layerwise"``, now ``distribution="global"`` or ``"uniform"``.
        granularity: ``"weight"`` (any weights; the default), ``"channel"`` or ``"N:M"`` (e.g. ``"2:4"``).
            ``"channel"`` keeps or prunes whole output channels, coupled ones together
            (:mod:`lightning_synflow.selection.channels`; needs ``example_input`` or data to trace, and
            ``torch-pruning``): ``sparsity`` is the fraction of channels removed, the distribution shares
            channels among the groups of coupled channels (``"erk"`` by the shapes of the weights each group
            spans: :class:`~lightning_synflow.distributions.GroupERK`), and the masks also cover the channels' biases and
            normalisation parameters. ``"N:M"`` keeps exactly ``N`` of every ``M`` consecutive weights along
            each stored row (:mod:`lightning_synflow.selection.granularity`); its density ``N/M`` is implied
            (``sparsity`` may be left out); tensors whose rows are not a multiple of ``M`` long are left dense
            (all-kept masks) and named in a warning; the distribution must give every grouped tensor ``N/M``
            at the end (``"global"``, ``"uniform"``).

    On a sharded model (DTensor parameters of FSDP2 or tensor parallelism: every rank calls this together)
    each rank scores its shards and keeps its part of one exact selection over the full tensors; the masks are
    DTensors laid out as the parameters and equal a one-process run's.

    Other arguments as in :func:`compute_scores`. Returns ``dict[name, BoolTensor]``.
    """
    plan = resolve_plan(
        scorer, sparsity=sparsity, compression=compression, iterations=iterations, schedule=schedule,
        distribution=distribution, scope=scope, granularity=granularity, invert=invert, shuffle=shuffle,
    )
    return prune_masks(
        model, plan, example_input=example_input, dataloader=dataloader, loss_fn=loss_fn, num_batches=num_batches,
        all_reduce=all_reduce, parameters=parameters, masks=masks, progress=progress,
    )


def prune_masks(
    model: nn.Module,
    plan: PruningPlan,
    *,
    example_input: Optional[ExampleInput] = None,
    dataloader: Optional[Iterable[Any]] = None,
    loss_fn: Optional[LossFn] = None,
    num_batches: Optional[int] = None,
    all_reduce: Optional[Callable[[Tensor], Tensor]] = None,
    parameters: Optional[Sequence[str]] = None,
    masks: Optional[Mapping[str, Tensor]] = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Prune as ``plan`` (:func:`~lightning_synflow.resolve_plan`) says and return the masks; the model is not
    changed. :func:`compute_masks` is this after resolving its arguments, and
    :class:`~lightning_synflow.PruneAtInit` calls it with the plan it built once. Other arguments as in
    :func:`compute_masks`."""
    current = _initial_masks(model, parameters, masks)
    sharded = any(is_sharded(m) for m in current.values())
    if sharded:
        _check_sharded(plan.scorer, model, plan)
        all_reduce = all_reduce or ProcessGroupCollectives().sum  # every rank sees every rank's shards anyway
    context = _context(model, plan.scorer, example_input, dataloader, loss_fn, num_batches, all_reduce)
    selector = _selector(model, plan, current, context, sharded, copy=masks is not None)
    return prune_rounds(model, plan, selector, context, progress=progress)


def _selector(
    model: nn.Module, plan: PruningPlan, masks: dict[str, Tensor], context: ScoringContext, sharded: bool, copy: bool
) -> Selector:
    """The units ``plan`` prunes: shards, an N:M pattern's weights, whole channels, or single weights."""
    monotone = plan.scorer.monotone
    if sharded:
        return ShardedSelector.for_model(model, masks, monotone=monotone)
    if isinstance(plan.granularity, NM):
        return PatternSelector.for_model(model, masks, plan.granularity, plan.distribution, monotone=monotone)
    if isinstance(plan.granularity, Channels):
        if masks and not all(bool(m.all()) for m in masks.values()):
            raise ValueError("granularity='channel' cannot continue from given `masks` yet; prune from the dense model")
        example = _traced_input(context)
        groups = channel_groups(model, example, list(masks))
        if not groups:
            raise ValueError(
                f"granularity='channel' found no channel of {type(model).__name__} it can prune: it removes output"
                f" channels of nn.Conv1d/2d/3d and nn.Linear layers, and those of the prunable tensors all reach the"
                f" outputs or pass through a layer that cannot lose one exactly (lightning_synflow.selection.channels)"
            )
        return ChannelSelector(model, groups, example, list(masks), monotone=monotone)
    # Monotone: pruned weights stay pruned, and the living set narrows in place, costing in proportion to what
    # lives. Otherwise every weight competes again each round (FORCE).
    return AliveSet(masks, copy=copy) if monotone else WeightSelector(masks, monotone=False)


def _traced_input(context: ScoringContext) -> Any:
    """The model input that channel granularity traces: ``example_input``, else the first batch's input."""
    example = context.example_input
    if example is None and context.batches:
        batch = context.batches[0]
        if isinstance(batch, Tensor):
            batch = (batch,)
        if not isinstance(batch, (tuple, list)):
            raise ValueError(
                f"granularity='channel' traces one forward pass with the model's input, which a batch of type"
                f" {type(batch).__name__} does not single out: pass `example_input` (e.g. the batch's model inputs)"
            )
        example = batch[0]
    if example is None:
        raise ValueError("granularity='channel' traces one forward pass to find coupled channels: pass `example_input`")
    return example


def _check_sharded(scorer: Scorer, model: nn.Module, plan: Optional[PruningPlan] = None) -> None:
    """Raise, before any work, for what a sharded model cannot be pruned with."""
    check_scores_shards(scorer, "DTensor parameters")
    if plan is not None and plan.shuffle:
        raise ValueError("`shuffle` moves kept positions within whole tensors, which a sharded model never holds; got shuffle=True")
    if plan is not None and plan.granularity is not None:
        raise ValueError(f"granularity {plan.granularity_name!r} is not supported on a sharded model")
    if scorer.needs_input or scorer.needs_data:  # runs the model
        check_no_casting(model)


#: Names this module had before the wings, now elsewhere.
__getattr__ = renamed_attributes(__name__, {"resolve_distribution": "lightning_synflow.plan.resolve_distribution"})
