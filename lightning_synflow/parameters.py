"""Which tensors are prunable: the weight matrices of known layers, chosen by module type and by
parameter-name pattern.

Types and patterns are plain strings so that a YAML file can say what a Python caller says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrize import ParametrizationList
from torch.nn.utils.prune import BasePruningMethod

ModuleType = Union[str, type]

_RECURRENT = ("weight_ih_l*", "weight_hh_l*", "weight_hr_l*")  # every layer and direction, LSTM projections
_CELL = ("weight_ih", "weight_hh")

#: Layer -> glob patterns of its parameters that are weight matrices (they multiply activations): what is
#: pruned by default, first and last layer included. Embeddings, norms and biases stay dense. A layer
#: matches its subclasses too (attention's ``out_proj``, timm's and bitsandbytes' layers are ``nn.Linear``
#: or convolution subclasses); third-party layers are named by dotted path, so their packages are never
#: imported.
WEIGHT_MATRICES: dict[ModuleType, tuple[str, ...]] = {
    nn.Linear: ("weight",),
    nn.Bilinear: ("weight",),
    nn.Conv1d: ("weight",),
    nn.Conv2d: ("weight",),
    nn.Conv3d: ("weight",),
    nn.ConvTranspose1d: ("weight",),
    nn.ConvTranspose2d: ("weight",),
    nn.ConvTranspose3d: ("weight",),
    nn.MultiheadAttention: ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
    nn.RNN: _RECURRENT,
    nn.LSTM: _RECURRENT,
    nn.GRU: _RECURRENT,
    nn.RNNCell: _CELL,
    nn.LSTMCell: _CELL,
    nn.GRUCell: _CELL,
    "transformers.pytorch_utils.Conv1D": ("weight",),  # Hugging Face's linear map of GPT-2 and GPT
}

#: The layer types pruned by default: the keys of :data:`WEIGHT_MATRICES`.
DEFAULT_PRUNABLE_TYPES: tuple[ModuleType, ...] = tuple(WEIGHT_MATRICES)


def _is(cls: type, wanted: ModuleType) -> bool:
    """``cls`` is ``wanted``, given as a class or by bare name (``"Conv2d"``) or dotted path
    (``"torch.nn.modules.conv.Conv2d"``); names are case-sensitive (``"Conv1D"`` is not ``nn.Conv1d``)."""
    if isinstance(wanted, type):
        return cls is wanted
    return wanted in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}")


def _type_matches(module: nn.Module, wanted: Sequence[ModuleType]) -> bool:
    """True if a class in the module's MRO is one of ``wanted``, so subclasses of a named layer match too."""
    return any(_is(cls, w) for cls in type(module).__mro__ for w in wanted)


def weight_matrices(module: nn.Module) -> tuple[str, ...]:
    """Patterns of the module's weight-matrix parameters: its nearest class in :data:`WEIGHT_MATRICES`,
    else ``("weight",)`` (so that ``include_types=["Embedding"]`` prunes an embedding's ``weight``)."""
    for cls in type(module).__mro__:
        for layer, patterns in WEIGHT_MATRICES.items():
            if _is(cls, layer):
                return patterns
    return ("weight",)


