"""Exact-count selection: keep precisely ``round(d * N)`` of the highest scores.

The reference SynFlow code prunes every score ``<=`` the k-th value, so ties prune too much and, at
extreme compression, a tie at zero empties the network. Here ties are broken by position (earlier
tensor in the model, then lower flat index), which keeps the count exact and the result reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Optional

import torch
from torch import Tensor

from lightning_synflow.schedules import num_kept

Scope = Literal["global", "layerwise"]
SCOPES: tuple[str, ...] = ("global", "layerwise")


def top_k_mask(scores: Tensor, k: int, candidates: Optional[Tensor] = None) -> Tensor:
    """Boolean mask, shaped like ``scores``, of exactly ``k`` entries with the highest scores among
    ``candidates`` (all entries if None); among equal scores the lower flat index wins."""
    flat = scores.reshape(-1)
    cand = None if candidates is None else candidates.reshape(-1)
    values = flat if cand is None else flat[cand]
    n = values.numel()
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} candidate weights")
    if k == n:
        keep = torch.ones_like(flat, dtype=torch.bool) if cand is None else cand.clone()
        return keep.view_as(scores)
    if k == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    # The k-th largest value: a partial top-k when one side of the ranking is small (the usual case late
    # in iterative pruning), a linear-time selection otherwise (top-k slows down badly for large k).
    dropped = n - k
    if k <= n // 64:
        threshold = values.topk(k, sorted=False).values.min()
    elif dropped < n // 64:
        threshold = values.topk(dropped + 1, largest=False, sorted=False).values.max()
    else:
        threshold = values.kthvalue(dropped + 1).values
    keep = flat > threshold
    if cand is not None:
        keep &= cand
    missing = k - int(keep.sum())
    if missing > 0:
        ties = flat == threshold
        if cand is not None:
            ties &= cand
        keep[ties.nonzero().squeeze(1)[:missing]] = True
    return keep.view_as(scores)


def select_masks(
    scores: Mapping[str, Tensor],
    density: float,
    *,
    scope: Scope = "global",
    candidates: Optional[Mapping[str, Tensor]] = None,
) -> dict[str, Tensor]:
    """Masks keeping the highest scores at ``density``.

    ``global`` ranks all tensors together and keeps ``round(density * N)`` weights in total;
    ``layerwise`` keeps ``round(density * n_l)`` in each tensor. Only ``candidates`` (e.g. the weights
    still alive) can be kept; ``None`` means every weight is a candidate.
    """
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}")
    names = list(scores)
    if scope == "layerwise":
        return {
            n: top_k_mask(scores[n], num_kept(density, scores[n].numel()), None if candidates is None else candidates[n])
            for n in names
        }
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    cand = None if candidates is None else torch.cat([candidates[n].reshape(-1) for n in names])
    keep = top_k_mask(flat, num_kept(density, flat.numel()), cand)
    return {n: part.view_as(scores[n]) for n, part in zip(names, keep.split([scores[n].numel() for n in names]))}
