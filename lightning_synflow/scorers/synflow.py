"""SynFlow (Tanaka et al., NeurIPS 2020): data-free scores from the synaptic flow of the network.

Every parameter and floating buffer is replaced by its absolute value, the network runs in eval mode on
an all-ones input of batch size 1, ``R`` is the sum of all outputs, and the score is ``|θ ⊙ ∂R/∂θ|``.

Numerics: ``R`` is a product of layer gains and overflows float32 from CIFAR ResNet-32 on (it reaches
1e139 on ResNet-110 and 1e220 on ImageNet ResNet-152). Scoring therefore runs on float copies of the
weights in float64 by default, and ``∂R/∂θ`` is taken with the output scaled by an exact power of two
that brings ``R`` to [0.5, 1): every score is scaled by the same constant without rounding, so the
ranking equals the unscaled float64 one while the scores stay in a range any dtype can hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_leaves

from lightning_synflow.scorers.base import ExampleInput, Scorer, ScoringContext, register_scorer

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def all_ones_input(example_input: ExampleInput, dtype: torch.dtype) -> ExampleInput:
    """The SynFlow input: ones of the example's shape with batch size 1 (per tensor for tuples)."""
    if isinstance(example_input, Tensor):
        return torch.ones((1, *example_input.shape[1:]), dtype=dtype, device=example_input.device)
    if isinstance(example_input, (tuple, list)) and all(isinstance(x, Tensor) for x in example_input):
        return tuple(all_ones_input(x, dtype) for x in example_input)
    raise TypeError(f"SynFlow needs a tensor or a tuple of tensors as example input, got {type(example_input).__name__}")


@register_scorer("synflow")
class SynFlow(Scorer):
    """Iterative Synaptic Flow Pruning: ``|θ ⊙ ∂R/∂θ|`` on the linearised network (data-free).

    Args:
        dtype: Precision of the scoring pass, whatever the model's own dtype. ``"float64"`` is exact up to
            ``R`` of 1e308; ``"float32"`` is faster and falls back to float64 when it overflows.
    """

    default_iterations = 100
    needs_input = True

    def __init__(self, dtype: Literal["float64", "float32"] = "float64") -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"SynFlow `dtype` must be one of {list(_DTYPES)}, got {dtype!r}")
        self.dtype = dtype

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        if context.example_input is None:
            raise ValueError("SynFlow needs `example_input` (any tensor of the model's input shape)")
        tried = [_DTYPES[self.dtype]] + ([torch.float64] if self.dtype == "float32" else [])
        for dtype in tried:
            scores = self._score(model, masks, all_ones_input(context.example_input, dtype), dtype)
            if scores is not None:
                return scores
        raise FloatingPointError(
            f"SynFlow overflowed in {[str(d) for d in tried]}: the synaptic flow R of {type(model).__name__} "
            f"exceeds the float64 range on an all-ones input"
        )

    @staticmethod
    def _score(
        model: nn.Module, masks: Mapping[str, Tensor], inputs: ExampleInput, dtype: torch.dtype
    ) -> Optional[dict[str, Tensor]]:
        """Scores in ``dtype``, or ``None`` if anything overflowed."""
        model.eval()
        state: dict[str, Tensor] = {}
        for name, p in model.named_parameters():
            state[name] = p.detach().to(dtype, copy=True).abs_()
        for name, m in masks.items():
            state[name].mul_(m).requires_grad_(True)
        for name, b in model.named_buffers():
            state[name] = b.detach().to(dtype, copy=True).abs_() if b.is_floating_point() else b
        outputs = functional_call(model, state, inputs if isinstance(inputs, tuple) else (inputs,))
        R = sum(t.sum() for t in tree_leaves(outputs) if isinstance(t, Tensor) and t.is_floating_point())
        if not isinstance(R, Tensor):
            raise TypeError(f"{type(model).__name__} returned no floating tensor, so SynFlow has no R to differentiate")
        r = float(R.detach())
        if not math.isfinite(r):
            return None
        scale = 2.0 ** -math.frexp(r)[1] if r > 0 else 1.0  # exact: R * scale in [0.5, 1)
        weights = [state[n] for n in masks]
        grads = torch.autograd.grad(R, weights, grad_outputs=torch.tensor(scale, dtype=R.dtype), allow_unused=True)
        scores = {}
        for name, w, g in zip(masks, weights, grads):
            s = torch.zeros_like(w, requires_grad=False) if g is None else g.mul_(w.detach()).abs_()
            if not torch.isfinite(s).all():
                return None
            scores[name] = s
        return scores
