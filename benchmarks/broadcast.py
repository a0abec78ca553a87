"""Time and peak memory of sending rank zero's masks and weights to the other rank: pickled, as before, or as
tensors through the process group (:mod:`lightning_synflow.distributed.collectives`).

Two gloo processes on this machine hold ``--weights`` float32 weights in four equal tensors and a bool
mask for each (10% kept), drawn from a seed that differs between the ranks. *pickled* is what the callback
did before: one flat ``torch.cat`` of all of them on the host, sent with ``broadcast_object_list`` as
Lightning's ``DDPStrategy.broadcast`` does (pickle on rank zero, unpickle on every rank), then split and
copied back. *tensors* is ``broadcast_masks`` (bit-packed) and ``broadcast_tensors_`` (in place) with
their default 64 MiB buffer. Every (way, what) pair runs in a fresh pair of processes, cold: the call is
the first broadcast of its kind in them (after one barrier), with the default allocator. Afterwards rank
one checks that it holds rank zero's values exactly (exit status 1 otherwise).

Time: wall clock of the call on each rank, from a barrier. Memory: each rank's peak RSS during the call
minus its RSS just before it (``VmHWM`` reset before the call), and that peak itself (max RSS), with
everything the process held (torch and Lightning imported, the tensors).

    OMP_NUM_THREADS=1 python benchmarks/broadcast.py                   # 100 M weights, a minute or two
    OMP_NUM_THREADS=1 python benchmarks/broadcast.py --weights 1000000 # smoke test, seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from _machine import PeakMemory, allocator_settings, cpu_model, load_average, report, run_json_child, status_kb

WAYS = ("pickled", "tensors")
WHATS = ("masks", "weights")
TENSORS = 4
DENSITY = 0.1


# ---------------------------------------------------------------- measured in the child processes


def make(rank: int, weights: int) -> tuple[dict[str, Any], list[Any]]:
    """Masks and weights of ``rank``: ``TENSORS`` tensors of ``weights / TENSORS`` each."""
    import torch

    g = torch.Generator().manual_seed(rank)
    size = weights // TENSORS
    tensors = [torch.randn(size, generator=g) for _ in range(TENSORS)]
    masks = {f"layer{i}.weight": torch.rand(size, generator=g) < DENSITY for i in range(TENSORS)}
    return masks, tensors


def pickled_masks(masks: dict[str, Any]) -> dict[str, Any]:
    """The callback's ``_broadcast_masks`` before: a host copy of all masks through ``strategy.broadcast``."""
    import torch
    import torch.distributed as dist

    flat = [torch.cat([m.reshape(-1) for m in masks.values()]).cpu()]
    dist.broadcast_object_list(flat, src=0)  # DDPStrategy.broadcast
    parts = flat[0].split([m.numel() for m in masks.values()])
    return {n: p.view_as(m).to(m.device) for (n, m), p in zip(masks.items(), parts)}


def pickled_weights(tensors: list[Any]) -> None:
    """The callback's ``_broadcast_tensors`` before."""
    import torch
    import torch.distributed as dist

    flat = [torch.cat([t.detach().reshape(-1) for t in tensors]).cpu()]
    dist.broadcast_object_list(flat, src=0)
    with torch.no_grad():
        for t, part in zip(tensors, flat[0].split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))


def measure(way: str, what: str, rank: int, store: str, weights: int) -> dict[str, Any]:
    """One rank of one broadcast; the caller starts both ranks, each in a fresh process."""
    import gc

    import torch
    import torch.distributed as dist

    from lightning_synflow.distributed.collectives import broadcast_masks, broadcast_tensors_

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    masks, tensors = make(rank, weights)
    gc.collect()
    dist.barrier()
    with PeakMemory() as memory:
        start = time.perf_counter()
        if what == "masks":
            masks = pickled_masks(masks) if way == "pickled" else broadcast_masks(masks)
        elif way == "pickled":
            pickled_weights(tensors)
        else:
            broadcast_tensors_(tensors)
        seconds = time.perf_counter() - start
        max_rss_kb = status_kb("VmHWM")
    want_masks, want_tensors = make(0, weights)
    exact = (
        all(torch.equal(masks[n], m) and masks[n].dtype == torch.bool for n, m in want_masks.items())
        if what == "masks"
        else all(torch.equal(t, w) for t, w in zip(tensors, want_tensors))
    )
    dist.destroy_process_group()
    return {
        "way": way, "what": what, "rank": rank, "seconds": seconds, "peak_mb": memory.mb,
        "max_rss_mb": None if max_rss_kb is None else max_rss_kb / 1024, "memory_method": memory.method,
        "exact": exact, "torch": torch.__version__, "weights": weights,
    }


# ---------------------------------------------------------------- the parent: a fresh pair per row, the table


def run_pair(way: str, what: str, weights: int, timeout: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        cmds = [
            [sys.executable, str(Path(__file__).resolve()), "--child", way, what, str(rank), store, "--weights", str(weights)]
            for rank in (0, 1)
        ]
        with ThreadPoolExecutor(2) as pool:
            rows = list(pool.map(lambda cmd: run_json_child(cmd, threads=1, timeout=timeout), cmds))
    rows = [{"way": way, "what": what, "rank": rank, **row} for rank, row in enumerate(rows)]
    for row in rows:
        if "error" not in row and not row["exact"]:
            row["error"] = "rank one does not hold rank zero's values"
    return rows


def markdown(rows: list[dict[str, Any]], weights: int) -> str:
    ok = [r for r in rows if "error" not in r]
    lines = [
        f"{weights / 1e6:,.1f} M float32 weights in {TENSORS} tensors and their bool masks ({DENSITY:.0%} kept), rank 0 to"
        f" rank 1, 2 gloo processes of one thread, a fresh pair per row; torch {ok[0]['torch'] if ok else '?'},"
        f" Python {platform.python_version()}, {cpu_model()}, {os.cpu_count()} cores, {allocator_settings()},"
        f" load average {load_average()} at the end; peak memory = peak RSS during the call minus RSS before it"
        f" ({ok[0]['memory_method'] if ok else 'n/a'}).",
        "",
        "| what | way | rank | time (s) | peak memory (MiB) | max RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            error = r["error"].replace("|", "\\|")
            lines.append(f"| {r['what']} | {r['way']} | {r['rank']} | error: {error} | | |")
        else:
            lines.append(
                f"| {r['what']} | {r['way']} | {r['rank']} | {r['seconds']:.2f} | {r['peak_mb']:,.0f} | {r['max_rss_mb']:,.0f} |"
            )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=int, default=100_000_000, help="float32 weights in all (default 100 M)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per pair of processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows to this file")
    parser.add_argument("--child", nargs=4, metavar=("WAY", "WHAT", "RANK", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.weights < TENSORS:
        parser.error(f"--weights must be at least {TENSORS}, got {args.weights}")
    if args.child:
        import json

        way, what, rank, store = args.child
        print(json.dumps(measure(way, what, int(rank), store, args.weights)))
        return 0
    rows = []
    for what in WHATS:
        for way in WAYS:
            print(f"{what} / {way} ...", end=" ", file=sys.stderr, flush=True)
            pair = run_pair(way, what, args.weights, args.timeout)
            print(", ".join(r.get("error") or f"{r['seconds']:.2f} s" for r in pair), file=sys.stderr, flush=True)
            rows += pair
    return report(markdown(rows, args.weights), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
