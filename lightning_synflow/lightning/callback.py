"""``PruneAtInit``: the Lightning adapter around the functional core.

It prunes once in ``on_fit_start`` (model on its device, DDP already wrapped and synchronised; under
``ModelParallelStrategy`` at train start, after the strategy restored any checkpoint), keeps pruned weights
at exactly zero after every optimizer step that really happened, masks gradients so optimizer state of
pruned weights stays zero, and stores the masks in its own checkpoint state. This module is that life cycle and
nothing else: what pruning does to the model inside a fit is :mod:`lightning_synflow.lightning.fit_pruning`, the masks in
checkpoints are :mod:`lightning_synflow.lightning.checkpointing`, and the arguments' types :mod:`lightning_synflow.lightning.arguments`.
"""

import warnings
import weakref
from collections.abc import Mapping
from typing import Any, Literal, Optional, Union

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer

from lightning_synflow.distributions import Distribution
from lightning_synflow.lightning.arguments import (
    Compression,
    DistributionArgument,
    GranularityName,
    InputShape,
    IsometryLR,
    IsometrySteps,
    Iterations,
    NumBatches,
    ScheduleName,
    ScorerArgument,
    Sparsity,
    check_flags,
    check_input_shape,
    check_isometry_lr,
    check_isometry_steps,
    check_num_batches,
    selection_arguments,
)
from lightning_synflow.lightning.checkpointing import (
    check_restored_names,
    check_still_covered,
    holds_masks,
    load_shrunk,  # noqa: F401  (importable from here, its home before checkpointing.py)
    masks_beside_checkpoint,
    masks_state,
    read_checkpoints_first,
    restored_masks,
    save_masks_beside_checkpoints,
    shrink_to_checkpoint,  # noqa: F401  (likewise)
    shrink_to_read_checkpoint,
    stored_selection,
    warn_if_settings_differ,
)
from lightning_synflow.lightning.diagnostics import PruningDiagnostics, log_metrics
from lightning_synflow.lightning.fit_pruning import (
    SHARDED_DEFAULTS,
    check_selection,
    check_sharded,
    isometry_on_ranks,
    prune_in_fit,
    reinitialize_on_ranks,
    report_masks,
    shrink_in_fit,
    traced_input,
)
from lightning_synflow.lightning.isolation import restored_on_failure
from lightning_synflow.lightning.spawn import carry_state_back
from lightning_synflow.lightning.strategies import check_strategy, is_sharded_strategy
from lightning_synflow.masks import BoundMasks, check_masks
from lightning_synflow.plan import PruningPlan, resolve_plan
from lightning_synflow.scorers.base import Scorer

