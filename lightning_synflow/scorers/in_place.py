"""Scoring a sharded model (FSDP2, tensor parallelism) by running the model itself.

FSDP2 gathers each layer's parameters in its own forward hooks and reduce-scatters their gradients in its
backward hooks; ``functional_call``'s swapped tensors would bypass both. So on a sharded model a scorer
writes the weights it scores at (``θ ⊙ c``, or SynFlow's ``|θ| ⊙ c``) into the parameters' local shards,
runs the model as training does, reads the sharded ``.grad`` and writes the weights back. Nothing is ever
gathered beyond the layer FSDP2 is computing; the saved copy is one rank's share of the weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_synflow.sharding import is_sharded, like, local


def is_sharded_model(masks: Mapping[str, Tensor]) -> bool:
    """The masks (hence the parameters they cover) are DTensors: score with this module's helpers."""
    return any(is_sharded(m) for m in masks.values())


@contextmanager
def overwritten(tensors: Sequence[Tensor]) -> Iterator[None]:
    """Give ``tensors`` back their current values on exit, whatever the block wrote into them."""
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)


@contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Running statistics (and any other buffer) as they were: the model itself runs, in train mode too."""
    with overwritten(list(model.buffers())):
        yield


@contextmanager
def summed_gradients(model: nn.Module) -> Iterator[None]:
    """FSDP2 sums gradients over the data-parallel ranks instead of averaging them, as one process summing
    over the union of their batches does."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        yield
        return
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    groups = [g for m in modules for g in m._get_fsdp_state()._fsdp_param_groups]
    saved = [(g.gradient_divide_factor, g.force_sum_reduction_for_comms) for g in groups]
    for m in modules:
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)  # a plain sum (gloo has no pre-multiplied sum)
    try:
        yield
    finally:
        for g, (factor, force_sum) in zip(groups, saved):
            g.gradient_divide_factor, g.force_sum_reduction_for_comms = factor, force_sum


def check_all_sharded(model: nn.Module, masks: Mapping[str, Tensor], scorer: str) -> None:
    """Data-driven scorers read gradients FSDP2 has reduced over the ranks: a prunable plain tensor's gradient
    is this rank's alone, so refuse it."""
    plain = [n for n, m in masks.items() if not is_sharded(m)]
    if plain:
        raise ValueError(
            f"scorer {scorer!r} sums gradients over the ranks through FSDP2, but the prunable parameters {plain} of"
            f" {type(model).__name__} are not sharded: apply fully_shard (or parallelize_module) to the modules"
            f" that hold them, or exclude them (exclude_names)"
        )


def masked_loss_gradients(
    model: nn.Module, masks: Mapping[str, Tensor], batches: Sequence[object], loss_fn
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(w, g)`` as DTensors laid out as the parameters: ``w = θ ⊙ c`` and ``g = Σ_batches ∂L/∂w`` summed over
    the data-parallel ranks (each rank scores its own batches)."""
    params = dict(model.named_parameters())
    targets = [params[n] for n in masks]
    for p in model.parameters():
        p.grad = None
    with overwritten([local(p) for p in targets]), summed_gradients(model):
        with torch.no_grad():
            for p, m in zip(targets, masks.values()):
                local(p).mul_(local(m))
        for p in targets:
            p.requires_grad_(True)
        for batch in batches:
            loss = loss_fn(model, batch)
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise TypeError(f"the scoring loss must be a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
            loss.backward()
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in zip(masks, targets)}
    weights = {n: like(p, local(p).detach() * local(masks[n])) for n, p in zip(masks, targets)}
    return weights, grads
