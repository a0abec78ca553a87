"""GraSP (Wang, Zhang & Grosse, "Picking winning tickets before training by preserving gradient flow",
ICLR 2020): rank weights by ``θ ⊙ Hg``, one Hessian-gradient product on labelled data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_synflow.scorers.base import Scorer, ScoringContext, register_scorer
from lightning_synflow.scorers.functional import (
    Mode,
    batch_loss,
    check_mode,
    masked_state,
)
from lightning_synflow.validation import check_number


def check_temperature(temperature: Any) -> float:
    allowed = "a finite number > 0, e.g. 200 (GraSP's) or 1 (no scaling)"
    meaning = "the model's output is divided by it inside the loss"
    return check_number("temperature", temperature, allowed, low=0, open_low=True, meaning=meaning)


@contextmanager
def output_divided_by(model: nn.Module, temperature: float) -> Iterator[list[int]]:
    """While active, every call of ``model(...)`` returns its output divided by ``temperature`` (a forward
    hook, removed on exit). Yields a one-element list counting those calls, so a caller can tell whether
    the loss called the model at all."""
    calls = [0]

    def divide(module: nn.Module, args: Any, output: Any) -> Tensor:
        if not isinstance(output, Tensor) or not output.is_floating_point():
            raise TypeError(
                f"GraSP(temperature={temperature}) divides the output of {type(module).__name__}.forward by the"
                f" temperature, but forward returned {type(output).__name__}, not a floating-point tensor of"
                f" logits; pass temperature=1 to score the loss as it is"
            )
        calls[0] += 1
        return output / temperature

    handle = model.register_forward_hook(divide) if temperature != 1.0 else None
    try:
        yield calls
    finally:
        if handle is not None:
            handle.remove()


def hessian_gradient_product(
    model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext, mode: Mode, temperature: float
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(w, Hg)`` at the masked weights ``w = θ ⊙ c``.

    ``g = c ⊙ Σ_batches ∂L/∂w`` (the gradient of the sparse net) summed over all ranks first, then
    ``Hg = Σ_batches ∂(stop_grad(g) · ∂L/∂w)/∂w`` (a double backward per batch), summed over all ranks.
    ``L`` is ``context.loss_fn`` with the model's output divided by ``temperature``.
    """
    if not context.batches:
        raise ValueError("this scorer needs data: pass a `dataloader` (the callback uses the training data)")
    model.train(mode == "train")
    state = masked_state(model, masks)
    weights = {n: state[n] for n in masks}
    leaves = list(weights.values())
    # Attention through scaled_dot_product_attention (nn.MultiheadAttention, transformer layers) must run on the
    # math kernel: the fused ones (flash attention on CPU, ...) have no double backward.
    with output_divided_by(model, temperature) as calls, sdpa_kernel(SDPBackend.MATH):
        # First pass: the gradient, no graph kept.
        g = {n: torch.zeros_like(w) for n, w in weights.items()}
        for batch in context.batches:
            loss = batch_loss(model, state, batch, context)
            if temperature != 1.0 and calls[0] == 0:
                raise ValueError(
                    f"GraSP(temperature={temperature}) divides the output of `model(...)` by the temperature, but"
                    f" the loss never called {type(model).__name__} itself (e.g. a training_step that calls a"
                    f" submodule directly); call `self(x)` there, or pass temperature=1 to score the loss as it is"
                )
            for name, grad in zip(weights, torch.autograd.grad(loss, leaves, allow_unused=True)):
                if grad is not None:
                    g[name] += grad
        # The global g before any product with the Hessian (under DDP each rank holds only its partial sum).
        g = context.reduce({n: g[n] * masks[n] for n in g})
        # Second pass: Hg = ∂(g · ∇L)/∂w, per batch (Hg is linear in the batches, so partial sums add up).
        hg = {n: torch.zeros_like(w) for n, w in weights.items()}
        for batch in context.batches:
            loss = batch_loss(model, state, batch, context)
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            terms = [(g[n] * grad).sum() for n, grad in zip(weights, grads) if grad is not None and grad.requires_grad]
            if not terms:  # the gradient does not depend on the weights: Hg = 0 for this batch
                continue
            for name, h in zip(weights, torch.autograd.grad(torch.stack(terms).sum(), leaves, allow_unused=True)):
                if h is not None:
                    hg[name] += h.detach()
    return {n: w.detach() for n, w in weights.items()}, context.reduce(hg)


