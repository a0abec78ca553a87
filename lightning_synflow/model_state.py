"""Giving a model back exactly as it came after scoring, also when scoring raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


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
