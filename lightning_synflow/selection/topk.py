"""Exact-count selection: keep precisely ``round(d * N)`` of the highest scores.

The reference SynFlow code prunes every score ``<=`` the k-th value, so ties prune too much and, at
extreme compression, a tie at zero empties the network. Here ties are broken by position (earlier
tensor in the model, then lower flat index), which keeps the count exact and the result reproducible.

How, without sorting: an iterative pruning round changes little (it drops a few percent of the weights
still alive), yet a k-th value over every score (``torch.kthvalue``, as the reference code does each
round) costs a linear-time pass with three full copies (values and int64 indices). Here only the side
that changes is ranked: the ``m = min(k, n - k)`` candidates to drop (or, when that is the larger side,
the ones to keep) lie below (above) an outer bracket value estimated from a random sample of the
candidates; one pass extracts everything beyond it, and of those only the ones between it and an inner
bracket (the few whose fate is uncertain) are ranked to choose exactly ``m``. The sample decides only how
much is extracted and ranked (a bracket that turns out wrong is widened, or the whole extraction ranked),
never which weights are kept, and it draws from a private generator, so torch's global RNG is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from lightning_synflow._moved import renamed_attributes
from lightning_synflow.distributions import Budget, DistributionSpec, get_distribution
from lightning_synflow.selection.selector import Selector, select_within, starting_masks

#: Sampled scores per selection; the bracket's rank error shrinks as 1/sqrt of this.
_SAMPLE_SIZE = 1 << 14


def top_k_masks(
    scores: Sequence[Tensor], k: int, candidates: Optional[Sequence[Optional[Tensor]]] = None
) -> list[Tensor]:
    """Boolean masks, shaped like each of ``scores``, keeping exactly ``k`` entries in total: the highest
    scores among ``candidates`` (all entries if None), ties to the earlier tensor, then the lower flat
    index. Memory beyond the returned masks is proportional to the side that changes, not to the total."""
    flats = [s.reshape(-1) for s in scores]
    cands = [None] * len(flats) if candidates is None else [None if c is None else c.reshape(-1) for c in candidates]
    counts = [f.numel() if c is None else int(torch.count_nonzero(c)) for f, c in zip(flats, cands)]
    n = sum(counts)
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} candidate weights")
    drop = n - k
    if drop <= k:  # drop the `drop` lowest: start from every candidate and clear them
        keep = [torch.ones_like(f, dtype=torch.bool) if c is None else c.clone() for f, c in zip(flats, cands)]
        positions = extreme_positions(flats, cands, counts, drop, lowest=True) if drop else []
        fill = False
    else:  # keep the `k` highest: start from nothing and set them
        keep = [torch.zeros_like(f, dtype=torch.bool) for f in flats]
        positions = extreme_positions(flats, cands, counts, k, lowest=False) if k else []
        fill = True
    for mask, pos in zip(keep, positions):
        if pos.numel():
            mask[pos] = fill
    return [mask.view_as(s) for mask, s in zip(keep, scores)]


def extreme_positions(
    flats: list[Tensor], cands: list[Optional[Tensor]], counts: list[int], m: int, *, lowest: bool
) -> list[Tensor]:
    """Per tensor, the flat positions of the ``m`` lowest (``lowest``) or highest candidates in the
    order (score, then position: ties drop the later and keep the earlier weight)."""
    return choose_extremes(*extract_extremes(flats, cands, counts, m, lowest=lowest), m, lowest=lowest)


def extract_extremes(
    flats: list[Tensor], cands: list[Optional[Tensor]], counts: list[int], m: int, *, lowest: bool
) -> tuple[list[Tensor], list[Tensor]]:
    """Scores and flat positions, per tensor, of at least the ``m`` lowest (highest) candidates: every
    candidate strictly beyond an outer bracket drawn from a sample and, if those are too few, just the
    candidates equal to it that the order reaches first (a block of exact ties, e.g. zero scores, is never
    extracted whole). Afterwards ``flats`` are no longer needed."""
    n = sum(counts)
    sample = _sample(flats, cands, counts)
    hits = flats[0].new_empty(max(f.numel() for f in flats), dtype=torch.bool)  # one buffer for every tensor
    for slack in (4.0, 8.0, 16.0, 64.0, math.inf):
        bound = _bracket(sample, m / n, slack, lowest)
        found = [_beyond(f, c, bound, lowest, hits) for f, c in zip(flats, cands)]
        short = m - sum(p.numel() for p in found)
        if short <= 0:
            break
        ties = _ties(flats, cands, bound, short, lowest)
        if ties is not None:
            found = [torch.cat([p, t]).sort().values if t.numel() else p for p, t in zip(found, ties)]
            break
    return [f.index_select(0, p) for f, p in zip(flats, found)], found


def _ties(
    flats: list[Tensor], cands: list[Optional[Tensor]], bound: Optional[Tensor], needed: int, lowest: bool
) -> Optional[list[Tensor]]:
    """Positions of the ``needed`` candidates equal to ``bound`` that come first in the order (the last ones
    in (tensor, position) order when dropping the lowest, the first ones when keeping the highest), or
    None if there are fewer."""
    if bound is None:
        return None
    eq = [(f == bound) if c is None else (f == bound) & c for f, c in zip(flats, cands)]
    if sum(int(torch.count_nonzero(e)) for e in eq) < needed:
        return None
    taken = [f.new_empty(0, dtype=torch.int32) for f in flats]
    for i in reversed(range(len(flats))) if lowest else range(len(flats)):
        if needed == 0:
            break
        at = true_positions(eq[i])
        taken[i] = at[-needed:] if lowest else at[:needed]
        needed -= taken[i].numel()
    return taken


def choose_extremes(values: list[Tensor], positions: list[Tensor], m: int, *, lowest: bool) -> list[Tensor]:
    """Of the extracted ``values`` (per tensor, at ``positions`` in increasing order), the positions of
    exactly the ``m`` lowest (highest), ties to the later (earlier) tensor and position."""
    sizes = [v.numel() for v in values]
    flat = torch.cat(values)
    # The m-th value from the chosen end; everything strictly beyond it is chosen, then ties in order.
    t = _kth_extreme(flat, m, lowest)
    chosen = flat < t if lowest else flat > t
    need = m - int(torch.count_nonzero(chosen))
    if need:
        ties = true_positions(flat == t)  # in (tensor, position) order
        chosen[ties[-need:] if lowest else ties[:need]] = True
    return [compress(p, c) for p, c in zip(positions, chosen.split(sizes))]


def _kth_extreme(flat: Tensor, m: int, lowest: bool) -> Tensor:
    """The ``m``-th lowest (highest) value of ``flat``. Brackets from a sample narrow large inputs first (a
    pass counts the values beyond the inner bracket and keeps just those between the two), so that
    ``kthvalue``, whose cost per value is several passes', ranks only the few whose order matters."""
    g = _private_generator(flat.device)
    while flat.numel() > 4 * _SAMPLE_SIZE:
        n = flat.numel()
        sample = flat.index_select(0, torch.randint(n, (_SAMPLE_SIZE,), generator=g, device=flat.device))
        inner, outer = (_bracket(sample, m / n, slack, lowest) for slack in (-4.0, 4.0))
        if inner is None or outer is None:
            break
        short_of_inner = flat >= inner if lowest else flat <= inner
        beyond_inner = n - int(torch.count_nonzero(short_of_inner))
        band = short_of_inner.logical_and_(flat <= outer if lowest else flat >= outer)
        in_band = int(torch.count_nonzero(band))
        if not beyond_inner < m <= beyond_inner + in_band or in_band == n:
            break  # the sample misled: rank everything
        flat, m = compress(flat, band), m - beyond_inner
    return flat.kthvalue(m if lowest else flat.numel() - m + 1).values