def _matches_any(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def select_prunable(
    model: nn.Module,
    *,
    include_types: Sequence[ModuleType] | None = None,
    exclude_types: Sequence[ModuleType] = (),
    include_names: Sequence[str] = (),
    exclude_names: Sequence[str] = (),
    include_frozen: bool = False,
) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the tensors to prune, in the model's order.

    A parameter is prunable when it is a weight matrix (:func:`weight_matrices`) of a module of one of
    ``include_types`` (default: :data:`DEFAULT_PRUNABLE_TYPES`) or its name matches one of the glob patterns
    ``include_names`` (e.g. ``"embed.weight"``), and neither its module type is in ``exclude_types`` nor its
    name matches ``exclude_names`` (e.g. ``"fc.*"`` keeps the classifier dense).

    A tensor used by several modules (an embedding tied to the output head) is one tensor: it is selected
    once, under its ``named_parameters()`` name, if any of its uses is selected and none is excluded, so it
    is pruned consistently wherever it is used. Frozen parameters (``requires_grad=False``) are never trained,
    so a cut could never be repaired: they stay dense unless ``include_frozen``. A parametrized weight
    (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``) is pruned through its stored tensor
    laid out like it (``layer.parametrizations.weight.original1`` / ``.original``), and a weight already
    pruned with ``torch.nn.utils.prune`` through its ``weight_orig``: their zeros stay zeros in the computed
    weight.
    """
    types = DEFAULT_PRUNABLE_TYPES if include_types is None else tuple(include_types)
    uses: dict[int, list[tuple[nn.Module, str, str]]] = {}  # tensor -> (module, local name, full name)
    modules = dict(model.named_modules(remove_duplicate=False))
    for module_name, module in modules.items():
        renamed = _torch_pruned(module)
        for param_name, param in module.named_parameters(recurse=False, remove_duplicate=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            uses.setdefault(id(param), []).append((module, renamed.get(param_name, param_name), full))
        if isinstance(module, ParametrizationList):
            for param_name, param in _parametrized_originals(module):
                *owner, _, local = module_name.split(".")  # <owner>.parametrizations.<tensor name>
                uses.setdefault(id(param), []).append((modules[".".join(owner)], local, f"{module_name}.{param_name}"))
    selected: list[str] = []
    for name, param in model.named_parameters():
        if not (include_frozen or param.requires_grad):
            continue
        aliases = uses[id(param)]
        chosen = any(
            (_type_matches(m, types) and _matches_any(local, weight_matrices(m))) or _matches_any(full, include_names)
            for m, local, full in aliases
        )
        excluded = any(_type_matches(m, exclude_types) or _matches_any(full, exclude_names) for m, _, full in aliases)
        if chosen and not excluded:
            selected.append(name)
    return selected


def frozen_weight_matrices(model: nn.Module, **selection: Any) -> list[str]:
    """The tensors :func:`select_prunable` with ``selection`` would pick but for being frozen: left dense, and
    listed as such in the sparsity report."""
    params = dict(model.named_parameters())
    return [n for n in select_prunable(model, include_frozen=True, **selection) if not params[n].requires_grad]


def _torch_pruned(module: nn.Module) -> dict[str, str]:
    """``{"weight_orig": "weight"}`` for a tensor already pruned with ``torch.nn.utils.prune``, which keeps it
    as ``weight_orig`` and computes ``weight = weight_orig * weight_mask``: zeros in it are zeros in the weight."""
    return {
        f"{hook._tensor_name}_orig": hook._tensor_name
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, BasePruningMethod)
    }


def _parametrized_originals(parametrization: ParametrizationList) -> list[tuple[str, nn.Parameter]]:
    """The stored tensors of a parametrized weight that are laid out like it, so that zeros in them are zeros
    in the weight: weight_norm's direction ``original1`` (not its norms ``original0``), spectral_norm's
    ``original``. They are the largest of its originals."""
    originals = list(parametrization.named_parameters(recurse=False))
    largest = max((p.numel() for _, p in originals), default=0)
    return [(n, p) for n, p in originals if p.numel() == largest]


def tied_names(model: nn.Module) -> dict[str, str]:
    """Every further name of a tied tensor -> the one name ``model.named_parameters()`` gives it."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def unmatched_selection(
    model: nn.Module,
    *,
    include_types: Sequence[ModuleType] | None = None,
    exclude_types: Sequence[ModuleType] = (),
    include_names: Sequence[str] = (),
    exclude_names: Sequence[str] = (),
) -> dict[str, list[Any]]:
    """The layer types no module of ``model`` is (or derives from) and the name patterns no parameter name
    matches, per argument: most likely typos (``"Conv2D"`` for ``"Conv2d"``), which would otherwise leave
    layers silently dense or silently pruned."""
    classes = {cls for module in model.modules() for cls in type(module).__mro__}
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    names += [
        f"{module_name}.{param_name}"
        for module_name, module in model.named_modules()
        if isinstance(module, ParametrizationList)
        for param_name, _ in _parametrized_originals(module)
    ]
    unmatched = {
        "include_types": [t for t in include_types or () if not any(_is(cls, t) for cls in classes)],
        "exclude_types": [t for t in exclude_types if not any(_is(cls, t) for cls in classes)],
        "include_names": [p for p in include_names if not any(fnmatchcase(n, p) for n in names)],
        "exclude_names": [p for p in exclude_names if not any(fnmatchcase(n, p) for n in names)],
    }
    return {k: v for k, v in unmatched.items() if v}


def selection_list(name: str, value: Any, *, types: bool = False) -> list[Any]:
    """A selection argument as a list: ``None`` is empty, a single string is one pattern or type name (not its
    characters: ``list("*fc1*")`` would hold the pattern ``"*"``), else a list or tuple of strings (or classes,
    for ``types``). Raises a ValueError naming the argument otherwise."""
    if value is None:
        return []
    if isinstance(value, str) or (types and isinstance(value, type)):
        return [value]
    allowed = (str, type) if types else (str,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, allowed) for v in value):
        what = "a layer class name or a list of them" if types else "a glob pattern or a list of them"
        raise ValueError(f"`{name}` must be {what}, got {value!r}")
    return list(value)


def check_weight_norm(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Raise if a mask empties a slice that ``weight_norm`` divides by its norm: 0/0 makes those weights NaN,
    and NaN spreads through the whole network in the first forward pass."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        owner, _, original = name.rpartition(".")
        parametrization = modules.get(owner)
        if original != "original1" or not isinstance(parametrization, ParametrizationList):
            continue
        norms = [p for p in parametrization if type(p).__name__ == "_WeightNorm"]  # torch's private class
        if not norms:
            continue
        dim = norms[0].dim
        slices = mask.reshape(1, -1) if dim == -1 else mask.movedim(dim, 0).reshape(mask.shape[dim], -1)
        empty = torch.nonzero(~slices.any(1)).flatten().tolist()
        if empty:
            raise ValueError(
                f"pruning empties slice(s) {empty[:10]}{' ...' if len(empty) > 10 else ''} (dim {dim}) of {name!r}, the"
                f" direction of a weight_norm layer, which divides by their norm (0/0 = NaN); lower the sparsity,"
                f" keep it dense (exclude_names=[{name!r}]), or drop weight_norm"
            )
