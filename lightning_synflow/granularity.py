"""Granularity: which sets of weights are kept or pruned together, one more axis of score → budget → select.

``"weight"`` (the default) keeps any weights. ``"channel"`` keeps or prunes whole output channels and
neurons, coupled ones together (:mod:`lightning_synflow.channels`). ``"N:M"`` (e.g. ``"2:4"``) keeps exactly ``N`` of every ``M``
consecutive weights along each row of a weight as it is stored, ``weight.reshape(out, -1)``: ``in_features``
of a Linear, ``in_channels·kh·kw`` of a convolution. That is the row a GEMM reads (a convolution lowered to
one by im2col, the usual lowering), and for Linear it is the layout ``torch.sparse.to_sparse_semi_structured``
accelerates. (NVIDIA's ASP groups a convolution's weights along ``in_channels`` at a fixed ``kh, kw``
instead; for 1x1 convolutions the two agree.) Hugging Face's ``Conv1D`` (GPT-2) stores its weight the other
way round, ``(in_features, out_features)``: it is grouped along its input features too, down the stored columns
(:func:`input_major`). A tensor whose input rows do not split into groups of ``M`` is left dense.

Selection with a pattern, in each ranking of a round's budget: the ``N`` highest-scoring living weights of
every group are kept first, then the rest of the budget goes to the highest scores left, over all the
ranking's tensors. A round before the last therefore prunes as freely as without a pattern, but never
below ``N`` in a group, and the last round's budget is exactly ``N`` per group: iterative scorers (SynFlow)
reach the pattern through their schedule and end on it. Ties go to the lower flat index, as everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn

from lightning_synflow.distributions import Budget
from lightning_synflow.ranking import budget_groups, top_k_masks
from lightning_synflow.schedules import resolve_density


@dataclass(frozen=True)
class NM:
    """Keep ``n`` of every ``m`` consecutive weights along a stored row."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def density(self) -> float:
        """The density the pattern implies, N / M."""
        return self.n / self.m

    def fits(self, shape: Sequence[int]) -> bool:
        """A tensor of ``shape`` splits into groups: a matrix or more whose rows are a multiple of ``m`` long."""
        return len(shape) >= 2 and math.prod(shape[1:]) % self.m == 0

    def is_followed(self, mask: Tensor) -> bool:
        """Every group of ``mask`` keeps exactly ``n``."""
        return bool((mask.reshape(-1, self.m).sum(1) == self.n).all())


@dataclass(frozen=True)
class Channels:
    """Keep or prune whole output channels (neurons), coupled ones together."""

    def __str__(self) -> str:
        return "channel"


#: What ``granularity`` takes: ``"weight"``, ``"channel"``, an ``"N:M"`` string, or an :class:`NM`.
GranularitySpec = Union[str, NM, Channels]


def get_granularity(spec: GranularitySpec) -> Optional[Union[NM, Channels]]:
    """The granularity ``spec`` names; None for ``"weight"`` (any weights)."""
    if isinstance(spec, (NM, Channels)):
        return spec
    if spec == "weight":
        return None
    if spec == "channel":
        return Channels()
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec) if isinstance(spec, str) else None
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m:
            return NM(n, m)
    raise ValueError(
        f"`granularity` must be 'weight', 'channel' or 'N:M' with 0 < N < M (N kept of every M consecutive weights,"
        f" e.g. '2:4'), got {spec!r}"
    )


def resolve_pattern_density(pattern: NM, sparsity: Optional[float], compression: Optional[float]) -> float:
    """The final density of the tensors ``pattern`` groups: ``n / m``, which ``sparsity`` or ``compression``
    may restate but not change."""
    if sparsity is None and compression is None:
        return pattern.density
    density = resolve_density(sparsity, compression)
    if not math.isclose(density, pattern.density, rel_tol=1e-9):
        given = f"sparsity={sparsity!r}" if sparsity is not None else f"compression={compression!r}"
        raise ValueError(
            f"granularity {str(pattern)!r} keeps {pattern.n} of every {pattern.m} weights (sparsity"
            f" {1 - pattern.density:g}): leave `sparsity` and `compression` out, or give sparsity="
            f"{1 - pattern.density:g}; got {given}"
        )
    return pattern.density


def input_major(model: nn.Module) -> set[str]:
    """Names of the weights stored ``(in_features, out_features)``: Hugging Face's ``Conv1D`` (GPT-2), which
    computes ``x @ W``. N:M groups them along the input features, i.e. along their stored columns."""
    return {
        f"{name}.weight" if name else "weight"
        for name, m in model.named_modules()
        if type(m).__name__ == "Conv1D" and isinstance(getattr(m, "weight", None), Tensor) and m.weight.dim() == 2
        and getattr(m, "nf", None) == m.weight.shape[1]
    }


def select_pattern(
    scores: Mapping[str, Tensor],
    budget: Budget,
    pattern: NM,
    candidates: Optional[Mapping[str, Tensor]] = None,
) -> dict[str, Tensor]:
    """Masks keeping, within each ranking of ``budget``, exactly its count: the ``n`` best candidates of every
    group of ``m``, then the best candidates left. Every group must have ``n`` candidates and every count
    must cover the groups' ``n`` each."""
    names = list(scores)
    masks: dict[str, Tensor] = {}
    for ids, k in budget_groups(names, budget):
        group = [names[i] for i in ids]
        cands = [None if candidates is None else candidates[n] for n in group]
        floors = [_group_best(scores[n], c, pattern) for n, c in zip(group, cands)]
        floor = sum(int(f.sum()) for f in floors)
        if k < floor:
            raise ValueError(f"cannot keep {k} weights of {group} with {pattern}: its groups alone keep {floor}")
        rest = [~f if c is None else c & ~f for f, c in zip(floors, cands)]
        extra = top_k_masks([scores[n] for n in group], k - floor, rest)
        masks.update({n: f | e for n, f, e in zip(group, floors, extra)})
    return {n: masks[n] for n in names}


def _group_best(scores: Tensor, candidates: Optional[Tensor], pattern: NM) -> Tensor:
    """The ``n`` highest-scoring candidates of every group of ``m`` (ties to the lower index)."""
    grouped = scores.reshape(-1, pattern.m)
    if candidates is not None:
        alive = candidates.reshape(-1, pattern.m)
        short = alive.sum(1) < pattern.n
        if bool(short.any()):
            raise ValueError(f"{int(short.sum())} group(s) of {pattern.m} have fewer than {pattern.n} living weights")
        grouped = grouped.masked_fill(~alive, -math.inf)
    order = torch.sort(grouped, dim=1, descending=True, stable=True).indices[:, : pattern.n]
    best = torch.zeros(grouped.shape, dtype=torch.bool, device=scores.device)
    best.scatter_(1, order, True)
    return best.view(scores.shape)