def _sample(flats: list[Tensor], cands: list[Optional[Tensor]], counts: list[int]) -> Tensor:
    """Scores of candidates at random positions, about ``_SAMPLE_SIZE`` of them, from a fixed generator."""
    g = _private_generator(flats[0].device)
    total = sum(f.numel() for f in flats)
    parts = []
    for f, c, count in zip(flats, cands, counts):
        size = min(f.numel(), math.ceil(_SAMPLE_SIZE * f.numel() / total)) if count else 0
        if size:
            at = torch.randint(f.numel(), (size,), generator=g, device=f.device)
            at_f = f.index_select(0, at)
            parts.append(at_f if c is None else at_f.masked_select(c.index_select(0, at)))
    return torch.cat(parts)


def _private_generator(device: torch.device) -> torch.Generator:
    """A generator on ``device`` with a fixed seed: samples are drawn where the scores live (on CPU the same
    draws as ever), and torch's global random state is left alone."""
    return torch.Generator(device=device).manual_seed(0)


def _bracket(sample: Tensor, fraction: float, slack: float, lowest: bool) -> Optional[Tensor]:
    """A score that ``fraction`` of the candidates lie beyond (below if ``lowest``) give or take ``slack``
    standard deviations of the sample's rank error: positive slack puts more than that beyond it (an outer
    bracket), negative slack fewer (an inner one). ``None`` when the rank falls outside the sample."""
    expected = fraction * sample.numel()
    rank = expected + slack * (math.sqrt(expected) + 4)
    if not 1 <= rank < sample.numel():  # also an infinite slack
        return None
    rank = math.ceil(rank)
    return sample.kthvalue(rank if lowest else sample.numel() - rank + 1).values


