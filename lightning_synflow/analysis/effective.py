"""Effective sparsity (Vysogorets & Kempe): kept weights on no input-output path are dead too.

A kept weight is *effective* iff its SynFlow score on the masked network is positive: SynFlow's
``|θ ⊙ ∂R/∂θ|`` on the linearised network (all parameters and buffers replaced by their absolute values,
all-ones input) is the total weight of the input-output paths through it, so it is zero exactly when no
path through the weight connects an input to an output (a zero-valued kept weight also scores 0 and is
counted dead: it carries nothing).

By default the sources of the paths are the *inputs only*: the scoring runs on a copy of the model whose
biases (every non-masked parameter named ``*bias``) and BatchNorm running means are zeroed, so that a
unit with no live input is dead even if it has a bias. ``bias_paths=True`` scores the model as it is
(plain SynFlow): a bias then feeds its unit and keeps the weights downstream of it alive. At the
initialisation of this package's models (zero biases, zero running means) both agree.

Caveat: through a max-pool the linearised network routes the flow only to the window's maximum, so a
weight whose outputs never win a pooling window is counted dead although a path of non-zero weights
exists; average pooling and strided convolutions have no such effect.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_synflow.masks import check_masks
from lightning_synflow.pruning import compute_scores
from lightning_synflow.report import SparsityReport, sparsity_report
from lightning_synflow.scorers.base import ExampleInput


def _path_only_copy(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``model`` without constant sources: biases and BatchNorm running means zeroed."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            if name not in masks and name.rpartition(".")[2] == "bias":
                p.zero_()
        for name, b in clone.named_buffers():
            if name.rpartition(".")[2] == "running_mean" and b.is_floating_point():
                b.zero_()
    return clone


def effective_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    example_input: ExampleInput,
    bias_paths: bool = False,
) -> dict[str, Tensor]:
    """The kept weights that lie on at least one input-output path, keyed like ``masks``.

    Args:
        model: The network (not changed).
        masks: ``True`` = kept (e.g. from :func:`~lightning_synflow.compute_masks`).
        example_input: Any tensor of the model's input shape (SynFlow uses ones of that shape).
        bias_paths: Count biases as path sources too (plain SynFlow on the model as it is); default
            ``False``: inputs only (see the module docstring).

    Returns:
        ``dict[name, BoolTensor]``: ``masks[name] & (SynFlow score > 0)``.
    """
    check_masks(model, masks)
    net = model if bias_paths else _path_only_copy(model, masks)
    scores = compute_scores(net, "synflow", masks=masks, example_input=example_input)
    return {n: masks[n] & (scores[n] > 0).to(masks[n].device) for n in masks}


@dataclass(frozen=True)
class EffectiveSparsityReport:
    """Nominal (mask) and effective (on a path) sparsity, per tensor and global."""

    nominal: SparsityReport
    effective: SparsityReport

    @property
    def dead(self) -> int:
        """Kept weights that lie on no input-output path."""
        return self.nominal.kept - self.effective.kept

    def as_metrics(self, prefix: str = "sparsity") -> dict[str, float]:
        out = {
            f"{prefix}/nominal": self.nominal.sparsity,
            f"{prefix}/effective": self.effective.sparsity,
            f"{prefix}/nominal_compression": self.nominal.compression,
            f"{prefix}/effective_compression": self.effective.compression,
            f"{prefix}/dead_weights": float(self.dead),
            f"{prefix}/effective_collapsed_tensors": float(len(self.effective.collapsed)),
        }
        return out

    def rows(self) -> list[dict[str, object]]:
        """One dict per tensor (name, total, kept, effective, densities) for a CSV."""
        return [
            {
                "tensor": a.name,
                "layer": a.layer,
                "total": a.total,
                "kept": a.kept,
                "effective": b.kept,
                "density": a.density,
                "effective_density": b.density,
            }
            for a, b in zip(self.nominal.tensors, self.effective.tensors)
        ]

    def __str__(self) -> str:
        header = ("tensor", "total", "kept", "effective", "density", "eff. density")
        rows = [
            (a.name, f"{a.total:,}", f"{a.kept:,}", f"{b.kept:,}", f"{a.density:.4%}", f"{b.density:.4%}"
             + ("  DEAD" if b.collapsed and not a.collapsed else "  COLLAPSED" if a.collapsed else ""))
            for a, b in zip(self.nominal.tensors, self.effective.tensors)
        ]
        n, e = self.nominal, self.effective
        rows.append(("total", f"{n.total:,}", f"{n.kept:,}", f"{e.kept:,}", f"{n.density:.4%}", f"{e.density:.4%}"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        rule = "-" * len(fmt(header))
        summary = (
            f"sparsity {n.sparsity:.4%} nominal, {e.sparsity:.4%} effective "
            f"(compression {n.compression:.4g}x nominal, {e.compression:.4g}x effective; {self.dead:,} dead weights)"
        )
        return "\n".join([fmt(header), rule, *map(fmt, rows[:-1]), rule, fmt(rows[-1]), summary])


def effective_sparsity_report(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    example_input: Optional[ExampleInput] = None,
    effective: Optional[Mapping[str, Tensor]] = None,
    bias_paths: bool = False,
) -> EffectiveSparsityReport:
    """Nominal and effective sparsity side by side; pass ``effective`` (from :func:`effective_masks`) or
    ``example_input`` to compute it."""
    if effective is None:
        if example_input is None:
            raise ValueError("give `effective` masks or an `example_input` to compute them")
        effective = effective_masks(model, masks, example_input=example_input, bias_paths=bias_paths)
    return EffectiveSparsityReport(sparsity_report(model, masks), sparsity_report(model, effective))
