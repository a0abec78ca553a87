"""SNIP-it (Verdenius, Stol & Forré, "Pruning via iterative ranking of sensitivity statistics", 2020):
SNIP re-scored on the sparse net over rounds with a cumulative sparsity schedule."""

from __future__ import annotations

from lightning_synflow.schedules import Schedule
from lightning_synflow.scorers.base import register_scorer
from lightning_synflow.scorers.functional import Mode
from lightning_synflow.scorers.snip import SNIP
from lightning_synflow.validation import check_int


def snip_it_sparsities(sparsity: float, rounds: int) -> list[float]:
    """SNIP-it's cumulative sparsity targets for a final sparsity ``L``: ``L − (L − 0.5) · 0.5^i`` for
    ``i = 0 .. rounds − 2``, then ``L`` (``rounds = 7`` gives the published 0.5, 0.74, ..., L for L = 0.98).
    A final sparsity ``L <= 0.5`` (or ``rounds = 1``) is a single round at ``L``."""
    check_int("iterations", rounds)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"the final sparsity must be in [0, 1), got {sparsity!r}")
    if sparsity <= 0.5:
        return [sparsity]
    return [sparsity - (sparsity - 0.5) * 0.5**i for i in range(rounds - 1)] + [sparsity]


@register_scorer("snip_it")
class SNIPit(SNIP):
    """SNIP-it: the SNIP score ``|θ ⊙ ∂L/∂θ|`` recomputed on the network as currently masked, pruning to
    the cumulative sparsities ``s_i = L − (L − 0.5) · 0.5^i`` for ``i = 0 .. steps``, then the target
    ``L`` (for ``L = 0.98`` and ``steps = 5``: 0.50, 0.74, 0.86, 0.92, 0.95, 0.965, 0.98). Pruned weights
    stay pruned; 5 scoring batches per round by default, the same batches every round, as in the
    official code. Gradients are summed over the batches and over all ranks (as :class:`SNIP`).

    The schedule is SNIP-it's own: the ``schedule`` argument of
    :func:`~lightning_synflow.compute_masks` / ``PruneAtInit`` is ignored. ``iterations`` there is the
    number of rounds, ``steps + 2`` (7) when not given: a given ``iterations = T`` scores at
    ``i = 0 .. T − 2``, then at ``L`` (``T = 1`` is one-shot SNIP at ``L``). A target ``L <= 0.5`` is
    reached in one round, whatever ``iterations``.

    Args:
        steps: Halvings of the remaining gap: the last intermediate target is ``L − (L − 0.5) · 0.5^steps``;
            5 as published. Sets the default number of rounds, ``steps + 2``.
        mode: The model's mode while scoring. ``"eval"`` (BatchNorm on its running statistics) follows the
            official code; ``"train"`` uses batch statistics (running statistics are never updated).
    """

    default_num_batches = 5

    def __init__(self, steps: int = 5, mode: Mode = "eval") -> None:
        super().__init__(mode=mode)
        self.steps = check_int("steps", steps, 0, meaning="halvings of the gap to the target sparsity")

    @property  # type: ignore[override]
    def default_iterations(self) -> int:  # the rounds: i = 0 .. steps, then the target
        return self.steps + 2

    def densities(self, final_density: float, iterations: int, schedule: Schedule) -> list[float]:
        """Densities ``1 − s_i`` of SNIP-it's rounds (``schedule`` is ignored); the last is exactly
        ``final_density``."""
        if not 0.0 < final_density <= 1.0:
            raise ValueError(f"the final density must be in (0, 1], got {final_density!r}")
        sparsities = snip_it_sparsities(1.0 - final_density, iterations)
        return [1.0 - s for s in sparsities[:-1]] + [final_density]
