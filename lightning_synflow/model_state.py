"""Giving a model back exactly as it came after scoring, also when scoring raises: modes, ``requires_grad``
and gradients, buffers (running statistics) and any tensor a scorer writes into in place."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's train/eval mode and every parameter's ``requires_grad`` and ``.grad`` on exit.

    Values are not copied: scorers work on copies of the weights and never write to the model.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


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
