"""Singular values of the input-output Jacobian, the signal-propagation diagnostic of Lee et al. (ICLR 2020).

For each example ``x_i`` the Jacobian ``J_i = d f(x_i) / d x_i`` (outputs flattened x inputs flattened) is
computed with ``torch.func``: ``vmap`` over the examples of ``jacrev`` (one vector-Jacobian product per
output, batched) when there are fewer outputs than inputs, else ``jacfwd`` (batched JVPs). The model
runs in eval mode (BatchNorm uses its running statistics, so examples do not interact) and its modes
are restored afterwards. Its parameters are not changed; pass ``masks`` to evaluate the pruned network
without writing the masks into the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacfwd, jacrev, vmap

from lightning_synflow.masks import check_masks
from lightning_synflow.model_state import preserved_model_state

Mode = Literal["auto", "rev", "fwd"]


@dataclass(frozen=True)
class SingularValueStats:
    """Summary of Jacobian singular values (all examples pooled)."""

    mean: float
    std: float
    min: float
    max: float
    count: int

    def as_metrics(self, prefix: str = "jacobian_sv") -> dict[str, float]:
        """Mean, std, min and max, flat, for a logger."""
        return {f"{prefix}/mean": self.mean, f"{prefix}/std": self.std, f"{prefix}/min": self.min, f"{prefix}/max": self.max}

    def __str__(self) -> str:
        return f"singular values: mean {self.mean:.4g}, std {self.std:.4g}, min {self.min:.4g}, max {self.max:.4g} ({self.count})"


def singular_value_stats(singular_values: Tensor) -> SingularValueStats:
    """Mean, std, min and max over every singular value of every example."""
    sv = singular_values.detach().reshape(-1).double()
    if sv.numel() == 0:
        raise ValueError("no singular values")
    std = float(sv.std()) if sv.numel() > 1 else 0.0
    return SingularValueStats(float(sv.mean()), std, float(sv.min()), float(sv.max()), sv.numel())


def input_output_jacobians(
    model: nn.Module,
    inputs: Tensor,
    *,
    masks: Optional[Mapping[str, Tensor]] = None,
    mode: Mode = "auto",
    chunk_size: Optional[int] = None,
    example_chunk: Optional[int] = None,
) -> Tensor:
    """Per-example Jacobians ``(examples, outputs, inputs)`` of the model in eval mode (flattened shapes).

    Args:
        model: Maps a batch ``(B, *shape)`` to ``(B, *out_shape)``.
        inputs: ``(B, *shape)`` examples (e.g. a data batch, or Gaussian noise of the input shape).
        masks: Optional masks applied on the fly (``weight * mask``); the model is not written to.
        mode: ``"rev"`` (vmapped VJPs, one per output), ``"fwd"`` (vmapped JVPs, one per input) or
            ``"auto"``: the one needing fewer products.
        chunk_size: Reverse mode only: VJPs computed at once per example; ``None`` = all outputs at once.
        example_chunk: Examples vmapped at once; ``None`` = all. Peak memory grows with
            ``example_chunk x chunk_size`` copies of the activations (VGG-16 on 32x32 inputs: about 4 MB
            each; 4 examples x 100 outputs peak at 1.8 GB, 1.2 GB with ``example_chunk=1, chunk_size=25``),
            so bound these two for big models or many examples.
    """
    if not isinstance(inputs, Tensor) or inputs.dim() < 2:
        raise ValueError("`inputs` must be a tensor (examples, *input_shape)")
    if mode not in ("auto", "rev", "fwd"):
        raise ValueError(f"`mode` must be 'auto', 'rev' or 'fwd', got {mode!r}")
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    state = {n: p.detach() for n, p in params.items()}
    if masks is not None:
        check_masks(model, masks)
        for n, m in masks.items():
            state[n] = state[n] * m.to(state[n].device, state[n].dtype)
    state.update(buffers)
    x = inputs.detach().to(next(iter(state.values())).device) if state else inputs.detach()

    def f(xi: Tensor) -> Tensor:
        return functional_call(model, state, (xi.unsqueeze(0),)).reshape(-1)

    with preserved_model_state(model):
        model.eval()
        with torch.no_grad():
            n_out = functional_call(model, state, (x[:1],)).numel()
        n_in = x[0].numel()
        use_rev = mode == "rev" or (mode == "auto" and n_out <= n_in)
        jac_fn = jacrev(f, chunk_size=chunk_size) if use_rev else jacfwd(f, randomness="same")
        with torch.enable_grad():
            jac = vmap(jac_fn, chunk_size=example_chunk)(x)
    return jac.reshape(x.shape[0], n_out, n_in).detach()


def jacobian_singular_values(
    model: nn.Module,
    inputs: Tensor,
    *,
    masks: Optional[Mapping[str, Tensor]] = None,
    mode: Mode = "auto",
    chunk_size: Optional[int] = None,
    example_chunk: Optional[int] = None,
) -> Tensor:
    """Every singular value of the input-output Jacobian, per example: ``(examples, min(in, out))``.

    Each row is sorted in descending order. Computed in eval mode with the model's modes restored; see
    :func:`input_output_jacobians` for the arguments and :func:`singular_value_stats` for a summary.
    """
    jac = input_output_jacobians(
        model, inputs, masks=masks, mode=mode, chunk_size=chunk_size, example_chunk=example_chunk
    )
    return torch.linalg.svdvals(jac)
