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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

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


def _snapshot(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (list, dict, set)):
        return value.copy()
    return value


def _restore(current: Any, saved: Any) -> Any:
    """The saved value, written back into the same object where it was changed in place, so that other
    references to it (a metric's list state, an optimizer's view of a tensor) see it too."""
    if isinstance(saved, Tensor) and isinstance(current, Tensor) and current.shape == saved.shape:
        with torch.no_grad():
            current.copy_(saved)
        return current
    if isinstance(saved, list) and isinstance(current, list):
        current[:] = saved
        return current
    if isinstance(saved, (dict, set)) and type(current) is type(saved):
        current.clear()
        current.update(saved)
        return current
    return saved


@contextmanager
def preserved_attributes(model: nn.Module) -> Iterator[None]:
    """Give every submodule's attributes (metric states, counters, lists, plain tensors) and buffers back as
    they were, and drop attributes added meanwhile: what a training step changes. Parameters are not copied
    (scorers never write to them); modes, ``requires_grad`` and gradients are
    :func:`~lightning_synflow.model_state.preserved_model_state`'s, which every scoring pass runs under.
    """
    modules = list(model.modules())
    attributes = [{k: _snapshot(v) for k, v in vars(m).items() if k not in _MODULE_INTERNALS} for m in modules]
    buffers = [{k: _snapshot(b) for k, b in m._buffers.items() if b is not None} for m in modules]
    try:
        yield
    finally:
        for module, saved_attributes, saved_buffers in zip(modules, attributes, buffers):
            state = vars(module)
            for key in [k for k in state if k not in _MODULE_INTERNALS and k not in saved_attributes]:
                del state[key]
            for key, saved in saved_attributes.items():
                state[key] = _restore(state.get(key), saved)
            for key, saved in saved_buffers.items():
                module._buffers[key] = _restore(module._buffers.get(key), saved)