def _beyond(flat: Tensor, cand: Optional[Tensor], bound: Optional[Tensor], lowest: bool, hits: Tensor) -> Tensor:
    """Flat positions (int32 where they fit) of the candidates strictly beyond ``bound`` (all candidates if it
    is None); ``hits`` is scratch space of at least ``flat``'s size."""
    if bound is None:
        hit = torch.ones_like(flat, dtype=torch.bool) if cand is None else cand
    else:
        hit = hits[: flat.numel()]
        scores = as_numpy(flat)
        if scores is not None:
            (np.less if lowest else np.greater)(scores, bound.item(), out=hit.numpy())
        else:
            (torch.lt if lowest else torch.gt)(flat, bound, out=hit)
        if cand is not None:
            hit &= cand
    return true_positions(hit)


# On CPU, NumPy compares, lists and selects several times faster than torch 2.15 (one thread, 2.4 M
# float32: `<` 0.26 ms against 1.8-2.8 ms, `nonzero` at 5% hits 2.5 against 4.1 ms, at 1% 0.7 against
# 4.4 ms, boolean selection of int32 0.5 against 1.1 ms); NumPy views share the tensor's memory, and
# the results are the same, element for element. Other devices and dtypes NumPy lacks stay in torch.
_NUMPY_DTYPES = (torch.bool, torch.uint8, torch.int32, torch.int64, torch.float16, torch.float32, torch.float64)


def as_numpy(t: Tensor) -> Optional[np.ndarray]:
    """``t`` as a NumPy array sharing its memory, or None where NumPy cannot view it (then torch's kernels
    run: the path of every other device, which tests take on CPU by making this return None)."""
    return t.detach().numpy() if t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES else None


def true_positions(mask: Tensor) -> Tensor:
    """Flat positions of the ``True`` entries of ``mask`` in increasing order, int32 where they fit (half
    the memory of int64)."""
    flat = mask.reshape(-1)
    small = flat.numel() < 2**31
    array = as_numpy(flat)
    if array is not None:
        found = np.flatnonzero(array)
        return torch.from_numpy(found.astype(np.int32) if small else found)
    found = flat.nonzero().squeeze(1)
    return found.to(torch.int32) if small else found