#: The plan's fields that a ``PruneAtInit`` pickled before the plan existed holds as attributes.
_PLAN_FIELDS = ("scorer", "density", "iterations", "schedule", "distribution", "invert", "shuffle")


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
        distribution: How the kept weights are shared among the tensors in every round: ``"global"`` (one
            ranking over all tensors), ``"uniform"`` (each tensor at the same density), ``"erk"``
            (Erdős–Rényi-Kernel), a mapping of tensor-name glob to density (e.g. ``{"fc.*": 0.5}``; others at
            the global density), or a ``lightning_synflow.distributions.Distribution`` (from YAML:
            ``class_path``). Default: the scorer's own (``erk``, ``uniform``), else ``"global"``.
        scope: Deprecated: ``"global"`` / ``"layerwise"``, now ``distribution: global`` / ``uniform``.
        granularity: ``"weight"`` (any weights), ``"channel"`` (whole output channels and neurons, coupled ones
            together, with their biases and normalisation parameters; ``sparsity`` is then the fraction of
            channels removed; needs ``torch-pruning``), or ``"N:M"`` (e.g. ``"2:4"``): exactly N of every M
            consecutive weights along each stored row are kept, which GPUs run faster
            (``lightning_synflow.to_semi_structured``). N:M implies the sparsity (1 - N/M; leave ``sparsity``
            out); tensors whose rows are not a multiple of M long stay dense, with a warning naming them.
        shrink: With ``granularity="channel"``: remove the pruned channels after pruning, so that a smaller dense
            network trains (the optimizers are built again for it, ``configure_optimizers`` called a second
            time). One device only. A checkpoint then holds the smaller network: a Trainer with this callback
            rebuilds it when given the checkpoint (``ckpt_path``); elsewhere call
            ``lightning_synflow.load_shrunk(model, ckpt_path)`` first (or ``shrink_to_checkpoint`` in the model's
            ``on_load_checkpoint``).
        input_shape: Input shape without the batch dimension (e.g. ``[3, 32, 32]``), for scorers that need
            one (SynFlow) when the LightningModule has no ``example_input_array``. Without either, the
            shape of the first training batch is used.
        include_types: Layer types whose weight matrices are pruned, as class names (e.g. ``["Conv2d"]``);
            default every layer that multiplies activations by a weight matrix: Linear, Bilinear, convolutions,
            attention projections, recurrent weights, Hugging Face ``Conv1D``
            (``lightning_synflow.parameters.WEIGHT_MATRICES``). Embeddings, norms and biases stay dense.
        exclude_types: Layer types never pruned (e.g. ``["Linear"]``). A type name that no layer of the model is
            (here or in ``include_types``) is an error; a single string is one name.
        num_batches: Training batches data-driven scorers (SNIP, GraSP, ...) draw, per rank; default the
            scorer's own. Their loss is the LightningModule's own ``training_step`` loss.
        include_names: Glob patterns of further parameter names to prune (e.g. ``["embed.weight"]``).
        exclude_names: Glob patterns of parameter names never pruned (e.g. ``["fc.*"]`` keeps the classifier dense).
            A single string is one pattern; a pattern (here or in ``include_names``) that matches no parameter is
            warned about.
        include_frozen: Also prune frozen parameters (``requires_grad=False``); by default they stay dense, as
            they are never trained and a cut could never be repaired.
        invert: Ablation: keep the lowest-scoring weights instead of the highest.
        shuffle: Ablation: move each tensor's kept positions to random places in it (same per-layer counts).
        reinit: Ablation: draw fresh initial weights after pruning, keeping the masks.
        isometry_steps: After pruning, this many plain-SGD steps towards approximate isometry (Lee et al. 2020):
            minimise sum_l ||(C*W)^T (C*W) - I||_F with the masks fixed (the paper used 10,000). 0: off.
        isometry_lr: Learning rate of those steps.
        verbose: Print the per-tensor sparsity table after pruning.
        log_jacobian: Deprecated: ``PruningDiagnostics(log_jacobian=True)`` in the Trainer's callbacks.
        log_effective_sparsity: Deprecated: ``PruningDiagnostics(log_effective_sparsity=True)``.
        log_per_tensor: Deprecated: ``PruningDiagnostics(log_per_tensor=True)``.

    The pruning arguments are resolved once, into :attr:`plan` (a :class:`~lightning_synflow.plan.PruningPlan`,
    what :func:`~lightning_synflow.compute_masks` resolves too); ``scorer``, ``density``, ``distribution``, ... read it.

    Diagnostics (Jacobian spectra after init, pruning and isometry; per-tensor densities; effective
    sparsity) come from a :class:`~lightning_synflow.PruningDiagnostics` among the Trainer's callbacks,
    which this callback tells when it prunes.
    """

    #: It tells the :class:`~lightning_synflow.PruningDiagnostics` among the Trainer's callbacks when it prunes
    #: (:class:`lightning_synflow.lightning.diagnostics.DrivingPruner`).
    drives_diagnostics = True

    def __init__(
        self,
        scorer: ScorerArgument = "synflow",
        sparsity: Optional[Sparsity] = None,
        compression: Optional[Compression] = None,
        iterations: Optional[Iterations] = None,
        schedule: ScheduleName = "exponential",
        distribution: Optional[DistributionArgument] = None,
        scope: Optional[Literal["global", "layerwise"]] = None,
        granularity: GranularityName = "weight",
        shrink: bool = False,
        input_shape: Optional[InputShape] = None,
        num_batches: Optional[NumBatches] = None,
        include_types: Optional[Union[str, list[str]]] = None,
        exclude_types: Optional[Union[str, list[str]]] = None,
        include_names: Optional[Union[str, list[str]]] = None,
        exclude_names: Optional[Union[str, list[str]]] = None,
        include_frozen: bool = False,
        invert: bool = False,
        shuffle: bool = False,
        reinit: bool = False,
        isometry_steps: IsometrySteps = 0,
        isometry_lr: IsometryLR = 0.1,
        verbose: bool = True,
        log_jacobian: bool = False,
        log_effective_sparsity: bool = False,
        log_per_tensor: bool = False,
    ) -> None:
        self.plan = resolve_plan(
            scorer,
            sparsity=sparsity,
            compression=compression,
            iterations=iterations,
            schedule=schedule,
            distribution=distribution,
            scope=scope,
            granularity=granularity,
            invert=invert,
            shuffle=shuffle,
        )
        if input_shape is not None:
            check_input_shape(input_shape)
        if num_batches is not None:
            check_num_batches(num_batches)
        flags = check_flags(shrink=shrink, reinit=reinit, include_frozen=include_frozen, verbose=verbose)
        self.shrink = flags["shrink"]
        if self.shrink and self.granularity != "channel":
            raise ValueError(f"PruneAtInit `shrink` removes whole channels: give granularity='channel', got granularity={granularity!r}")
        self.isometry_steps = check_isometry_steps(isometry_steps)
        self.isometry_lr = check_isometry_lr(isometry_lr)
        self._legacy_diagnostics = _legacy_diagnostics(log_jacobian, log_effective_sparsity, log_per_tensor, input_shape)
        self.num_batches = num_batches
        self.reinit = flags["reinit"]
        self.input_shape = None if input_shape is None else list(input_shape)
        selection = selection_arguments(include_types, exclude_types, include_names, exclude_names)
        self.include_types, self.exclude_types = selection["include_types"], selection["exclude_types"]
        self.include_names, self.exclude_names = selection["include_names"], selection["exclude_names"]
        self._check_combinations()
        self.include_frozen, self.verbose = flags["include_frozen"], flags["verbose"]
        self._masks: Optional[dict[str, Tensor]] = None
        self._bound: Optional[BoundMasks] = None
        self._hooks: list[Any] = []
        self._owner: Optional[weakref.ref[LightningModule]] = None  # the model the masks were computed for
        self._restored: Optional[dict[str, Any]] = None  # a checkpoint's state, until on_fit_start adopts it
        self._distributed_checkpoints = False  # a sharded strategy saves distributed checkpoints
        self._start_at_train_start = False  # a checkpoint this fit resumes would be restored after on_fit_start
        self._shrunk: Optional[dict[str, tuple[int, ...]]] = None  # the parameter shapes of the shrunk model
        self._described: dict[str, Any] = {}  # the settings that made the masks held (a checkpoint's, when resumed)
        self._stage: Optional[str] = None  # the Trainer entry point running: only "fit" adopts a checkpoint's masks
        self._weights_only_checkpoint = False  # the checkpoint this fit resumes holds no training state

    def _check_combinations(self) -> None:
        """Refuse, at construction, argument combinations that fit would refuse only after work was done (those
        of the plan itself, :func:`~lightning_synflow.plan.resolve_plan` refuses)."""
        if self.granularity == "channel" and self.isometry_steps:
            raise ValueError(
                f"PruneAtInit(granularity='channel') keeps or removes whole channels, which"
                f" isometry_steps={self.isometry_steps!r} does not (isometry steps work on weight matrices alone):"
                f" leave it out"
            )

    # ------------------------------------------------------------------ the plan's settings, as given

    @property
    def scorer(self) -> Scorer:
        """The scorer instance (:attr:`plan`'s)."""
        return self.plan.scorer

    @property
    def density(self) -> float:
        """The final fraction of the prunable units kept (:attr:`plan`'s)."""
        return self.plan.density

    @property
    def iterations(self) -> int:
        """Pruning rounds (:attr:`plan`'s)."""
        return self.plan.iterations

    @property
    def schedule(self) -> ScheduleName:
        """How the density falls over the rounds (:attr:`plan`'s)."""
        return self.plan.schedule

    @property
    def distribution(self) -> Distribution:
        """How each round's budget is shared among the tensors (:attr:`plan`'s)."""
        return self.plan.distribution

    @property
    def granularity(self) -> str:
        """``"weight"``, ``"channel"`` or ``"N:M"``, as a user writes it."""
        return self.plan.granularity_name

    @property
    def invert(self) -> bool:
        """The ablation keeping the lowest scores (:attr:`plan`'s)."""
        return self.plan.invert

    @property
    def shuffle(self) -> bool:
        """The ablation moving kept positions to random places (:attr:`plan`'s)."""
        return self.plan.shuffle

    @property
    def masks(self) -> Optional[dict[str, Tensor]]:
        """The masks (``True`` = kept), keyed by the LightningModule's parameter names; ``None`` before pruning."""
        return self._masks

    # ------------------------------------------------------------------ life cycle

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning restores a checkpoint (and calls load_state_dict) after setup: what an earlier run left
        # unadopted (validate(ckpt_path=...) restores this callback's state too) is forgotten here.
        self._restored, self._stage, self._weights_only_checkpoint = None, stage, False
        check_strategy(trainer.strategy)
        if self.shrink and not isinstance(trainer.strategy, SingleDeviceStrategy):
            raise ValueError(
                f"PruneAtInit(shrink=True) replaces the model's parameters, which {type(trainer.strategy).__name__}"
                f" holds references to; it runs on a single device"
            )
        if is_sharded_strategy(trainer.strategy):
            check_sharded(trainer.strategy, {k: getattr(self, k) for k in SHARDED_DEFAULTS}, self.plan)
            self._distributed_checkpoints = bool(trainer.strategy._save_distributed_checkpoint)
            trainer.strategy._lightning_synflow_pruner = self
            save_masks_beside_checkpoints(trainer.strategy)
        else:
            read_checkpoints_first(trainer.strategy, self)
        if self._legacy_diagnostics is not None and self._legacy_diagnostics not in trainer.callbacks:
            trainer.callbacks.append(self._legacy_diagnostics)  # its own hooks run from here on, this one's too

    def _read_checkpoint(self, strategy: Any, checkpoint: Mapping[str, Any], path: Any) -> None:
        """See the checkpoint this run reads as soon as it is loaded, before any of it is restored. One that holds a
        shrunk model (``shrink=True``): shrink the model (built as before pruning) to it now, so that ``fit``,
        ``validate``, ``test`` and ``predict`` with ``ckpt_path`` (LightningCLI's ``--ckpt_path`` too) work as for
        any checkpoint. One that holds the weights alone: remembered, so that a fit resuming it fails before
        pruning, rather than after (Lightning refuses it when it restores the optimizers)."""
        pl_module = strategy.lightning_module
        self._weights_only_checkpoint = (
            self._stage == "fit" and strategy.lightning_restore_optimizer and "optimizer_states" not in checkpoint
        )
        if shrink_to_read_checkpoint(pl_module, checkpoint, path, self.input_shape, self.state_key):
            rank_zero_info(f"PruneAtInit: shrunk {type(pl_module).__name__} to the architecture {path} holds")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.strategy.restore_checkpoint_after_setup:
            # ModelParallelStrategy restores a checkpoint (weights, optimizer, this callback's masks) after
            # on_fit_start, and says whether there is one only then: start at train start instead, before the
            # first step, rather than prune what a checkpoint is about to replace.
            self._start_at_train_start = True
            return
        self._start(trainer, pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._start_at_train_start:
            self._start_at_train_start = False
            self._start(trainer, pl_module)

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prune (or take up the masks to keep), apply the masks and hook them to every optimizer step. If
        anything fails on the way, the model is given back as it came and this callback holds what it held."""
        held = {k: getattr(self, k) for k in ("_masks", "_owner", "_bound", "_shrunk", "_described")}
        try:
            with restored_on_failure(pl_module):
                self._start_unguarded(trainer, pl_module)
        except BaseException:
            for handle in self._hooks:
                handle.remove()
            self._hooks = []
            for key, value in held.items():
                setattr(self, key, value)
            raise

    def _start_unguarded(self, trainer: Trainer, pl_module: LightningModule) -> None:
        check_selection(pl_module, self._selection())  # here, not in setup: configure_model may build layers after setup
        masks, origin = self._masks_to_keep(trainer, pl_module)
        if masks is not None and self._shrunk is not None:
            self._keep_shrunk(pl_module, masks, origin)
            return
        fresh = masks is None
        observers = [cb for cb in trainer.callbacks if isinstance(cb, PruningDiagnostics)] if fresh else []
        for observer in observers:
            observer.before_pruning(trainer, pl_module)
        if fresh:
            masks, seconds = self._prune(trainer, pl_module)
            self._described = self._settings()
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
        channels = self._described.get("granularity") == "channel"
        report_masks(trainer, pl_module, self._masks, self._selection(), channels, seconds, origin, self.verbose, self.scorer)
        for observer in observers:
            observer.after_pruning(trainer, pl_module, self._masks)
        if fresh and self.isometry_steps:
            isometry_on_ranks(trainer, pl_module, self._masks, self._bound.params, self.isometry_steps, self.isometry_lr)
            for observer in observers:
                observer.after_isometry(trainer, pl_module, self._masks)
        if fresh and self.shrink:
            self._shrink(trainer, pl_module)

    def _prune(self, trainer: Trainer, pl_module: LightningModule) -> tuple[dict[str, Tensor], float]:
        """The masks (rank zero's under DDP; each rank's part of them on a sharded model) and the seconds scoring
        took; then the ``reinit`` ablation."""
        masks, seconds = prune_in_fit(
            trainer, pl_module, self.plan, self._selection(), self.include_frozen, self.input_shape, self.num_batches
        )
        if self.reinit:
            reinitialize_on_ranks(trainer, pl_module)
        return masks, seconds

    def _shrink(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Remove the pruned channels; the optimizers are built again for the smaller parameters, and there is
        nothing left to mask."""
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._bound = [], None
        self._shrunk = shrink_in_fit(trainer, pl_module, self._masks, self.input_shape)

    def _keep_shrunk(self, pl_module: LightningModule, masks: dict[str, Tensor], origin: str) -> None:
        """Resuming a shrunk model: nothing to mask, once the model is checked to be the shrunk one."""
        shapes = {n: tuple(p.shape) for n, p in pl_module.named_parameters()}
        if shapes != self._shrunk:
            raise ValueError(
                f"PruneAtInit: the masks {origin} belong to a shrunk {type(pl_module).__name__}, but this model has its"
                f" full shapes; rebuild the smaller one with lightning_synflow.load_shrunk(model, ckpt_path) first"
            )
        self._masks, self._owner = masks, weakref.ref(pl_module)
        rank_zero_info(f"PruneAtInit: kept the shrunk model, masks {origin}")

    def _masks_to_keep(self, trainer: Trainer, pl_module: LightningModule) -> tuple[Optional[dict[str, Tensor]], str]:
        """The masks this fit keeps instead of pruning, and where they come from: the checkpoint this fit resumes,
        or this same model's previous fit; ``None`` when the model is to be pruned now."""
        restored, self._restored = self._restored, None
        if restored is not None:
            masks = restored_masks(pl_module, restored, trainer.ckpt_path)
            check_restored_names(
                pl_module, masks, restored, self._selection(), self.include_frozen, self.granularity,
                lambda: traced_input(trainer, pl_module, self.input_shape),
            )
            warn_if_settings_differ(restored, self._settings())
            self._described = {k: restored[k] for k in self._settings() if k in restored}
            self._shrunk = {n: tuple(s) for n, s in restored["shrunk"].items()} if "shrunk" in restored else None
            return masks, "restored from the checkpoint"
        if trainer.ckpt_path is not None and self._weights_only_checkpoint:
            raise ValueError(
                f"PruneAtInit: {trainer.ckpt_path} holds the model's weights alone (saved with"
                f" ModelCheckpoint(save_weights_only=True)): no optimizer state, which Lightning needs to resume"
                f" training, and no masks. Nothing was pruned. Resume from a full checkpoint, or load these weights"
                f" (model.load_state_dict(torch.load(path)['state_dict'])) and fit without `ckpt_path` to prune them"
            )
        previous = self._masks is not None and self._owner is not None and self._owner() is pl_module
        if previous and self._shrunk is None:
            check_still_covered(
                pl_module, self._masks, self._described, self._selection(), self.include_frozen, self.granularity,
                lambda: traced_input(trainer, pl_module, self.input_shape),
            )
        if self._masks is not None and not previous:
            rank_zero_info(f"PruneAtInit: {type(pl_module).__name__} is not the model the masks it holds were computed for; pruning it afresh")
        if trainer.ckpt_path is not None:
            rank_zero_warn(
                f"PruneAtInit: resuming from {trainer.ckpt_path}, which holds no pruning state: the weights it"
                f" restored (trained ones, if it was saved during training) are "
                + ("masked now with the masks of this model's previous fit" if previous else "pruned now")
            )
        if previous:
            return self._masks, "of this model's previous fit"
        return None, "scored now"

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        # After AMP unscaling and before gradient clipping, on real step boundaries only.
        if self._bound is not None:
            self._bound.mask_grads_()

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # An optimizer step post-hook: fires only for steps that happened (not for skipped AMP steps).
        self._bound.apply_()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._bound is not None:
            log_metrics(trainer, {"pruning/measured_sparsity": 1.0 - self._bound.measured_density()})

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._bound = None
        self._stage = None

    def _settings(self) -> dict[str, Any]:
        """What decides the masks, stored beside them so that a resume with other arguments is noticed."""
        return {
            "scorer": self.scorer.name or type(self.scorer).__qualname__,
            "density": self.density,
            "iterations": self.iterations,
            "schedule": self.schedule,
            "distribution": repr(self.distribution),
            "granularity": self.granularity,
            **stored_selection(self._selection(), self.include_frozen),
        }

    def state_dict(self) -> dict[str, Any]:
        """The masks and the settings that made them (a resumed run's, those of the run that pruned). A sharded model's masks go bit-packed: whole in a full
        checkpoint (every rank calls this), or, in a distributed one, beside it in its own directory (only
        their names here)."""
        if self._masks is None:
            return {}
        return masks_state(self._masks, self._described, self._shrunk, self._masks_beside_checkpoint())

    def _masks_beside_checkpoint(self) -> bool:
        """The masks are sharded and checkpoints are distributed: they are saved beside the model's shards."""
        return masks_beside_checkpoint(self._masks, self._distributed_checkpoints)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Only the fit that resumes from the checkpoint takes its masks up (in on_fit_start); validate, test and
        # predict read the checkpoint's weights alone, which its masks already zeroed.
        if self._stage in (None, "fit") and holds_masks(state_dict):
            self._restored = dict(state_dict)

    def spawn_state(self) -> dict[str, Any]:
        """Rank zero's state, sent back from a spawned worker (:mod:`lightning_synflow.lightning.spawn`)."""
        return self.state_dict()

    def adopt_spawn_state(self, state: dict[str, Any], module: LightningModule) -> None:
        """In the main process after a spawned fit: the masks belong to the main process's model, which got
        the pruned weights back, so that its next ``fit`` keeps them."""
        self._masks = dict(state["masks"])
        self._described = {k: state[k] for k in self._settings() if k in state}
        self._shrunk = {n: tuple(v) for n, v in state["shrunk"].items()} if "shrunk" in state else None
        self._owner = weakref.ref(module)

    def __getstate__(self) -> dict[str, Any]:
        # A spawned fit pickles the Trainer with the model: the owner goes as a plain reference so that it
        # unpickles as that same model object in the worker; weak references cannot be pickled.
        state = self.__dict__.copy()
        state["_owner"] = None if self._owner is None else self._owner()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        owner = state["_owner"]
        if "plan" not in state:  # pickled by a version that kept the plan's fields as attributes of their own
            fields = {k: state.pop(k) for k in _PLAN_FIELDS}
            state.pop("granularity")
            state["plan"] = PruningPlan(granularity=state.pop("pattern"), **fields)
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


def _legacy_diagnostics(
    log_jacobian: bool, log_effective_sparsity: bool, log_per_tensor: bool, input_shape: Optional[list[int]]
) -> Optional[PruningDiagnostics]:
    """The PruningDiagnostics that PruneAtInit's deprecated diagnostic arguments stand for, or None."""
    flags = {"log_jacobian": log_jacobian, "log_effective_sparsity": log_effective_sparsity, "log_per_tensor": log_per_tensor}
    given = [name for name, on in flags.items() if on]
    if not given:
        return None
    yaml = "{class_path: lightning_synflow.PruningDiagnostics, init_args: {%s}}" % ", ".join(f"{k}: true" for k in given)
    warnings.warn(
        f"PruneAtInit({', '.join(f'{k}=True' for k in given)}) is deprecated: add"
        f" PruningDiagnostics({', '.join(f'{k}=True' for k in given)}) to the Trainer's callbacks (YAML: {yaml})",
        DeprecationWarning,
        stacklevel=3,
    )
    return PruningDiagnostics(**flags, input_shape=input_shape)
