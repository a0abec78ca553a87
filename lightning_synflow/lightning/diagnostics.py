"""``PruningDiagnostics``: how a pruned network propagates signals and how sparse it really is, logged.

A callback of its own beside whatever prunes, as Lightning's ``LearningRateMonitor`` sits beside the
optimizer: it never decides which weights are kept. Two ways to use it:

- **Beside** :class:`~lightning_synflow.PruneAtInit` (or any pruner that drives the protocol): the pruner
  calls :meth:`PruningDiagnostics.before_pruning`, :meth:`~PruningDiagnostics.after_pruning` and, when it
  runs isometry steps, :meth:`~PruningDiagnostics.after_isometry`, on every rank, when it scores fresh masks.
  Stages ``init``, ``pruned`` and ``isometry`` are measured on the same probe inputs.
- **Alone** (Lightning's ``ModelPruning``, a model pruned by hand): at ``on_train_start`` it measures the
  model as it is, the masks being the non-zero weights of the prunable tensors (stage ``pruned``), and
  again at each epoch start and at the end of training where those masks changed (``ModelPruning`` prunes
  at epoch ends), whatever the order of the callbacks.

What it logs, from rank zero, to every logger of the Trainer, at the current ``global_step``:

- ``jacobian_sv/<stage>/{mean,std,min,max}``: the input-output Jacobian's singular values
  (:func:`~lightning_synflow.analysis.jacobian_singular_values`), and a histogram figure
  ``jacobian_singular_values`` of every stage where a logger takes figures (TensorBoard);
- ``pruning/density/<tensor>``: each masked tensor's density;
- ``pruning/sparsity/{nominal,effective,...}``: the effective sparsity
  (:func:`~lightning_synflow.analysis.effective_sparsity_report`): kept weights on no input-output path are
  dead too.

Training never notices: random states and module state are given back as they were, and batches are drawn
on a loader iterator of its own (:mod:`lightning_synflow.lightning.isolation`, :mod:`lightning_synflow.lightning.trainer_data`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Optional, Protocol, runtime_checkable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.utils.prune import BasePruningMethod

from lightning_synflow.analysis import (
    effective_sparsity_report,
    jacobian_singular_values,
    singular_value_stats,
)
from lightning_synflow.analysis.figures import plot_singular_values
from lightning_synflow.lightning.isolation import preserved_attributes, preserved_rng
from lightning_synflow.lightning.strategies import check_strategy, is_sharded_strategy
from lightning_synflow.lightning.trainer_data import (
    example_input,
    first_batch_input,
    setup_training_data,
)
from lightning_synflow.parameters import select_prunable
from lightning_synflow.report import sparsity_report
from lightning_synflow.scorers.base import ExampleInput
from lightning_synflow.validation import check_bool, check_int, check_shape

__all__ = ["PruningDiagnostics", "log_metrics", "nonzero_masks"]


# ---------------------------------------------------------------------- helpers


@runtime_checkable
class DrivingPruner(Protocol):
    """What a pruning callback shows :class:`PruningDiagnostics`, which never imports it: that it drives the
    protocol (calls :meth:`~PruningDiagnostics.before_pruning`, :meth:`~PruningDiagnostics.after_pruning` and
    :meth:`~PruningDiagnostics.after_isometry` when it scores fresh masks; :class:`~lightning_synflow.PruneAtInit`
    does), and the masks it holds (``True`` = kept, ``None`` before pruning)."""

    drives_diagnostics: bool

    @property
    def masks(self) -> Optional[Mapping[str, Tensor]]: ...


def log_metrics(trainer: Trainer, metrics: Mapping[str, float]) -> None:
    """Log to every logger of the Trainer from rank zero, at the current step (``self.log`` is not allowed in
    ``on_fit_start``, where pruning happens)."""
    if metrics and trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(dict(metrics), step=trainer.global_step)


def _torch_prune_mask(modules: Mapping[str, nn.Module], name: str) -> Optional[Tensor]:
    """The ``<tensor>_mask`` buffer of a tensor pruned with ``torch.nn.utils.prune`` (Lightning's
    ``ModelPruning``), for its parameter ``<tensor>_orig``; ``None`` for any other parameter."""
    owner, _, local = name.rpartition(".")
    module = modules.get(owner)
    if module is None or not local.endswith("_orig"):
        return None
    tensor = local[: -len("_orig")]
    hooked = any(isinstance(h, BasePruningMethod) and h._tensor_name == tensor for h in module._forward_pre_hooks.values())
    return getattr(module, f"{tensor}_mask", None) if hooked else None


def nonzero_masks(model: nn.Module, names: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
    """The masks a pruned model carries in its weights: ``True`` where the weight the forward pass uses is
    non-zero, for ``names`` (default the prunable tensors, :func:`~lightning_synflow.select_prunable`).

    A tensor pruned with ``torch.nn.utils.prune`` (``ModelPruning``) is the parameter ``<tensor>_orig`` times
    the buffer ``<tensor>_mask``: its mask is both's non-zeros."""
    names = select_prunable(model) if names is None else list(names)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    return {name: _nonzero(params, modules, name) for name in names}


