"""The pruning masks in Lightning checkpoints: their three formats, the checks before a stored state is used,
the strategy's save and load wrapped for them, and a shrunk network rebuilt from its checkpoint.

Formats of :class:`~lightning_synflow.PruneAtInit`'s state (beside the settings that made the masks):

- ``masks``: the masks as bool tensors (one process, DDP), with ``shrunk`` (the parameter shapes) after
  ``shrink=True``;
- ``packed_masks``: a sharded model's masks, bit-packed whole in a full checkpoint
  (:mod:`lightning_synflow.distributed.checkpoint`);
- ``masks_beside``: in a distributed checkpoint (a directory), only the masks' names, the packed masks being a
  second ``torch.distributed.checkpoint`` beside the model's, written by the strategy's wrapped
  ``save_checkpoint``.

Masks read from a checkpoint are checked like masks given by hand: a mapping of parameter name to tensor,
covering exactly the tensors the selection picks (a missing one would train dense, an extra one would zero a
bias), before anything is applied. Settings are compared value by value, numbers up to float rounding, so
that ``sparsity=0.9`` and ``compression=10`` are the same density.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_synflow.distributed.checkpoint import (
    from_full_packed,
    full_packed,
    load_masks_beside,
    save_masks_beside,
)
from lightning_synflow.distributed.sharding import is_sharded
from lightning_synflow.lightning.isolation import preserved_attributes, preserved_rng
from lightning_synflow.lightning.trainer_data import given_example_input
from lightning_synflow.masks import check_masks
from lightning_synflow.parameters import select_prunable
from lightning_synflow.selection.channels import channel_mask_differences, shrink_

#: The callback arguments that say which tensors are prunable, stored beside the masks.
SELECTION_KEYS = ("include_types", "exclude_types", "include_names", "exclude_names", "include_frozen")

#: The keys of a pruning state that hold masks, one per format.
FORMATS = ("masks", "packed_masks", "masks_beside")

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")

# ---------------------------------------------------------------------- writing and reading the formats


def masks_state(
    masks: Mapping[str, Tensor], described: Mapping[str, Any], shrunk: Optional[Mapping[str, tuple[int, ...]]], beside: bool
) -> dict[str, Any]:
    """The pruning state to checkpoint: ``masks`` (with ``shrunk``) for whole tensors; a sharded model's masks
    bit-packed whole (``packed_masks``), or, ``beside`` a distributed checkpoint, only their names."""
    if not any(is_sharded(m) for m in masks.values()):
        return {"masks": {n: m.cpu() for n, m in masks.items()}, **({} if shrunk is None else {"shrunk": shrunk}), **described}
    if beside:
        return {"masks_beside": list(masks), **described}
    return {"packed_masks": full_packed(masks), **described}


def holds_masks(state: Mapping[str, Any]) -> bool:
    """The pruning state holds masks, in one of the :data:`FORMATS`."""
    return any(k in state for k in FORMATS)


def masks_beside_checkpoint(masks: Optional[Mapping[str, Tensor]], distributed: bool) -> bool:
    """The masks are sharded and checkpoints are distributed: they are saved beside the model's shards."""
    return distributed and masks is not None and any(is_sharded(m) for m in masks.values())


def restored_masks(model: nn.Module, restored: Mapping[str, Any], ckpt_path: Any) -> dict[str, Tensor]:
    """A checkpoint's masks, laid out as the model's parameters: as saved (one process, DDP), or, for a
    sharded model, each rank unpacking its own block (:mod:`lightning_synflow.distributed.checkpoint`)."""
    try:
        if "masks" in restored:
            return stored_masks(restored)
        if "packed_masks" in restored:
            return from_full_packed(model, restored["packed_masks"])
        return load_masks_beside(model, list(restored["masks_beside"]), Path(ckpt_path))
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"PruneAtInit: the masks restored from {ckpt_path} are not usable: {err}") from err


