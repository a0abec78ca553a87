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
    """Each mask with its kept positions moved to random places in the same tensor (same count)."""
    shuffled = {}
    for name, mask in masks.items():
        order = torch.randperm(mask.numel(), generator=generator).to(mask.device)
        shuffled[name] = mask.reshape(-1)[order].view_as(mask)
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
