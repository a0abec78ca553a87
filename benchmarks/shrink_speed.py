"""Training-step time of a shrunk network against the dense one, at 2x, 4x and 8x fewer FLOPs (CPU).

For each target the channel density ``d`` (the same in every layer: ``distribution="uniform"``) is found by
bisection so that the shrunk network's forward FLOPs (``torch.utils.flop_counter``) are 1/target of the
dense one's; the channels are chosen by magnitude (which ones does not matter for speed) and removed with
``lightning_synflow.shrink``. One process: every model is built first, then the models take turns, a block
of ``--steps`` SGD steps (forward, backward, update) on a random batch each, ``--repeat`` times over; the
table gives each model's median step time.

    OMP_NUM_THREADS=1 python benchmarks/shrink_speed.py            # VGG-16-bn, CIFAR size, batch 64
    python benchmarks/shrink_speed.py --quick                        # smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from _machine import cpu_model, load_average, report


def forward_flops(model: Any, x: Any) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def shrunk_at(model: Any, density: float, x: Any) -> Any:
    from lightning_synflow import compute_masks, shrink

    masks = compute_masks(model, "magnitude", sparsity=1 - density, granularity="channel", distribution="uniform",
                          example_input=x)
    return shrink(model, masks, x)


def for_target(model: Any, target: float, x: Any, dense_flops: int, steps: int) -> tuple[Any, float]:
    """The shrunk model whose FLOPs are closest to ``dense / target`` (``steps`` of bisection on the channel
    density)."""
    lo, hi = 0.01, 1.0
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        small = shrunk_at(model, mid, x)
        ratio = dense_flops / forward_flops(small, x)
        if best is None or abs(ratio - target) < abs(best[2] - target):
            best = (small, mid, ratio)
        if ratio > target:
            lo = mid
        else:
            hi = mid
    return best[0], best[1]


def step_times(models: dict[str, Any], x: Any, y: Any, steps: int, repeat: int) -> dict[str, list[float]]:
    import torch

    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}

    def block(name: str, n: int) -> float:
        model, opt = models[name], optimizers[name]
        start = time.perf_counter()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return (time.perf_counter() - start) / n

    for name in models:  # warm-up
        block(name, 2)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeat):
        for name in models:
            times[name].append(block(name, steps))
    return times


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16_bn", help="a model of lightning_synflow.models")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--targets", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeat", type=int, default=5, help="blocks per model, interleaved")
    parser.add_argument("--bisect", type=int, default=12, help="bisection steps on the channel density per target")
    parser.add_argument("--quick", action="store_true", help="resnet20, batch 8, 2x only, 1 block of 1 step: a smoke test")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.steps, args.repeat, args.targets, args.bisect = "resnet20", 8, 1, 1, [2.0], 4
    for name in ("batch", "steps", "repeat", "bisect"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if any(t < 1 for t in args.targets):
        parser.error(f"--targets must be >= 1, got {args.targets}")

    import torch

    from lightning_synflow.models import get_model

    torch.manual_seed(0)
    dense = get_model(args.model, num_classes=10)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(10, (args.batch,))
    dense_flops = forward_flops(dense.eval(), x)
    models, densities = {"dense": dense}, {"dense": 1.0}
    for target in args.targets:
        small, density = for_target(dense, target, x, dense_flops, args.bisect)
        models[f"{target:g}x"], densities[f"{target:g}x"] = small, density
    for m in models.values():
        m.train()
    times = step_times(models, x, y, args.steps, args.repeat)
    base = statistics.median(times["dense"])
    rows = []
    for name, model in models.items():
        flops = forward_flops(model.eval(), x)
        median = statistics.median(times[name])
        rows.append({
            "model": name, "channel_density": densities[name], "flop_ratio": dense_flops / flops,
            "params": sum(p.numel() for p in model.parameters()), "step_ms": median * 1e3,
            "step_ms_min": min(times[name]) * 1e3, "step_ms_max": max(times[name]) * 1e3, "speedup": base / median,
        })
    lines = [
        f"{args.model}, batch {args.batch} at 32x32, SGD steps, {torch.get_num_threads()} thread(s), one process,"
        f" interleaved: {args.repeat} blocks of {args.steps} steps per model; {cpu_model()}, {os.cpu_count()} cores,"
        f" torch {torch.__version__}, Python {platform.python_version()}, load average {load_average()} at the end."
        + (" QUICK RUN: not for reporting." if args.quick else ""),
        "",
        "| network | channel density | fewer FLOPs (forward) | parameters | step (ms), median (min-max) | speed-up | speed-up / FLOP ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['channel_density']:.3f} | {r['flop_ratio']:.2f}x | {r['params']:,} |"
            f" {r['step_ms']:.1f} ({r['step_ms_min']:.1f}-{r['step_ms_max']:.1f}) | {r['speedup']:.2f}x |"
            f" {r['speedup'] / r['flop_ratio']:.2f} |"
        )
    return report("\n".join(lines), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
