"""Evaluating a model on masked copies of its weights, the common ground of the data-driven scorers.

Scorers never write to the model: every pass runs through ``torch.func.functional_call`` on copies of
the parameters (prunable ones multiplied by their masks) and of the buffers, so BatchNorm running
statistics do not move even when scoring in train mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_synflow.distributed.scoring import (
    is_sharded_model,
    masked_loss_gradients,
)
from lightning_synflow.model_state import preserved_buffers
from lightning_synflow.scorers.base import LossFn, ScoringContext
from lightning_synflow.validation import check_choice

Mode = Literal["train", "eval"]
MODES: tuple[str, ...] = ("train", "eval")


def check_mode(mode: str) -> str:
    return check_choice("mode", mode, MODES, meaning="the model's train/eval mode while scoring")


class _Loss(nn.Module):
    """Wraps ``loss_fn(model, batch)`` so that ``functional_call`` can swap the model's tensors."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


def masked_state(
    model: nn.Module, masks: Mapping[str, Tensor], weights: Optional[Mapping[str, Tensor]] = None
) -> dict[str, Tensor]:
    """Copies of every parameter and buffer for ``functional_call``; the prunable ones are ``θ ⊙ c``
    (or ``weights[name] ⊙ c`` where given) and require grad, so gradients are taken at the sparse net."""
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, mask in masks.items():
        source = state[name] if weights is None or name not in weights else weights[name].detach().clone()
        state[name] = source.mul_(mask).requires_grad_(True)
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


def batch_loss(model: nn.Module, state: Mapping[str, Tensor], batch: Any, context: ScoringContext) -> Tensor:
    """``context.loss_fn(model, batch)`` evaluated with the model's tensors replaced by ``state``."""
    loss = functional_call(_Loss(model, context.loss_fn), {f"model.{k}": v for k, v in state.items()}, (batch,))
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise TypeError(f"the scoring loss must be a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
    return loss


def loss_gradients(
    model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext, mode: Mode
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(w, g)``: the masked weights ``w = θ ⊙ c`` and ``g = Σ_batches ∂L/∂w``, summed over all ranks (on a
    sharded model, DTensors laid out as its parameters)."""
    if not context.batches:
        raise ValueError("this scorer needs data: pass a `dataloader` (the callback uses the training data)")
    model.train(mode == "train")
    if is_sharded_model(masks):  # FSDP2 sums the gradients over the ranks itself
        with preserved_buffers(model):
            return masked_loss_gradients(model, masks, context.batches, context.loss_fn)
    state = masked_state(model, masks)
    weights = {n: state[n] for n in masks}
    grads = {n: torch.zeros_like(w) for n, w in weights.items()}
    for batch in context.batches:
        loss = batch_loss(model, state, batch, context)
        for name, g in zip(weights, torch.autograd.grad(loss, list(weights.values()), allow_unused=True)):
            if g is not None:
                grads[name] += g
    return {n: w.detach() for n, w in weights.items()}, context.reduce(grads)
