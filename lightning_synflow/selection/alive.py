"""The weights still alive during iterative pruning, kept so that a round's ranking touches only them.

Iterative pruning (SynFlow: 100 rounds) drops a few percent of the living weights per round, so after
a few dozen rounds most weights are dead. :class:`AliveSet` keeps the dense boolean masks that scorers
read and updates them in place; once at most an eighth of the weights is alive it also keeps their
sorted flat indices (int32 where they fit), so that gathering, bracketing and ranking the scores costs
in proportion to the living weights instead of all of them (a scorer may even score just those:
:attr:`AliveSet.positions`). The indices then take at most half the bytes of the dense masks, which
bounds pruning's peak memory. Each update records the positions it pruned (:attr:`AliveSet.pruned`), so
that a scorer keeping masked state between rounds (SynFlow) marks just those.

Selection is exactly :func:`~lightning_synflow.selection.topk.top_k_masks`: exact counts, ties to the earlier
tensor and then the lower flat index.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Optional

import torch
from torch import Tensor

from lightning_synflow.distributions import Budget
from lightning_synflow.selection.selector import Selector, select_within
from lightning_synflow.selection.topk import (
    choose_extremes,
    compress,
    extract_extremes,
    true_positions,
)

#: Keep flat indices of the living weights once at most this fraction of all weights is alive.
COMPACT_BELOW = 0.125


class AliveSet(Selector):
    """Masks of the living weights, narrowed round by round to the highest scores: the selector of monotone
    pruning of single weights.

    Args:
        masks: Starting masks (``True`` = alive); copied, never changed.
    """

    def __init__(self, masks: Mapping[str, Tensor], *, copy: bool = True) -> None:
        self.names = list(masks)
        self.shapes = {n: tuple(m.shape) for n, m in masks.items()}
        self._ids = {n: i for i, n in enumerate(self.names)}
        self.masks = {n: m.clone() if copy else m for n, m in masks.items()}
        self.counts = [int(torch.count_nonzero(m)) for m in self.masks.values()]
        self.total = sum(m.numel() for m in self.masks.values())
        #: Per tensor, the sorted flat indices of its living weights; ``None`` while many are alive.
        self.index: Optional[list[Tensor]] = None
        #: Per tensor name, the flat positions the last :meth:`update` pruned; ``None`` before the first
        #: update or when it is cheaper to re-read the masks.
        self.pruned: Optional[dict[str, Tensor]] = None
        self._pruning: Optional[dict[str, Tensor]] = None  # what the round under way has pruned so far
        self._release = True
        self._compact_if_few()

    @property
    def kept(self) -> int:
        return sum(self.counts)

    def alive_counts(self) -> dict[str, int]:
        """Per tensor name, the weights still alive."""
        return dict(zip(self.names, self.counts))

    @property
    def positions(self) -> Optional[dict[str, Tensor]]:
        """Per tensor name, the sorted flat positions of its living weights; ``None`` while many are alive."""
        return None if self.index is None else dict(zip(self.names, self.index))

    def update(self, scores: MutableMapping[str, Tensor], budget: Budget, *, release: bool = False) -> None:
        """Keep the highest-scoring living weights within ``budget``: one count over all tensors, or a count per
        tensor (:data:`~lightning_synflow.distributions.Budget`). ``scores[name]`` is shaped like the mask or,
        once :attr:`positions` are listed, may hold just the living weights' scores.

        ``release`` empties ``scores`` as soon as they are ranked, so that the rest of the round reuses their
        memory (the pruning loop passes its own dict and holds no other reference)."""
        self._release = release
        select_within(self, scores, budget)

    def begin_round(self) -> None:
        self._pruning = {}

    def keep(self, names: list[str], scores: MutableMapping[str, Tensor], k: int) -> None:
        self._pruning = self._narrow([self._ids[n] for n in names], scores, k, self._pruning, self._release)

    def end_round(self) -> None:
        self.pruned = self._pruning
        self._compact_if_few()

    def _narrow(
        self, ids: list[int], scores: MutableMapping[str, Tensor], k: int, pruned: Optional[dict[str, Tensor]], release: bool
    ) -> Optional[dict[str, Tensor]]:
        """Keep ``k`` of the living weights of tensors ``ids``; returns ``pruned`` with their pruned positions."""
        alive = sum(self.counts[i] for i in ids)
        if not 0 <= k <= alive:
            raise ValueError(f"cannot keep {k} of {alive} candidate weights")
        names = [self.names[i] for i in ids]
        if k == alive:
            if pruned is not None:
                pruned.update({n: torch.empty(0, dtype=torch.long, device=self.masks[n].device) for n in names})
            return pruned
        if k == 0:  # a collapse (layerwise at extreme sparsity): nothing of these tensors survives
            for i, n in zip(ids, names):
                self.masks[n].zero_()
                self.counts[i] = 0
                if self.index is not None:
                    self.index[i] = self.index[i][:0]
            return None
        if self.index is None:
            pieces = [scores[n].reshape(-1) for n in names]
            cands: list[Optional[Tensor]] = [self.masks[n].view(-1) for n in names]
        else:  # the living weights' scores, gathered unless the scorer returned just those (`positions`)
            flats = [(scores[n].reshape(-1), i) for n, i in zip(names, ids)]
            pieces = [f if f.numel() == self.counts[i] else f.index_select(0, self.index[i]) for f, i in flats]
            cands = [None] * len(ids)
        counts = [self.counts[i] for i in ids]
        lowest = alive - k <= k  # clear the lowest few (the usual round) or set the highest few
        m = alive - k if lowest else k
        extracted = extract_extremes(pieces, cands, counts, m, lowest=lowest)
        del pieces
        if release:
            for n in names:
                del scores[n]
        positions = choose_extremes(*extracted, m, lowest=lowest)
        del extracted
        if lowest:
            for i, n, pos in zip(ids, names, positions):
                flat = pos if self.index is None else self.index[i].index_select(0, pos)
                self.masks[n].view(-1)[flat] = False
                self.counts[i] -= pos.numel()
                if self.index is not None:
                    keep = torch.ones_like(self.index[i], dtype=torch.bool)
                    keep[pos] = False
                    self.index[i] = compress(self.index[i], keep)
                if pruned is not None:
                    pruned[n] = flat
            return pruned
        # A large one-shot step: rebuild these masks from the kept positions.
        for i, n, pos in zip(ids, names, positions):
            flat = pos if self.index is None else self.index[i].index_select(0, pos)
            mask = self.masks[n].view(-1)
            mask.zero_()
            mask[flat] = True
            self.counts[i] = pos.numel()
            if self.index is not None:
                self.index[i] = self.index[i].index_select(0, pos)
        return None  # too many pruned positions to list usefully: scorers re-read the masks

    def _compact_if_few(self) -> None:
        if self.index is None and self.kept <= COMPACT_BELOW * self.total:
            self.index = [true_positions(m) for m in self.masks.values()]
