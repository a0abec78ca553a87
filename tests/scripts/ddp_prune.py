"""Two-process DDP fits on CPU (gloo) with PruneAtInit, one per scorer; each rank saves what it ended with.

Launched by tests/test_ddp.py as a subprocess (DDP started inside pytest would re-run pytest). One
launch runs every scorer in turn, which saves a process start and a process-group set-up per scorer.
Each rank also records what its own scoring returned before rank zero's masks were broadcast, and the
batches it scored with, so that the tests can tell the cross-rank reduction from the broadcast.
Usage: ddp_prune.py OUT_DIR SCORER[+isometry|+shuffle][,SCORER...] [first-batch]
"""

import os
import sys

import torch
from lightning.pytorch import Callback, Trainer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lightning_helpers import MLP  # noqa: E402

import lightning_synflow.lightning.fit_pruning  # noqa: E402
from lightning_synflow import PruneAtInit  # noqa: E402

ITERATIONS = 3
SPARSITY = 0.9


class CaptureWeights(Callback):
    """Keeps the weights as PruneAtInit (the next callback) sees them: after DDP's broadcast, before pruning."""

    def on_fit_start(self, trainer, pl_module):
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


class RecordLocalScoring:
    """Stands in for ``prune_masks`` inside the callback: what this rank's own scoring gave (before the
    broadcast of rank zero's masks) and the batches it was given."""

    def __init__(self, prune_masks):
        self.prune_masks = prune_masks
        self.masks = None
        self.batches = None

    def __call__(self, *args, **kwargs):
        batches = kwargs.get("dataloader")
        self.batches = None if batches is None else [[t.clone() for t in b] for b in batches]
        masks = self.prune_masks(*args, **kwargs)
        self.masks = {k: v.clone() for k, v in masks.items()}
        return masks


def fit(out_dir: str, scorer: str, input_from: str, rank: int) -> None:
    torch.manual_seed(100 + rank)  # ranks start from different random inits, and different RNG streams
    model = MLP(example_input=input_from != "first-batch")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    name, _, option = scorer.partition("+")  # "+isometry": approximate isometry after pruning; "+shuffle" the ablation
    capture = CaptureWeights()
    pruner = PruneAtInit(
        scorer=name, sparsity=SPARSITY, iterations=ITERATIONS, isometry_steps=20 if option == "isometry" else 0,
        shuffle=option == "shuffle",
    )
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture, pruner],
    )
    local = RecordLocalScoring(lightning_synflow.lightning.fit_pruning.prune_masks)
    lightning_synflow.lightning.fit_pruning.prune_masks = local
    try:
        trainer.fit(model)
    finally:
        lightning_synflow.lightning.fit_pruning.prune_masks = local.prune_masks
    torch.save(
        {
            "masks": pruner.masks, "state": model.state_dict(), "init": init, "pruned_from": capture.state,
            "local_masks": local.masks, "batches": local.batches, "iterations": ITERATIONS, "sparsity": SPARSITY,
            "world_size": trainer.world_size,
        },
        os.path.join(out_dir, f"{scorer}-{input_from}-rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, scorers = sys.argv[1], sys.argv[2].split(",")
    input_from = sys.argv[3] if len(sys.argv) > 3 else "example"
    for name in scorers:
        fit(out, name, input_from, int(os.environ.get("LOCAL_RANK", 0)))
