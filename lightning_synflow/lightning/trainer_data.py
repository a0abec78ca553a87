"""What data-driven scorers get inside a Trainer: the batches and the loss that training itself sees.

Training passes every batch through the combined loader (several loaders, as a dict or list, are one
batch), the precision plugin's input conversion (``bf16-true`` casts floating inputs), the transfer
hooks, and calls ``training_step`` inside the precision plugin's forward context (autocast). Scoring
does the same, on a loader iterator of its own that it shuts down afterwards, so no worker outlives it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from lightning_synflow.scorers.base import ExampleInput, LossFn


def setup_training_data(trainer: Trainer) -> None:
    """Build the Trainer's training loaders now rather than when training starts (Lightning reuses them).

    Call it outside any random-state isolation: building them draws from the global generator (the
    loop's first loader iterator), and training must find those draws made, as without the callback."""
    trainer.fit_loop.setup_data()


def _swap_iterator(loader: Any, iterator: Any) -> Any:
    """Put ``iterator`` in place of a DataLoader's persistent-worker iterator; return the one it had."""
    if not hasattr(loader, "_iterator"):
        return None
    previous, loader._iterator = loader._iterator, iterator
    return previous


def training_batches(trainer: Trainer, n: int) -> list[Any]:
    """The first ``n`` batches of the Trainer's training data (with its distributed sampler), each as
    ``training_step`` receives it: combined, converted to the training precision, on the model's device."""
    setup_training_data(trainer)  # a no-op where done already
    loop = trainer.fit_loop
    if loop._combined_loader is None:
        return []
    combined = CombinedLoader(loop._combined_loader.iterables, mode=loop._combined_loader._mode)
    loaders = combined.flattened
    # A loader with persistent workers keeps the loop's iterator (epoch one already requested from its
    # workers): set it aside so that scoring runs on an iterator and workers of its own, shut down after.
    lightnings = [_swap_iterator(loader, None) for loader in loaders]
    try:
        raw = [batch for batch, _, _ in islice(iter(combined), n)]
    finally:
        for iterator in getattr(combined._iterator, "iterators", []):
            if isinstance(iterator, _MultiProcessingDataLoaderIter):
                iterator._shutdown_workers()
        for loader, lightning in zip(loaders, lightnings):
            _swap_iterator(loader, lightning)
    module = trainer.lightning_module
    batches = []
    for batch in raw:
        batch = trainer.precision_plugin.convert_input(batch)
        batch = module._on_before_batch_transfer(batch, dataloader_idx=0)
        batches.append(trainer.strategy.batch_to_device(batch, dataloader_idx=0))
    return batches


@contextmanager
def _silenced_logging(module: LightningModule) -> Iterator[None]:
    """``self.log`` raises outside the training loop; scoring calls ``training_step`` from ``on_fit_start``."""
    module.log = module.log_dict = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del module.log, module.log_dict


def training_step_loss(trainer: Trainer) -> LossFn:
    """``loss_fn(module, batch)``: the loss the LightningModule trains on, so that data-driven scorers work
    for any task. Raises at once for a ``training_step`` that pulls its own batches."""
    module = trainer.lightning_module
    if is_param_in_hook_signature(module.training_step, "dataloader_iter", explicit=True):
        raise ValueError(
            f"{type(module).__name__}.training_step takes `dataloader_iter`, so there is no batch to score with;"
            f" use a data-free scorer (synflow, magnitude, random, erk, uniform, ntksap)"
        )
    takes_batch_idx = is_param_in_hook_signature(module.training_step, "batch_idx", min_args=2)

    def loss_fn(model: LightningModule, batch: Any) -> Tensor:
        with _silenced_logging(model), trainer.precision_plugin.train_step_context():
            out = model.training_step(batch, 0) if takes_batch_idx else model.training_step(batch)
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if not isinstance(loss, Tensor):
            raise TypeError(
                f"{type(model).__name__}.training_step must return the loss (a tensor, or a dict with 'loss') for"
                f" data-driven scoring, got {type(out).__name__}"
            )
        return loss

    return loss_fn


def first_batch_input(trainer: Trainer) -> Any:
    """The model input of the first training batch as ``training_step`` receives it: the batch itself, or the
    first element of a tuple or list batch; ``None`` without training data."""
    batches = training_batches(trainer, 1)
    batch = batches[0] if batches else None
    return batch[0] if isinstance(batch, (tuple, list)) and batch else batch


def given_example_input(pl_module: LightningModule, input_shape: Optional[Sequence[int]]) -> Optional[ExampleInput]:
    """The model's input where no data is needed for it: ``example_input_array``, else zeros of ``input_shape``,
    else ``None`` (where no Trainer is reading batches yet, as when a checkpoint is read)."""
    if pl_module.example_input_array is not None:
        return pl_module.example_input_array
    return None if input_shape is None else torch.zeros(1, *input_shape)


def example_input(
    trainer: Trainer,
    pl_module: LightningModule,
    input_shape: Optional[Sequence[int]],
    requester: str,
    batch_input: Optional[Callable[[Trainer], Any]] = None,
) -> ExampleInput:
    """The model's input: ``example_input_array``, else zeros of ``input_shape``, else the first training
    batch's input (``batch_input(trainer)``, default :func:`first_batch_input`). Raises a ValueError that starts
    with ``requester`` (e.g. ``"PruneAtInit(scorer='synflow')"``) and says what to provide."""
    given = given_example_input(pl_module, input_shape)
    if given is not None:
        return given
    x = (batch_input or first_batch_input)(trainer)
    if not isinstance(x, Tensor):
        raise ValueError(
            f"{requester} needs the model's input shape: set `example_input_array`"
            f" on {type(pl_module).__name__}, pass `input_shape=[...]` (without the batch dimension), or train on"
            f" batches that are tensors or (input, target) pairs; a model called with keyword inputs"
            f" (`model(**inputs)`, e.g. Hugging Face's input_ids and attention_mask) needs"
            f" `example_input_array` as a dict of example tensors"
        )
    return x
