"""The trivial baselines every pruning paper compares against: weight magnitude and random."""

from __future__ import annotations

from collections.abc import Mapping
from math import prod
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_synflow.distributed.sharding import (
    Block,
    block_of,
    is_sharded,
    like,
    local,
)
from lightning_synflow.scorers.base import Scorer, ScoringContext, register_scorer
from lightning_synflow.validation import check_seed


def _score_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@register_scorer("magnitude")
class Magnitude(Scorer):
    """|θ| at initialization."""

    supports_sharding = True

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        return {
            n: like(m, local(params[n]).detach().to(_score_dtype(params[n])).abs() * local(m)) for n, m in masks.items()
        }


@register_scorer("random")
class Random(Scorer):
    """A uniformly random ranking: random pruning at the requested density.

    Args:
        seed: Seed of the scorer's own generator; ``None`` draws from torch's global generator (so
            ``seed_everything`` controls it).
    """

    supports_sharding = True

    def __init__(self, seed: Optional[int] = None) -> None:
        self.seed = check_seed("seed", seed)
        self._generators = DeviceGenerators(seed)

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        if any(is_sharded(m) for m in masks.values()):
            return sharded_random_scores(model, masks, self._generators, context)
        return random_scores(masks, self._generators)


class DeviceGenerators:
    """Generators seeded with ``seed``, one per device, each made when that device first asks: random scores
    are drawn where the masks live instead of on the host and copied over, and on CPU the draws are those
    of ``torch.Generator().manual_seed(seed)``. Without a seed, each device's default generator (which
    ``seed_everything`` seeds)."""

    def __init__(self, seed: Optional[int]) -> None:
        self.seed = seed
        self._made: dict[torch.device, torch.Generator] = {}

    def on(self, device: torch.device) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        if device not in self._made:
            self._made[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._made[device]


def sharded_random_scores(
    model: nn.Module, masks: Mapping[str, Tensor], generators: DeviceGenerators, context: ScoringContext
) -> dict[str, Tensor]:
    """:func:`random_scores` of the full tensors, each rank keeping its block (the whole stream is drawn in
    chunks and only the block's values kept: a one-process run with the same seed gets the same scores on
    CPU). Without a seed, every rank seeds from the sum of one draw of each rank's global generator, so that
    replicas agree."""
    if generators.seed is None:
        draw = torch.randint(2**40, (1,), dtype=torch.int64).to(local(next(iter(masks.values()))).device)
        generators = DeviceGenerators(int(context.all_reduce(draw)[0]) % 2**62)
    scores = {}
    for name, m in masks.items():
        block = block_of(name, m)
        piece = local(m)
        scores[name] = like(m, block_of_stream(block, generators.on(piece.device), piece.device).view(piece.shape).mul_(piece))
    return scores


#: Random values drawn at a time while skipping through a tensor's stream.
_STREAM_CHUNK = 1 << 20


def block_of_stream(block: Block, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """The values ``torch.rand(block.shape, generator=generator)`` would put in ``block`` (flat, local order),
    drawing the stream :data:`_STREAM_CHUNK` values at a time; the generator ends where the full draw leaves
    it."""
    out = torch.empty(prod(block.local_shape), device=device)
    for start in range(0, block.numel, _STREAM_CHUNK):
        stop = min(block.numel, start + _STREAM_CHUNK)
        chunk = torch.rand(stop - start, generator=generator, device=device)
        first, last = block.first_at_or_after(start), block.first_at_or_after(stop)
        if last > first:
            at = block.global_positions(torch.arange(first, last, device=device)) - start
            out[first:last] = chunk.index_select(0, at)
    return out


def random_scores(masks: Mapping[str, Tensor], generators: DeviceGenerators) -> dict[str, Tensor]:
    """Uniform random scores in [0, 1) on each mask's device, zero where the mask is False (pruned)."""
    return {
        n: torch.rand(m.shape, generator=generators.on(m.device), device=m.device).mul_(m) for n, m in masks.items()
    }
