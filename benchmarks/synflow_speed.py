"""SynFlow's pruning time and peak memory against its floor and against the published algorithm.

For each model (CIFAR shapes, 10 classes) and each method, a fresh process (``OMP_NUM_THREADS`` set to
``--threads``) measures the method and then, in the same process, its floor:

- **floor**: ``--iterations`` bare forward+backward passes of the model itself (float32, eval mode, the
  all-ones input of batch 1, gradients of the summed output for every parameter), the faster of two
  timings: what any SynFlow implementation must at least spend;
- **the method**: ``--iterations`` rounds of SynFlow at compression ``--compression`` (exponential schedule):
  - ``lightning_synflow``: ``compute_masks(model, "synflow", ...)``, the default (float32, falls back to
    float64 on overflow);
  - ``lightning_synflow float64``: ``SynFlow(dtype="float64")``;
  - ``published loop``: a re-implementation (not the authors' code: ``synflow_authors.py`` runs that, on
    their own masked models), for timing on the same plain model, of the operations the authors' code
    performs each round: linearise the model in place (signs kept as float tensors),
    masks as float tensors multiplied into the weights in the forward (``torch.nn.utils.prune``-style
    hooks), scores ``|grad * param|`` cloned, and a global ``torch.kthvalue`` over every score
    concatenated, pruning everything ``<=`` it.

Time is wall clock; the ratio ``method / floor`` comes from the same process. Memory is the peak RSS
growth during the method, warm (VmHWM reset right before it; the method runs before the floor, so no earlier
gradient is reused) in multiples of the prunable float32 weights' bytes. Two rounds of the method on a copy
of the model run first and the C heap's free pages are then handed back to the kernel: the first run of a
process makes the library code it executes resident (about 0.2x the prunable bytes of these models, the
same for a model of any size), which is not memory the pruning uses; "of which code" shows what code still
loaded during the measured run. The parent also compares the masks: how many kept weights the float32
default and the published loop keep that the float64 masks do not.

Page faults per round (minor faults: fresh pages the kernel zeroes) show how much of either time is the C
allocator handing memory back and faulting it in again; the header names any ``MALLOC_*`` tuning in the
environment, which the children inherit (``MALLOC_TOP_PAD_=268435456`` keeps freed memory in the process).
Under such tuning the warm-up's free pages are not handed back (doing so made every later round fault), so
the memory column then also reuses what the warm-up freed.

    OMP_NUM_THREADS=1 python benchmarks/synflow_speed.py --repeat 3      # 1 thread, vgg16_bn + resnet18
    python benchmarks/synflow_speed.py --threads 2                       # all cores of this machine
    python benchmarks/synflow_speed.py --quick                           # smoke test: 2 rounds, resnet20
    MALLOC_TOP_PAD_=268435456 OMP_NUM_THREADS=1 python benchmarks/synflow_speed.py   # without page faults

Measure on an otherwise idle machine (the header prints the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from _machine import (
    PeakMemory,
    add_pruning_run_arguments,
    check_pruning_run_arguments,
    allocator_settings,
    cpu_model,
    load_average,
    minor_faults,
    release_free_memory,
    report,
    run_json_child,
)

METHODS = ("lightning_synflow", "lightning_synflow float64", "published loop")


def _floor(model: Any, x: Any, iterations: int, repeats: int = 2) -> tuple[float, int]:
    """Seconds and page faults for ``iterations`` bare forward+backward passes (after one warm-up pass), the
    faster of ``repeats`` timings: whether the C allocator hands the gradients' memory back to the kernel
    after each pass (and faults it in again) depends on what ran before in the process, and swings the floor
    by a third; the faster floor is the stricter one to compare against."""
    model.eval()
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()
    timings = []
    for _ in range(repeats):
        faults, start = minor_faults(), time.perf_counter()
        for _ in range(iterations):
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        timings.append((time.perf_counter() - start, minor_faults() - faults))
    model.zero_grad(set_to_none=True)
    return min(timings)


def published_loop(model: Any, x: Any, names: list[str], compression: float, iterations: int) -> dict[str, Any]:
    """The published SynFlow loop's operations (see the module docstring); returns bool masks. Leaves the
    model hooked and pruned."""
    import torch
    from torch.nn.utils import prune

    modules = dict(model.named_modules())
    owners = [(modules[n.rsplit(".", 1)[0]], n.rsplit(".", 1)[1]) for n in names]
    for module, attr in owners:
        prune.custom_from_mask(module, attr, torch.ones_like(getattr(module, attr)))
    masked = [(getattr(m, attr + "_mask"), getattr(m, attr + "_orig")) for m, attr in owners]
    model.eval()
    for t in range(1, iterations + 1):
        sparsity = 1.0 - compression ** (-t / iterations)
        with torch.no_grad():  # linearise: signs of every state entry kept as tensors, values made absolute
            signs = {k: torch.sign(v) for k, v in model.state_dict().items() if v.is_floating_point()}
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    v.abs_()
        model.zero_grad()
        model(torch.ones_like(x)).sum().backward()
        scores = [torch.clone(p.grad * p).detach().abs_() for _, p in masked]
        for _, p in masked:
            p.grad.data.zero_()
        with torch.no_grad():  # restore the signs
            for k, v in model.state_dict().items():
                if k in signs:
                    v.mul_(signs[k])
        flat = torch.cat([torch.flatten(s) for s in scores])
        k = int(sparsity * flat.numel())
        if k >= 1:
            threshold, _ = torch.kthvalue(flat, k)
            zero, one = torch.tensor([0.0]), torch.tensor([1.0])
            for (mask, _), s in zip(masked, scores):
                mask.copy_(torch.where(s <= threshold, zero, one))
    return {n: mask.bool() for n, (mask, _) in zip(names, masked)}


def run_method(method: str, model: Any, x: Any, names: list[str], compression: float, iterations: int) -> dict[str, Any]:
    """Masks from ``method`` (one of :data:`METHODS`); the published loop leaves ``model`` hooked and pruned."""
    from lightning_synflow import SynFlow, compute_masks

    if method == "published loop":
        return published_loop(model, x, names, compression, iterations)
    scorer = SynFlow("float64" if method.endswith("float64") else "float32")
    return compute_masks(model, scorer, compression=compression, iterations=iterations, example_input=x)


def measure(model_name: str, method: str, args: argparse.Namespace, masks_out: Optional[str]) -> dict[str, Any]:
    """One method on a fresh model in this (fresh) process, then its floor."""
    import copy
    import gc

    import torch

    from lightning_synflow import select_prunable
    from lightning_synflow.models import get_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = get_model(model_name, num_classes=10)
    names = select_prunable(model)
    prunable_mb = sum(p.numel() * 4 for n, p in model.named_parameters() if n in names) / 2**20
    x = torch.ones(1, 3, 32, 32)
    # Warm-up: two rounds on a copy make the library code the method runs resident (once per process, the
    # same for any model size: not pruning's memory); the heap's free pages then go back to the kernel, so
    # that the measurement starts from live data only, as in a process that has not pruned before.
    run_method(method, copy.deepcopy(model), x, names, args.compression, 2)
    gc.collect()
    release_free_memory()
    with PeakMemory() as memory:  # before the floor: memory its gradients left in the allocator would hide growth
        faults, start = minor_faults(), time.perf_counter()
        masks = run_method(method, model, x, names, args.compression, args.iterations)
        seconds, faults = time.perf_counter() - start, minor_faults() - faults
    if method == "published loop":
        model = get_model(model_name, num_classes=10)  # the loop left this one hooked and pruned
    floor, floor_faults = _floor(model, x, args.iterations)
    if masks_out:
        torch.save(masks, masks_out)
    return {
        "model": model_name,
        "method": method,
        "threads": torch.get_num_threads(),
        "iterations": args.iterations,
        "compression": args.compression,
        "floor_s": floor,
        "seconds": seconds,
        "ratio": seconds / floor,
        "faults_per_round": faults / args.iterations,
        "floor_faults_per_round": floor_faults / args.iterations,
        "peak_mb": memory.mb,
        "code_mb": memory.code_mb,
        "memory_method": memory.method,
        "prunable_mb": prunable_mb,
        "peak_x_prunable": memory.mb / prunable_mb,
        "kept": sum(int(m.sum()) for m in masks.values()),
        "total": sum(m.numel() for m in masks.values()),
        "torch": torch.__version__,
    }


def _run_child(model: str, method: str, args: argparse.Namespace, masks_out: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", model, method, "--masks-out", masks_out,
           "--threads", str(args.threads), "--iterations", str(args.iterations), "--compression", str(args.compression),
           "--seed", str(args.seed)]
    row = run_json_child(cmd, args.threads)
    return {"model": model, "method": method, **row} if "error" in row else row


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median pruning/floor ratio (the lower of the middle two for an even count), with the
    spread of all runs (machine noise shows here)."""
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["ratio"])
    if not ok:
        return runs[0]
    row = dict(ok[(len(ok) - 1) // 2])
    row.update(runs=len(ok), ratio_min=ok[0]["ratio"], ratio_max=ok[-1]["ratio"],
               peak_mb_max=max(r["peak_mb"] for r in ok))
    return row


def _differences(masks_dir: Path, model: str) -> dict[str, int]:
    """Kept weights of each method that the float64 masks do not keep."""
    import torch

    ref_path = masks_dir / f"{model}-lightning_synflow float64.pt"
    if not ref_path.exists():
        return {}
    ref = torch.load(ref_path)
    out = {}
    for method in METHODS:
        path = masks_dir / f"{model}-{method}.pt"
        if path.exists():
            masks = torch.load(path)
            out[method] = sum(int((masks[n] & ~ref[n]).sum()) for n in ref)
    return out


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"SynFlow, {args.iterations} rounds, compression {args.compression:g}, {args.threads} thread(s), fresh process per"
        f" run, warm (after a two-round warm-up on a copy), against a re-implementation of the published loop (not the"
        f" authors' code), {args.repeat} run(s) per row (the median ratio, the lower middle one for an even count; min-max); {cpu_model()}, {os.cpu_count()} cores, torch {next((r['torch'] for r in rows if 'torch' in r), '?')},"
        f" Python {platform.python_version()}, {allocator_settings()}, load average {load_average()} at the end."
        f"{' QUICK RUN: not for reporting.' if args.quick else ''}",
        "",
        "| model | method | floor: bare fwd+bwd (s) | pruning (s) | pruning / floor | page faults per round: pruning / floor |"
        " peak memory (MB) | x prunable bytes | of which code (MB) | kept not in float64 masks |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | | error: {r['error']} | | | | | | |")
            continue
        diff = "" if r.get("not_in_float64") is None else f"{r['not_in_float64']:,} of {r['kept']:,}"
        spread = f" ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})" if r.get("runs", 1) > 1 else ""
        method = "published loop (re-implementation)" if r["method"] == "published loop" else r["method"]
        lines.append(
            f"| {r['model']} | {method} | {r['floor_s']:.2f} | {r['seconds']:.2f} | {r['ratio']:.2f}{spread} |"
            f" {r['faults_per_round']:,.0f} / {r['floor_faults_per_round']:,.0f} | {r['peak_mb']:.0f} | {r['peak_x_prunable']:.2f} |"
            f" {'?' if r.get('code_mb') is None else format(r['code_mb'], '.1f')} | {diff} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pruning_run_arguments(parser, ["vgg16_bn", "resnet18"], list(METHODS), "2 rounds on resnet20: a smoke test")
    args = parser.parse_args(argv)
    check_pruning_run_arguments(parser, args)
    if args.quick:
        args.models, args.iterations = ["resnet20"], 2
    if args.child:
        print(json.dumps(measure(*args.child, args, args.masks_out)))
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for method in args.methods:
                print(f"{model} / {method} ...", end=" ", file=sys.stderr, flush=True)
                runs = []
                for _ in range(args.repeat):
                    row = _run_child(model, method, args, str(Path(tmp) / f"{model}-{method}.pt"))
                    print(row.get("error") or f"{row['seconds']:.1f} s ({row['ratio']:.2f}x floor), {row['peak_mb']:.0f} MB",
                          end=" ", file=sys.stderr, flush=True)
                    runs.append(row)
                print(file=sys.stderr)
                rows.append(_median_run(runs))
            for row in rows:
                if row["model"] == model and "error" not in row:
                    diff = _differences(Path(tmp), model).get(row["method"])
                    if diff is not None:
                        row["not_in_float64"] = diff
    return report(markdown(rows, args), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
