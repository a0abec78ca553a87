"""``make demo``: SynFlow against random pruning at the same high sparsity, offline, in under a minute.

The same small network (same seed, same initial weights) is trained three times on scikit-learn's 8x8
digits: dense, pruned at initialization by SynFlow, and pruned at random to the same sparsity. SynFlow
keeps the layers connected (it gives the small output layer a larger share of the surviving weights),
while uniform random pruning starves the thin layers, so at this sparsity it trains clearly worse.

    OMP_NUM_THREADS=2 .venv/bin/python examples/demo.py [--sparsity 0.95] [--epochs 20] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # classifier.py and datamodules.py sit here

import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402

from classifier import MLP, ImageClassifier  # noqa: E402
from memory_logger import MemoryLogger  # noqa: E402
from datamodules import DigitsDataModule  # noqa: E402
from lightning_synflow import PruneAtInit, sparsity_report  # noqa: E402


def run(method: str, sparsity: float, epochs: int, seed: int) -> dict[str, Any]:
    """Train and test once; ``method`` is ``"dense"`` or a scorer name."""
    seed_everything(seed, verbose=False)
    model = ImageClassifier(MLP(hidden=(256, 256)), lr=0.1, weight_decay=1e-4, input_shape=[1, 8, 8])
    data = DigitsDataModule(batch_size=64, seed=0)
    callbacks = []
    if method != "dense":
        callbacks.append(PruneAtInit(scorer=method, sparsity=sparsity, verbose=False))
    logger = MemoryLogger()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=10,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    # Measured on the trained weights, independently of the callback: nonzero entries of Linear weights.
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    kept, total = sum(int(w.count_nonzero()) for w in weights), sum(w.numel() for w in weights)
    return {
        "method": method,
        "sparsity": 1.0 - kept / total,
        "kept": kept,
        "total": total,
        "test_acc": test["test/acc"],
        "prune_s": logger.metrics.get("pruning/time_s"),
        "run_s": time.perf_counter() - start,
        "report": sparsity_report(model, callbacks[0].masks) if callbacks else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sparsity", type=float, default=0.95, help="fraction of the Linear weights removed")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per method per seed")
    args = parser.parse_args()

    # These networks are too small to gain from a second thread, and with two threads on two cores any
    # other load makes the OpenMP threads wait on each other: runs took 2 to 10 s instead of 2 s.
    torch.set_num_threads(1)

    # Quiet: no device banners, model summaries, progress bars or data-loader advice.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")

    total_start = time.perf_counter()
    print(
        f"Digits (1,797 8x8 images, scikit-learn), MLP 64-256-256-10, {args.epochs} epochs of SGD;"
        f" pruning {args.sparsity:.0%} of the Linear weights at initialization. Seeds: {args.seeds}.\n"
    )
    results: dict[str, list[dict[str, Any]]] = {"dense": [], "synflow": [], "random": []}
    for seed in args.seeds:
        for method in results:
            results[method].append(run(method, args.sparsity, args.epochs, seed))
            r = results[method][-1]
            print(f"  seed {seed}  {method:<8} test accuracy {r['test_acc']:.2%}  ({r['run_s']:.1f} s)")

    print(f"\nWhat SynFlow kept (seed {args.seeds[0]}):")
    print(results["synflow"][0]["report"])

    header = f"{'method':<8}  {'sparsity':>9}  {'kept weights':>15}  {'test accuracy':>{13 if len(args.seeds) == 1 else 17}}  {'pruning time':>12}"
    print("\n" + header)
    print("-" * len(header))
    for method, rs in results.items():
        accs = [r["test_acc"] for r in rs]
        acc = f"{accs[0]:.2%}" if len(accs) == 1 else f"{statistics.mean(accs):.2%} ± {statistics.stdev(accs):.2%}"
        r = rs[0]
        prune = "-" if r["prune_s"] is None else f"{statistics.mean(x['prune_s'] for x in rs):.2f} s"
        print(
            f"{method:<8}  {r['sparsity']:>9.2%}  {r['kept']:>6,} / {r['total']:<6,}  {acc:>{13 if len(args.seeds) == 1 else 17}}  {prune:>12}"
        )
    if len(args.seeds) > 1:
        print(f"test accuracy: mean ± standard deviation over seeds {args.seeds}; pruning time: mean")
    print(f"\nTotal time {time.perf_counter() - total_start:.1f} s")


if __name__ == "__main__":
    main()
