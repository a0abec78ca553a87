"""SynFlow at scale: 100 rounds on transformer-like stacks of 10 M, 100 M and 1 B prunable weights.

The model is a stack of pre-norm residual MLP blocks (``x + W2 relu(W1 LayerNorm(x))``, width ``d``,
hidden ``4d``: the feed-forward half of a transformer layer) with a 10-way linear head; its Linear weights
are pruned. Every size has the same width, so the cost per weight is comparable and should stay flat as
the depth grows. Each size runs in a fresh process that measures, in this order:

- **pruning**: ``compute_masks(model, "synflow", compression=100, iterations=100)``, with its peak RSS
  growth (VmHWM reset before the call) against the prunable weights' bytes, and the bytes its masks take.
  Two rounds on a one-block model run first and the C heap's free pages are then handed back to the
  kernel, so that the peak counts neither library code paged in by a first run nor freed memory;
- **floor**: ``--floor-passes`` bare forward+backward passes of the all-ones input (float32, batch 1),
  scaled to ``--iterations`` passes. It runs after the pruning, whose memory it may reuse.

    OMP_NUM_THREADS=1 python benchmarks/synflow_scale.py --threads 1     # 10.6 M, 106 M, 1.01 B
    python benchmarks/synflow_scale.py --blocks 1 --quick                # smoke test: 2 rounds, 1 block

The 1 B row needs ~16 GB of memory (4 GB of weights, the linearised copy and its gradients, the masks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

from _machine import PeakMemory, cpu_model, load_average, release_free_memory, report, run_json_child

WIDTH = 1152  # 8 * 1152^2 = 10.6 M prunable weights per block
DEFAULT_BLOCKS = (1, 10, 95)  # 10.6 M, 106 M, 1.01 B


def build(blocks: int, width: int) -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.up = nn.Linear(width, 4 * width)
            self.down = nn.Linear(4 * width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.down(torch.relu(self.up(self.norm(x))))

    return nn.Sequential(*[Block() for _ in range(blocks)], nn.LayerNorm(width), nn.Linear(width, 10))


def measure(blocks: int, args: argparse.Namespace) -> dict[str, Any]:
    import gc

    import torch

    from lightning_synflow import compute_masks, select_prunable

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build(blocks, args.width).eval()
    build_s = time.perf_counter() - start
    names = select_prunable(model)
    params = dict(model.named_parameters())
    prunable = sum(params[n].numel() for n in names)
    x = torch.ones(1, args.width)

    compute_masks(build(1, args.width), "synflow", compression=args.compression, iterations=2, example_input=x)
    gc.collect()
    release_free_memory()
    with PeakMemory() as memory:
        start = time.perf_counter()
        masks = compute_masks(model, "synflow", compression=args.compression, iterations=args.iterations, example_input=x)
        seconds = time.perf_counter() - start

    model(x).sum().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(args.floor_passes):
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    floor = (time.perf_counter() - start) * args.iterations / args.floor_passes
    kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
    return {
        "blocks": blocks,
        "prunable": prunable,
        "threads": torch.get_num_threads(),
        "iterations": args.iterations,
        "build_s": build_s,
        "floor_s": floor,
        "seconds": seconds,
        "ratio": seconds / floor,
        "us_per_weight_round": seconds / args.iterations / prunable * 1e6,
        "peak_mb": memory.mb,
        "peak_x_prunable": memory.mb / (prunable * 4 / 2**20),
        "memory_method": memory.method,
        "mask_bytes": sum(m.numel() * m.element_size() for m in masks.values()),
        "kept": kept,
        "torch": torch.__version__,
    }


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"SynFlow, {args.iterations} rounds, compression {args.compression:g}, pre-norm residual MLP blocks of width"
        f" {args.width} (hidden {4 * args.width}), {args.threads} thread(s), fresh process per row; {cpu_model()},"
        f" {os.cpu_count()} cores, Python {platform.python_version()}, load average {load_average()} at the end."
        f" Floor from {args.floor_passes} passes.{' QUICK RUN: not for reporting.' if args.quick else ''}",
        "",
        "| prunable weights | blocks | floor (s) | pruning (s) | pruning / floor | ns per weight and round |"
        " peak memory (GB) | x prunable bytes | masks (GB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| | {r['blocks']} | | error: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['prunable'] / 1e6:,.1f} M | {r['blocks']} | {r['floor_s']:.1f} | {r['seconds']:.1f} | {r['ratio']:.2f} |"
            f" {r['us_per_weight_round'] * 1e3:.2f} | {r['peak_mb'] / 1024:.2f} | {r['peak_x_prunable']:.2f} |"
            f" {r['mask_bytes'] / 2**30:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", nargs="+", type=int, default=list(DEFAULT_BLOCKS), help="model depths to run")
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--compression", type=float, default=100.0)
    parser.add_argument("--floor-passes", type=int, default=10, help="bare passes timed for the floor")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 floor pass: a smoke test")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("width", "threads", "iterations", "floor_passes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if any(b < 1 for b in args.blocks):
        parser.error(f"--blocks must be positive integers, got {args.blocks}")
    if args.quick:
        args.iterations, args.floor_passes = 2, 1
    if args.child is not None:
        print(json.dumps(measure(args.child, args)))
        return 0

    rows = []
    for blocks in args.blocks:
        print(f"{blocks} blocks ...", end=" ", file=sys.stderr, flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(blocks), "--width", str(args.width),
               "--threads", str(args.threads), "--iterations", str(args.iterations), "--compression", str(args.compression),
               "--floor-passes", str(args.floor_passes)]
        row = run_json_child(cmd, args.threads)
        if "error" in row:
            row = {"blocks": blocks, **row}
        print(row.get("error") or f"{row['seconds']:.1f} s ({row['ratio']:.2f}x floor), {row['peak_mb'] / 1024:.2f} GB",
              file=sys.stderr, flush=True)
        rows.append(row)
    return report(markdown(rows, args), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
