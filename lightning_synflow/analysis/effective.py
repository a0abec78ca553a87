"""Effective sparsity (Vysogorets & Kempe): kept weights on no input-output path are dead too.

A kept weight is *effective* iff its SynFlow score on the masked network is positive: SynFlow's
``|θ ⊙ ∂R/∂θ|`` on the linearised network (parameters and normalisation statistics replaced by their
absolute values, all-ones input) is the total weight of the input-output paths through it, so it is zero exactly when no
path through the weight connects an input to an output (a zero-valued kept weight also scores 0 and is
counted dead: it carries nothing).

By default the sources of the paths are the *inputs only*: the scoring runs on a copy of the model whose
biases (every non-masked parameter named ``*bias``) and BatchNorm running means are zeroed, so that a
unit with no live input is dead even if it has a bias. ``bias_paths=True`` scores the model as it is
(plain SynFlow): a bias then feeds its unit and keeps the weights downstream of it alive. At the
initialisation of this package's models (zero biases, zero running means) both agree.

Caveat: through a max-pool the linearised network routes the flow only to the window's maximum, so a
weight whose outputs never win a pooling window at the all-ones input is counted dead although a path of
non-zero weights exists; ``maxpool_paths=True`` scores with average pools in their place (OR semantics).
On VGG-16-bn pruned at random to 10^3 this adds 117 effective weights to SynFlow's 4,194 (in the two
convolutions before a max-pool at 4x4 resolution). Average pooling and strided convolutions have no such
effect. The criterion is exact in space: a kernel tap that only ever reads padding or dead positions is dead.
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

_MAXPOOLS = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}


def _linearisable_copy(model: nn.Module, masks: Mapping[str, Tensor], *, zero_sources: bool, or_pools: bool) -> nn.Module:
    """A copy of ``model`` with constant sources removed (biases and BatchNorm running means zeroed) and/or
    max-pool modules replaced by average pools of the same geometry (a window is reached iff any of its
    inputs is: OR semantics, instead of SynFlow's flow to the window's maximum only)."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        if zero_sources:
            for name, p in clone.named_parameters():
                if name not in masks and name.rpartition(".")[2] == "bias":
                    p.zero_()
            for name, b in clone.named_buffers():
                if name.rpartition(".")[2] == "running_mean" and b.is_floating_point():
                    b.zero_()
    if or_pools:
        for parent in list(clone.modules()):
            for child_name, child in list(parent.named_children()):
                avg = _MAXPOOLS.get(type(child))
                if avg is None:
                    continue
                dilation = child.dilation if isinstance(child.dilation, tuple) else (child.dilation,)
                if any(d != 1 for d in dilation) or child.return_indices:
                    raise ValueError(f"cannot replace max-pool {child_name!r} (dilated or returning indices) by an average pool")
                stride = child.stride if child.stride is not None else child.kernel_size
                setattr(parent, child_name, avg(child.kernel_size, stride, child.padding, ceil_mode=child.ceil_mode))
    return clone


def effective_masks(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    example_input: ExampleInput,
    bias_paths: bool = False,
    maxpool_paths: bool = False,
) -> dict[str, Tensor]:
    """The kept weights that lie on at least one input-output path, keyed like ``masks``.

    Args:
        model: The network (not changed).
        masks: ``True`` = kept (e.g. from :func:`~lightning_synflow.compute_masks`).
        example_input: Any tensor of the model's input shape (SynFlow uses ones of that shape).
        bias_paths: Count biases as path sources too (plain SynFlow on the model as it is); default
            ``False``: inputs only (see the module docstring).
        maxpool_paths: Score with every ``nn.MaxPoolNd`` module replaced by an average pool, so that a
            weight counts as effective when a path through any position of a pooling window exists, not
            only through the window's maximum at the all-ones input (default ``False``: plain SynFlow).

    Returns:
        ``dict[name, BoolTensor]``: ``masks[name] & (SynFlow score > 0)``.
    """
    check_masks(model, masks)
    if bias_paths and not maxpool_paths:
        net = model
    else:
        net = _linearisable_copy(model, masks, zero_sources=not bias_paths, or_pools=maxpool_paths)
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
        """Nominal and effective sparsity and compression, dead weights and collapsed tensors, flat."""
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
    maxpool_paths: bool = False,
) -> EffectiveSparsityReport:
    """Nominal and effective sparsity side by side; pass ``effective`` (from :func:`effective_masks`) or
    ``example_input`` to compute it."""
    if effective is None:
        if example_input is None:
            raise ValueError("give `effective` masks or an `example_input` to compute them")
        effective = effective_masks(
            model, masks, example_input=example_input, bias_paths=bias_paths, maxpool_paths=maxpool_paths
        )
    return EffectiveSparsityReport(sparsity_report(model, masks), sparsity_report(model, effective))
