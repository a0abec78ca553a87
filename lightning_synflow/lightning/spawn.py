"""Masks back from spawned workers (``strategy="ddp_spawn"``, ``"ddp_notebook"``) to the main process.

A spawned fit runs in worker processes; Lightning hands back only the weights (a non-strict state-dict
load) and ``trainer.callback_metrics``, so the main process would get pruned weights but no masks, and
its next ``fit`` would prune the trained weights afresh. The launcher's ``get_extra_results`` (worker)
and ``update_main_process_results`` (main process) are Lightning's place for further state; they are
extended once, for every such launcher, to carry the state of each callback class registered here,
matched by its order among the Trainer's callbacks of that class.
"""

from __future__ import annotations

import io
from typing import Any, Protocol

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies.launchers.multiprocessing import (
    _MultiProcessingLauncher,
)

_KEY = "lightning_synflow"
_CARRIED: list[type] = []


class SpawnCarried(Protocol):
    def spawn_state(self) -> dict[str, Any]:
        """The state to send from rank zero's worker; empty when there is nothing to send."""

    def adopt_spawn_state(self, state: dict[str, Any], module: LightningModule) -> None:
        """Take the worker's state in the main process, for ``module`` (the main process's model)."""


def _carried(trainer: Trainer) -> list[Any]:
    return [cb for cb in trainer.callbacks if isinstance(cb, tuple(_CARRIED))]


def _get_extra_results(self: _MultiProcessingLauncher, trainer: Trainer) -> dict[str, Any]:
    extra = _original_get_extra_results(self, trainer)
    buffer = io.BytesIO()
    torch.save([cb.spawn_state() for cb in _carried(trainer)], buffer)
    extra[_KEY] = buffer.getvalue()  # bytes, like Lightning's own extras: no tensor memory shared across processes
    return extra


def _update_main_process_results(self: _MultiProcessingLauncher, trainer: Trainer, extra: dict[str, Any]) -> None:
    _original_update_main_process_results(self, trainer, extra)
    if _KEY not in extra:
        return
    states = torch.load(io.BytesIO(extra[_KEY]), weights_only=True)
    for callback, state in zip(_carried(trainer), states):
        if state:
            callback.adopt_spawn_state(state, trainer.lightning_module)


_original_get_extra_results = _MultiProcessingLauncher.get_extra_results
_original_update_main_process_results = _MultiProcessingLauncher.update_main_process_results


def carry_state_back(cls: type[SpawnCarried]) -> type[SpawnCarried]:
    """Class decorator: bring instances' state back from spawned workers (installs the launcher hooks once)."""
    if _MultiProcessingLauncher.get_extra_results is not _get_extra_results:
        _MultiProcessingLauncher.get_extra_results = _get_extra_results
        _MultiProcessingLauncher.update_main_process_results = _update_main_process_results
    _CARRIED.append(cls)
    return cls
