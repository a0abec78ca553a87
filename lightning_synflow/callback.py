"""``PruneAtInit``: the Lightning adapter around the functional core.

It prunes once in ``on_fit_start`` (model on its device, DDP already wrapped and synchronised), keeps
pruned weights at exactly zero after every optimizer step that really happened, masks gradients so
optimizer state of pruned weights stays zero, and stores the masks in its own checkpoint state.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer

from lightning_synflow.ablations import reinitialize
from lightning_synflow.collectives import broadcast_masks, broadcast_tensors_
from lightning_synflow.isolation import preserved_attributes, preserved_rng
from lightning_synflow.masks import BoundMasks, check_masks
from lightning_synflow.parameters import frozen_weight_matrices, select_prunable
from lightning_synflow.pruning import compute_masks
from lightning_synflow.ranking import SCOPES, Scope
from lightning_synflow.report import SparsityReport, sparsity_report
from lightning_synflow.schedules import Schedule, density_schedule, resolve_density
from lightning_synflow.scorers.base import ExampleInput, Scorer, get_scorer
from lightning_synflow.spawn import carry_state_back
from lightning_synflow.strategies import check_strategy
from lightning_synflow.trainer_data import setup_training_data, training_batches, training_step_loss
from lightning_synflow.validation import check_positive_int, is_positive_int


@carry_state_back
class PruneAtInit(Callback):
    """Prune the model at the start of ``fit`` and keep it sparse for the whole of training.

    Args:
        scorer: How weights are ranked: a registered name (``"synflow"``, ``"magnitude"``, ``"random"``, ...)
            or a :class:`~lightning_synflow.Scorer` instance (from YAML: ``class_path`` and ``init_args``).
        sparsity: Fraction of the prunable weights to remove, in [0, 1), e.g. 0.99. Give this or ``compression``.
        compression: Ratio of total to kept prunable weights, >= 1 (the SynFlow paper's 10^x), e.g. 100.
        iterations: Pruning rounds; default the scorer's own (100 for SynFlow, 1 for magnitude and random).
        schedule: Density after round t of T: ``"exponential"`` d^(t/T) (the paper's) or ``"linear"``.
        scope: ``"global"`` ranks all tensors together; ``"layerwise"`` prunes each tensor to the same density.
        input_shape: Input shape without the batch dimension (e.g. ``[3, 32, 32]``), for scorers that need
            one (SynFlow) when the LightningModule has no ``example_input_array``. Without either, the
            shape of the first training batch is used.
        include_types: Layer types whose weight matrices are pruned, as class names (e.g. ``["Conv2d"]``);
            default every layer that multiplies activations by a weight matrix: Linear, Bilinear, convolutions,
            attention projections, recurrent weights, Hugging Face ``Conv1D``
            (``lightning_synflow.parameters.WEIGHT_MATRICES``). Embeddings, norms and biases stay dense.
        exclude_types: Layer types never pruned (e.g. ``["Linear"]``).
        num_batches: Training batches data-driven scorers (SNIP, GraSP, ...) draw, per rank; default the
            scorer's own. Their loss is the LightningModule's own ``training_step`` loss.
        include_names: Glob patterns of further parameter names to prune (e.g. ``["embed.weight"]``).
        exclude_names: Glob patterns of parameter names never pruned (e.g. ``["fc.*"]`` keeps the classifier dense).
        include_frozen: Also prune frozen parameters (``requires_grad=False``); by default they stay dense, as
            they are never trained and a cut could never be repaired.
        invert: Ablation: keep the lowest-scoring weights instead of the highest.
        shuffle: Ablation: move each tensor's kept positions to random places in it (same per-layer counts).
        reinit: Ablation: draw fresh initial weights after pruning, keeping the masks.
        isometry_steps: After pruning, this many plain-SGD steps towards approximate isometry (Lee et al. 2020):
            minimise sum_l ||(C*W)^T (C*W) - I||_F with the masks fixed (the paper used 10,000). 0: off.
        isometry_lr: Learning rate of those steps.
        log_jacobian: Log the input-output Jacobian's singular values (mean/std/min/max) after init, after
            pruning and after isometry, on up to 8 examples of the first training batch (Gaussian inputs
            of the example shape without one); as a histogram too where a TensorBoard logger is attached.
        log_effective_sparsity: Also log the effective sparsity: kept weights on no input-output path are
            dead too (needs the input shape, like SynFlow).
        log_per_tensor: Also log each tensor's density after pruning.
        verbose: Print the per-tensor sparsity table after pruning.
    """

    def __init__(
        self,
        scorer: Union[str, Scorer] = "synflow",
        sparsity: Optional[float] = None,
        compression: Optional[float] = None,
        iterations: Optional[int] = None,
        schedule: Schedule = "exponential",
        scope: Scope = "global",
        input_shape: Optional[list[int]] = None,
        num_batches: Optional[int] = None,
        include_types: Optional[list[str]] = None,
        exclude_types: Optional[list[str]] = None,
        include_names: Optional[list[str]] = None,
        exclude_names: Optional[list[str]] = None,
        include_frozen: bool = False,
        invert: bool = False,
        shuffle: bool = False,
        reinit: bool = False,
        isometry_steps: int = 0,
        isometry_lr: float = 0.1,
        log_jacobian: bool = False,
        log_effective_sparsity: bool = False,
        log_per_tensor: bool = False,
        verbose: bool = True,
    ) -> None:
        self.scorer = get_scorer(scorer)
        self.density = resolve_density(sparsity, compression)
        self.iterations = self.scorer.default_iterations if iterations is None else iterations
        density_schedule(self.density, self.iterations, schedule)  # validates iterations and schedule
        if scope not in SCOPES:
            raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}")
        if input_shape is not None and (
            not isinstance(input_shape, (list, tuple)) or not input_shape or not all(map(is_positive_int, input_shape))
        ):
            raise ValueError(f"`input_shape` must be a non-empty list of positive ints without the batch dimension, got {input_shape!r}")
        if num_batches is not None:
            check_positive_int("num_batches", num_batches)
        if isinstance(isometry_steps, bool) or not isinstance(isometry_steps, int) or isometry_steps < 0:
            raise ValueError(f"`isometry_steps` must be a non-negative integer (0 = off), got {isometry_steps!r}")
        if isinstance(isometry_lr, bool) or not isinstance(isometry_lr, (int, float)) or not 0 < isometry_lr < float("inf"):
            raise ValueError(f"`isometry_lr` must be a positive finite number, got {isometry_lr!r}")
        self.isometry_steps = isometry_steps
        self.isometry_lr = float(isometry_lr)
        self.log_jacobian = log_jacobian
        self.log_effective_sparsity = log_effective_sparsity
        self.num_batches = num_batches
        self.invert = invert
        self.shuffle = shuffle
        self.reinit = reinit
        self.schedule = schedule
        self.scope = scope
        self.input_shape = None if input_shape is None else list(input_shape)
        self.include_types = include_types
        self.exclude_types = list(exclude_types or ())
        self.include_names = list(include_names or ())
        self.exclude_names = list(exclude_names or ())
        self.include_frozen = include_frozen
        self.log_per_tensor = log_per_tensor
        self.verbose = verbose
        self._masks: Optional[dict[str, Tensor]] = None
        self._bound: Optional[BoundMasks] = None
        self._hooks: list[Any] = []
        self._owner: Optional[weakref.ref[LightningModule]] = None  # the model the masks were computed for
        self._restored: Optional[dict[str, Any]] = None  # a checkpoint's state, until on_fit_start adopts it

    @property
    def masks(self) -> Optional[dict[str, Tensor]]:
        """The masks (``True`` = kept), keyed by the LightningModule's parameter names; ``None`` before pruning."""
        return self._masks

    # ------------------------------------------------------------------ life cycle

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_strategy(trainer.strategy)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        masks, origin = self._masks_to_keep(trainer, pl_module)
        fresh = masks is None
        if fresh:
            masks, seconds, probe, spectra = self._prune(trainer, pl_module)
        else:
            seconds = None
            try:
                check_masks(pl_module, masks)
            except (ValueError, TypeError) as err:
                raise ValueError(f"PruneAtInit: the masks {origin} do not fit {type(pl_module).__name__}: {err}") from err
        bound = BoundMasks(pl_module, masks)
        bound.apply_()
        self._masks = dict(zip(bound.names, bound.masks))
        self._owner = weakref.ref(pl_module)
        self._bound = bound
        self._hooks = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]
        frozen = frozen_weight_matrices(pl_module, **self._selection())
        self._report(trainer, sparsity_report(pl_module, self._masks, frozen=frozen), seconds, origin)
        if fresh:
            with preserved_rng(pl_module.device), preserved_attributes(pl_module):
                self._diagnose(trainer, pl_module, probe, spectra)

    def _prune(
        self, trainer: Trainer, pl_module: LightningModule
    ) -> tuple[dict[str, Tensor], float, Optional[Tensor], dict[str, Tensor]]:
        """Rank zero's masks, the seconds scoring took, and (with ``log_jacobian``) the probe inputs and the
        Jacobian spectrum at initialisation.
        Nothing training uses is drawn or changed meanwhile: random states and module state are restored."""
        if self._reads_training_data(pl_module):
            setup_training_data(trainer)  # outside the isolation: training expects the draws it makes
        with preserved_rng(pl_module.device), preserved_attributes(pl_module):
            probe = self._probe_inputs(trainer, pl_module) if self.log_jacobian else None
            spectra = {} if probe is None else {"init": self._spectrum(trainer, pl_module, probe, "init")}
            start = time.perf_counter()
            masks = self._score(trainer, pl_module)
            seconds = time.perf_counter() - start
        masks = broadcast_masks(masks, device=trainer.strategy.root_device)  # bit-packed, through the process group
        if self.reinit:
            self._reinitialize(trainer, pl_module)
        return masks, seconds, probe, spectra

    def _reads_training_data(self, pl_module: LightningModule) -> bool:
        """Scoring or diagnostics will draw training batches (for data, or for the input shape)."""
        needs_shape = self.scorer.needs_input or self.log_effective_sparsity or self.log_jacobian
        shape_from_data = needs_shape and pl_module.example_input_array is None and self.input_shape is None
        return self.scorer.needs_data or self.log_jacobian or shape_from_data

    def _masks_to_keep(self, trainer: Trainer, pl_module: LightningModule) -> tuple[Optional[dict[str, Tensor]], str]:
        """The masks this fit keeps instead of pruning, and where they come from: a checkpoint's, or those of
        this same model's previous fit; ``None`` when the model is to be pruned now."""
        restored, self._restored = self._restored, None
        if restored is not None:
            self._warn_if_arguments_differ(restored)
            return dict(restored["masks"]), "restored from the checkpoint"
        if self._masks is not None and self._owner is not None and self._owner() is pl_module:
            return self._masks, "of this model's previous fit"
        if self._masks is not None:
            rank_zero_info(f"PruneAtInit: {type(pl_module).__name__} is not the model the masks it holds were computed for; pruning it afresh")
        if trainer.ckpt_path is not None:
            rank_zero_warn(
                f"PruneAtInit: resuming from {trainer.ckpt_path}, which holds no pruning state: the weights it"
                f" restored (trained ones, if it was saved during training) are pruned now"
            )
        return None, "scored now"

    def _warn_if_arguments_differ(self, restored: Mapping[str, Any]) -> None:
        own = self._settings()
        differ = {k: (v, own[k]) for k, v in restored.items() if k in own and not _same(v, own[k])}
        if differ:
            said = "; ".join(f"{k}: checkpoint {_shown(old)}, callback {_shown(new)}" for k, (old, new) in differ.items())
            rank_zero_warn(f"PruneAtInit: resuming with the checkpoint's masks, which were made with other arguments ({said})")

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        # After AMP unscaling and before gradient clipping, on real step boundaries only.
        if self._bound is not None:
            self._bound.mask_grads_()

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # An optimizer step post-hook: fires only for steps that happened (not for skipped AMP steps).
        self._bound.apply_()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._bound is not None:
            self._log(trainer, {"pruning/measured_sparsity": 1.0 - self._bound.measured_density()})

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._bound = None

    def _settings(self) -> dict[str, Any]:
        """What decides the masks, stored beside them so that a resume with other arguments is noticed."""
        return {
            "scorer": self.scorer.name or type(self.scorer).__qualname__,
            "density": self.density,
            "iterations": self.iterations,
            "schedule": self.schedule,
            "scope": self.scope,
        }

    def state_dict(self) -> dict[str, Any]:
        if self._masks is None:
            return {}
        return {"masks": {n: m.cpu() for n, m in self._masks.items()}, **self._settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "masks" in state_dict:
            self._restored = dict(state_dict)

    def spawn_state(self) -> dict[str, Any]:
        """Rank zero's state, sent back from a spawned worker (:mod:`lightning_synflow.spawn`)."""
        return self.state_dict()

    def adopt_spawn_state(self, state: dict[str, Any], module: LightningModule) -> None:
        """In the main process after a spawned fit: the masks belong to the main process's model, which got
        the pruned weights back, so that its next ``fit`` keeps them."""
        self._masks = dict(state["masks"])
        self._owner = weakref.ref(module)

    def __getstate__(self) -> dict[str, Any]:
        # A spawned fit pickles the Trainer with the model: the owner goes as a plain reference so that it
        # unpickles as that same model object in the worker; weak references cannot be pickled.
        state = self.__dict__.copy()
        state["_owner"] = None if self._owner is None else self._owner()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        owner = state["_owner"]
        self.__dict__.update(state, _owner=None if owner is None else weakref.ref(owner))

    # ------------------------------------------------------------------ helpers

    def _selection(self) -> dict[str, Any]:
        """The arguments of :func:`select_prunable` that say which tensors are prunable, frozen ones aside."""
        return dict(
            include_types=self.include_types,
            exclude_types=self.exclude_types,
            include_names=self.include_names,
            exclude_names=self.exclude_names,
        )

    def _score(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Tensor]:
        """This rank's masks (the caller adopts rank zero's)."""
        names = select_prunable(pl_module, include_frozen=self.include_frozen, **self._selection())
        if not names:
            raise ValueError(
                f"PruneAtInit found no prunable parameters in {type(pl_module).__name__} with "
                + ", ".join(f"{k}={v}" for k, v in {**self._selection(), "include_frozen": self.include_frozen}.items())
            )
        if self.scorer.needs_data and not pl_module.automatic_optimization:
            raise ValueError(
                f"PruneAtInit(scorer={self.scorer!r}) scores with the loss `training_step` returns, which"
                f" {type(pl_module).__name__} does not under manual optimization; use a data-free scorer"
            )
        num_batches = self.scorer.default_num_batches if self.num_batches is None else self.num_batches
        masks = compute_masks(
            pl_module,
            self.scorer,
            compression=1.0 / self.density,
            iterations=self.iterations,
            schedule=self.schedule,
            scope=self.scope,
            example_input=self._example_input(trainer, pl_module) if self.scorer.needs_input else None,
            dataloader=training_batches(trainer, num_batches) if self.scorer.needs_data else None,
            loss_fn=training_step_loss(trainer) if self.scorer.needs_data else None,
            num_batches=num_batches,
            all_reduce=(lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None,
            parameters=names,
            invert=self.invert,
            shuffle=self.shuffle,
            progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
        )
        return masks

    @staticmethod
    def _reinitialize(trainer: Trainer, pl_module: LightningModule) -> None:
        """The ``reinit`` ablation: the same fresh weights on every rank, drawn from rank zero's seed."""
        seed = trainer.strategy.broadcast(int(torch.randint(2**31 - 1, ())), src=0)
        cuda = [pl_module.device.index] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            reinitialize(pl_module)

    def _example_input(self, trainer: Trainer, pl_module: LightningModule) -> ExampleInput:
        """The model's input: ``example_input_array``, else ``input_shape``, else the first training batch."""
        if pl_module.example_input_array is not None:
            return pl_module.example_input_array
        if self.input_shape is not None:
            return torch.zeros(1, *self.input_shape)
        batches = training_batches(trainer, 1)
        batch = batches[0] if batches else None
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            batch = batch[0]
        if not isinstance(batch, Tensor):
            raise ValueError(
                f"PruneAtInit(scorer={self.scorer.name!r}) needs the model's input shape: set `example_input_array`"
                f" on {type(pl_module).__name__}, pass `input_shape=[...]` (without the batch dimension), or train on"
                f" batches that are tensors or (input, target) pairs; a model called with keyword inputs"
                f" (`model(**inputs)`, e.g. Hugging Face's input_ids and attention_mask) needs"
                f" `example_input_array` as a dict of example tensors"
            )
        return batch

    def _report(self, trainer: Trainer, report: SparsityReport, seconds: Optional[float], origin: str) -> None:
        if seconds is None:
            rank_zero_info(f"PruneAtInit: kept the masks {origin} (not scored again), sparsity {report.sparsity:.4%}")
            return
        metrics = {
            "pruning/sparsity": report.sparsity,
            "pruning/density": report.density,
            "pruning/kept": float(report.kept),
            "pruning/total": float(report.total),
            "pruning/collapsed": float(len(report.collapsed)),
            "pruning/time_s": seconds,
        }
        if self.log_per_tensor:
            metrics.update({f"pruning/density/{t.name}": t.density for t in report.tensors})
        self._log(trainer, metrics)
        if self.verbose:
            rank_zero_info(f"PruneAtInit ({self.scorer!r}, {seconds:.2f} s):\n{report}")
        if report.collapsed:
            rank_zero_warn(
                f"PruneAtInit: {len(report.collapsed)} tensor(s) collapsed (no weight kept): {report.collapsed}."
                " Without a skip connection around them the network is disconnected; lower the sparsity,"
                " use more iterations, or exclude them."
            )

    def _diagnose(
        self, trainer: Trainer, pl_module: LightningModule, probe: Optional[Tensor], spectra: dict[str, Tensor]
    ) -> None:
        """The signal-propagation options, after pruning: Jacobian spectra, isometry, effective sparsity."""
        from lightning_synflow import analysis

        if probe is not None:
            spectra["pruned"] = self._spectrum(trainer, pl_module, probe, "pruned")
        if self.isometry_steps:
            result = analysis.approximate_isometry(pl_module, self._masks, steps=self.isometry_steps, lr=self.isometry_lr)
            broadcast_tensors_(self._bound.params, device=trainer.strategy.root_device)  # bitwise-equal weights on every rank
            self._log(trainer, result.as_metrics("isometry"))
            if probe is not None:
                spectra["isometry"] = self._spectrum(trainer, pl_module, probe, "isometry")
        if self.log_effective_sparsity:
            report = analysis.effective_sparsity_report(
                pl_module, self._masks, example_input=self._example_input(trainer, pl_module)
            )
            self._log(trainer, report.as_metrics("pruning/sparsity"))
        if spectra:
            self._log_histogram(trainer, spectra)

    def _probe_inputs(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        """Up to 8 inputs of the first training batch, else Gaussian inputs of the example shape."""
        batches = training_batches(trainer, 1)
        batch = batches[0] if batches else None
        x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(x, Tensor):
            x = self._example_input(trainer, pl_module)
            if isinstance(x, Tensor) and x.is_floating_point():
                x = torch.randn(8, *x.shape[1:], dtype=x.dtype, device=pl_module.device)
        if not (isinstance(x, Tensor) and x.is_floating_point()):
            got = f"{x.dtype} tensors" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"PruneAtInit(log_jacobian=True) takes the Jacobian with respect to the model's input, which must be"
                f" one floating tensor; {type(pl_module).__name__} gets {got} (token ids or keyword inputs have no"
                f" such Jacobian): set log_jacobian=False"
            )
        return x[:8]

    def _spectrum(self, trainer: Trainer, pl_module: LightningModule, probe: Tensor, stage: str) -> Tensor:
        """The Jacobian singular values on ``probe``, logged as ``jacobian_sv/<stage>/{mean,std,min,max}``."""
        from lightning_synflow import analysis

        sv = analysis.jacobian_singular_values(pl_module, probe)
        self._log(trainer, analysis.singular_value_stats(sv).as_metrics(f"jacobian_sv/{stage}"))
        return sv

    @staticmethod
    def _log_histogram(trainer: Trainer, spectra: dict[str, Tensor]) -> None:
        """The singular-value histograms as an image, for loggers that take figures (TensorBoard)."""
        loggers = [lg for lg in trainer.loggers if callable(getattr(getattr(lg, "experiment", None), "add_figure", None))]
        if not trainer.is_global_zero or not loggers:
            return
        from lightning_synflow.analysis.figures import plot_singular_values

        figure = plot_singular_values(spectra, title="Jacobian singular values")
        for logger in loggers:
            logger.experiment.add_figure("jacobian_singular_values", figure, trainer.global_step)

    @staticmethod
    def _log(trainer: Trainer, metrics: dict[str, float]) -> None:
        # `self.log` is not allowed in on_fit_start; talk to the loggers directly, from rank zero.
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _shown(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)
