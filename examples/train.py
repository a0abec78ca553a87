"""Train an image classifier pruned at initialization, configured from YAML through LightningCLI.

    python examples/train.py fit --config examples/configs/digits_synflow.yaml
    python examples/train.py fit --config examples/configs/digits_synflow.yaml \\
        --trainer.max_epochs=3 --trainer.callbacks.init_args.sparsity=0.98
    python examples/train.py fit --trainer.callbacks.help lightning_synflow.PruneAtInit
    python examples/train.py test --config <the run's config.yaml> --ckpt_path <its last.ckpt>

The model section configures :class:`classifier.ImageClassifier` (its ``backbone`` by ``class_path``);
the data section picks a data module by ``class_path`` (``datamodules.DigitsDataModule``,
``datamodules.CIFAR10DataModule`` or any other ``LightningDataModule``); the pruning callback goes in
``trainer.callbacks`` as ``class_path: lightning_synflow.PruneAtInit``.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # classifier.py and datamodules.py sit here

from lightning.pytorch.cli import LightningCLI  # noqa: E402

import datamodules  # noqa: E402,F401  (makes its data modules resolvable by class name)
import lightning_synflow  # noqa: E402,F401  (makes PruneAtInit and the scorers resolvable by class name)
from classifier import ImageClassifier  # noqa: E402


def main(args: Optional[list[str]] = None, run: bool = True) -> LightningCLI:
    """Parse ``args`` (default: the command line), build everything and, with ``run``, run the subcommand."""
    return LightningCLI(
        ImageClassifier,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
