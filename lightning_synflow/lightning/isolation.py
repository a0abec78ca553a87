"""Scoring without a trace: the random streams and the module state that training goes on to use.

Data-driven scorers call the LightningModule's own ``training_step`` on the Trainer's own loader; that
draws from the global random generators (a shuffled loader's new iterator, dropout) and runs the step's
side effects (torchmetrics updates, counters, lists of outputs). Training must see none of it: with
nothing pruned, a run with the callback is bit for bit the run without it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_synflow.distributed.sharding import local

# nn.Module's own bookkeeping: parameters, buffers, children and hooks are not state a step changes.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Restore Python's, NumPy's and torch's global random states (CPU, and ``device`` if it is a GPU)."""
    cuda = [device] if device.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class _Saved:
    """An attribute's own object and a copy of what it holds (``None`` for a value that cannot change in place),
    so that the object itself, of its own type, is put back with its old contents."""

    __slots__ = ("obj", "contents")

    def __init__(self, obj: Any, contents: Any) -> None:
        self.obj, self.contents = obj, contents


def _snapshot(value: Any, seen: set[int]) -> _Saved:
    """``value`` and a copy of its contents, containers (lists, dicts of any dict type, sets, dataclass
    instances) recursively; a container met twice is taken once, so cycles end."""
    if isinstance(value, Tensor):
        return _Saved(value, value.detach().clone())
    if not isinstance(value, (list, dict, set)) and not (is_dataclass(value) and not isinstance(value, type)):
        return _Saved(value, None)
    if id(value) in seen:
        return _Saved(value, None)
    seen.add(id(value))
    if isinstance(value, list):
        return _Saved(value, [_snapshot(v, seen) for v in value])
    if isinstance(value, dict):
        return _Saved(value, [(k, _snapshot(v, seen)) for k, v in value.items()])
    if isinstance(value, set):
        return _Saved(value, set(value))
    return _Saved(value, [(f.name, _snapshot(getattr(value, f.name), seen)) for f in fields(value) if hasattr(value, f.name)])


def _restore(saved: _Saved) -> Any:
    """The saved object, its contents written back in place, so that other references to it (a metric's list
    state, the ``AttributeDict`` behind ``self.hparams``, an optimizer's view of a tensor) see them too."""
    obj, contents = saved.obj, saved.contents
    if contents is None:
        return obj
    if isinstance(obj, Tensor):
        with torch.no_grad():
            if obj.shape == contents.shape and obj.dtype == contents.dtype:
                obj.copy_(contents)
            else:
                obj.data = contents
        return obj
    if isinstance(obj, list):
        obj[:] = [_restore(s) for s in contents]
    elif isinstance(obj, dict):
        items = [(k, _restore(s)) for k, s in contents]
        obj.clear()
        obj.update(items)
    elif isinstance(obj, set):
        obj.clear()
        obj.update(contents)
    else:  # a dataclass instance, frozen ones too
        for name, s in contents:
            object.__setattr__(obj, name, _restore(s))
    return obj


@contextmanager
def preserved_attributes(model: nn.Module) -> Iterator[None]:
    """Give every submodule's attributes (metric states, counters, lists, plain tensors, ``hparams``) and
    buffers back as they were, and drop attributes added meanwhile: what a training step changes. Each
    attribute is the same object as before, of its own type, holding what it held. Parameters are not copied
    (scorers never write to them); modes, ``requires_grad`` and gradients are
    :func:`~lightning_synflow.model_state.preserved_model_state`'s, which every scoring pass runs under.
    """
    modules = list(model.modules())
    seen: set[int] = set()
    attributes = [{k: _snapshot(v, seen) for k, v in vars(m).items() if k not in _MODULE_INTERNALS} for m in modules]
    buffers = [{k: _snapshot(b, seen) for k, b in m._buffers.items() if b is not None} for m in modules]
    try:
        yield
    finally:
        for module, saved_attributes, saved_buffers in zip(modules, attributes, buffers):
            state = vars(module)
            for key in [k for k in state if k not in _MODULE_INTERNALS and k not in saved_attributes]:
                del state[key]
            for key, saved in saved_attributes.items():
                state[key] = _restore(saved)
            for key, saved in saved_buffers.items():
                module._buffers[key] = _restore(saved)


@contextmanager
def restored_on_failure(model: nn.Module) -> Iterator[None]:
    """If the body raises, give ``model`` back as it came: every module's attributes (as
    :func:`preserved_attributes` does; its parameter, buffer, submodule and hook tables too, so that a layer
    shrunk meanwhile is the old layer again) and the values of every parameter and buffer, from a copy in host
    memory taken on entry. Nothing is restored when the body succeeds.
    """
    seen: set[int] = set()
    saved = []
    for module in model.modules():
        internals = {k: dict(v) if isinstance(v, dict) else v for k, v in vars(module).items() if k in _MODULE_INTERNALS}
        others = {k: _snapshot(v, seen) for k, v in vars(module).items() if k not in _MODULE_INTERNALS}
        saved.append((module, {k: vars(module)[k] for k in internals}, internals, others))
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    values = {i: local(t).detach().to("cpu", copy=True) for i, t in tensors.items() if not t.is_meta}  # meta: no values
    try:
        yield
    except BaseException:
        for module, objects, internals, others in saved:
            state = vars(module)
            state.clear()
            for key, obj in objects.items():
                if isinstance(obj, dict):
                    obj.clear()
                    obj.update(internals[key])
                state[key] = obj
            for key, s in others.items():
                state[key] = _restore(s)
        with torch.no_grad():
            for i, value in values.items():
                t = tensors[i]
                piece = local(t)
                if piece.shape == value.shape:
                    piece.copy_(value)
                else:  # replaced wholesale while shrinking
                    t.data = value.to(t.device)
        raise
