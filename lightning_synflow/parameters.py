"""Which tensors are prunable: selection by module type and by parameter-name pattern.

Types and patterns are plain strings so that a YAML file can say what a Python caller says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Union

from torch import nn

ModuleType = Union[str, type]

#: Layers whose ``weight`` is prunable by default: every Linear and convolution, first and last included.
DEFAULT_PRUNABLE_TYPES: tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def _type_matches(module: nn.Module, wanted: Sequence[ModuleType]) -> bool:
    """True if the module is an instance of one of ``wanted``, given as classes or as class names.

    A name matches any class in the module's MRO, by bare name (``"Conv2d"``) or by dotted path
    (``"torch.nn.modules.conv.Conv2d"``), so subclasses of a named layer are selected too.
    """
    for cls in type(module).__mro__:
        for w in wanted:
            if isinstance(w, type):
                if cls is w:
                    return True
            elif w in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}"):
                return True
    return False


def _matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def select_prunable(
    model: nn.Module,
    *,
    include_types: Sequence[ModuleType] | None = None,
    exclude_types: Sequence[ModuleType] = (),
    include_names: Sequence[str] = (),
    exclude_names: Sequence[str] = (),
) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the tensors to prune, in the model's order.

    A parameter is prunable when it is the ``weight`` of a module of one of ``include_types`` (default:
    :data:`DEFAULT_PRUNABLE_TYPES`) or its name matches one of the glob patterns ``include_names``
    (e.g. ``"embed.weight"``), and neither its module type is in ``exclude_types`` nor its name matches
    ``exclude_names`` (e.g. ``"fc.*"`` keeps the classifier dense).
    """
    types = DEFAULT_PRUNABLE_TYPES if include_types is None else tuple(include_types)
    selected: list[str] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if id(param) in seen:  # tied weights are pruned once, under their first name
                continue
            by_type = param_name == "weight" and _type_matches(module, types)
            if not (by_type or _matches_any(full, include_names)):
                continue
            if _type_matches(module, exclude_types) or _matches_any(full, exclude_names):
                continue
            seen.add(id(param))
            selected.append(full)
    return selected
