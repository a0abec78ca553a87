"""2:4 semi-structured sparsity that runs faster: Linear weights in ``torch.sparse.to_sparse_semi_structured``.

Pruning at ``granularity="2:4"`` leaves at most 2 non-zero weights in every 4 consecutive along a Linear's
``in_features``; on NVIDIA GPUs of compute capability 8.0 or higher PyTorch multiplies such a weight in its
compressed form (cuSPARSELt, or CUTLASS). :func:`semi_structured_plan` says which Linear layers qualify and
why the others do not (pattern, dtype, shape); :func:`to_semi_structured` swaps the weights of those that
qualify. Hugging Face's ``Conv1D`` (GPT-2) is pruned to the pattern along its input features too, but is not
converted: its weight is stored transposed, ``(in, out)``, and it is not an ``nn.Linear``. Only the forward pass of such a layer is what PyTorch accelerates: convert for inference, or for
training with that caveat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_synflow.selection.granularity import NM

PATTERN = NM(2, 4)


def _backend() -> type:
    """The class ``to_sparse_semi_structured`` builds (its dtype and shape limits)."""
    from torch.sparse import (
        SparseSemiStructuredTensor,
        SparseSemiStructuredTensorCUSPARSELT,
        SparseSemiStructuredTensorCUTLASS,
    )

    return SparseSemiStructuredTensorCUTLASS if SparseSemiStructuredTensor._FORCE_CUTLASS else SparseSemiStructuredTensorCUSPARSELT


@dataclass
class SemiStructuredPlan:
    """Which Linear layers (by module name) can take a semi-structured weight, and why the others cannot."""

    eligible: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def semi_structured_plan(model: nn.Module) -> SemiStructuredPlan:
    """For every ``nn.Linear`` of ``model``: eligible if its weight keeps at most 2 non-zeros in every 4
    consecutive along ``in_features``, and its dtype and shape are ones the backend takes; otherwise the reason."""
    limits = _backend()._DTYPE_SHAPE_CONSTRAINTS
    plan = SemiStructuredPlan()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight.detach()
        rows, cols = w.shape
        if w.dtype not in limits:
            plan.skipped[name] = f"dtype {w.dtype} (allowed: {sorted(str(d) for d in limits)})"
            continue
        limit = limits[w.dtype]
        if rows % limit.sparse_min_rows or cols % limit.sparse_min_cols:
            plan.skipped[name] = (
                f"shape ({rows}, {cols}): both dimensions must be multiples of ({limit.sparse_min_rows},"
                f" {limit.sparse_min_cols}) for {w.dtype}"
            )
            continue
        groups = (w != 0).reshape(-1, PATTERN.m).sum(1)
        if bool((groups > PATTERN.n).any()):
            plan.skipped[name] = f"not 2:4: {int((groups > PATTERN.n).sum())} group(s) of 4 keep more than 2 non-zeros"
            continue
        plan.eligible.append(name)
    return plan


def to_semi_structured(model: nn.Module) -> SemiStructuredPlan:
    """Swap the weight of every eligible Linear layer (:func:`semi_structured_plan`) for its semi-structured
    form, in place; returns the plan. Raises, changing nothing, unless those layers are on a CUDA device of
    compute capability 8.0 or higher."""
    plan = semi_structured_plan(model)
    modules = dict(model.named_modules())
    for name in plan.eligible:
        device = modules[name].weight.device
        if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
            where = device.type if device.type != "cuda" else f"{device} (compute capability {torch.cuda.get_device_capability(device)})"
            raise RuntimeError(
                f"to_semi_structured needs the Linear layers on a CUDA device of compute capability 8.0 or higher"
                f" (semi-structured kernels), but {name!r} is on {where}"
            )
    from torch.sparse import to_sparse_semi_structured

    for name in plan.eligible:
        module = modules[name]
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=module.weight.requires_grad)
    return plan
