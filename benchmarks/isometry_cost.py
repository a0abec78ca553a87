"""Time and memory of one approximate-isometry step (``lightning_synflow.analysis.approximate_isometry``) on
large models, and how much of a step is the arithmetic it cannot avoid.

Each model runs in a fresh process on ``--threads`` threads (default 1), pruned at random to ``--sparsity``
(0.99) with a seeded generator. *Step*: ``approximate_isometry(model, masks, steps=N)`` divided by N (the
call also computes the penalty before and after, two forward passes of it, included). *Penalty*: one
``isometry_penalty(model, masks)``, the forward of a step (every layer's masked Gram matrix ``(C*W)^T (C*W)``
and the Frobenius norm of its distance to I), the median of three. A step is that forward, its backward
(twice the forward's products) and the SGD update, so *step / penalty* near 3 means the step costs what its
matrix products cost; fusing or batching the per-layer terms could then only save the rest. *Peak memory*:
peak RSS growth during the ``approximate_isometry`` call (VmHWM reset right before it), default allocator.

    OMP_NUM_THREADS=1 python benchmarks/isometry_cost.py                  # vgg16_bn and torchvision's resnet50
    OMP_NUM_THREADS=1 python benchmarks/isometry_cost.py --quick          # smoke test: resnet20, 2 steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from _machine import PeakMemory, cpu_model, load_average, report, run_json_child

MODELS = ("vgg16_bn", "resnet50")


def build(name: str) -> Any:
    """The paper's CIFAR models by name (``lightning_synflow.models``), else torchvision's ImageNet models."""
    from lightning_synflow import models

    if name in models.MODELS:
        return models.get_model(name, num_classes=10), (1, 3, 32, 32)
    import torchvision

    return getattr(torchvision.models, name)(weights=None), (1, 3, 224, 224)


def measure(name: str, steps: int, sparsity: float, threads: int) -> dict[str, Any]:
    import torch

    from lightning_synflow import Random, compute_masks
    from lightning_synflow.analysis import approximate_isometry, isometry_penalty

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, _ = build(name)
    masks = compute_masks(model, Random(seed=0), sparsity=sparsity)
    penalty = []
    for _ in range(3):
        start = time.perf_counter()
        isometry_penalty(model, masks)
        penalty.append(time.perf_counter() - start)
    with PeakMemory() as memory:
        result = approximate_isometry(model, masks, steps=steps)
    weights = sum(m.numel() for m in masks.values())
    step = result.seconds / steps
    return {
        "model": name, "steps": steps, "sparsity": sparsity, "prunable": weights, "tensors": len(masks),
        "step_s": step, "penalty_s": statistics.median(penalty), "step_over_penalty": step / statistics.median(penalty),
        "peak_mb": memory.mb, "prunable_mb": weights * 4 / 2**20, "penalty_before": result.before,
        "penalty_after": result.after, "torch": torch.__version__, "threads": threads,
    }  # fmt: skip


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ok = [r for r in rows if "error" not in r]
    lines = [
        f"Approximate isometry, random masks at sparsity {args.sparsity:g}, {args.steps} steps per call, {args.threads}"
        f" thread(s), fresh process per model, default allocator; torch {ok[0]['torch'] if ok else 'n/a'}, {cpu_model()},"
        f" load average {load_average()} at the end.{' QUICK RUN: not for reporting.' if args.quick else ''}",
        "",
        "| model | prunable weights | tensors | step (s) | penalty forward (s) | step / penalty | peak memory (MB) | x prunable bytes | penalty before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['prunable']:,} | {r['tensors']} | {r['step_s']:.3f} | {r['penalty_s']:.3f} |"
            f" {r['step_over_penalty']:.2f} | {r['peak_mb']:.0f} | {r['peak_mb'] / r['prunable_mb']:.2f} |"
            f" {r['penalty_before']:.4g} → {r['penalty_after']:.4g} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="resnet20, 2 steps: a smoke test")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows to this file")
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error(f"--steps and --threads must be positive integers, got {args.steps} and {args.threads}")
    if not 0 <= args.sparsity < 1:
        parser.error(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.quick:
        args.models, args.steps = ["resnet20"], 2
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.sparsity, args.threads)))
        return 0
    rows = []
    for name in args.models:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--steps", str(args.steps),
               "--sparsity", str(args.sparsity), "--threads", str(args.threads)]  # fmt: skip
        row = run_json_child(cmd, threads=args.threads)
        rows.append({"model": name, **row} if "error" in row else row)
        done = row.get("error") or f"{row['step_s']:.3f} s per step, {row['peak_mb']:.0f} MB"
        print(f"{name}: {done}", file=sys.stderr, flush=True)
    return report(markdown(rows, args), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
