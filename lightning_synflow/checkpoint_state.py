"""What a checkpoint's pruning state must hold before its masks are used, and how its description of them is
compared with a callback's arguments.

Masks read from a checkpoint are checked like masks given by hand: a mapping of parameter name to tensor,
covering exactly the tensors the selection picks (a missing one would train dense, an extra one would zero a
bias), before anything is applied. Settings are compared value by value, numbers up to float rounding, so
that ``sparsity=0.9`` and ``compression=10`` are the same density.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from torch import Tensor

#: The callback arguments that say which tensors are prunable, stored beside the masks.
SELECTION_KEYS = ("include_types", "exclude_types", "include_names", "exclude_names", "include_frozen")

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def stored_masks(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The ``masks`` entry of a checkpoint's pruning state, checked to be a mapping of names to tensors."""
    masks = state.get("masks")
    if not isinstance(masks, Mapping):
        raise ValueError(f"`masks` must be a mapping of parameter name to bool tensor, got {type(masks).__name__}: {masks!r:.80}")
    bad = {k: type(v).__name__ for k, v in masks.items() if not isinstance(k, str) or not isinstance(v, Tensor)}
    if bad:
        raise ValueError(f"`masks` must map parameter names to bool tensors; these entries do not: {bad}")
    return dict(masks)


def name_differences(names: Collection[str], expected: Collection[str]) -> tuple[list[str], list[str]]:
    """The prunable tensors the masks leave out, and the tensors they name beyond those."""
    return [n for n in expected if n not in names], [n for n in names if n not in expected]


def same_setting(a: Any, b: Any) -> bool:
    """Equal, numbers (also inside strings such as a distribution's repr) up to float rounding."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, str) and isinstance(b, str):
        if _NUMBER.sub("#", a) != _NUMBER.sub("#", b):
            return False
        return all(math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_setting(x, y) for x, y in zip(a, b))
    return a == b
