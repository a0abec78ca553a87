"""Mask bookkeeping: checking masks against a model and keeping pruned weights exactly zero.

Masks are ``dict[str, BoolTensor]`` keyed by ``model.named_parameters()`` names; ``True`` means kept.
The model itself stays a plain module: no ``weight_orig``/``weight_mask`` re-parametrisation, so its
``state_dict`` keys never change and a checkpoint loads strictly into the unpruned architecture.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lightning_synflow._moved import renamed_attributes
from lightning_synflow.distributed.collectives import nonzero_counts
from lightning_synflow.distributed.sharding import local


def check_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, nn.Parameter]:
    """The parameters the masks refer to, after checking that every mask is boolean and matches its
    parameter's name and shape. Raises before anything is changed."""
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(
            f"masks name tensors that {type(model).__name__} does not have: {unknown}; "
            f"allowed are its parameter names, e.g. {list(params)[:5]}"
        )
    for name, mask in masks.items():
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask {name!r} must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
        if mask.shape != params[name].shape:
            raise ValueError(
                f"mask {name!r} has shape {tuple(mask.shape)} but the parameter has shape {tuple(params[name].shape)}"
            )
    return {n: params[n] for n in masks}


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero the pruned weights of ``model`` in place (one fused multiply over all masked tensors)."""
    BoundMasks(model, masks).apply_()


class BoundMasks:
    """Masks resolved once to a model's parameter objects and moved to their devices, so that the
    per-step work is a single fused operation over all masked tensors (each rank's local shards where the
    parameters are DTensors, whose masks are DTensors laid out alike)."""

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        params = check_masks(model, masks)
        self.names = list(masks)
        self.params = [params[n] for n in self.names]
        self.masks = [masks[n].to(p.device) for n, p in zip(self.names, self.params)]
        with torch.no_grad():  # the tensors each step writes: a DTensor's local shard shares its memory
            self._weights = [local(p) for p in self.params]
            self._local_masks = [local(m) for m in self.masks]

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned weight."""
        if self.params:
            torch._foreach_mul_(self._weights, self._local_masks)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero the gradients of pruned weights, so that optimizer state (momentum, Adam moments) of a
        pruned weight never leaves zero."""
        pairs = [(local(p.grad), m) for p, m in zip(self.params, self._local_masks) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def measured_density(self) -> float:
        """Fraction of the masked tensors' weights that are non-zero, read from the weights themselves (over all
        ranks where they are sharded: every rank calls this together)."""
        nonzero = sum(nonzero_counts(dict(zip(self.names, self.params))).values())
        total = sum(p.numel() for p in self.params)
        return nonzero / total if total else 1.0


#: Names this module had before the wings, now elsewhere.
__getattr__ = renamed_attributes(__name__, {"check_weight_norm": "lightning_synflow.parameters.check_weight_norm"})
