"""Granularity: which sets of weights are kept or pruned together, one more axis of score → budget → select.

``"weight"`` (the default) keeps any weights. ``"channel"`` keeps or prunes whole output channels and
neurons, coupled ones together (:mod:`lightning_synflow.selection.channels`). ``"N:M"`` (e.g. ``"2:4"``) keeps exactly ``N`` of every ``M``
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
import warnings
from collections.abc import Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn

from lightning_synflow.distributions import Budget, Distribution
from lightning_synflow.parameters import check_weight_norm
from lightning_synflow.schedules import resolve_density
from lightning_synflow.selection.selector import Selector, select_within, starting_masks
from lightning_synflow.selection.topk import top_k_beyond


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


class PatternSelector(Selector):
    """Weights under an N:M pattern: in each ranking, the ``n`` best living weights of every group of ``m`` are
    kept first, then the best left (:func:`~lightning_synflow.selection.topk.top_k_beyond`). Tensors in ``flipped``
    are stored ``(in, out)`` and grouped down their columns (:func:`input_major`)."""

    def __init__(
        self, masks: Mapping[str, Tensor], pattern: NM, *, monotone: bool, flipped: Collection[str] = ()
    ) -> None:
        self.names = list(masks)
        self.shapes = {n: tuple(m.shape) for n, m in masks.items()}
        self.masks = dict(masks)
        self.pattern, self.monotone, self.flipped = pattern, monotone, set(flipped)
        self.label = str(pattern)
        self.dense: dict[str, Tensor] = {}  # tensors the pattern does not fit, left as they came
        self.order = list(masks)  # every tensor, in the order given

    @classmethod
    def for_model(
        cls, model: nn.Module, masks: Mapping[str, Tensor], pattern: NM, layers: Distribution, *, monotone: bool
    ) -> PatternSelector:
        """The selector over the tensors of ``masks`` that ``pattern`` fits (the others stay dense, named in a
        warning), checked to end on the pattern with ``layers``."""
        flipped = input_major(model) & set(masks)
        dense = [n for n, m in masks.items() if not pattern.fits(tuple(m.T.shape if n in flipped else m.shape))]
        if len(dense) == len(masks):
            raise ValueError(
                f"granularity {str(pattern)!r} fits none of the prunable tensors {dense}: their input rows (all"
                f" dimensions but the first) must be a multiple of {pattern.m} long"
            )
        if dense:
            warnings.warn(
                f"granularity {str(pattern)!r}: {dense} left dense, their rows (all dimensions but the first) not being"
                f" a multiple of {pattern.m} long",
                stacklevel=5,
            )
        selector = cls({n: m for n, m in masks.items() if n not in dense}, pattern, monotone=monotone, flipped=flipped)
        selector.dense = {n: masks[n] for n in dense}
        selector.order = list(masks)
        final = layers.budget(selector.shapes, pattern.density, None)
        expected = {n: m.numel() * pattern.n // pattern.m for n, m in selector.masks.items()}
        if final != (sum(expected.values()) if isinstance(final, int) else expected):
            raise ValueError(
                f"granularity {str(pattern)!r} keeps {pattern.n} of every {pattern.m} weights of each tensor it groups,"
                f" which distribution {layers!r} does not at density {pattern.density:g}; use 'global' or 'uniform'"
            )
        return selector

    def _by_input(self, name: str, t: Tensor) -> Tensor:  # its own inverse
        return t.T.contiguous() if name in self.flipped else t

    def alive_counts(self) -> dict[str, int]:
        return {n: int(torch.count_nonzero(m)) for n, m in self.masks.items()}

    def unit_scores(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: self._by_input(n, s) for n, s in scores.items()}

    def keep(self, names: list[str], scores: MutableMapping[str, Tensor], k: int) -> None:
        cands = [self._by_input(n, self.masks[n]) if self.monotone else None for n in names]
        floors = [_group_best(scores[n], c, self.pattern) for n, c in zip(names, cands)]
        floor = sum(int(f.sum()) for f in floors)
        if k < floor:
            raise ValueError(f"cannot keep {k} weights of {names} with {self.pattern}: its groups alone keep {floor}")
        kept = top_k_beyond(floors, [scores[n] for n in names], cands, k)
        self.masks.update({n: self._by_input(n, m) for n, m in zip(names, kept)})

    def finish(self, model: nn.Module, layers: Distribution, density: float) -> dict[str, Tensor]:
        check_weight_norm(model, self.masks)
        return {n: self.masks.get(n, self.dense.get(n)) for n in self.order}


def select_pattern(
    scores: Mapping[str, Tensor],
    budget: Budget,
    pattern: NM,
    candidates: Optional[Mapping[str, Tensor]] = None,
) -> dict[str, Tensor]:
    """Masks keeping, within each ranking of ``budget``, exactly its count: the ``n`` best candidates of every
    group of ``m``, then the best candidates left. Every group must have ``n`` candidates and every count
    must cover the groups' ``n`` each."""
    selector = PatternSelector(starting_masks(scores, candidates), pattern, monotone=candidates is not None)
    select_within(selector, dict(scores), budget)
    return selector.masks


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
