"""Does the Jacobian spectrum after pruning predict whether a pruned network trains? Figures of the isometry
study (``make study-isometry``): final accuracy against each singular-value statistic over all runs, with
Spearman's rank correlation per statistic, and the singular values of one pruned network before and after
approximate isometry.

    python examples/plot_isometry.py docs/results/fashion_mnist_lenet5.csv --out docs/results/isometry_scatter.png
    python examples/plot_isometry.py docs/results/fashion_mnist_lenet5.csv --histogram random 2 --out ...

A run's statistic is that of the network it trained from: after the isometry steps for a run with them,
after pruning for a run without. Runs without steps written before the Jacobian columns existed take the
after-pruning statistics of their twin with steps (same method, compression and seed, so the same initial
weights and masks).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

STATS = ("mean", "min", "max", "below_1e-3")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def points(rows: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """One point per pruned run that has statistics: method, log10 compression, isometry steps, final accuracy
    and the four statistics of the network it trained from."""
    def key(r: dict[str, str]) -> tuple[str, str, str, str]:
        return (r["protocol"], r["method"], f"{float(r['log10_compression']):.4f}", r["seed"])

    pruned = {key(r): r for r in rows if r.get("jsv_pruned_mean")}
    out = []
    for r in rows:
        if r["method"] == "dense":
            continue
        steps = int(r.get("isometry_steps") or 0)
        source = r if steps or r.get("jsv_pruned_mean") else pruned.get(key(r))
        stage = "isometry" if steps else "pruned"
        if source is None or not source.get(f"jsv_{stage}_mean"):
            continue
        out.append({
            "method": r["method"], "log10": float(r["log10_compression"]), "steps": steps,
            "acc": 100.0 * float(r["test_acc_final"]), **{s: float(source[f"jsv_{stage}_{s}"]) for s in STATS},
        })  # fmt: skip
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(v: Sequence[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for value in np.unique(a):  # ties share their mean rank
            tied = a == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def scatter(pts: Sequence[dict[str, Any]]) -> Any:
    """Final accuracy against each statistic (log x for the singular values), one panel per statistic, its
    Spearman correlation in the title; colours by method, filled for runs with isometry steps."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STATS), figsize=(4.2 * len(STATS), 3.8), sharey=True)
    methods = sorted({p["method"] for p in pts})
    colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, stat in zip(axes, STATS):
        for method in methods:
            for ai in (False, True):
                mine = [p for p in pts if p["method"] == method and bool(p["steps"]) == ai]
                if mine:
                    ax.scatter([max(p[stat], 1e-12) if stat != "below_1e-3" else p[stat] for p in mine], [p["acc"] for p in mine],
                               s=18, color=colors[method], facecolors=colors[method] if ai else "none",
                               label=f"{method}{' + AI' if ai else ''}")  # fmt: skip
        rho = spearman([p[stat] for p in pts], [p["acc"] for p in pts])
        ax.set_title(f"{stat}: Spearman {rho:+.2f} (n={len(pts)})", fontsize=9)
        ax.set_xlabel(f"Jacobian singular values: {stat}" if stat != "below_1e-3" else "fraction of singular values < 1e-3")
        if stat != "below_1e-3":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final test accuracy (%)")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def histogram(method: str, log10: float, steps: int, seed: int = 0, data_dir: str = "/usr/share/datasets/fashion-mnist") -> Any:
    """Singular values of the study's LeNet-5, pruned by ``method`` at 10^``log10`` (seed ``seed``), before
    and after ``steps`` isometry steps, on the study's probe (the first 32 training images)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from classifier import LeNet5
    from datamodules import FashionMNISTDataModule
    from sweep import PROBE_EXAMPLES

    from lightning_synflow import apply_masks, compute_masks
    from lightning_synflow.analysis import approximate_isometry, jacobian_singular_values
    from lightning_synflow.analysis.figures import plot_singular_values

    data = FashionMNISTDataModule(data_dir=data_dir, train_size=30_000)
    data.setup("fit")
    probe = torch.stack([data.train_set[i][0] for i in range(PROBE_EXAMPLES)])
    torch.manual_seed(seed)
    model = LeNet5(in_channels=1, num_classes=10, hidden=[1024, 256])
    batches = [(probe, torch.stack([torch.as_tensor(data.train_set[i][1]) for i in range(PROBE_EXAMPLES)]))]
    masks = compute_masks(model, method, compression=10.0**log10, example_input=probe[:1], dataloader=batches)
    spectra = {"init": jacobian_singular_values(model, probe)}
    apply_masks(model, masks)
    spectra["pruned"] = jacobian_singular_values(model, probe)
    approximate_isometry(model, masks, steps=steps)
    spectra[f"{steps} isometry steps"] = jacobian_singular_values(model, probe)
    return plot_singular_values(spectra, title=f"LeNet-5 (FC 1024-256), {method} at 10^{log10:g}, seed {seed}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="the study's CSV (examples/sweep.py with --isometry-steps)")
    parser.add_argument("--out", type=Path, required=True, help="the figure (.png, .pdf, .svg)")
    parser.add_argument("--histogram", nargs=2, metavar=("METHOD", "LOG10"),
                        help="instead: singular values of one pruned network before and after the isometry steps")
    parser.add_argument("--steps", type=int, default=100, help="isometry steps for --histogram")
    args = parser.parse_args(argv)
    if args.histogram:
        fig = histogram(args.histogram[0], float(args.histogram[1]), args.steps)
    else:
        pts = points(read_rows(args.csv))
        if not pts:
            raise SystemExit(f"{args.csv} has no run with Jacobian statistics: run the study with --isometry-steps first")
        fig = scatter(pts)
        print("| statistic | Spearman with final accuracy | runs |\n|---|---:|---:|")
        for stat in STATS:
            print(f"| {stat} | {spearman([p[stat] for p in pts], [p['acc'] for p in pts]):+.2f} | {len(pts)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