def compress(values: Tensor, keep: Tensor) -> Tensor:
    """The 1-D ``values`` where the bool ``keep`` is set, in order."""
    array, chosen = as_numpy(values), as_numpy(keep)
    if array is not None and chosen is not None:
        return torch.from_numpy(array[chosen])
    return values.masked_select(keep)  # faster than values[keep] when most are kept


def top_k_mask(scores: Tensor, k: int, candidates: Optional[Tensor] = None) -> Tensor:
    """Boolean mask, shaped like ``scores``, of exactly ``k`` entries with the highest scores among
    ``candidates`` (all entries if None); among equal scores the lower flat index wins."""
    return top_k_masks([scores], k, None if candidates is None else [candidates])[0]


def top_k_beyond(
    floors: Sequence[Tensor], scores: Sequence[Tensor], candidates: Sequence[Optional[Tensor]], k: int
) -> list[Tensor]:
    """Masks keeping the ``floors`` (units a structure must keep: the N best of an N:M group, one channel per
    group) and then the highest-scoring candidates left, ``k`` in all (``k`` covers the floors)."""
    floor = sum(int(f.sum()) for f in floors)
    rest = [~f if c is None else c & ~f for f, c in zip(floors, candidates)]
    return [f | e for f, e in zip(floors, top_k_masks(list(scores), k - floor, rest))]


class WeightSelector(Selector):
    """Single weights ranked afresh each round (every weight competes again: FORCE) or, when ``monotone``,
    among those ``masks`` keep (:func:`select`). Masks start as ``masks``."""

    incremental = False  # the loop's monotone weights are an AliveSet's; this one ranks afresh

    def __init__(self, masks: Mapping[str, Tensor], *, monotone: bool) -> None:
        self.names = list(masks)
        self.shapes = {n: tuple(m.shape) for n, m in masks.items()}
        self.monotone = monotone
        self.masks = dict(masks)

    def alive_counts(self) -> dict[str, int]:
        return {n: int(torch.count_nonzero(m)) for n, m in self.masks.items()}

    def keep(self, names: list[str], scores: MutableMapping[str, Tensor], k: int) -> None:
        cands = [self.masks[n] for n in names] if self.monotone else None
        self.masks.update(zip(names, top_k_masks([scores[n] for n in names], k, cands)))


def select(
    scores: Mapping[str, Tensor], budget: Budget, candidates: Optional[Mapping[str, Tensor]] = None
) -> dict[str, Tensor]:
    """Masks keeping, within each ranking of ``budget``, exactly its count of the highest scores among
    ``candidates`` (every weight if None); ties to the earlier tensor, then the lower flat index."""
    selector = WeightSelector(starting_masks(scores, candidates), monotone=candidates is not None)
    select_within(selector, scores, budget)
    return selector.masks


def select_masks(
    scores: Mapping[str, Tensor],
    density: float,
    *,
    distribution: DistributionSpec = "global",
    candidates: Optional[Mapping[str, Tensor]] = None,
) -> dict[str, Tensor]:
    """Masks keeping the highest scores at ``density``, shared among the tensors by ``distribution``
    (:func:`~lightning_synflow.distributions.get_distribution`): ``"global"`` ranks all tensors together
    and keeps ``round(density * N)`` weights in total, ``"uniform"`` keeps ``round(density * n_l)`` in each
    tensor. Only ``candidates`` (e.g. the weights still alive) can be kept; ``None`` means every weight is a
    candidate.
    """
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    alive = None if candidates is None else {n: int(torch.count_nonzero(candidates[n])) for n in scores}
    return select(scores, get_distribution(distribution, density).budget(shapes, density, alive), candidates)


#: Names this module had before the wings, now elsewhere.
__getattr__ = renamed_attributes(__name__, {"budget_groups": "lightning_synflow.selection.selector.budget_groups"})
