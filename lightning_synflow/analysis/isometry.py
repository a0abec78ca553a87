"""Approximate isometry after pruning (Lee, Ajanthan, Gould & Torr, ICLR 2020).

With the masks ``C`` fixed, plain SGD minimises ``sum_l ||(C_l * W_l)^T (C_l * W_l) - I||_F`` (Frobenius
norm, not squared) over the prunable weights. A weight of shape ``(out, in, kh, kw)`` (or a Linear's
``(out, in)``) is read as a matrix with ``out`` columns, ``in * kh * kw`` rows, so its ``out x out`` Gram
matrix is pushed towards the identity; for transposed convolutions (``(in, out, kh, kw)``) ``out`` is
dimension 1. When ``in * kh * kw < out`` the identity is out of reach (rank limit) and the penalty only
approaches that of a partial isometry. No data is needed.

The norm is not squared, so its gradient keeps unit size up to the minimum: plain SGD with a fixed
learning rate does not converge but ends hovering at a penalty of order ``lr * ||W||`` (lower it for a
tighter fit); the paper's 10,000 steps at 0.1 are about reaching that floor on large layers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_synflow.masks import check_masks
from lightning_synflow.validation import check_int, check_number

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class IsometryResult:
    """Penalty ``sum_l ||W_l^T W_l - I||_F`` before and after, in total and per tensor."""

    before: float
    after: float
    steps: int
    lr: float
    per_tensor_before: dict[str, float]
    per_tensor_after: dict[str, float]
    seconds: float = 0.0

    def as_metrics(self, prefix: str = "isometry") -> dict[str, float]:
        """Penalty before and after, steps and seconds, flat, for a logger."""
        return {
            f"{prefix}/penalty_before": self.before,
            f"{prefix}/penalty_after": self.after,
            f"{prefix}/steps": float(self.steps),
            f"{prefix}/seconds": self.seconds,
        }

    def __str__(self) -> str:
        return f"isometry penalty {self.before:.4g} -> {self.after:.4g} after {self.steps} SGD steps (lr {self.lr})"


def _out_dim(model: nn.Module, name: str) -> int:
    owner = dict(model.named_modules()).get(name.rpartition(".")[0])
    return 1 if isinstance(owner, _TRANSPOSED) else 0


def _as_matrix(w: Tensor, out_dim: int) -> Tensor:
    """``(rows, out)``: every output unit (channel) is one column."""
    if w.dim() < 2:
        raise ValueError(f"isometry needs weight matrices or kernels, got a tensor of shape {tuple(w.shape)}")
    return w.movedim(out_dim, 0).reshape(w.shape[out_dim], -1).t()


def _penalties(weights: list[Tensor], masks: list[Tensor], out_dims: list[int]) -> list[Tensor]:
    out = []
    for w, m, d in zip(weights, masks, out_dims):
        a = _as_matrix(w * m, d)
        gram = a.t() @ a
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        out.append(torch.linalg.matrix_norm(gram - eye))  # Frobenius
    return out


def isometry_penalty(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, float]:
    """``||(C*W)^T (C*W) - I||_F`` per masked tensor (the total is their sum)."""
    params = check_masks(model, masks)
    names = list(masks)
    with torch.no_grad():
        vals = _penalties(
            [params[n].detach() for n in names],
            [masks[n].to(params[n].device, params[n].dtype) for n in names],
            [_out_dim(model, n) for n in names],
        )
    return {n: float(v) for n, v in zip(names, vals)}


def approximate_isometry(
    model: nn.Module, masks: Mapping[str, Tensor], steps: int = 10_000, lr: float = 0.1
) -> IsometryResult:
    """Push every masked layer towards an isometry with the masks held fixed (data-free).

    Minimises ``sum_l ||(C_l*W_l)^T (C_l*W_l) - I||_F`` with plain SGD (no momentum, no weight decay)
    over the tensors named in ``masks``; pruned weights are set to 0 first and stay exactly 0 (their
    gradient is 0). The model's weights are changed in place, which is the point; nothing else is (other
    parameters, buffers, modes, ``requires_grad`` and ``.grad`` are left as they were).

    Args:
        model: The network to condition.
        masks: ``True`` = kept, keyed by parameter name (e.g. from :func:`~lightning_synflow.compute_masks`).
        steps: SGD steps (the paper used 10,000; a few hundred already lower the penalty a lot).
        lr: Learning rate (paper: 0.1).

    Returns:
        :class:`IsometryResult` with the penalty before and after (total and per tensor).
    """
    check_int("steps", steps, 0)
    check_number("lr", lr, "a positive finite number", low=0, open_low=True)
    params = check_masks(model, masks)
    names = list(masks)
    start = time.perf_counter()
    out_dims = [_out_dim(model, n) for n in names]
    for n in names:  # fail before changing anything
        _as_matrix(params[n].detach(), _out_dim(model, n))
    ms = [masks[n].to(params[n].device, params[n].dtype) for n in names]
    before = isometry_penalty(model, masks)
    with torch.enable_grad():
        ws = [(params[n].detach() * m).requires_grad_(True) for n, m in zip(names, ms)]
        for _ in range(steps):
            total = torch.stack(_penalties(ws, ms, out_dims)).sum()
            grads = torch.autograd.grad(total, ws)
            with torch.no_grad():
                torch._foreach_add_(ws, grads, alpha=-lr)
                torch._foreach_mul_(ws, ms)  # exact zeros, also against round-off
    with torch.no_grad():
        for n, w in zip(names, ws):
            params[n].copy_(w.detach())
    after = isometry_penalty(model, masks)
    return IsometryResult(
        sum(before.values()), sum(after.values()), steps, lr, before, after, time.perf_counter() - start
    )
