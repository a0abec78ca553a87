"""What :class:`~lightning_synflow.PruneAtInit` does to the model inside a running fit, as functions of the
Trainer: score with the Trainer's data, loss and ranks, give every rank rank zero's masks, the steps that may
follow (reinit, isometry, shrink), and the figures logged about the masks. The callback decides when; these
say how.

Nothing that training goes on to use is drawn or changed by scoring: random states and module state are
given back (:mod:`lightning_synflow.lightning.isolation`), and the training loaders are built, where scoring reads them,
outside that isolation, as training would build them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import move_data_to_device
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_synflow.ablations import reinitialize
from lightning_synflow.analysis import approximate_isometry
from lightning_synflow.distributed.collectives import (
    broadcast_masks,
    broadcast_tensors_,
)
from lightning_synflow.lightning.diagnostics import log_metrics
from lightning_synflow.lightning.isolation import preserved_attributes, preserved_rng
from lightning_synflow.lightning.strategies import is_sharded_strategy
from lightning_synflow.lightning.trainer_data import (
    example_input,
    setup_training_data,
    training_batches,
    training_step_loss,
)
from lightning_synflow.parameters import (
    frozen_weight_matrices,
    select_prunable,
    unmatched_selection,
)
from lightning_synflow.plan import PruningPlan
from lightning_synflow.pruning import prune_masks
from lightning_synflow.report import sparsity_report
from lightning_synflow.scorers.base import Scorer, check_scores_shards
from lightning_synflow.selection.channels import shrink_
from lightning_synflow.selection.granularity import Channels

#: What a sharded strategy cannot prune with (whole tensors on one process), and the values it can.
SHARDED_DEFAULTS = {"isometry_steps": 0, "reinit": False, "shuffle": False, "granularity": "weight"}


def check_sharded(strategy: Any, settings: Mapping[str, Any], plan: PruningPlan) -> None:
    """Under a sharded strategy, refuse before any work what needs whole tensors on one process
    (``settings``: the callback's values of :data:`SHARDED_DEFAULTS`' keys), and scorers that cannot score shards."""
    given = {k: settings[k] for k, v in SHARDED_DEFAULTS.items() if settings[k] != v}
    if given:
        raise ValueError(
            f"PruneAtInit({', '.join(f'{k}={v!r}' for k, v in given.items())}) needs whole tensors on one process,"
            f" which {type(strategy).__name__} never holds; set {', '.join(f'{k}={SHARDED_DEFAULTS[k]!r}' for k in given)}"
            f" to prune a sharded model"
        )
    check_scores_shards(plan.scorer, f"under {type(strategy).__name__}")


def check_selection(pl_module: LightningModule, selection: Mapping[str, Any]) -> None:
    """Layer type names that no layer of the model is are refused; name patterns that match no parameter are
    warned about: both are most likely typos that would leave layers dense or prune what was to stay."""
    unmatched = unmatched_selection(pl_module, **selection)
    types = {k: v for k, v in unmatched.items() if k.endswith("_types")}
    if types:
        raise ValueError(
            f"PruneAtInit: {', '.join(f'`{k}` {v}' for k, v in types.items())}: no layer of {type(pl_module).__name__}"
            f" is of that type; allowed are the class names of its layers, e.g."
            f" {sorted({type(m).__name__ for m in pl_module.modules()})[:12]} (case-sensitive)"
        )
    for key, patterns in unmatched.items():
        rank_zero_warn(f"PruneAtInit: `{key}` pattern(s) {patterns} match no parameter name of {type(pl_module).__name__}")


def prune_in_fit(
    trainer: Trainer,
    pl_module: LightningModule,
    plan: PruningPlan,
    selection: Mapping[str, Any],
    include_frozen: bool,
    input_shape: Optional[list[int]],
    num_batches: Optional[int],
) -> tuple[dict[str, Tensor], float]:
    """The masks (rank zero's under DDP; each rank's part of them on a sharded model) and the seconds scoring
    took. Nothing training uses is drawn or changed meanwhile: random states and module state are restored."""
    if _reads_training_data(pl_module, plan, input_shape):
        setup_training_data(trainer)  # outside the isolation: training expects the draws it makes
    with preserved_rng(pl_module.device), preserved_attributes(pl_module):
        start = time.perf_counter()
        masks = _score(trainer, pl_module, plan, selection, include_frozen, input_shape, num_batches)
        seconds = time.perf_counter() - start
    if not is_sharded_strategy(trainer.strategy):  # sharded: every rank holds its own part of the masks
        masks = broadcast_masks(masks, device=trainer.strategy.root_device)  # bit-packed, through the process group
    return masks, seconds


def _score(
    trainer: Trainer,
    pl_module: LightningModule,
    plan: PruningPlan,
    selection: Mapping[str, Any],
    include_frozen: bool,
    input_shape: Optional[list[int]],
    num_batches: Optional[int],
) -> dict[str, Tensor]:
    """This rank's masks (under DDP the caller adopts rank zero's; sharded, each rank's part of one selection)."""
    scorer = plan.scorer
    names = select_prunable(pl_module, include_frozen=include_frozen, **selection)
    if not names:
        raise ValueError(
            f"PruneAtInit found no prunable parameters in {type(pl_module).__name__} with "
            + ", ".join(f"{k}={v}" for k, v in {**selection, "include_frozen": include_frozen}.items())
        )
    if scorer.needs_data and not pl_module.automatic_optimization:
        raise ValueError(
            f"PruneAtInit(scorer={scorer!r}) scores with the loss `training_step` returns, which"
            f" {type(pl_module).__name__} does not under manual optimization; use a data-free scorer"
        )
    num_batches = scorer.default_num_batches if num_batches is None else num_batches
    return prune_masks(
        pl_module,
        plan,
        example_input=example_input(trainer, pl_module, input_shape, f"PruneAtInit(scorer={scorer.name!r})")
        if needs_input(plan)
        else None,
        dataloader=_batches(trainer, scorer.name, num_batches) if scorer.needs_data else None,
        loss_fn=training_step_loss(trainer) if scorer.needs_data else None,
        num_batches=num_batches,
        all_reduce=(lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None,
        parameters=names,
        progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
    )


def _batches(trainer: Trainer, scorer_name: Optional[str], num_batches: int) -> list[Any]:
    """The training batches to score with, saying so when the loader has fewer than asked for."""
    batches = training_batches(trainer, num_batches)
    if len(batches) < num_batches:
        rank_zero_warn(
            f"PruneAtInit(scorer={scorer_name!r}): `num_batches` is {num_batches}, but the training loader gives"
            f" {len(batches)} batch(es) per rank; scoring uses those {len(batches)}"
        )
    return batches


def needs_input(plan: PruningPlan) -> bool:
    """The scorer needs the model's input, or channel granularity traces a forward pass with it."""
    return plan.scorer.needs_input or isinstance(plan.granularity, Channels)


def _reads_training_data(pl_module: LightningModule, plan: PruningPlan, input_shape: Optional[list[int]]) -> bool:
    """Scoring will draw training batches (for data, or for the input shape)."""
    shape_from_data = pl_module.example_input_array is None and input_shape is None
    return plan.scorer.needs_data or (needs_input(plan) and shape_from_data)


def traced_input(trainer: Trainer, pl_module: LightningModule, input_shape: Optional[list[int]]) -> Any:
    """The input channel pruning traces the model with: as a fresh pruning gets it, on the model's device."""
    if pl_module.example_input_array is None and input_shape is None:
        setup_training_data(trainer)  # outside any isolation, as in prune_in_fit: training expects the draws it makes
    with preserved_rng(pl_module.device):
        x = example_input(trainer, pl_module, input_shape, "PruneAtInit(granularity='channel')")
    return move_data_to_device(x, pl_module.device)


def reinitialize_on_ranks(trainer: Trainer, pl_module: LightningModule) -> None:
    """The ``reinit`` ablation: the same fresh weights on every rank, drawn from rank zero's seed."""
    seed = trainer.strategy.broadcast(int(torch.randint(2**31 - 1, ())), src=0)
    cuda = [pl_module.device.index] if pl_module.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        reinitialize(pl_module)


def isometry_on_ranks(
    trainer: Trainer, pl_module: LightningModule, masks: dict[str, Tensor], params: list[Tensor], steps: int, lr: float
) -> None:
    """The approximate-isometry steps on the kept weights (``params``, the masked ones), the same result on
    every rank."""
    with preserved_rng(pl_module.device), preserved_attributes(pl_module):
        result = approximate_isometry(pl_module, masks, steps=steps, lr=lr)
    broadcast_tensors_(params, device=trainer.strategy.root_device)  # bitwise-equal weights on every rank
    log_metrics(trainer, result.as_metrics("isometry"))


def shrink_in_fit(
    trainer: Trainer, pl_module: LightningModule, masks: Mapping[str, Tensor], input_shape: Optional[list[int]]
) -> dict[str, tuple[int, ...]]:
    """Remove the pruned channels and build the optimizers again for the smaller parameters; their shapes."""
    example = example_input(trainer, pl_module, input_shape, "PruneAtInit(shrink=True)")
    before = sum(p.numel() for p in pl_module.parameters())
    shrink_(pl_module, masks, example)
    trainer.strategy.setup_optimizers(trainer)
    after = sum(p.numel() for p in pl_module.parameters())
    log_metrics(trainer, {
        "pruning/parameters_before_shrink": float(before),
        "pruning/parameters": float(after),
        "pruning/parameter_sparsity": 1.0 - after / before,  # of the whole network, biases and norms included
    })
    rank_zero_info(f"PruneAtInit: shrunk {type(pl_module).__name__} from {before:,} to {after:,} parameters")
    return {n: tuple(p.shape) for n, p in pl_module.named_parameters()}


def report_masks(
    trainer: Trainer,
    pl_module: LightningModule,
    masks: Mapping[str, Tensor],
    selection: Mapping[str, Any],
    channels: bool,
    seconds: Optional[float],
    origin: str,
    verbose: bool,
    scorer: Scorer,
) -> None:
    """Log what the masks keep (a resumed run's new log gets the figures too) and warn of collapsed tensors.
    ``channels``: whole-channel masks; ``seconds``: how long scoring took, ``None`` for masks kept from
    ``origin``; ``verbose``: print the per-tensor table under the ``scorer``'s name."""
    report = sparsity_report(pl_module, masks, frozen=frozen_weight_matrices(pl_module, **selection))
    metrics = {
        "pruning/sparsity": report.sparsity,
        "pruning/density": report.density,
        "pruning/kept": float(report.kept),
        "pruning/total": float(report.total),
        "pruning/collapsed": float(len(report.collapsed)),
    }
    if channels:
        metrics.update(_channel_figures(pl_module, masks, selection))
    if seconds is not None:
        metrics["pruning/time_s"] = seconds
    log_metrics(trainer, metrics)
    if seconds is None:
        rank_zero_info(f"PruneAtInit: kept the masks {origin} (not scored again), sparsity {report.sparsity:.4%}")
    elif verbose:
        rank_zero_info(f"PruneAtInit ({scorer!r}, {seconds:.2f} s):\n{report}")
    if report.collapsed:
        rank_zero_warn(
            f"PruneAtInit: {len(report.collapsed)} tensor(s) collapsed (no weight kept): {report.collapsed}."
            " Without a skip connection around them the network is disconnected; lower the sparsity,"
            " use more iterations, or exclude them."
        )


def _channel_figures(model: nn.Module, masks: Mapping[str, Tensor], selection: Mapping[str, Any]) -> dict[str, float]:
    """With whole-channel masks, each named for what it counts: ``channel_sparsity``, the fraction of the output
    channels of the masked weight matrices removed (what ``sparsity`` asks for); ``weight_sparsity``, the fraction
    of all selected weight matrices' weights the masks zero (``pruning/sparsity`` counts the masked tensors alone,
    the removed channels' biases and normalisation parameters among them). After ``shrink``,
    ``pruning/parameter_sparsity`` is what the smaller network lost of all its parameters."""
    params = dict(model.named_parameters())
    selected = select_prunable(model, include_frozen=True, **selection)
    channels = [masks[n].reshape(masks[n].shape[0], -1).any(1) for n in selected if n in masks]
    kept_channels = sum(int(c.sum()) for c in channels)
    all_channels = sum(c.numel() for c in channels)
    kept_weights = sum(int(masks[n].sum()) if n in masks else params[n].numel() for n in selected)
    all_weights = sum(params[n].numel() for n in selected)
    return {
        "pruning/channel_sparsity": 1.0 - kept_channels / all_channels if all_channels else 0.0,
        "pruning/weight_sparsity": 1.0 - kept_weights / all_weights if all_weights else 0.0,
    }
