"""Two-process DDP fits on CPU (gloo) with PruneAtInit, one per scorer; each rank saves what it ended with.

Launched by tests/test_ddp.py as a subprocess (DDP started inside pytest would re-run pytest). One
launch runs every scorer in turn, which saves a process start and a process-group set-up per scorer.
Usage: ddp_prune.py OUT_DIR SCORER[+isometry][,SCORER...] [first-batch]
"""

import os
import sys

import torch
from lightning.pytorch import Callback, Trainer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lightning_helpers import MLP  # noqa: E402

from lightning_synflow import PruneAtInit  # noqa: E402


class CaptureWeights(Callback):
    """Keeps the weights as PruneAtInit (the next callback) sees them: after DDP's broadcast, before pruning."""

    def on_fit_start(self, trainer, pl_module):
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


def fit(out_dir: str, scorer: str, input_from: str, rank: int) -> None:
    torch.manual_seed(100 + rank)  # ranks start from different random inits, and different RNG streams
    model = MLP(example_input=input_from != "first-batch")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    name, _, option = scorer.partition("+")  # "synflow+isometry": approximate isometry after pruning
    capture = CaptureWeights()
    pruner = PruneAtInit(scorer=name, sparsity=0.9, iterations=10, isometry_steps=20 if option == "isometry" else 0)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture, pruner],
    )
    trainer.fit(model)
    torch.save(
        {"masks": pruner.masks, "state": model.state_dict(), "init": init, "pruned_from": capture.state},
        os.path.join(out_dir, f"{scorer}-{input_from}-rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, scorers = sys.argv[1], sys.argv[2].split(",")
    input_from = sys.argv[3] if len(sys.argv) > 3 else "example"
    for name in scorers:
        fit(out, name, input_from, int(os.environ.get("LOCAL_RANK", 0)))
