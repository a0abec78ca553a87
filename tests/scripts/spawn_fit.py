"""Two fits of one model in spawned workers (``ddp_spawn`` or ``ddp_notebook``), as a notebook user runs them.

Launched by tests/test_callback_setups.py as a subprocess: spawned workers re-import the main module.
Usage: spawn_fit.py OUT_DIR STRATEGY
"""

import os
import sys

import torch
from lightning.pytorch import Trainer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lightning_helpers import MLP  # noqa: E402

from lightning_synflow import PruneAtInit, Scorer  # noqa: E402


class FreshlyRandom(Scorer):
    """Random scores from an OS-seeded generator at every call, so that scoring again always gives other masks
    (a seeded or default generator would draw the same numbers in every fresh worker process)."""

    def score(self, model, masks, context):
        g = torch.Generator().manual_seed(int.from_bytes(os.urandom(7), "little"))
        return {n: torch.rand(m.shape, generator=g).to(m.device) * m for n, m in masks.items()}


def fit(model, pruner, strategy):
    trainer = Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[pruner])
    trainer.fit(model)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, strategy = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model, pruner = MLP(), PruneAtInit(scorer=FreshlyRandom(), sparsity=0.9)
    fit(model, pruner, strategy)
    first = {n: m.clone() for n, m in pruner.masks.items()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, pruner, strategy)
    torch.save({"first": first, "weights_after_first": weights, "second": pruner.masks}, os.path.join(out, "spawn.pt"))
