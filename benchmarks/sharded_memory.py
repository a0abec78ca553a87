"""Memory of SynFlow on a sharded model: one process against 2 FSDP2 processes (gloo, CPU), the same model.

The model is synflow_scale.py's stack of pre-norm residual MLP blocks (1.01 B prunable weights at 95 blocks).
Each row is a fresh launch: ``1 process`` runs ``compute_masks`` on the plain model; ``FSDP2`` starts 2
processes that ``fully_shard`` every block and the stack, then run the same ``compute_masks`` on their shards.
Every process measures its own peak RSS growth during ``compute_masks`` (VmHWM reset just before; a 1-block
run first, and the C heap's free pages handed back, so that neither library code paged in nor freed memory
counts), against the prunable weights it holds: all of them in one process, its share (half) sharded. Before
that, each measures one bare forward and backward of the all-ones input the same way: the memory training's
own passes take, which under FSDP2 on CPU is far from a constant (gathered blocks and gradient buffers).

    OMP_NUM_THREADS=1 python benchmarks/sharded_memory.py --blocks 10            # 106 M weights, 3 rounds
    OMP_NUM_THREADS=1 python benchmarks/sharded_memory.py --blocks 95 --mmap-threshold 131072   # 1.01 B, tuned
    python benchmarks/sharded_memory.py --blocks 1 --iterations 2                # smoke test

With glibc's default allocator, FSDP2 on CPU costs far more than its buffers: its gathered blocks and
gradient buffers (41 MB here) fall under glibc's dynamic mmap threshold, which rises to 32 MB after the
first large free, so they come from the heap, whose freed pages stay in RSS. ``--mmap-threshold`` fixes the
threshold (``MALLOC_MMAP_THRESHOLD_``) in both setups so that such buffers are mapped and unmapped: an
allocator tuning, labelled in the table. The 1 B rows need ~12 GB (one process) and ~2 x 7 GB (sharded,
tuned), one after the other; untuned, the sharded 1 B row does not fit in 23 GB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

from _machine import PeakMemory, cpu_model, load_average, release_free_memory, report, run_json_child
from synflow_scale import WIDTH, build


def _prune(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of a bare forward and backward of the all-ones input (the floor: what training's own passes
    take), then peak memory and time of the measured compute_masks."""
    import torch

    from lightning_synflow import compute_masks

    x = torch.ones(1, args.width)
    gc.collect()
    release_free_memory()
    with PeakMemory() as floor:
        model(x).sum().backward()
    for p in model.parameters():
        p.grad = None
    gc.collect()
    release_free_memory()
    with PeakMemory() as memory:
        start = time.perf_counter()
        masks = compute_masks(model, "synflow", compression=args.compression, iterations=args.iterations, example_input=x)
        seconds = time.perf_counter() - start
    local = [m.to_local() if hasattr(m, "to_local") else m for m in masks.values()]
    return {"peak_mb": memory.mb, "floor_mb": floor.mb, "seconds": seconds, "memory_method": memory.method,
            "mask_local_bytes": sum(m.numel() * m.element_size() for m in local)}


def _prunable_bytes(model: Any) -> int:
    from lightning_synflow import select_prunable

    params = dict(model.named_parameters())
    local = [params[n].to_local() if hasattr(params[n], "to_local") else params[n] for n in select_prunable(model)]
    return sum(p.numel() * p.element_size() for p in local)


def one_process(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lightning_synflow import compute_masks

    torch.set_num_threads(1)
    torch.manual_seed(0)
    compute_masks(build(1, args.width), "synflow", compression=args.compression, iterations=2,
                  example_input=torch.ones(1, args.width))
    model = build(args.blocks, args.width).eval()
    row = _prune(model, args)
    return {"setup": "1 process", "rank": 0, "prunable_mb": _prunable_bytes(model) / 2**20, **row}


def _shard(model: Any, mesh: Any) -> Any:
    from torch.distributed.fsdp import fully_shard

    for block in list(model)[:-2]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lightning_synflow import compute_masks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    compute_masks(_shard(build(1, args.width), mesh), "synflow", compression=args.compression, iterations=2,
                  example_input=torch.ones(1, args.width))
    model = _shard(build(args.blocks, args.width).eval(), mesh)
    row = _prune(model, args)
    block = sum(p.numel() * p.element_size() for p in build(1, args.width)[0].parameters())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"setup": f"FSDP2, {world} processes", "rank": rank, "prunable_mb": _prunable_bytes(model) / 2**20,
                   "block_mb": block / 2**20, **row}, f)
    dist.destroy_process_group()


def sharded(args: argparse.Namespace) -> list[dict[str, Any]]:
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(args.processes, port, args, out), nprocs=args.processes)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.processes)]


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"SynFlow, {args.iterations} rounds, compression {args.compression:g}, {args.blocks} pre-norm residual MLP"
        f" blocks of width {args.width}; each process on 1 thread, fresh launch per setup, "
        + ("default allocator" if args.mmap_threshold is None else f"TUNED allocator: MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}")
        + ";"
        f" {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, load average"
        f" {load_average()} at the end.",
        "",
        "| setup | rank | prunable weights it holds (GB) | one forward+backward: peak growth (GB) | pruning: peak"
        " growth (GB) | pruning / its prunable bytes | (pruning - forward+backward) / its prunable bytes |"
        " pruning (s) | its masks (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('setup', '')} | | | error: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['setup']} | {r['rank']} | {r['prunable_mb'] / 1024:.2f} | {r['floor_mb'] / 1024:.2f} |"
            f" {r['peak_mb'] / 1024:.2f} | {r['peak_mb'] / r['prunable_mb']:.2f} |"
            f" {(r['peak_mb'] - r['floor_mb']) / r['prunable_mb']:.2f} | {r['seconds']:.1f} |"
            f" {r['mask_local_bytes'] / 2**30:.3f} |"
        )
    block = next((r["block_mb"] for r in rows if "block_mb" in r), None)
    if block is not None:
        lines += ["", f"One block's parameters, which FSDP2 gathers (and the next, prefetched) while it computes:"
                      f" {block:.0f} MB."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=10, help="model depth (10: 106 M prunable weights, 95: 1.01 B)")
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--iterations", type=int, default=3, help="SynFlow rounds (memory peaks in the first)")
    parser.add_argument("--compression", type=float, default=100.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="set MALLOC_MMAP_THRESHOLD_ (bytes) in every process: an allocator tuning, labelled")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=["one", "sharded"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("blocks", "width", "iterations", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.child == "one":
        print(json.dumps(one_process(args)))
        return 0
    if args.child == "sharded":
        print(json.dumps({"rows": sharded(args)}))
        return 0
    common = ["--blocks", str(args.blocks), "--width", str(args.width), "--iterations", str(args.iterations),
              "--compression", str(args.compression), "--processes", str(args.processes)]
    env = None if args.mmap_threshold is None else {"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)}
    rows = []
    for child in ("one", "sharded"):
        print(f"{child} ...", file=sys.stderr, flush=True)
        result = run_json_child([sys.executable, str(Path(__file__).resolve()), "--child", child, *common], 1, env=env)
        rows.extend(result["rows"] if "rows" in result else [{"setup": child, **result}])
    return report(markdown(rows, args), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
