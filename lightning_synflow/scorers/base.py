"""The scorer interface and the registry that lets a YAML file pick a scorer by name.

A scorer maps a model and its current masks to one score per prunable weight; higher means keep.
Built-in scorers are registered by name (``"synflow"``); a user's own scorer subclasses
:class:`Scorer` and is passed as an instance, or from YAML as ``{class_path: ..., init_args: ...}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generic, Optional, TypeVar, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_synflow.distributions import Distribution
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


def _no_reduction(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class ScoringContext:
    """What a scorer may draw on besides the model, all on the model's device; the same in every round.

    Attributes:
        example_input: A tensor of the model's input shape, for data-free scorers.
        batches: The batches data-driven scorers use, the same ones in every pruning round.
        loss_fn: ``loss_fn(model, batch)``, differentiated by data-driven scorers.
        all_reduce: Sums a tensor over all processes (identity in a single process). Scorers sum their
            per-batch gradients or scores locally and reduce once, so every rank ranks the same totals.
    """

    example_input: Optional[ExampleInput] = None
    batches: Sequence[Any] = ()
    loss_fn: LossFn = cross_entropy_loss
    all_reduce: Callable[[Tensor], Tensor] = _no_reduction

    def reduce(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``all_reduce`` of a dict of tensors in one collective (flattened and concatenated)."""
        names = list(tensors)
        flat = self.all_reduce(torch.cat([tensors[n].reshape(-1) for n in names]))
        return {n: p.view_as(tensors[n]) for n, p in zip(names, flat.split([tensors[n].numel() for n in names]))}


class Scorer(ABC):
    """Base class of pruning scorers: :meth:`score` is all a scorer must write.

    ``score`` is called through :func:`~lightning_synflow.compute_scores` or once per round of
    :func:`~lightning_synflow.compute_masks`, which restore the model's train/eval modes, ``requires_grad``
    flags and gradients afterwards; a scorer must not change parameter or buffer values (score on copies,
    e.g. with ``torch.func.functional_call``). How many weights survive, and in which tensors, is not the
    scorer's business: the loop's distribution decides that from the scores.
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
    #: Layer budgets the scorer stands for, used when the caller gives no ``distribution`` (the random
    #: baselines ``"erk"`` and ``"uniform"``); ``None``: the caller's, ``"global"`` by default.
    distribution: Optional[Distribution] = None
    #: Scores a sharded model (DTensor parameters of FSDP2 / tensor parallelism) on its local shards. Scorers
    #: that run the model through ``functional_call`` on whole tensors (GraSP, NTK-SAP) do not.
    supports_sharding: ClassVar[bool] = False

    @abstractmethod
    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        """One score per weight of every tensor named in ``masks``, shaped like it, on the network as
        currently masked (``masks[name]`` is ``True`` where a weight is kept); higher means keep. The
        pruning loop narrows ``masks`` in place between rounds: copy them to keep them."""

    def densities(self, final_density: float, iterations: int, schedule: Schedule) -> list[float]:
        """The global density after each pruning round; the default is the Trainer-wide schedule
        (exponential or linear). Scorers with a schedule of their own (SNIP-it) override this."""
        return density_schedule(final_density, iterations, schedule)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class LivingWeights:
    """The weights alive at the start of a round, as the pruning loop keeps them.

    Attributes:
        masks: ``{name: bool mask}``, ``True`` where a weight is alive; narrowed in place between rounds.
        pruned: ``{name: flat positions}`` the previous round pruned, or ``None`` (the first round, or too
            many to list): then compare with ``masks``.
        positions: ``{name: sorted flat positions}`` of the living weights once few are alive (at most an
            eighth), else ``None``.
    """

    masks: Mapping[str, Tensor]
    pruned: Optional[Mapping[str, Tensor]] = None
    positions: Optional[Mapping[str, Tensor]] = None


State = TypeVar("State")


class IncrementalScorer(Scorer, Generic[State]):
    """A monotone scorer that carries work from one round of a pruning run to the next.

    Opt in when a round can reuse what the last one built, or when scoring only the living weights saves
    time: SynFlow keeps its linearised weights between rounds, marks just the newly pruned ones, and once few
    weights are alive scores only those. The pruning loop then calls :meth:`start` once per run and
    :meth:`score_round` every round, in place of :meth:`score`:

    - the ``state`` :meth:`start` returns is the scorer's, held by the loop for that run only (a scorer
      instance may prune many models; keep nothing on ``self``);
    - ``living`` (:class:`LivingWeights`) says what changed since the last round;
    - where ``living.positions`` lists a tensor's living weights, its scores may be a 1-D tensor of the
      scores at those positions, in that order (pruned weights cannot be kept, so their scores are never
      read); otherwise they are shaped like the mask.

    Pruned weights must stay pruned, so only monotone scorers opt in (a subclass with ``monotone = False``
    is refused). :meth:`score` (a single pass, as :func:`~lightning_synflow.compute_scores` runs it) is
    :meth:`score_round` on a fresh state; a subclass that wants to see every round wraps ``score_round``.
    """

    monotone: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.monotone:
            raise TypeError(f"{cls.__qualname__} sets monotone = False, but an IncrementalScorer must be monotone")

    @abstractmethod
    def start(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> State:
        """The state of a new pruning run, before its first round."""

    @abstractmethod
    def score_round(
        self, model: nn.Module, living: LivingWeights, state: State, context: ScoringContext
    ) -> dict[str, Tensor]:
        """The round's scores, updating ``state`` for the next round."""

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        return self.score_round(model, LivingWeights(masks), self.start(model, masks, context), context)


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


def check_scores_shards(scorer: Scorer, where: str) -> None:
    """Raise, naming the scorers that can, unless ``scorer`` scores sharded models (``where``: the model's or
    strategy's layout, for the message)."""
    if not scorer.supports_sharding:
        raise ValueError(
            f"scorer {scorer!r} cannot score a sharded model ({where}); scorers that can:"
            f" {[n for n in available_scorers() if get_scorer(n).supports_sharding]}"
        )
