"""The scorer interface and the registry that lets a YAML file pick a scorer by name.

A scorer maps a model and its current masks to one score per prunable weight; higher means keep.
Built-in scorers are registered by name (``"synflow"``); a user's own scorer subclasses
:class:`Scorer` and is passed as an instance, or from YAML as ``{class_path: ..., init_args: ...}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, TypeVar, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_synflow.ranking import Scope, select_masks
from lightning_synflow.schedules import Schedule, density_schedule

#: A tensor, a tuple of tensors (positional inputs) or a dict of tensors (keyword inputs) of the model's input.
ExampleInput = Union[Tensor, tuple[Tensor, ...], Mapping[str, Tensor]]
#: ``loss_fn(model, batch) -> scalar``: the loss data-driven scorers differentiate.
LossFn = Callable[[nn.Module, Any], Tensor]


def cross_entropy_loss(model: nn.Module, batch: Any) -> Tensor:
    """The default loss of the functional API: cross-entropy of ``model(x)`` (logits) against ``y`` for
    ``(x, y)`` batches."""
    x, y = batch[0], batch[1]
    return F.cross_entropy(model(x), y)


#: Key of :attr:`ScoringContext.cache` under which the pruning loop lists the previous round's pruned positions.
NEWLY_PRUNED = "newly_pruned"
#: Key of :attr:`ScoringContext.cache` under which the pruning loop lists the living weights' positions.
ALIVE_POSITIONS = "alive_positions"


def _no_reduction(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class ScoringContext:
    """What a scorer may draw on besides the model, all on the model's device.

    Attributes:
        example_input: A tensor of the model's input shape, for data-free scorers.
        batches: The batches data-driven scorers use, the same ones in every pruning round.
        loss_fn: ``loss_fn(model, batch)``, differentiated by data-driven scorers.
        all_reduce: Sums a tensor over all processes (identity in a single process). Scorers sum their
            per-batch gradients or scores locally and reduce once, so every rank ranks the same totals.
        cache: Scratch space a scorer may keep between the rounds of one pruning run (one context per
            :func:`~lightning_synflow.compute_masks` call), e.g. SynFlow's linearised weights. Before each
            round of a monotone scorer, ``cache[NEWLY_PRUNED]`` holds ``{name: flat positions}`` pruned by
            the previous round, or ``None`` (first round, or too many to list): re-read the masks; and
            ``cache[ALIVE_POSITIONS]`` holds ``{name: sorted flat positions}`` of the living weights once few
            are alive (else ``None``), so that a scorer may score just those (see :meth:`Scorer.score`).
    """

    example_input: Optional[ExampleInput] = None
    batches: Sequence[Any] = ()
    loss_fn: LossFn = cross_entropy_loss
    all_reduce: Callable[[Tensor], Tensor] = _no_reduction
    cache: dict[str, Any] = field(default_factory=dict)

    def reduce(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``all_reduce`` of a dict of tensors in one collective (flattened and concatenated)."""
        names = list(tensors)
        flat = self.all_reduce(torch.cat([tensors[n].reshape(-1) for n in names]))
        return {n: p.view_as(tensors[n]) for n, p in zip(names, flat.split([tensors[n].numel() for n in names]))}


class Scorer(ABC):
    """Base class of pruning scorers.

    Subclasses implement :meth:`score` and may override the class attributes below. ``score`` is called
    through :func:`~lightning_synflow.compute_scores`, which restores the model's train/eval modes,
    ``requires_grad`` flags and gradients afterwards; a scorer must not change parameter or buffer
    values (score on copies, e.g. with ``torch.func.functional_call``).
    """

    #: Registered name, set by :func:`register_scorer`.
    name: ClassVar[str] = ""
    #: Pruning iterations :func:`~lightning_synflow.compute_masks` uses when none is given.
    default_iterations: ClassVar[int] = 1
    #: Pruned weights stay pruned. ``False`` lets every weight compete again at each iteration.
    monotone: ClassVar[bool] = True
    #: Needs ``context.example_input`` (the model's input shape).
    needs_input: ClassVar[bool] = False
    #: Needs ``context.batches`` (labelled data and a loss).
    needs_data: ClassVar[bool] = False
    #: Batches drawn for scoring when the caller does not say.
    default_num_batches: ClassVar[int] = 1
    #: :meth:`score` itself makes sure its scores are finite, so the pruning loop does not check them again
    #: (a pass over every score in every round).
    checks_finite: ClassVar[bool] = False

    @abstractmethod
    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        """One score per weight of every tensor named in ``masks``, shaped like it, on the network as
        currently masked (``masks[name]`` is ``True`` where a weight is kept). The pruning loop narrows
        ``masks`` in place between rounds: copy them to keep them. When ``context.cache[ALIVE_POSITIONS]``
        lists a tensor's living weights, its scores may instead be a 1-D tensor of the scores at those
        positions, in that order (pruned weights cannot be kept, so their scores are never read)."""

    def densities(self, final_density: float, iterations: int, schedule: Schedule) -> list[float]:
        """The density after each pruning round; the default is the Trainer-wide schedule (exponential or
        linear). Scorers with a schedule of their own (SNIP-it) override this."""
        return density_schedule(final_density, iterations, schedule)

    def allocate(
        self, scores: Mapping[str, Tensor], density: float, scope: Scope, candidates: Optional[Mapping[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Masks from scores at ``density``; the default keeps the highest scores (exact count). Scorers
        that prescribe per-layer densities themselves (ERK, uniform) override this."""
        return select_masks(scores, density, scope=scope, candidates=candidates)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[Scorer]] = {}
S = TypeVar("S", bound=type[Scorer])


def register_scorer(name: str) -> Callable[[S], S]:
    """Class decorator registering a :class:`Scorer` subclass under ``name``."""

    def decorate(cls: S) -> S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a scorer named {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def available_scorers() -> list[str]:
    """Registered scorer names."""
    return sorted(_REGISTRY)


def get_scorer(scorer: Union[str, Scorer]) -> Scorer:
    """A scorer instance from a registered name, or the instance itself."""
    if isinstance(scorer, Scorer):
        return scorer
    if isinstance(scorer, str) and scorer in _REGISTRY:
        return _REGISTRY[scorer]()
    raise ValueError(
        f"`scorer` must be one of {available_scorers()} or a lightning_synflow.Scorer instance, got {scorer!r}"
    )
