"""The functional core: score once (:func:`compute_scores`) or prune iteratively (:func:`compute_masks`).

Neither needs Lightning; :class:`~lightning_synflow.PruneAtInit` only adapts them to a Trainer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_synflow.ablations import shuffle_masks
from lightning_synflow.alive import AliveSet
from lightning_synflow.masks import check_masks, check_weight_norm
from lightning_synflow.model_state import preserved_model_state
from lightning_synflow.parameters import select_prunable, tied_names
from lightning_synflow.distributions import ERK, Distribution, DistributionSpec, GroupERK, get_distribution
from lightning_synflow.channels import channel_groups, channel_masks, channel_scores, select_channels, whole_channels
from lightning_synflow.granularity import (
    NM, Channels, GranularitySpec, input_major, select_pattern,
)
from lightning_synflow.ranking import budget_groups, select
from lightning_synflow.sharded_ranking import ProcessGroupCollectives, global_counts, kept_counts, select_sharded
from lightning_synflow.sharding import blocks_of, check_shardable_masks, is_sharded, like, local
from lightning_synflow.schedules import Schedule, num_kept
from lightning_synflow.scorers.base import (
    ExampleInput,
    IncrementalScorer,
    LivingWeights,
    LossFn,
    Scorer,
    ScoringContext,
    available_scorers,
    cross_entropy_loss,
    get_scorer,
)
from lightning_synflow.scorers.in_place import check_no_casting
from lightning_synflow.validation import check_int
from lightning_synflow.plan import PruningPlan, resolve_plan


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


def _score(
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
        return _score(model, scorer, start, _context(model, scorer, example_input, dataloader, loss_fn, num_batches, all_reduce))
    _check_sharded(scorer, False, model)
    all_reduce = all_reduce or ProcessGroupCollectives().sum
    context = _context(model, scorer, example_input, dataloader, loss_fn, num_batches, all_reduce)
    return _score(model, scorer, start, context, all_reduce=all_reduce)  # every rank learns of a non-finite score


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
            (:mod:`lightning_synflow.channels`; needs ``example_input`` or data to trace, and
            ``torch-pruning``): ``sparsity`` is the fraction of channels removed, the distribution shares
            channels among the groups of coupled channels (``"erk"`` by the shapes of the weights each group
            spans: :class:`~lightning_synflow.distributions.GroupERK`), and the masks also cover the channels' biases and
            normalisation parameters. ``"N:M"`` keeps exactly ``N`` of every ``M`` consecutive weights along
            each stored row (:mod:`lightning_synflow.granularity`); its density ``N/M`` is implied
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
    """:func:`compute_masks` for a resolved :class:`~lightning_synflow.plan.PruningPlan` (what
    :class:`~lightning_synflow.PruneAtInit` calls); the other arguments as there."""
    scorer, pattern, layers, rounds = plan.scorer, plan.granularity, plan.distribution, plan.rounds
    invert, shuffle = plan.invert, plan.shuffle
    current = _initial_masks(model, parameters, masks)
    sharded = any(is_sharded(m) for m in current.values())
    if sharded:
        _check_sharded(scorer, shuffle, model)
        all_reduce = all_reduce or ProcessGroupCollectives().sum  # every rank sees every rank's shards anyway
    if pattern is not None:
        if sharded:
            raise ValueError(f"granularity {str(pattern)!r} is not supported on a sharded model")
        context = _context(model, scorer, example_input, dataloader, loss_fn, num_batches, all_reduce)
        if isinstance(pattern, Channels):
            return _prune_channels(model, scorer, current, rounds, layers, context, invert, progress)
        return _prune_to_pattern(model, scorer, current, pattern, rounds, layers, context, invert, progress)
    shapes = {n: tuple(m.shape) for n, m in current.items()}
    rounds = _reachable(rounds, current, layers, shapes, scorer.monotone)
    context = _context(model, scorer, example_input, dataloader, loss_fn, num_batches, all_reduce)

    def ranked(scores: dict[str, Tensor]) -> dict[str, Tensor]:  # the ablation negates the ranking, nothing else
        return {n: -s for n, s in scores.items()} if invert else scores

    bar = dict(desc=f"pruning ({scorer.name or type(scorer).__name__})", disable=not progress, leave=False)
    if sharded:
        return _prune_sharded(model, scorer, current, tqdm(rounds, **bar), layers, context, ranked)
    if scorer.monotone:
        # Pruned weights stay pruned: the living set narrows in place, costing in proportion to what lives.
        alive = AliveSet(current, copy=masks is not None)
        state = scorer.start(model, alive.masks, context) if isinstance(scorer, IncrementalScorer) else None
        for d in tqdm(rounds, **bar):
            living = None if state is None else (LivingWeights(alive.masks, alive.pruned, alive.positions), state)
            scores = _score(model, scorer, alive.masks, context, living)
            budget = layers.budget(shapes, d, alive.alive_counts)
            alive.update(ranked(scores), budget, release=True)
        current = alive.masks
    else:
        # Every weight competes again each round (FORCE): fresh masks from all the scores.
        for d in tqdm(rounds, **bar):
            scores = _score(model, scorer, current, context)
            current = select(ranked(scores), layers.budget(shapes, d, None))
    current = shuffle_masks(current) if shuffle else current
    check_weight_norm(model, current)
    return current


def _prune_to_pattern(
    model: nn.Module,
    scorer: Scorer,
    masks: dict[str, Tensor],
    pattern: NM,
    rounds: list[float],
    layers: Distribution,
    context: ScoringContext,
    invert: bool,
    progress: bool,
) -> dict[str, Tensor]:
    """The loop with an N:M pattern: the tensors it fits are pruned round by round, never below ``n`` in a
    group, and to exactly ``n`` per group in the last round; the others keep their masks (dense). Weights stored
    ``(in, out)`` (Hugging Face's Conv1D) are grouped along their input features too, on their transpose."""
    flipped = input_major(model) & set(masks)

    def by_input(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:  # its own inverse
        return {n: t.T.contiguous() if n in flipped else t for n, t in tensors.items()}

    dense = [n for n, m in by_input(masks).items() if not pattern.fits(tuple(m.shape))]
    if len(dense) == len(masks):
        raise ValueError(
            f"granularity {str(pattern)!r} fits none of the prunable tensors {dense}: their input rows (all dimensions"
            f" but the first) must be a multiple of {pattern.m} long"
        )
    if dense:
        warnings.warn(
            f"granularity {str(pattern)!r}: {dense} left dense, their rows (all dimensions but the first) not being a"
            f" multiple of {pattern.m} long",
            stacklevel=3,
        )
    grouped = {n: m for n, m in masks.items() if n not in dense}
    shapes = {n: tuple(m.shape) for n, m in grouped.items()}
    final = layers.budget(shapes, pattern.density, None)
    expected = {n: m.numel() * pattern.n // pattern.m for n, m in grouped.items()}
    if final != (sum(expected.values()) if isinstance(final, int) else expected):
        raise ValueError(
            f"granularity {str(pattern)!r} keeps {pattern.n} of every {pattern.m} weights of each tensor it groups,"
            f" which distribution {layers!r} does not at density {pattern.density:g}; use 'global' or 'uniform'"
        )
    rounds = _reachable(rounds, grouped, layers, shapes, scorer.monotone)
    state = scorer.start(model, grouped, context) if isinstance(scorer, IncrementalScorer) else None
    bar = dict(desc=f"pruning {pattern} ({scorer.name or type(scorer).__name__})", disable=not progress, leave=False)
    for d in tqdm(rounds, **bar):
        living = None if state is None else (LivingWeights(grouped), state)
        scores = _score(model, scorer, grouped, context, living)
        scores = {n: -s for n, s in scores.items()} if invert else scores
        alive = {n: int(torch.count_nonzero(m)) for n, m in grouped.items()} if scorer.monotone else None
        budget = layers.budget(shapes, d, alive)
        grouped = by_input(select_pattern(by_input(scores), budget, pattern, by_input(grouped) if scorer.monotone else None))
        del scores
    check_weight_norm(model, grouped)
    return {n: grouped.get(n, masks[n]) for n in masks}


def _prune_channels(
    model: nn.Module,
    scorer: Scorer,
    masks: dict[str, Tensor],
    rounds: list[float],
    layers: Distribution,
    context: ScoringContext,
    invert: bool,
    progress: bool,
) -> dict[str, Tensor]:
    """The loop over whole channels: each round scores the weights on the network as masked so far (pruned
    channels' weights, biases and normalisation parameters zero), sums them per channel, and keeps the
    distribution's count of channels (its "tensors" being the groups of coupled channels)."""
    if masks and not all(bool(m.all()) for m in masks.values()):
        raise ValueError("granularity='channel' cannot continue from given `masks` yet; prune from the dense model")
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
    groups = channel_groups(model, example, list(masks))
    if not groups:
        raise ValueError(
            f"granularity='channel' found no channel of {type(model).__name__} it can prune: it removes output channels"
            f" of nn.Conv1d/2d/3d and nn.Linear layers, and those of the prunable tensors all reach the outputs or pass"
            f" through a layer that cannot lose one exactly (lightning_synflow.channels)"
        )
    if isinstance(layers, ERK):
        params = dict(model.named_parameters())
        layers = GroupERK({g.name: [tuple(params[n].shape) for n in g.scored] for g in groups}, layers.power_scale)
    shapes = {g.name: (g.size,) for g in groups}
    kept = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}
    rounds = _reachable(rounds, kept, layers, shapes, scorer.monotone)
    current = channel_masks(groups, kept, model)
    state = scorer.start(model, current, context) if isinstance(scorer, IncrementalScorer) else None
    bar = dict(desc=f"pruning channels ({scorer.name or type(scorer).__name__})", disable=not progress, leave=False)
    for d in tqdm(rounds, **bar):
        living = None if state is None else (LivingWeights(current), state)
        scores = channel_scores(groups, _score(model, scorer, current, context, living))
        scores = {n: -s for n, s in scores.items()} if invert else scores
        alive = {n: int(k.sum()) for n, k in kept.items()} if scorer.monotone else None
        kept = select_channels({n: s.cpu() for n, s in scores.items()}, layers.budget(shapes, d, alive), kept if scorer.monotone else None)
        current = channel_masks(groups, kept, model)
    _warn_short(model, example, list(masks), groups, kept, layers.budget(shapes, rounds[-1], None), 1 - rounds[-1])
    return current


def _warn_short(
    model: nn.Module, example: Any, names: list[str], groups: list, kept: Mapping[str, Tensor], budget: Any, requested: float
) -> None:
    """Warn where channels left whole, or the one channel every group keeps, hold the channel sparsity reached
    below ``requested`` by more than the budget's rounding (a channel per ranking)."""
    whole = whole_channels(model, example, names, groups)
    total = sum(g.size for g in groups) + sum(whole.values())
    removed = sum(g.size - int(kept[g.name].sum()) for g in groups)
    rankings = budget_groups([g.name for g in groups], budget)
    if removed >= requested * total - len(rankings):
        return
    floor = sum(int(kept[g.name].sum()) for g in groups) - sum(k for _, k in rankings)
    causes = [(f"{sum(whole.values())} channels of {list(whole)[:5]}{' ...' if len(whole) > 5 else ''} are left whole"
               f" (they reach a layer that cannot lose one exactly: lightning_synflow.channels)")] if whole else []
    causes += [f"{floor} channels are kept because every group of coupled channels keeps one"] if floor > 0 else []
    warnings.warn(
        f"granularity='channel' removes {removed} of {total} channels (channel sparsity {removed / total:.3g}), below the"
        f" requested sparsity {requested:.3g}: {'; '.join(causes) or 'the budget rounds per group'}",
        stacklevel=4,
    )


def _check_sharded(scorer: Scorer, shuffle: bool, model: nn.Module) -> None:
    """Raise, before any work, for what a sharded model cannot be pruned with."""
    if not scorer.supports_sharding:
        raise ValueError(
            f"scorer {scorer!r} cannot score a sharded model (DTensor parameters); scorers that can:"
            f" {[n for n in available_scorers() if get_scorer(n).supports_sharding]}"
        )
    if shuffle:
        raise ValueError("`shuffle` moves kept positions within whole tensors, which a sharded model never holds; got shuffle=True")
    if scorer.needs_input or scorer.needs_data:  # runs the model
        check_no_casting(model)


def _prune_sharded(
    model: nn.Module,
    scorer: Scorer,
    masks: dict[str, Tensor],
    rounds: Iterable[float],
    layers: Distribution,
    context: ScoringContext,
    ranked: Callable[[dict[str, Tensor]], dict[str, Tensor]],
) -> dict[str, Tensor]:
    """The loop on a sharded model: each rank scores its shards, and all keep their parts of one exact
    selection over the full tensors (:func:`~lightning_synflow.sharded_ranking.select_sharded`), so that no
    rank holds a whole tensor of weights, scores or masks. Masks are DTensors laid out as the parameters."""
    names = list(masks)
    params = dict(model.named_parameters())
    blocks = blocks_of(model, names)
    collectives = ProcessGroupCollectives()
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    pieces = {n: local(m) for n, m in masks.items()}
    for d in rounds:
        current = {n: like(params[n], pieces[n]) for n in names}
        scores = {n: local(s) for n, s in _score(model, scorer, current, context, all_reduce=collectives.sum).items()}
        alive = None
        if scorer.monotone:
            alive = dict(zip(names, global_counts([pieces[n] for n in names], [blocks[n] for n in names], collectives)))
        budget = layers.budget(shapes, d, alive)
        pieces = select_sharded(ranked(scores), budget, blocks, collectives, pieces if scorer.monotone else None)
        del scores, current  # before the next round scores: one round's scores in memory at a time
    return {n: like(params[n], pieces[n]) for n in names}


def _reachable(
    rounds: list[float], masks: Mapping[str, Tensor], layers: Distribution, shapes: dict, monotone: bool
) -> list[float]:
    """The round densities, checked to keep at least one weight and, for a monotone scorer continuing from
    given masks, lowered to what those keep so that no round asks for more than is still alive."""
    total = sum(m.numel() for m in masks.values())
    final = layers.budget(shapes, rounds[-1], None)
    if (final if isinstance(final, int) else sum(final.values())) == 0:
        raise ValueError(
            f"sparsity {1 - rounds[-1]!r} keeps 0 of the {total} prunable weights with {layers!r}; allowed: a"
            f" sparsity below {1 - 0.5 / total}"
        )
    if not monotone:
        return rounds
    kept = sum(kept_counts(masks).values())
    if kept < num_kept(rounds[-1], total):
        raise ValueError(f"the given `masks` keep {kept} weights, fewer than the {num_kept(rounds[-1], total)} requested")
    return [min(d, kept / total) for d in rounds]

