"""The sanity-check ablations of Frankle et al. ("Pruning neural networks at initialization: why are we
missing the mark?", ICLR 2021): shuffle each tensor's mask, re-initialise the weights keeping the masks,
invert the ranking (``compute_masks(..., invert=True)``). Their finding: for these methods accuracy is
decided mostly by the per-layer densities, which the first two keep."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import Tensor, nn


def shuffle_masks(masks: Mapping[str, Tensor], generator: Optional[torch.Generator] = None) -> dict[str, Tensor]:
    """Each mask with its kept positions moved to random places in the same tensor (same count).

    Each permutation is drawn on the mask's device from that device's default generator, or on ``generator``'s
    device (give one on the masks' device to keep the draw there). It is int32 where it fits, half the bytes of
    int64: on CPU torch draws the same permutation in either dtype, so a seed gives the masks it always gave."""
    shuffled = {}
    for name, mask in masks.items():
        n = mask.numel()
        order = torch.randperm(
            n,
            generator=generator,
            dtype=torch.int32 if n <= torch.iinfo(torch.int32).max else torch.int64,
            device=mask.device if generator is None else generator.device,
        )
        shuffled[name] = mask.reshape(-1).index_select(0, order.to(mask.device)).view_as(mask)
    return shuffled


@torch.no_grad()
def reinitialize(model: nn.Module) -> list[str]:
    """Draw fresh initial weights: ``reset_parameters()`` of every module that has one. Returns the names
    of the modules re-initialised (apply the masks again afterwards)."""
    names = []
    for name, module in model.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            names.append(name)
    return names