def _nonzero(params: Mapping[str, Tensor], modules: Mapping[str, nn.Module], name: str) -> Tensor:
    mask = params[name].detach() != 0
    buffer = _torch_prune_mask(modules, name)
    if buffer is not None:
        mask &= buffer.detach().to(mask.device) != 0
    return mask


def _used_name(modules: Mapping[str, nn.Module], name: str) -> str:
    """The name of the weight a mask's tensor stands for: ``layer.weight`` for ``torch.nn.utils.prune``'s
    ``layer.weight_orig``, so that a metric keeps its name when ``ModelPruning`` starts pruning a layer and
    when it makes the pruning permanent; every other name as it is."""
    return name[: -len("_orig")] if _torch_prune_mask(modules, name) is not None else name


# ---------------------------------------------------------------------- the callback


class PruningDiagnostics(Callback):
    """Log a pruned network's Jacobian spectrum, per-tensor densities and effective sparsity.

    Beside :class:`~lightning_synflow.PruneAtInit` or any other pruning (Lightning's ``ModelPruning``, a model
    pruned by hand); it changes neither the masks nor training.

    With ``PruneAtInit`` it measures when ``PruneAtInit`` scores fresh masks: after initialisation, after
    pruning and after isometry (stages ``init``, ``pruned``, ``isometry``); a fit that resumes with the masks
    of a checkpoint is not measured again. Without it, it measures the model as it is when training starts,
    taking its non-zero weights as the masks (stage ``pruned``), and again at each epoch start and at the end
    of training where those change (``ModelPruning`` prunes at epoch ends; an unmasked hand-pruned model grows
    back as it trains).

    Metrics (from rank zero, to every logger): ``jacobian_sv/<stage>/{mean,std,min,max}``,
    ``pruning/density/<tensor>``, ``pruning/sparsity/{nominal,effective,nominal_compression,
    effective_compression,dead_weights,effective_collapsed_tensors}``; and a ``jacobian_singular_values``
    histogram figure where a logger takes figures (TensorBoard; needs matplotlib).

    Args:
        log_jacobian: Log the input-output Jacobian's singular values (mean/std/min/max), on up to
            ``num_probes`` examples of the first training batch (Gaussian inputs of the example shape when
            batches are not tensors or (input, target) pairs); needs a model taking one floating tensor
            (not token ids or keyword inputs).
        log_effective_sparsity: Log the effective sparsity: kept weights on no input-output path are dead
            too (needs the input shape: ``example_input_array``, ``input_shape`` or the first training batch).
        log_per_tensor: Log each masked tensor's density.
        input_shape: Input shape without the batch dimension (e.g. ``[3, 32, 32]``) when the LightningModule
            has no ``example_input_array``; without either, the first training batch's shape is used.
        num_probes: How many examples the Jacobian is taken on (its cost grows linearly with them).
    """

    def __init__(
        self,
        log_jacobian: bool = True,
        log_effective_sparsity: bool = True,
        log_per_tensor: bool = True,
        input_shape: Optional[list[int]] = None,
        num_probes: int = 8,
    ) -> None:
        self.log_jacobian = check_bool("log_jacobian", log_jacobian)
        self.log_effective_sparsity = check_bool("log_effective_sparsity", log_effective_sparsity)
        self.log_per_tensor = check_bool("log_per_tensor", log_per_tensor)
        self.input_shape = None if input_shape is None else check_shape("input_shape", input_shape, "without the batch dimension")
        self.num_probes = check_int("num_probes", num_probes)
        if not (log_jacobian or log_effective_sparsity or log_per_tensor):
            rank_zero_warn("PruningDiagnostics with log_jacobian, log_effective_sparsity and log_per_tensor all False logs nothing")
        self._reset()

    def _reset(self) -> None:
        """Forget everything of a previous fit."""
        self._driven = False  # a pruner called the protocol in this fit
        self._alone = False  # measuring the model as it is (no pruner drives the protocol)
        self._drawn = False  # the first training batch was looked at
        self._batch_input: Optional[Tensor] = None  # its first `num_probes` inputs, if it has tensor inputs
        self._probe: Optional[Tensor] = None  # the Jacobian's inputs, the same for every stage
        self._spectra: dict[str, Tensor] = {}  # singular values per stage, until the figure is logged
        self._counts: Optional[dict[str, int]] = None  # alone: kept weights per tensor at the last measurement

    # ------------------------------------------------------------------ the protocol a pruner drives

    def before_pruning(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Before any weight is pruned, on every rank: draw the probe inputs and log the ``init`` spectrum.

        Call it outside any random-state isolation of the caller's: it builds the Trainer's training loaders
        (which draws, as training would), then isolates its own work. Also checks that the input shape the
        effective sparsity needs is available, so that a missing one is reported before any pruning."""
        self._driven = True
        self._spectra = {}
        self._prepare_data(trainer, pl_module)
        metrics: dict[str, float] = {}
        with _isolated(pl_module):
            if self.log_effective_sparsity:
                self._example_input(trainer, pl_module)
            if self.log_jacobian:
                metrics = self._spectrum(pl_module, self._probe_inputs(trainer, pl_module), None, "init")
        log_metrics(trainer, metrics)

    def after_pruning(self, trainer: Trainer, pl_module: LightningModule, masks: Mapping[str, Tensor]) -> None:
        """After the masks are applied, on every rank: the ``pruned`` spectrum, each masked tensor's density
        and the effective sparsity. ``masks``: ``True`` = kept, keyed by parameter name."""
        self._driven = True
        self._prepare_data(trainer, pl_module)
        with _isolated(pl_module):
            metrics = self._measure(trainer, pl_module, masks, "pruned")
        log_metrics(trainer, metrics)

    def after_isometry(self, trainer: Trainer, pl_module: LightningModule, masks: Mapping[str, Tensor]) -> None:
        """After the isometry steps moved the kept weights, on every rank: the ``isometry`` spectrum, then
        the histogram figure of every stage. Without isometry the figure is logged at ``on_train_start``."""
        self._driven = True
        if self.log_jacobian:
            self._prepare_data(trainer, pl_module)
            with _isolated(pl_module):
                metrics = self._spectrum(pl_module, self._probe_inputs(trainer, pl_module), masks, "isometry")
            log_metrics(trainer, metrics)
        self._log_figure(trainer)

    # ------------------------------------------------------------------ life cycle

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_strategy(trainer.strategy, "PruningDiagnostics")
        if is_sharded_strategy(trainer.strategy):
            self._check_sharded(trainer)
        self._reset()  # before any on_fit_start, where a pruner drives the protocol

    def _check_sharded(self, trainer: Trainer) -> None:
        """Under a sharded strategy only the per-tensor densities of PruneAtInit's masks can be measured."""
        strategy = type(trainer.strategy).__name__
        whole = [n for n in ("log_jacobian", "log_effective_sparsity") if getattr(self, n)]
        if whole:
            raise ValueError(
                f"PruningDiagnostics({', '.join(f'{n}=True' for n in whole)}) runs the whole model in one process,"
                f" which a model under {strategy} is not; there, only log_per_tensor is supported"
            )
        if not _driving_pruner_in(trainer):
            raise ValueError(
                f"PruningDiagnostics under {strategy} measures the masks PruneAtInit makes; add PruneAtInit to the"
                f" Trainer's callbacks (a model pruned otherwise is not measured there)"
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._driven:
            self._log_figure(trainer)  # the stages measured in on_fit_start, where no isometry followed
            return
        if is_sharded_strategy(trainer.strategy):
            return  # PruneAtInit prunes at train start there (maybe after this hook) and drives this callback
        if _driving_pruner_in(trainer):
            rank_zero_info(
                "PruningDiagnostics: PruneAtInit did not prune in this fit (it kept the masks of a checkpoint or of"
                " this model's previous fit), so there is nothing new to measure; the fit that pruned logged them"
            )
            return
        self._alone = True
        self._measure_as_is(trainer, pl_module, force=True)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the previous epoch's end, whichever callback pruned there and in whatever order.
        if self._alone:
            self._measure_as_is(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The last epoch's pruning, which no epoch start follows.
        if self._alone:
            self._measure_as_is(trainer, pl_module)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._reset()  # no probe or batch held after the fit

    # ------------------------------------------------------------------ measuring

    def _measure_as_is(self, trainer: Trainer, pl_module: LightningModule, force: bool = False) -> None:
        """Alone: measure the model with its non-zero weights as masks (stage ``pruned``), when they changed
        since last time, told by the count of kept weights per tensor: one pass over the weights, and nothing
        kept between epochs but the counts."""
        names = select_prunable(pl_module)
        params, modules = dict(pl_module.named_parameters()), dict(pl_module.named_modules())
        # One tensor's mask at a time (not a byte per weight of the whole model at once), one device sync.
        kept = torch.stack([_nonzero(params, modules, n).sum() for n in names]).tolist() if names else []
        counts = dict(zip([_used_name(modules, n) for n in names], kept))
        if not force and counts == self._counts:
            return
        masks = nonzero_masks(pl_module, names)
        if not masks and force:
            rank_zero_warn(
                f"PruningDiagnostics: {type(pl_module).__name__} has no prunable weight matrices, so there are no"
                f" densities or effective sparsity to log"
            )
        self._counts = counts
        self._prepare_data(trainer, pl_module)
        with _isolated(pl_module):
            metrics = self._measure(trainer, pl_module, masks, "pruned")
        log_metrics(trainer, metrics)
        self._log_figure(trainer)

    def _measure(
        self, trainer: Trainer, pl_module: LightningModule, masks: Mapping[str, Tensor], stage: str
    ) -> dict[str, float]:
        masks = dict(masks)
        metrics: dict[str, float] = {}
        if self.log_jacobian:
            metrics.update(self._spectrum(pl_module, self._probe_inputs(trainer, pl_module), masks, stage))
        if masks and self.log_per_tensor:
            modules = dict(pl_module.named_modules())
            report = sparsity_report(pl_module, masks, frozen=())
            metrics.update({f"pruning/density/{_used_name(modules, t.name)}": t.density for t in report.tensors})
        if masks and self.log_effective_sparsity:
            example = self._example_input(trainer, pl_module)
            with _copyable(pl_module):
                report = effective_sparsity_report(pl_module, masks, example_input=example)
            metrics.update(report.as_metrics("pruning/sparsity"))
        return metrics

    def _spectrum(
        self, pl_module: LightningModule, probe: Tensor, masks: Optional[Mapping[str, Tensor]], stage: str
    ) -> dict[str, float]:
        """``jacobian_sv/<stage>/{mean,std,min,max}`` on ``probe``, the masks applied on the fly (the weights
        are not written to); the singular values are kept for the figure."""
        sv = jacobian_singular_values(pl_module, probe, masks=masks or None)
        self._spectra[stage] = sv.detach().cpu()
        return singular_value_stats(sv).as_metrics(f"jacobian_sv/{stage}")

    def _log_figure(self, trainer: Trainer) -> None:
        """The singular-value histograms of the stages measured so far as one image, for loggers that take
        figures (TensorBoard); then forgotten."""
        spectra, self._spectra = self._spectra, {}
        if not spectra or not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if callable(getattr(getattr(lg, "experiment", None), "add_figure", None))]
        if not loggers:
            return
        try:
            figure = plot_singular_values(spectra, title="Jacobian singular values")
        except ImportError as err:  # the metrics are logged; a missing figure must not stop training
            rank_zero_warn(f"PruningDiagnostics: no Jacobian histogram figure: {err}")
            return
        for logger in loggers:
            logger.experiment.add_figure("jacobian_singular_values", figure, trainer.global_step)

    # ------------------------------------------------------------------ inputs

    def _prepare_data(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Build the training loaders, outside the isolation, where the diagnostics will read a batch:
        training expects the random draws building them makes (a no-op once built)."""
        shape_from_data = pl_module.example_input_array is None and self.input_shape is None
        if self.log_jacobian or (self.log_effective_sparsity and shape_from_data):
            setup_training_data(trainer)

    def _first_input(self, trainer: Trainer) -> Optional[Tensor]:
        """The first training batch's first ``num_probes`` inputs (copied: the batch itself is not held),
        read once per fit; ``None`` when its input is not one tensor."""
        if not self._drawn:
            x = first_batch_input(trainer)
            self._batch_input = x[: self.num_probes].clone() if isinstance(x, Tensor) else None
            self._drawn = True
        return self._batch_input

    def _example_input(self, trainer: Trainer, pl_module: LightningModule) -> ExampleInput:
        return example_input(
            trainer, pl_module, self.input_shape, "PruningDiagnostics(log_effective_sparsity=True)", self._first_input
        )

    def _probe_inputs(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        """Up to ``num_probes`` inputs of the first training batch, else Gaussian inputs of the example shape;
        drawn once per fit, so that every stage is measured on the same inputs."""
        if self._probe is not None:
            return self._probe
        x = self._first_input(trainer)
        if not isinstance(x, Tensor):
            x = example_input(trainer, pl_module, self.input_shape, "PruningDiagnostics(log_jacobian=True)", self._first_input)
            if isinstance(x, Tensor) and x.is_floating_point():
                x = torch.randn(self.num_probes, *x.shape[1:], dtype=x.dtype, device=pl_module.device)
        if not (isinstance(x, Tensor) and x.is_floating_point()):
            got = f"{x.dtype} tensors" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"PruningDiagnostics(log_jacobian=True) takes the Jacobian with respect to the model's input, which"
                f" must be one floating tensor; {type(pl_module).__name__} gets {got} (token ids or keyword inputs"
                f" have no such Jacobian): set log_jacobian=False"
            )
        self._probe = x[: self.num_probes]
        return self._probe


@contextmanager
def _isolated(pl_module: LightningModule) -> Iterator[None]:
    """Nothing training uses changes meanwhile: random states and module state are given back."""
    with preserved_rng(pl_module.device), preserved_attributes(pl_module):
        yield


@contextmanager
def _copyable(model: nn.Module) -> Iterator[None]:
    """``torch.nn.utils.prune`` keeps the weight it computes as a plain attribute, a non-leaf tensor, which
    ``copy.deepcopy`` refuses (the effective sparsity scores a copy): detached meanwhile, then put back."""
    swapped = []
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            value = getattr(module, hook._tensor_name, None) if isinstance(hook, BasePruningMethod) else None
            if isinstance(value, Tensor) and not value.is_leaf:
                swapped.append((module, hook._tensor_name, value))
                setattr(module, hook._tensor_name, value.detach())
    try:
        yield
    finally:
        for module, name, value in swapped:
            setattr(module, name, value)


def _driving_pruner_in(trainer: Trainer) -> bool:
    return any(isinstance(cb, DrivingPruner) and cb.drives_diagnostics for cb in trainer.callbacks)
