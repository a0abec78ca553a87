"""NTK-SAP (Wang et al., "NTK-SAP: Improving neural network pruning by aligning training dynamics",
ICLR 2023): data-free saliency of the neural tangent kernel's trace, averaged over random networks.

For each of ``batches`` batches per round, NTK-SAP draws Gaussian-noise inputs ``x``, *fresh random weights*
``θ`` (a new random network of the same architecture) and a perturbation ``δ ~ N(0, 1)``, and differentiates
with respect to the mask ``c``

    ``S = Σ_x ‖f(x; θ⊙c) − f(x; (θ + εδ)⊙c)‖²``,  ``ε = 0.01``,

a finite-difference estimate of ``ε²·tr(NTK)`` on the masked network (``δ`` perturbs the prunable weights
only; both networks share every other parameter). The score is ``|Σ_batches ∂S/∂c|`` (summed over ranks
before the absolute value), 0 for pruned weights; 20 exponential rounds by default, monotone. Because the
weights are re-drawn, the mask depends on the architecture and the current mask, not on the model's own
values — which scoring never changes (every pass runs on copies through ``functional_call``).

Published code (``YiteWang/NTK-SAP``, ``Pruners/pruners.py``): ``model._initialize_weights()`` re-draws the
weights (overwriting the model's), and BatchNorm is *calibrated*: its running statistics are reset, one
no-grad forward in train mode with momentum 1 sets them to the noise batch's statistics on the unperturbed
fresh network, then both networks run in eval mode on those (constant) statistics. ``mode="calibrated"``
does exactly this on copies of the buffers. Their script uses 5 noise batches per round
(``--ntksap_R 5``) of 100 inputs on CIFAR-10 (10 × number of classes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _NormBase
from torch.utils._pytree import tree_leaves

from lightning_synflow.scorers.base import (
    ExampleInput,
    Scorer,
    ScoringContext,
    register_scorer,
)
from lightning_synflow.validation import (
    check_choice,
    check_int,
    check_number,
    check_seed,
)

NTKSAPMode = Literal["calibrated", "train", "eval"]
NTKSAP_MODES: tuple[str, ...] = ("calibrated", "train", "eval")
FreshWeights = Literal["resample", "reset_parameters"]
FRESH_WEIGHTS: tuple[str, ...] = ("resample", "reset_parameters")


@dataclass(frozen=True)
class NTKSAPDraw:
    """The random quantities of one NTK-SAP batch.

    Attributes:
        params: A fresh value for every parameter of the model (keyed as ``named_parameters()``).
        perturbation: ``δ`` for every prunable tensor (keyed as the masks).
        inputs: The Gaussian-noise input batch (a tensor, or a tuple for multi-input models).
    """

    params: dict[str, Tensor]
    perturbation: dict[str, Tensor]
    inputs: ExampleInput


def _noise(example: ExampleInput, batch_size: int, generator: Optional[torch.Generator]) -> ExampleInput:
    """Standard Gaussian inputs shaped like ``example`` with ``batch_size`` rows (per tensor for tuples)."""
    if isinstance(example, (tuple, list)) and example and all(isinstance(x, Tensor) for x in example):
        return tuple(_noise(x, batch_size, generator) for x in example)
    if not isinstance(example, Tensor):
        raise TypeError(f"NTKSAP needs a tensor or a tuple of tensors as example input, got {type(example).__name__}")
    if not example.is_floating_point() or example.dim() == 0:
        raise TypeError(
            f"NTKSAP feeds Gaussian noise in place of the input, so the example input must be a floating tensor with"
            f" a batch dimension; got dtype {example.dtype} and shape {tuple(example.shape)}"
        )
    return torch.randn(
        (batch_size, *example.shape[1:]), dtype=example.dtype, device=example.device, generator=generator
    )


def _running_stat_modules(model: nn.Module) -> dict[str, _NormBase]:
    """Normalisation modules (BatchNorm, InstanceNorm with ``track_running_stats``) that keep running statistics."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, _NormBase) and m.track_running_stats and m.running_mean is not None
    }


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@register_scorer("ntksap")
class NTKSAP(Scorer):
    """NTK-SAP: ``|∂/∂c Σ‖f(x; θ⊙c) − f(x; (θ+εδ)⊙c)‖²|`` with Gaussian-noise inputs ``x`` and fresh random
    weights ``θ`` for every batch (data-free; 20 exponential rounds by default, monotone). The model is
    never modified: fresh weights, inputs and statistics live in copies.

    Args:
        epsilon: The perturbation size ``ε`` of the finite difference (absolute, as in the paper), > 0.
        batches: Noise batches per round, each with its own inputs, fresh weights and ``δ``; their
            gradients are summed (the published ``R``: 1 by default, 5 in the authors' CIFAR script).
        batch_size: Noise inputs per batch (100 on CIFAR-10 in the published setting).
        mode: How normalisation layers with running statistics behave. ``"calibrated"`` (published): their
            statistics are those of the noise batch on the unperturbed fresh network, fixed (no gradient)
            and shared by both networks, which run in eval mode. ``"train"``: each network normalises
            with its own batch statistics (gradients flow through them). ``"eval"``: the model's own
            running statistics. Running statistics of the model are never updated.
        weights: How fresh weights are drawn. ``"resample"``: every entry of each parameter tensor drawn
            independently (with replacement) from that tensor's own initial values, i.e. from its
            empirical initialisation distribution, whatever init scheme the model used (constant
            tensors such as BatchNorm's ``γ = 1`` stay constant). ``"reset_parameters"``: a copy of the
            model (``copy.deepcopy``) re-initialised by every module's ``reset_parameters()`` (PyTorch's
            default init of each layer type; the random draws then come from torch's global generators,
            seeded from this scorer's stream when ``seed`` is given).
        seed: Seed of the scorer's own random stream (inputs, weights, ``δ``); ``None`` draws from torch's
            global generator (so ``seed_everything`` controls it). Each round draws anew. Under DDP every
            rank draws its own batches and the gradients are summed over ranks; with a ``seed`` (or
            ranks seeded alike) the ranks draw the same batches, so raise ``batches`` for more samples.
    """

    default_iterations = 20
    needs_input = True

    def __init__(
        self,
        epsilon: float = 0.01,
        batches: int = 1,
        batch_size: int = 100,
        mode: NTKSAPMode = "calibrated",
        weights: FreshWeights = "resample",
        seed: Optional[int] = None,
    ) -> None:
        self.epsilon = check_number(
            "epsilon", epsilon, "a finite number > 0", low=0, open_low=True, owner="NTKSAP", meaning="the perturbation size"
        )
        check_choice("mode", mode, NTKSAP_MODES, owner="NTKSAP", meaning="normalisation layers while scoring")
        check_choice("weights", weights, FRESH_WEIGHTS, owner="NTKSAP", meaning="how fresh weights are drawn")
        check_seed("seed", seed, owner="NTKSAP")
        self.batches = check_int("batches", batches, owner="NTKSAP")
        self.batch_size = check_int("batch_size", batch_size, owner="NTKSAP")
        self.mode = mode
        self.weights = weights
        self.seed = seed
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ random draws
    def _round_generator(self, device: torch.device) -> Optional[torch.Generator]:
        """The generator of one scoring round: ``None`` (torch's global one) without a seed, else a generator on
        ``device`` seeded from the scorer's own stream."""
        if self._generator is None:
            return None
        seed = int(torch.randint(2**62, (), generator=self._generator))
        return torch.Generator(device=device).manual_seed(seed)

    def draw(
        self,
        model: nn.Module,
        masks: Mapping[str, Tensor],
        example_input: ExampleInput,
        generator: Optional[torch.Generator],
    ) -> NTKSAPDraw:
        """The random quantities of one batch: fresh weights, ``δ`` and noise inputs (override to inject
        them, e.g. in tests)."""
        if self.weights == "resample":
            params = {}
            for name, p in model.named_parameters():
                flat = p.detach().reshape(-1)
                if p.is_floating_point() and flat.numel() > 1:
                    index = torch.randint(flat.numel(), p.shape, generator=generator, device=_draw_device(generator, p))
                    params[name] = flat[index.to(p.device)]
                else:
                    params[name] = p.detach().clone()
        else:
            params = _reset_copy(model, generator)
        perturbation = {}
        for n in masks:
            p = params[n]
            delta = torch.randn(p.shape, dtype=p.dtype, generator=generator, device=_draw_device(generator, p))
            perturbation[n] = delta.to(p.device)
        inputs = _noise(example_input, self.batch_size, generator)
        return NTKSAPDraw(params=params, perturbation=perturbation, inputs=inputs)

    # ------------------------------------------------------------------ scoring
    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        if context.example_input is None:
            raise ValueError("NTKSAP needs `example_input` (any tensor of the model's input shape)")
        device = next(model.parameters()).device
        generator = self._round_generator(device)
        params = dict(model.named_parameters())
        grads = {n: torch.zeros_like(params[n], memory_format=torch.contiguous_format) for n in masks}
        for _ in range(self.batches):
            draw = self.draw(model, masks, context.example_input, generator)
            for name, g in self.mask_gradient(model, masks, draw).items():
                grads[name] += g
        grads = context.reduce(grads)
        return {n: grads[n].abs() * masks[n] for n in masks}

    def mask_gradient(self, model: nn.Module, masks: Mapping[str, Tensor], draw: NTKSAPDraw) -> dict[str, Tensor]:
        """``∂S/∂c`` for one batch, at the current masks ``c``."""
        inputs = draw.inputs if isinstance(draw.inputs, tuple) else (draw.inputs,)
        c = {n: m.to(draw.params[n].dtype, copy=True).requires_grad_(True) for n, m in masks.items()}
        plain = dict(draw.params)
        perturbed = dict(draw.params)
        for n in masks:
            plain[n] = draw.params[n] * c[n]
            perturbed[n] = (draw.params[n] + self.epsilon * draw.perturbation[n]) * c[n]
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        if self.mode == "calibrated":
            buffers = self._calibrated(model, {n: t.detach() for n, t in plain.items()}, buffers, inputs)
        model.train(self.mode == "train")
        out_plain = functional_call(model, {**plain, **buffers}, inputs)
        buffers = {n: b.clone() for n, b in buffers.items()} if self.mode == "train" else buffers
        out_perturbed = functional_call(model, {**perturbed, **buffers}, inputs)
        pairs = [
            (a, b)
            for a, b in zip(tree_leaves(out_plain), tree_leaves(out_perturbed))
            if isinstance(a, Tensor) and a.is_floating_point()
        ]
        if not pairs:
            raise TypeError(f"{type(model).__name__} returned no floating tensor, so NTKSAP has no output to compare")
        S = sum(((a - b) ** 2).sum() for a, b in pairs)
        names = list(c)
        found = torch.autograd.grad(S, [c[n] for n in names], allow_unused=True)
        return {n: torch.zeros_like(c[n]) if g is None else g for n, g in zip(names, found)}

    @staticmethod
    def _calibrated(
        model: nn.Module, params: Mapping[str, Tensor], buffers: dict[str, Tensor], inputs: tuple
    ) -> dict[str, Tensor]:
        """Buffers whose running statistics are the batch statistics of ``inputs`` on ``params``.

        Running statistics are zeroed and one no-grad forward in train mode updates them to
        ``momentum · batch statistic`` (``1 · statistic`` for a cumulative average, ``momentum=None``);
        dividing by that factor gives the statistics themselves (the variance unbiased, as eval mode uses).
        """
        norms = _running_stat_modules(model)
        for prefix, m in norms.items():
            if m.momentum == 0:
                raise ValueError(
                    f"NTKSAP(mode='calibrated') cannot calibrate {prefix or type(m).__name__}: its momentum is 0, so"
                    f" its running statistics never move; use mode='eval' or mode='train'"
                )
            for stat in ("running_mean", "running_var", "num_batches_tracked"):
                key = _join(prefix, stat)
                if key in buffers and buffers[key] is not None:
                    buffers[key] = torch.zeros_like(buffers[key])
        if not norms:
            return buffers
        model.train()
        with torch.no_grad():
            functional_call(model, {**params, **buffers}, inputs)
        for prefix, m in norms.items():
            factor = 1.0 if m.momentum is None else float(m.momentum)
            for stat in ("running_mean", "running_var"):
                buffers[_join(prefix, stat)] = buffers[_join(prefix, stat)] / factor
        return buffers


def _draw_device(generator: Optional[torch.Generator], like: Tensor) -> torch.device:
    return like.device if generator is None else generator.device


def _reset_copy(model: nn.Module, generator: Optional[torch.Generator]) -> dict[str, Tensor]:
    """Parameters of a copy of ``model`` re-initialised by every module's ``reset_parameters()``."""
    fresh = copy.deepcopy(model)
    devices = sorted({p.device.index or 0 for p in fresh.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices, enabled=generator is not None):
        if generator is not None:
            torch.manual_seed(int(torch.randint(2**62, (), generator=generator, device=generator.device)))
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return {n: p.detach() for n, p in fresh.named_parameters()}