def stored_masks(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The ``masks`` entry of a checkpoint's pruning state, checked to be a mapping of names to tensors."""
    masks = state.get("masks")
    if not isinstance(masks, Mapping):
        raise ValueError(f"`masks` must be a mapping of parameter name to bool tensor, got {type(masks).__name__}: {masks!r:.80}")
    bad = {k: type(v).__name__ for k, v in masks.items() if not isinstance(k, str) or not isinstance(v, Tensor)}
    if bad:
        raise ValueError(f"`masks` must map parameter names to bool tensors; these entries do not: {bad}")
    return dict(masks)


def stored_selection(selection: Mapping[str, Any], include_frozen: bool) -> dict[str, Any]:
    """The selection arguments (those of :func:`~lightning_synflow.select_prunable` but ``include_frozen``) as
    a checkpoint stores them: type names as strings, lists as lists."""

    def names(types: Optional[list[Any]]) -> Optional[list[str]]:
        return None if types is None else [t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}" for t in types]

    return {
        "include_types": names(selection["include_types"]),
        "exclude_types": names(selection["exclude_types"]),
        "include_names": list(selection["include_names"]),
        "exclude_names": list(selection["exclude_names"]),
        "include_frozen": include_frozen,
    }


# ---------------------------------------------------------------------- checks of stored masks and settings


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


def warn_if_settings_differ(restored: Mapping[str, Any], own: Mapping[str, Any]) -> None:
    """Resuming with a checkpoint's masks made with other arguments than the callback's: said, not refused."""
    differ = {k: (v, own[k]) for k, v in restored.items() if k in own and not same_setting(v, own[k])}
    if differ:
        said = "; ".join(f"{k}: checkpoint {_shown(old)}, callback {_shown(new)}" for k, (old, new) in differ.items())
        rank_zero_warn(f"PruneAtInit: resuming with the checkpoint's masks, which were made with other arguments ({said})")


def check_restored_names(
    model: LightningModule,
    masks: Mapping[str, Tensor],
    restored: Mapping[str, Any],
    selection: Mapping[str, Any],
    include_frozen: bool,
    granularity: str,
    traced: Callable[[], Any],
) -> None:
    """A checkpoint's masks must cover exactly the tensors the callback's ``selection`` picks, or those of the
    selection stored with them (then kept, with a warning naming the difference); else they are refused.
    ``traced()``: the input whole-channel masks are traced with."""
    if restored.get("granularity", granularity) == "channel":
        _check_restored_channels(model, masks, restored, selection, include_frozen, traced)
        return
    missing, extra = _uncovered(model, masks, selection, include_frozen)
    if not missing and not extra:
        return
    stored = {k: restored[k] for k in SELECTION_KEYS if k in restored}
    if len(stored) == len(SELECTION_KEYS):
        theirs = {k: v for k, v in stored.items() if k != "include_frozen"}
        if _uncovered(model, masks, theirs, stored["include_frozen"]) == ([], []):
            rank_zero_warn(
                f"PruneAtInit: the checkpoint's masks were made with another selection of tensors"
                f" ({'; '.join(f'{k}: checkpoint {stored[k]!r}, callback {v!r}' for k, v in stored_selection(selection, include_frozen).items() if not same_setting(stored[k], v))});"
                f" they are kept as stored: {'pruned as before, though this selection leaves them dense: ' + str(extra) if extra else ''}"
                f"{'; ' if extra and missing else ''}{'left dense, though this selection would prune them: ' + str(missing) if missing else ''}"
            )
            return
    raise ValueError(
        f"PruneAtInit: the masks restored from the checkpoint do not cover the prunable tensors of"
        f" {type(model).__name__}"
        + (f"; missing (they would train dense): {missing}" if missing else "")
        + (f"; not prunable under the selection (a bias or norm would be zeroed): {extra}" if extra else "")
        + ". Nothing was changed; resume with the selection arguments the checkpoint was made with, or prune afresh"
    )


def _check_restored_channels(
    model: LightningModule,
    masks: Mapping[str, Tensor],
    restored: Mapping[str, Any],
    selection: Mapping[str, Any],
    include_frozen: bool,
    traced: Callable[[], Any],
) -> None:
    """Whole-channel masks must be ones channel pruning of this model makes: exactly the tensors holding the
    channels that tracing (as a fresh pruning does) finds removable under the callback's selection (or the
    stored one, with a warning), the same channels kept in every tensor of a coupled group."""
    if not masks:
        raise ValueError("PruneAtInit: the checkpoint's whole-channel masks are empty; nothing was changed")
    partial = [n for n, m in masks.items() if m.dim() and not _whole_slices(m)]
    if partial:
        raise ValueError(
            f"PruneAtInit: the checkpoint's masks {partial} do not remove whole output channels, as granularity"
            f" 'channel' does; nothing was changed"
        )
    if "shrunk" in restored:
        return  # the pruned channels are gone: nothing is masked, and the callback checks the model's shapes
    try:
        check_masks(model, masks)
    except (ValueError, TypeError) as err:
        raise ValueError(f"PruneAtInit: the masks restored from the checkpoint do not fit {type(model).__name__}: {err}") from err
    own_settings = stored_selection(selection, include_frozen)
    stored = {k: restored[k] for k in SELECTION_KEYS if k in restored}
    selections = [(selection, include_frozen)]
    if len(stored) == len(SELECTION_KEYS) and not all(same_setting(stored[k], v) for k, v in own_settings.items()):
        selections.append(({k: v for k, v in stored.items() if k != "include_frozen"}, stored["include_frozen"]))
    example = traced()
    found = []
    for which, frozen in selections:
        names = select_prunable(model, include_frozen=frozen, **which)
        with preserved_rng(model.device), preserved_attributes(model):
            found.append(channel_mask_differences(model, masks, example, names))
        if not any(found[-1].values()):
            if len(found) > 1:
                rank_zero_warn(
                    f"PruneAtInit: the checkpoint's whole-channel masks were made with another selection of tensors"
                    f" ({'; '.join(f'{k}: checkpoint {stored[k]!r}, callback {v!r}' for k, v in own_settings.items() if not same_setting(stored[k], v))});"
                    f" they are kept as stored"
                )
            return
    said = {
        "missing": "missing (they would train dense)",
        "extra": "masked, though channel pruning never masks them (output layers, tensors of no removable channel)",
        "inconsistent": "keeping other channels than the rest of their coupled group (weights, bias, normalisation)",
    }
    raise ValueError(
        f"PruneAtInit: the checkpoint's whole-channel masks are not ones channel pruning of {type(model).__name__}"
        f" makes: " + "; ".join(f"{said[k]}: {v}" for k, v in found[0].items() if v)
        + ". Nothing was changed; resume with the model and selection arguments the checkpoint was made with, or prune afresh"
    )


def check_still_covered(
    model: LightningModule,
    masks: Mapping[str, Tensor],
    described: Mapping[str, Any],
    selection: Mapping[str, Any],
    include_frozen: bool,
    granularity: str,
    traced: Callable[[], Any],
) -> None:
    """A model fitted again must still be one its masks cover (under the selection that made them,
    ``described``, else the callback's): a prunable layer added since would train dense. Refused, as the same
    gap in a checkpoint is."""
    if all(k in described for k in SELECTION_KEYS):
        selection = {k: described[k] for k in SELECTION_KEYS if k != "include_frozen"}
        include_frozen = described["include_frozen"]
    if described.get("granularity", granularity) == "channel":
        names = select_prunable(model, include_frozen=include_frozen, **selection)
        example = traced()
        with preserved_rng(model.device), preserved_attributes(model):
            missing = channel_mask_differences(model, masks, example, names)["missing"]
    else:
        missing = _uncovered(model, masks, selection, include_frozen)[0]
    if missing:
        raise ValueError(
            f"PruneAtInit: {type(model).__name__} has prunable tensors that the masks of its previous fit do not"
            f" cover (they would train dense): {missing}. Nothing was changed; prune the changed model with a new"
            f" PruneAtInit"
        )


def _uncovered(
    model: nn.Module, masks: Mapping[str, Tensor], selection: Mapping[str, Any], include_frozen: bool
) -> tuple[list[str], list[str]]:
    """The tensors a selection prunes that the masks leave out, and those the masks name that it never prunes.
    A frozen weight matrix may be either way: frozen since the masks were made (fine-tuning), it keeps its mask."""
    wanted = select_prunable(model, include_frozen=include_frozen, **selection)
    allowed = select_prunable(model, include_frozen=True, **selection)
    return name_differences(masks, wanted)[0], name_differences(masks, allowed)[1]


def _whole_slices(mask: Tensor) -> bool:
    """Every slice along dim 0 is wholly kept or wholly pruned."""
    if mask.dtype != torch.bool:
        return True  # refused later, with the dtype named
    rows = mask.reshape(mask.shape[0], -1)
    return bool((rows.all(1) | ~rows.any(1)).all())


def _shown(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


# ---------------------------------------------------------------------- the strategy's save and load


def save_masks_beside_checkpoints(strategy: Any) -> None:
    """Make the strategy's ``save_checkpoint`` also write the pruner's masks beside a distributed checkpoint
    (Lightning writes everything but the model and optimizer states from rank zero alone). Installed once per
    strategy; the pruner is the one last set up with it (``strategy._lightning_synflow_pruner``)."""
    if getattr(strategy, "_lightning_synflow_saves_masks", False):
        return
    save = strategy.save_checkpoint

    def save_checkpoint(checkpoint: dict[str, Any], filepath: Any, storage_options: Optional[Any] = None) -> None:
        save(checkpoint, filepath, storage_options)
        pruner = getattr(strategy, "_lightning_synflow_pruner", None)
        if pruner is not None and pruner._masks_beside_checkpoint() and "masks_beside" in _pruner_state(checkpoint, pruner):
            save_masks_beside(pruner.masks, Path(strategy.broadcast(filepath)))

    strategy.save_checkpoint = save_checkpoint
    strategy._lightning_synflow_saves_masks = True


def read_checkpoints_first(strategy: Any, pruner: Any) -> None:
    """Make the strategy's ``load_checkpoint`` show the loaded checkpoint to the pruner (its
    ``_read_checkpoint(strategy, checkpoint, path)``) before Lightning restores anything from it (no callback
    hook runs between loading a checkpoint and loading the model's weights). Installed once per strategy; the
    pruner is the one last set up with it."""
    strategy._lightning_synflow_reader = pruner
    if getattr(strategy, "_lightning_synflow_reads_checkpoints", False):
        return
    load = strategy.load_checkpoint

    def load_checkpoint(checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        checkpoint = load(checkpoint_path, *args, **kwargs)
        reader = getattr(strategy, "_lightning_synflow_reader", None)
        if reader is not None and isinstance(checkpoint, Mapping):
            reader._read_checkpoint(strategy, checkpoint, checkpoint_path)
        return checkpoint

    strategy.load_checkpoint = load_checkpoint
    strategy._lightning_synflow_reads_checkpoints = True


def _pruner_state(checkpoint: Mapping[str, Any], pruner: Any) -> Mapping[str, Any]:
    """The pruner's state in a checkpoint Lightning built (its callbacks' states keyed by state key)."""
    return checkpoint.get("callbacks", {}).get(pruner.state_key, {})


# ---------------------------------------------------------------------- shrunk networks


def shrink_to_read_checkpoint(
    model: LightningModule, checkpoint: Mapping[str, Any], path: Any, input_shape: Optional[list[int]], state_key: str
) -> bool:
    """A checkpoint a Trainer reads that holds a shrunk model: shrink ``model`` (built as before pruning) to it
    now, before its weights are restored, once they are sure to load into it, tracing it with its
    ``example_input_array`` or zeros of ``input_shape``; ``False`` if there was nothing to do."""
    if "shrunk" in _shrunk_state(checkpoint, state_key):
        _check_loads_after_shrinking(model, checkpoint, path)
    return shrink_to_checkpoint(model, checkpoint, given_example_input(model, input_shape), state_key)


def shrink_to_checkpoint(
    model: nn.Module, checkpoint: Mapping[str, Any], example_input: Optional[Any] = None, state_key: Optional[str] = None
) -> bool:
    """Shrink ``model`` (built as before pruning) in place to the architecture a ``PruneAtInit(shrink=True)``
    checkpoint (loaded, as a dict) holds; ``False`` and nothing done where the checkpoint holds no shrunk model or
    the model has its shapes already. For a LightningModule's ``on_load_checkpoint``, so that
    ``Model.load_from_checkpoint(path)`` works: ``shrink_to_checkpoint(self, checkpoint, self.example_input_array)``.
    ``state_key``: the pruner's key among the checkpoint's callback states; default whichever holds a shrunk model.
    """
    state = _shrunk_state(checkpoint, state_key)
    if "shrunk" not in state:
        return False
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    if shapes == {n: tuple(s) for n, s in state["shrunk"].items()}:
        return False
    if example_input is None:
        raise ValueError(
            f"the checkpoint holds a {type(model).__name__} shrunk by PruneAtInit(shrink=True), which is traced once to"
            f" be rebuilt: set `example_input_array` on the model (or PruneAtInit's `input_shape`), or call"
            f" lightning_synflow.load_shrunk(model, ckpt_path, example_input) first"
        )
    shrink_(model, state["masks"], example_input)
    return True


def _check_loads_after_shrinking(pl_module: LightningModule, checkpoint: Mapping[str, Any], path: Any) -> None:
    """Refuse, before shrinking the model, a shrunk checkpoint whose weights Lightning's strict load would then
    refuse for other names (a layer added or removed since): the model would be left shrunk by a failed run."""
    if not getattr(pl_module, "strict_loading", True) or "state_dict" not in checkpoint:
        return
    ours, theirs = set(pl_module.state_dict()), set(checkpoint["state_dict"])
    if ours != theirs:
        raise ValueError(
            f"PruneAtInit: {path} holds a shrunk {type(pl_module).__name__} whose weights do not load into this one"
            f" (missing from the checkpoint: {sorted(ours - theirs)}; not in the model: {sorted(theirs - ours)});"
            f" the model was not shrunk. Build the model the checkpoint was saved from"
        )


def _shrunk_state(checkpoint: Mapping[str, Any], state_key: Optional[str] = None) -> Mapping[str, Any]:
    """The state of the pruner that shrank the checkpoint's model: under ``state_key``, else whichever callback
    state holds a shrunk model (a subclass of PruneAtInit saves under its own class name); ``{}`` if none does."""
    states = checkpoint.get("callbacks", {})
    if state_key is not None:
        return states.get(state_key, {})
    return next((s for s in states.values() if isinstance(s, Mapping) and "shrunk" in s and "masks" in s), {})


def load_shrunk(model: LightningModule, checkpoint_path: Union[str, Path], example_input: Optional[Any] = None) -> LightningModule:
    """Shrink ``model`` (built as before pruning) in place to the architecture a ``PruneAtInit(shrink=True)``
    checkpoint holds, so that the checkpoint loads into it (``trainer.fit(model, ckpt_path=...)`` or
    ``model.load_state_dict(checkpoint["state_dict"])``). ``example_input``: default the model's
    ``example_input_array``."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    if "shrunk" not in _shrunk_state(checkpoint):
        raise ValueError(f"{checkpoint_path} holds no shrunk model: it was not saved by PruneAtInit(shrink=True)")
    example = model.example_input_array if example_input is None else example_input
    if example is None:
        raise ValueError("load_shrunk traces the model once: give `example_input` or set model.example_input_array")
    shrink_to_checkpoint(model, checkpoint, example)
    return model
