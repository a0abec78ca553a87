"""Two-process DDP fit on CPU (gloo) with PruneAtInit; each rank saves what it ended with.

Launched by tests/test_ddp.py as a subprocess (DDP started inside pytest would re-run pytest).
Usage: ddp_prune.py OUT_DIR SCORER [first-batch]
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


def main(out_dir: str, scorer: str, input_from: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.manual_seed(100 + rank)  # ranks start from different random inits, and different RNG streams
    model = MLP(example_input=input_from != "first-batch")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = PruneAtInit(scorer=scorer, sparsity=0.9, iterations=10)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture := CaptureWeights(), pruner],
    )
    trainer.fit(model)
    torch.save(
        {"masks": pruner.masks, "state": model.state_dict(), "init": init, "pruned_from": capture.state},
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "example")