@register_scorer("grasp")
class GraSP(Scorer):
    """GraSP, the canonical ranking: score ``θ ⊙ Hg``, keep the highest.

    ``g = Σ_batches ∇L`` and ``Hg`` the Hessian of the (summed) loss times ``g``, from a double backward
    of ``stop_grad(g) · ∇L``. The paper removes the weights with the *largest* ``−θ ⊙ Hg`` (removing them
    reduces the gradient norm ``‖g‖²`` least, to first order, or increases it), i.e. keeps the largest
    ``θ ⊙ Hg``; this scorer returns ``θ ⊙ Hg`` (signed; higher = keep). ``"grasp_abs"``
    (:class:`GraSPAbs`) ranks by ``|θ ⊙ Hg|`` instead, which Frankle et al. (ICLR 2021) found works better.

    **Temperature.** GraSP divides the logits by ``T = 200`` before the cross-entropy. Here the output of
    every ``model(...)`` call the loss makes is divided by ``temperature`` (a forward hook on the model,
    removed afterwards). That is GraSP's temperature exactly when the loss is cross-entropy on the model's
    output (the functional API's default loss; a LightningModule whose ``training_step`` computes
    ``cross_entropy(self(x), y)``). For any other loss the output is still divided (an MSE then compares
    ``model(x) / T`` with the targets): pass ``temperature=1`` to score such a loss as it is. The
    model's ``forward`` must return a tensor when ``temperature != 1``, and a loss that never calls the
    model itself (a ``training_step`` calling ``self.net(x)``) is an error rather than silently unscaled.

    **Data, iterations, DDP.** Gradients are summed over the scoring batches (one by default; the paper
    uses 10–25 images per class); one round by default, as in the paper. In a later round of iterative
    use the net is the masked one and ``g`` its gradient (``c ⊙ ∇L``), so pruned weights take no part;
    their score is 0 and they stay pruned. Under DDP ``g`` is summed over ranks before the second pass
    and the ``Hg`` partial sums are summed again, so every rank ranks the Hessian-gradient product of all
    ranks' data.

    Unlike the official code, the classifier is not re-initialised (Xavier) for scoring and the
    scores are not divided by ``|Σ scores|`` (a positive factor: the ranking is the same).

    Args:
        temperature: The model's output is divided by it inside the loss (GraSP's ``T``); 200 as published,
            1 to disable.
        mode: The model's mode while scoring. ``"train"`` (BatchNorm on batch statistics) is what the
            official GraSP code does (it scores a deep copy of the net as built, in train mode); the
            SynFlow code base scores in ``"eval"``. Running statistics are never updated either way.
    """

    needs_data = True

    def __init__(self, temperature: float = 200.0, mode: Mode = "train") -> None:
        self.temperature = check_temperature(temperature)
        self.mode = check_mode(mode)

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        weights, hg = hessian_gradient_product(model, masks, context, self.mode, self.temperature)
        return {n: self.rank(weights[n] * hg[n]) for n in masks}

    @staticmethod
    def rank(theta_hg: Tensor) -> Tensor:
        """The score from ``θ ⊙ Hg``: itself for canonical GraSP."""
        return theta_hg


@register_scorer("grasp_abs")
class GraSPAbs(GraSP):
    """GraSP-abs (Frankle et al., "Pruning neural networks at initialization: why are we missing the
    mark?", ICLR 2021): ``|θ ⊙ Hg|``, keep the highest. Everything else as :class:`GraSP`.

    Args:
        temperature: The model's output is divided by it inside the loss; 200 as in GraSP, 1 to disable.
        mode: The model's mode while scoring (``"train"`` as the official GraSP code, or ``"eval"``).
    """

    @staticmethod
    def rank(theta_hg: Tensor) -> Tensor:
        """``|θ ⊙ Hg|``."""
        return theta_hg.abs()
