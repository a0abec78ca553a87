"""Exact-count selection over scores that are sharded across processes, without gathering them.

The result is :func:`~lightning_synflow.selection.topk.select`'s on the full tensors: exactly ``k`` kept, ties to the
earlier tensor and then the lower flat index *of the full tensor*. Each rank holds a block of each tensor
(:class:`~lightning_synflow.distributed.sharding.Block`); a block several ranks hold (replicas) is counted once, by its
owner, and the collectives run over the whole world, so owners must be decided over it
(:func:`~lightning_synflow.distributed.sharding.blocks_of`).

How: all ranks agree on one cutoff, the last weight dropped in the order (score up, tensor down, full
position down), and each keeps its own weights beyond it. To find it, a band ``[lo, hi]`` known to hold the
cutoff narrows: brackets come from a sample of the band's scores gathered from every rank, and counts of
the weights below and within them are all-reduced. Once the band holds at most :data:`EXCHANGE_LIMIT`
weights, just those are gathered (score, tensor, full position) and ranked. A band that is one tied score
(zeros, say) is resolved by position with counts alone. Samples decide only how fast the band narrows,
never which weights are kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from lightning_synflow._moved import renamed_attributes
from lightning_synflow.distributed.collectives import (
    Collectives,
    ProcessGroupCollectives,
    global_counts,
)
from lightning_synflow.distributed.sharding import Block, blocks_of, like, local
from lightning_synflow.distributions import Budget, Distribution
from lightning_synflow.selection.selector import Selector, select_within, starting_masks
from lightning_synflow.selection.topk import _bracket, compress, true_positions

#: Scores sampled per narrowing step, over all ranks.
SAMPLE_SIZE = 1 << 14
#: Weights in the band when it is gathered and ranked outright (values and positions: 1.5 MiB at float32).
EXCHANGE_LIMIT = 1 << 16


class ShardedSelector(Selector):
    """Single weights spread over processes: each rank holds ``pieces`` (its blocks of the masks) and keeps its
    part of one exact selection over the full tensors, so that no rank holds a whole tensor of weights, scores
    or masks. With ``params`` (a model's parameters by name) the masks are laid out as those (DTensors)."""

    incremental = False  # scorers re-read the masks each round

    def __init__(
        self,
        pieces: Mapping[str, Tensor],
        blocks: Mapping[str, Block],
        collectives: Collectives,
        *,
        monotone: bool,
        shapes: Optional[Mapping[str, tuple[int, ...]]] = None,
        params: Optional[Mapping[str, Tensor]] = None,
    ) -> None:
        self.names = list(pieces)
        self.pieces = dict(pieces)
        self.blocks, self.collectives, self.monotone = blocks, collectives, monotone
        self.shapes = dict(shapes) if shapes is not None else {n: tuple(p.shape) for n, p in pieces.items()}
        self.params = params
        self.all_reduce = collectives.sum

    @classmethod
    def for_model(cls, model: nn.Module, masks: Mapping[str, Tensor], *, monotone: bool) -> ShardedSelector:
        """The selector over ``masks`` (DTensors laid out as ``model``'s parameters), over the default group."""
        names = list(masks)
        params = dict(model.named_parameters())
        return cls(
            {n: local(m) for n, m in masks.items()}, blocks_of(model, names), ProcessGroupCollectives(),
            monotone=monotone, shapes={n: tuple(m.shape) for n, m in masks.items()}, params={n: params[n] for n in names},
        )

    @property
    def masks(self) -> dict[str, Tensor]:
        return self.pieces if self.params is None else {n: like(self.params[n], self.pieces[n]) for n in self.names}

    def alive_counts(self) -> dict[str, int]:
        pieces = [self.pieces[n] for n in self.names]
        return dict(zip(self.names, global_counts(pieces, [self.blocks[n] for n in self.names], self.collectives)))

    def unit_scores(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: local(s) for n, s in scores.items()}

    def finish(self, model: nn.Module, layers: Distribution, density: float) -> dict[str, Tensor]:
        return self.masks

    def keep(self, names: list[str], scores: MutableMapping[str, Tensor], k: int) -> None:
        cands = [self.pieces[n].reshape(-1) if self.monotone else None for n in names]
        kept = _keep([scores[n].reshape(-1) for n in names], cands, [self.blocks[n] for n in names], k, self.collectives)
        self.pieces.update({n: m.view(scores[n].shape) for n, m in zip(names, kept)})


def select_sharded(
    scores: Mapping[str, Tensor],
    budget: Budget,
    blocks: Mapping[str, Block],
    collectives: Collectives,
    candidates: Optional[Mapping[str, Tensor]] = None,
) -> dict[str, Tensor]:
    """This rank's masks (shaped like its local ``scores``) keeping, within each ranking of ``budget``, exactly
    its count of the highest scores among ``candidates`` (every weight if None) over all ranks."""
    selector = ShardedSelector(starting_masks(scores, candidates), blocks, collectives, monotone=candidates is not None)
    select_within(selector, dict(scores), budget)
    return selector.pieces


def _keep(
    flats: list[Tensor], cands: list[Optional[Tensor]], blocks: list[Block], k: int, collectives: Collectives
) -> list[Tensor]:
    dtype = flats[0].dtype
    for f in flats[1:]:
        dtype = torch.promote_types(dtype, f.dtype)
    flats = [f.to(dtype) for f in flats]
    owned = [b.owner for b in blocks]
    local = [(f.numel() if c is None else int(torch.count_nonzero(c))) if o else 0 for f, c, o in zip(flats, cands, owned)]
    n = int(collectives.sum(torch.tensor(local, dtype=torch.int64, device=flats[0].device)).sum())
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} candidate weights")
    if k == n:
        return [torch.ones_like(f, dtype=torch.bool) if c is None else c.clone() for f, c in zip(flats, cands)]
    if k == 0:
        return [torch.zeros_like(f, dtype=torch.bool) for f in flats]
    value, tensor, position = _Cutoff(flats, cands, blocks, collectives).find(n - k, n)
    kept = []
    for i, (f, c, b) in enumerate(zip(flats, cands, blocks)):
        if i < tensor:  # ties with the cutoff come before it in the order: kept
            keep = f >= value
        else:
            keep = f > value
            if i == tensor:  # ties at a lower full position than the cutoff's are kept
                first = b.first_at_or_after(position)
                keep[:first] |= f[:first] == value
        kept.append(keep if c is None else keep.logical_and_(c))
    return kept


