"""A per-tensor and global account of what pruning kept, printable as a table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from lightning_synflow.distributed.collectives import nonzero_counts
from lightning_synflow.masks import check_masks
from lightning_synflow.parameters import frozen_weight_matrices


@dataclass(frozen=True)
class TensorSparsity:
    """What the mask keeps of one tensor."""

    name: str
    layer: str
    shape: tuple[int, ...]
    kept: int
    total: int

    @property
    def density(self) -> float:
        """Fraction of the tensor's weights kept."""
        return self.kept / self.total

    @property
    def sparsity(self) -> float:
        """Fraction of the tensor's weights removed."""
        return 1.0 - self.density

    @property
    def collapsed(self) -> bool:
        """No weight left: without a skip connection around it the network is disconnected."""
        return self.kept == 0


@dataclass(frozen=True)
class SparsityReport:
    """Per-tensor rows and global totals; ``str(report)`` is a table.

    ``tensors`` are the masked tensors, and the totals count them alone. ``frozen`` are weight matrices left
    dense because they are frozen (``requires_grad=False``): listed in the table so that nobody wonders why
    they were not pruned, and kept out of every total.
    """

    tensors: tuple[TensorSparsity, ...]
    frozen: tuple[TensorSparsity, ...] = ()

    @property
    def kept(self) -> int:
        """Weights kept over all masked tensors."""
        return sum(t.kept for t in self.tensors)

    @property
    def total(self) -> int:
        """Weights in all masked tensors (frozen ones excluded)."""
        return sum(t.total for t in self.tensors)

    @property
    def density(self) -> float:
        """Fraction kept over all masked tensors (1 when there are none)."""
        return self.kept / self.total if self.total else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction removed over all masked tensors."""
        return 1.0 - self.density

    @property
    def compression(self) -> float:
        """total / kept, the SynFlow paper's 10^x (``inf`` when nothing is kept)."""
        return self.total / self.kept if self.kept else float("inf")

    @property
    def collapsed(self) -> list[str]:
        """Names of the tensors with zero weights kept."""
        return [t.name for t in self.tensors if t.collapsed]

    def __str__(self) -> str:
        header = ("tensor", "layer", "shape", "kept", "total", "density")

        def cells(t: TensorSparsity, mark: str) -> tuple[str, ...]:
            return (t.name, t.layer, "x".join(map(str, t.shape)), f"{t.kept:,}", f"{t.total:,}", f"{t.density:.4%}{mark}")

        rows = [cells(t, "  COLLAPSED" if t.collapsed else "") for t in self.tensors]
        rows += [cells(t, "  FROZEN") for t in self.frozen]
        rows.append(("total", "", "", f"{self.kept:,}", f"{self.total:,}", f"{self.density:.4%}"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        rule = "-" * len(fmt(header))
        lines = [fmt(header), rule, *map(fmt, rows[:-1]), rule, fmt(rows[-1])]
        summary = f"sparsity {self.sparsity:.4%} (compression {self.compression:.4g}x)"
        if self.collapsed:
            summary += f"; {len(self.collapsed)} collapsed tensor(s): {', '.join(self.collapsed)}"
        if self.frozen:
            summary += (
                f"; {len(self.frozen)} frozen tensor(s) kept dense, not in the totals"
                f" ({sum(t.total for t in self.frozen):,} weights): {', '.join(t.name for t in self.frozen)}"
            )
        return "\n".join([*lines, summary])


def sparsity_report(model: nn.Module, masks: Mapping[str, Tensor], *, frozen: Optional[Sequence[str]] = None) -> SparsityReport:
    """Kept/total/density per masked tensor and globally, and which tensors collapsed.

    ``frozen``: names of frozen tensors to list as kept dense (those with a mask are not); default the
    frozen weight matrices that :func:`~lightning_synflow.select_prunable` would otherwise pick.
    """
    check_masks(model, masks)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    frozen = [n for n in (frozen_weight_matrices(model) if frozen is None else frozen) if n not in masks]
    unknown = [n for n in frozen if n not in params]
    if unknown:
        raise ValueError(f"`frozen` names tensors that {type(model).__name__} does not have: {unknown}")

    def row(name: str, kept: int) -> TensorSparsity:
        owner = modules.get(name.rpartition(".")[0], model)
        return TensorSparsity(name, type(owner).__name__, tuple(params[name].shape), kept, params[name].numel())

    kept = nonzero_counts(masks)  # over all ranks for sharded masks
    return SparsityReport(
        tuple(row(n, kept[n]) for n in masks),
        tuple(row(n, params[n].numel()) for n in frozen),
    )
