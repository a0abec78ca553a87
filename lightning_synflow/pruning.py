"""The functional core: score once (:func:`compute_scores`) or prune iteratively (:func:`compute_masks`).

Neither needs Lightning; :class:`~lightning_synflow.PruneAtInit` only adapts them to a Trainer.
"""

from __future__ import annotations

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
from lightning_synflow.ranking import SCOPES, Scope
from lightning_synflow.schedules import Schedule, num_kept, resolve_density
from lightning_synflow.scorers.base import (
    ALIVE_POSITIONS,
    NEWLY_PRUNED,
    ExampleInput,
    LossFn,
    Scorer,
    ScoringContext,
    cross_entropy_loss,
    get_scorer,
)
from lightning_synflow.validation import check_positive_int


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
    if masks is not None:
        check_masks(model, masks)
        return {n: m.contiguous() for n, m in masks.items()}
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
    # Masks are laid out contiguously whatever the parameter's memory format (channels-last): positions in
    # them are logical flat indices.
    return {n: torch.ones(params[n].shape, dtype=torch.bool, device=params[n].device) for n in names}


def _score(model: nn.Module, scorer: Scorer, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
    with preserved_model_state(model):
        scores = scorer.score(model, masks, context)
    missing = [n for n in masks if n not in scores]
    if missing:
        raise ValueError(f"scorer {scorer!r} returned no scores for {missing}")
    # A NaN or inf anywhere makes the sum non-finite; only then look closer (large finite scores can overflow
    # a sum). An element-wise check of every score would cost more than a SynFlow round's bookkeeping.
    bad = [] if scorer.checks_finite else [
        n for n in masks if not torch.isfinite(scores[n].sum()) and not torch.isfinite(scores[n]).all()
    ]
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
        check_positive_int("num_batches", num_batches)
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
            it), so that each process scores its own shard and all rank the same totals.
        parameters: Names of the prunable tensors when ``masks`` is not given; default
            :func:`select_prunable`.

    Returns:
        ``dict[name, Tensor]`` keyed as ``model.named_parameters()``, prunable tensors only.
    """
    scorer = get_scorer(scorer)
    start = _initial_masks(model, parameters, masks)
    context = _context(model, scorer, example_input, dataloader, loss_fn, num_batches, all_reduce)
    return _score(model, scorer, start, context)


def compute_masks(
    model: nn.Module,
    scorer: Union[str, Scorer] = "synflow",
    *,
    sparsity: Optional[float] = None,
    compression: Optional[float] = None,
    iterations: Optional[int] = None,
    schedule: Schedule = "exponential",
    scope: Scope = "global",
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
) -> dict[str, Tensor]:
    """Prune iteratively (SynFlow's Algorithm 1) and return the masks; the model is not changed.

    At step ``t`` of ``T`` the network, masked as it stands, is scored and the highest scores are kept
    at density ``d ** (t / T)`` (``schedule="exponential"``) or ``1 - (1 - d) * t / T`` (``"linear"``).
    Exactly ``round(d * N)`` weights survive (``scope="global"``), or ``round(d * n_l)`` per tensor
    (``"layerwise"``); ties go to the earlier tensor and lower index. For monotone scorers a pruned
    weight never returns.

    Args:
        sparsity: Fraction of weights removed, in [0, 1). Give this or ``compression``.
        compression: total / kept, >= 1 (the SynFlow paper's 10^x).
        iterations: Pruning rounds ``T``; default the scorer's (100 for SynFlow, 1 for magnitude/random).
        masks: Masks to continue from (their keys are the prunable tensors).
        invert: Ablation: keep the *lowest* scores instead (the ranking negated, ties as before).
        shuffle: Ablation: finally move each tensor's kept positions to random places in that tensor
            (per-tensor counts kept; torch's global generator).
        progress: Show a progress bar over the iterations.

    Other arguments as in :func:`compute_scores`. Returns ``dict[name, BoolTensor]``.
    """
    density = resolve_density(sparsity, compression)
    scorer = get_scorer(scorer)
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}")
    steps = scorer.densities(density, scorer.default_iterations if iterations is None else iterations, schedule)
    current = _initial_masks(model, parameters, masks)
    total = sum(m.numel() for m in current.values())
    if scope == "global" and num_kept(density, total) == 0:
        raise ValueError(
            f"sparsity {1 - density!r} keeps 0 of the {total} prunable weights; allowed: a sparsity below {1 - 0.5 / total}"
        )
    kept = sum(int(torch.count_nonzero(m)) for m in current.values())
    if scorer.monotone and kept < num_kept(density, total):
        raise ValueError(f"the given `masks` keep {kept} weights, fewer than the {num_kept(density, total)} requested")
    if scorer.monotone:  # continuing from sparser masks: no round may ask for more than is still alive
        steps = [min(d, kept / total) for d in steps]
    context = _context(model, scorer, example_input, dataloader, loss_fn, num_batches, all_reduce)
    # Monotone scorers ranked by the default rule narrow an AliveSet in place (cost in proportion to the
    # living weights); others (FORCE's revivals, ERK's own allocation) get fresh masks every round.
    default_ranking = scorer.monotone and type(scorer).allocate is Scorer.allocate
    alive = AliveSet(current, copy=masks is not None) if default_ranking else None
    for d in tqdm(steps, desc=f"pruning ({scorer.name or type(scorer).__name__})", disable=not progress, leave=False):
        if alive is not None:
            context.cache.update({NEWLY_PRUNED: alive.pruned, ALIVE_POSITIONS: alive.positions})
            current = alive.masks
        scores = _score(model, scorer, current, context)
        if invert:
            scores = {n: -s for n, s in scores.items()}
        if alive is not None:
            alive.update(scores, d, scope, release=True)
        else:
            current = scorer.allocate(scores, d, scope, current if scorer.monotone else None)
    if alive is not None:
        current = alive.masks
    current = shuffle_masks(current) if shuffle else current
    check_weight_norm(model, current)
    return current
