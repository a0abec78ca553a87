"""The types of :class:`~lightning_synflow.PruneAtInit`'s arguments, as LightningCLI reads them.

Each type carries this package's own check of the argument, which LightningCLI's parser applies (through
pydantic, where installed) when it reads a config or ``--print_config``, so that the parser's error carries the
package's message; the callback's constructor runs the same checks on values given in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Union

from annotated_types import Predicate

from lightning_synflow.distributions import Distribution, get_distribution
from lightning_synflow.parameters import selection_list
from lightning_synflow.schedules import Schedule, resolve_density
from lightning_synflow.scorers.base import Scorer, get_scorer
from lightning_synflow.selection.granularity import get_granularity
from lightning_synflow.validation import (
    check_bool,
    check_int,
    check_number,
    check_shape,
)


def _checked(check: Callable[[Any], Any]) -> Predicate:
    """A type-hint constraint that runs ``check`` (which raises on a wrong value)."""

    def valid(value: Any) -> bool:
        check(value)
        return True

    valid.__qualname__ = valid.__name__ = getattr(check, "__name__", "check")
    return Predicate(valid)


def _granularity(spec: str) -> None:
    get_granularity(spec)


def check_input_shape(value: Any) -> list[int]:
    """``input_shape``: positive ints, without the batch dimension."""
    return check_shape("input_shape", value, "without the batch dimension")


def check_num_batches(value: Any) -> int:
    """``num_batches``: a positive int."""
    return check_int("num_batches", value)


def check_isometry_steps(value: Any) -> int:
    """``isometry_steps``: an int >= 0 (0 = off)."""
    return check_int("isometry_steps", value, 0, meaning="0 = off")


def check_isometry_lr(value: Any) -> float:
    """``isometry_lr``: a positive finite number."""
    return check_number("isometry_lr", value, "a positive finite number", low=0, open_low=True)


def check_flags(**flags: Any) -> dict[str, bool]:
    """Boolean arguments (``shrink=..., reinit=...``): each a bool, by its name."""
    return {name: check_bool(name, value) for name, value in flags.items()}


def selection_arguments(
    include_types: Any, exclude_types: Any, include_names: Any, exclude_names: Any
) -> dict[str, Any]:
    """The arguments that choose the prunable tensors, as lists (``include_types=None``: the default types);
    a single string is one pattern or type name."""
    return dict(
        include_types=None if include_types is None else selection_list("include_types", include_types, types=True),
        exclude_types=selection_list("exclude_types", exclude_types, types=True),
        include_names=selection_list("include_names", include_names),
        exclude_names=selection_list("exclude_names", exclude_names),
    )


#: A registered scorer's name.
ScorerName = Annotated[str, _checked(get_scorer)]
#: A scorer's name or instance.
ScorerArgument = Union[ScorerName, Scorer]
#: ``"weight"``, ``"channel"`` or ``"N:M"`` with 0 < N < M.
GranularityName = Annotated[str, _checked(_granularity)]
Sparsity = Annotated[float, _checked(lambda v: resolve_density(v, None))]
Compression = Annotated[float, _checked(lambda v: resolve_density(None, v))]
Iterations = Annotated[int, _checked(lambda v: check_int("iterations", v))]
#: ``"exponential"`` or ``"linear"``.
ScheduleName = Schedule
NumBatches = Annotated[int, _checked(check_num_batches)]
IsometrySteps = Annotated[int, _checked(check_isometry_steps)]
#: A registered distribution's name (``"global"``, ``"uniform"``, ``"erk"``).
DistributionName = Annotated[str, _checked(lambda v: get_distribution(v) if isinstance(v, str) else None)]
#: A distribution's name, a mapping of tensor-name glob to density, or a distribution.
DistributionArgument = Union[DistributionName, dict[str, float], Distribution]
#: A shape without the batch dimension: positive ints.
InputShape = Annotated[list[int], _checked(check_input_shape)]
IsometryLR = Annotated[float, _checked(check_isometry_lr)]