class _Cutoff:
    """The ``m``-th weight in the order (score up, tensor down, full position down) over all ranks."""

    def __init__(
        self, flats: list[Tensor], cands: list[Optional[Tensor]], blocks: list[Block], collectives: Collectives
    ) -> None:
        self.flats, self.cands, self.blocks, self.collectives = flats, cands, blocks, collectives
        self.device = flats[0].device
        self.generator = torch.Generator(device=self.device).manual_seed(0)

    def find(self, m: int, n: int) -> tuple[Tensor, int, int]:
        dtype = self.flats[0].dtype
        lo = torch.tensor(-math.inf, dtype=dtype, device=self.device)
        hi = torch.tensor(math.inf, dtype=dtype, device=self.device)
        rank, total = m, n  # the cutoff is the rank-th of the `total` weights in [lo, hi]
        while total > EXCHANGE_LIMIT:
            if bool(lo == hi):
                return lo, *self._tie(lo, rank)
            sample = self._sample(lo, hi, total).sort().values
            inner, outer = (_bracket(sample, rank / total, slack, True) for slack in (-4.0, 4.0))
            new_lo = lo if inner is None else torch.maximum(lo, inner)
            new_hi = hi if outer is None else torch.minimum(hi, outer)
            below, within = self._count(lo, hi, new_lo, new_hi)
            if below < rank <= within and within - below < total:
                lo, hi, rank, total = new_lo, new_hi, rank - below, within - below
                continue
            # The sample misled (or cannot split the band): halve the band at the sample's median.
            pivot = sample[sample.numel() // 2]
            below, within = self._count(lo, hi, pivot, pivot)
            if rank <= below:
                hi, total = torch.nextafter(pivot, lo.new_tensor(-math.inf)), below
            elif rank > within:
                lo, rank, total = torch.nextafter(pivot, hi.new_tensor(math.inf)), rank - within, total - within
            else:
                lo, hi, rank, total = pivot, pivot, rank - below, within - below
        return self._exchange(lo, hi, rank)

    def _band(self, i: int, lo: Tensor, hi: Tensor) -> Optional[Tensor]:
        """Tensor ``i``'s candidates in ``[lo, hi]`` that this rank counts; None if it counts none."""
        if not self.blocks[i].owner:
            return None
        f, c = self.flats[i], self.cands[i]
        band = (f >= lo).logical_and_(f <= hi)
        return band if c is None else band.logical_and_(c)

    def _count(self, lo: Tensor, hi: Tensor, new_lo: Tensor, new_hi: Tensor) -> tuple[int, int]:
        """Over all ranks, the band's weights below ``new_lo`` and those up to ``new_hi``."""
        counts = torch.zeros(2, dtype=torch.int64, device=self.device)
        for i, f in enumerate(self.flats):
            band = self._band(i, lo, hi)
            if band is not None:
                counts[0] += torch.count_nonzero(band & (f < new_lo))
                counts[1] += torch.count_nonzero(band.logical_and_(f <= new_hi))
        below, within = self.collectives.sum(counts).tolist()
        return below, within

    def _sample(self, lo: Tensor, hi: Tensor, total: int) -> Tensor:
        """About :data:`SAMPLE_SIZE` scores of the band drawn in proportion from every rank, gathered."""
        parts = []
        for i, f in enumerate(self.flats):
            band = self._band(i, lo, hi)
            count = 0 if band is None else int(torch.count_nonzero(band))
            if not count:
                continue
            size = min(count, math.ceil(SAMPLE_SIZE * count / total))
            if 8 * count >= f.numel():  # a wide band: draw positions over the tensor, keep those in the band
                at = torch.randint(f.numel(), (math.ceil(size * f.numel() / count),), generator=self.generator, device=self.device)
                parts.append(f.index_select(0, at).masked_select(band.index_select(0, at)))
            else:  # a narrow one: draw among its values
                values = compress(f, band)
                parts.append(values.index_select(0, torch.randint(count, (size,), generator=self.generator, device=self.device)))
        local = torch.cat(parts) if parts else self.flats[0].new_empty(0)
        return self.collectives.gather(local)

    def _exchange(self, lo: Tensor, hi: Tensor, rank: int) -> tuple[Tensor, int, int]:
        """Gather the band's weights from every rank and take the rank-th in the order."""
        values, tensors, positions = [], [], []
        for i, f in enumerate(self.flats):
            band = self._band(i, lo, hi)
            if band is None:
                continue
            at = true_positions(band).to(self.device)
            values.append(f.index_select(0, at.long()))
            tensors.append(torch.full((at.numel(),), i, dtype=torch.int64, device=self.device))
            positions.append(self.blocks[i].global_positions(at))
        empty = self.flats[0].new_empty(0)
        values_all = self.collectives.gather(torch.cat(values) if values else empty)
        tensors_all = self.collectives.gather(torch.cat(tensors) if tensors else empty.long())
        positions_all = self.collectives.gather(torch.cat(positions) if positions else empty.long())
        order = np.lexsort((-positions_all.cpu().numpy(), -tensors_all.cpu().numpy(), values_all.cpu().double().numpy()))
        chosen = int(order[rank - 1])
        return values_all[chosen], int(tensors_all[chosen]), int(positions_all[chosen])

    def _tie(self, value: Tensor, rank: int) -> tuple[int, int]:
        """Of the weights scoring exactly ``value``, the tensor and full position of the rank-th in the order
        (later tensors first, then higher positions): counts per tensor, then a bisection on the position."""
        ties = [None] * len(self.flats)
        for i, f in enumerate(self.flats):
            if self.blocks[i].owner:
                eq = f == value
                ties[i] = eq if self.cands[i] is None else eq.logical_and_(self.cands[i])
        local = [0 if t is None else int(torch.count_nonzero(t)) for t in ties]
        counts = self.collectives.sum(torch.tensor(local, dtype=torch.int64, device=self.device)).tolist()
        tensor = len(counts) - 1
        while rank > counts[tensor]:
            rank -= counts[tensor]
            tensor -= 1
        mine, block = ties[tensor], self.blocks[tensor]

        def at_or_after(position: int) -> int:  # ties of `tensor` at full positions >= position, over all ranks
            count = 0 if mine is None else int(torch.count_nonzero(mine[block.first_at_or_after(position):]))
            return int(self.collectives.sum(torch.tensor([count], dtype=torch.int64, device=self.device))[0])

        lo, hi = 0, block.numel - 1  # the largest position p with at_or_after(p) >= rank
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if at_or_after(mid) >= rank:
                lo = mid
            else:
                hi = mid - 1
        return tensor, lo


#: Names this module had before the wings, now elsewhere.
__getattr__ = renamed_attributes(__name__, {"kept_counts": "lightning_synflow.distributed.collectives.nonzero_counts"})
