"""SynFlow's pruning time and peak memory against the authors' own code (ganguli-lab/Synaptic-Flow).

The authors' code is not part of this repository: clone it anywhere and give its path,

    git clone https://github.com/ganguli-lab/Synaptic-Flow /tmp/Synaptic-Flow
    python benchmarks/synflow_authors.py --authors-code /tmp/Synaptic-Flow --repeat 3
    python benchmarks/synflow_authors.py --authors-code /tmp/Synaptic-Flow --quick     # smoke test

(or set ``SYNFLOW_AUTHORS_CODE=/tmp/Synaptic-Flow`` instead of ``--authors-code``). Every row is a fresh
process with ``OMP_NUM_THREADS`` set to ``--threads`` (default 1) and the allocator as the environment
has it (the header names any ``MALLOC_*`` tuning; none is the default glibc malloc users have). The rows
of one repeat run one after the other, so each "authors / ours" ratio compares runs taken minutes apart.

Methods, each at compression ``--compression`` (100 = the authors' ``--compression 2``), ``--iterations``
rounds (100), exponential schedule, global scope, float32:

- ``authors' code cold``: their ``prune.prune_loop`` with their ``Pruners.pruners.SynFlow`` on their own
  ``Models.lottery_vgg.<model>`` (masked layers from ``Layers/layers.py``: every Conv2d/Linear/BatchNorm
  carries float ``weight_mask``/``bias_mask`` buffers multiplied into its weights in every forward), with
  the pruned parameters of their ``singleshot`` experiment (``Utils.generator.masked_parameters(model,
  bias=False, batchnorm=False, residual=False)``: conv and linear weights) and their other defaults
  (eval mode, no reinitialisation, shuffle or inversion). The first call in the process: cold.
  Their loop reads one batch from a data loader only for its input shape; it gets a one-element list
  holding a zero batch of CIFAR shape (their command line would load CIFAR-10 images each round, which
  is not counted here). Their model receives the same initial weights as ours (copied from
  ``lightning_synflow.models.get_model(<model>)`` seeded with ``--seed``), so the masks can be compared.
- ``authors' code warm``: the same, after two rounds of their loop on a copy of the model (see below).
- ``lightning_synflow cold``: ``compute_masks(model, "synflow", ...)`` (float32 with float64 fallback) on
  ``lightning_synflow.models.get_model(<model>)``, a plain torch model of the same architecture (no mask
  buffers); the first call in the process.
- ``lightning_synflow warm``: the same after a two-round call on a copy of the model.

*Warm*: two rounds on a copy make the code the method runs resident, then the C heap's free pages go back
to the kernel (``malloc_trim``; skipped under ``MALLOC_*`` tuning), so that the measured call starts from
live data only. *Cold*: no warm-up; the call pays for code paged in for the first time and for the
allocator's growth, as a user's first call does. Everything is imported before the measured call.

After the method, the same process times the *floor*: ``--iterations`` bare forward+backward passes (batch
1, the all-ones input, eval mode, gradients of the summed output) of the plain model, the faster of two
timings after one warm-up pass; for the authors' rows also the floor of their masked model, which pays
the mask multiplications in every pass. Memory is the peak RSS growth during the call (VmHWM reset right
before it) in multiples of the prunable float32 weights' bytes; "of which code" is the growth of
file-backed pages (library code run for the first time). The parent compares each method's masks with
those of ``lightning_synflow cold``: kept weights that ours does not keep.

Shims applied to the authors' code: none. With torch 2.14/2.15, NumPy 2 and tqdm 4.70 their
``prune.py``, ``Pruners/pruners.py``, ``Layers/layers.py``, ``Models/lottery_vgg.py`` and
``Utils/generator.py`` import and run unchanged; their files are never edited. Two things around the call:
their ``prune_loop`` ends with ``quit()`` when the final density misses its target by 5 weights or more,
which this script turns into an error row; their tqdm progress bar writes to the child's stderr (kept, as
users have it).

Measure on an otherwise idle machine (the header prints the load average at the end); one-thread timings
on a 2-core machine vary by +-25% between processes, hence ``--repeat`` and the min-max ranges.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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

METHODS = ("authors' code cold", "authors' code warm", "lightning_synflow cold", "lightning_synflow warm")
MODELS = ("vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")  # built by both code bases, same architecture
REFERENCE = "lightning_synflow cold"  # the masks every row is compared with
ENV = "SYNFLOW_AUTHORS_CODE"
CLONE = "git clone https://github.com/ganguli-lab/Synaptic-Flow"


def check_authors_code(path: Optional[str]) -> Path:
    """The authors' checkout, or ``ValueError`` saying how to get it."""
    if not path:
        raise ValueError(f"give the authors' code with --authors-code PATH or {ENV}=PATH ({CLONE} PATH)")
    root = Path(path).expanduser().resolve()
    missing = [f for f in ("prune.py", "Pruners/pruners.py", "Layers/layers.py", "Models/lottery_vgg.py",
                           "Utils/generator.py") if not (root / f).is_file()]
    if missing:
        raise ValueError(f"{root} is not a checkout of ganguli-lab/Synaptic-Flow (missing {', '.join(missing)}); {CLONE}")
    return root


def _synchronize(x: Any) -> None:
    """Wait for the GPU's queued work when ``x`` is on one, so that the wall clock covers it."""
    import torch

    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _floor(model: Any, x: Any, iterations: int, repeats: int = 2) -> float:
    """Seconds for ``iterations`` bare forward+backward passes after one warm-up pass, the faster of ``repeats``
    timings (as in ``synflow_speed.py``); on a GPU each timing ends when the GPU has finished."""
    model.eval()
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()
    timings = []
    for _ in range(repeats):
        _synchronize(x)
        start = time.perf_counter()
        for _ in range(iterations):
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        _synchronize(x)
        timings.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    return min(timings)


def _authors_model(model_name: str, plain: Any) -> Any:
    """Their masked model of the same architecture, holding ``plain``'s weights and buffers."""
    import torch
    from Models import lottery_vgg

    theirs = getattr(lottery_vgg, model_name)((3, 32, 32), 10)
    ours = list(plain.state_dict().items())
    targets = [(k, v) for k, v in theirs.state_dict().items() if not k.endswith("_mask")]
    if len(ours) != len(targets) or any(a.shape != b.shape for (_, a), (_, b) in zip(ours, targets)):
        raise RuntimeError(f"their {model_name} and ours differ in layout")
    with torch.no_grad():
        for (_, src), (_, dst) in zip(ours, targets):
            dst.copy_(src)
    return theirs


def _authors_prune(model: Any, compression: float, iterations: int, x: Any) -> Any:
    """Their prune_loop with their SynFlow on ``model`` (on ``x``'s device, where the model must be); returns the
    pruner (its masks are the model's)."""
    import torch
    import prune  # the authors' prune.py
    from Pruners import pruners
    from Utils import generator

    pruner = pruners.SynFlow(generator.masked_parameters(model, False, False, False))
    loader = [(torch.zeros_like(x), torch.zeros(1, dtype=torch.long))]  # read only for its shape
    try:
        prune.prune_loop(model, torch.nn.CrossEntropyLoss(), pruner, loader, x.device,
                         1.0 / compression, "exponential", "global", iterations)
    except SystemExit:
        raise RuntimeError("their prune_loop's final density check failed (it calls quit())") from None
    return pruner


def _their_masks(pruner: Any, names: list[str], plain: Any) -> dict[str, Any]:
    """Their float masks, in the order of our ``names`` (the prunable tensors of ``plain``), as bool masks on the CPU."""
    theirs = [m for m, _ in pruner.masked_parameters]
    shapes = dict(plain.named_parameters())
    if len(theirs) != len(names) or any(m.shape != shapes[n].shape for m, n in zip(theirs, names)):
        raise RuntimeError("their pruned parameters differ from ours")
    return {n: (m != 0).cpu() for n, m in zip(names, theirs)}


def measure(model_name: str, method: str, args: argparse.Namespace, masks_out: Optional[str]) -> dict[str, Any]:
    """One method in this (fresh) process, then the floor(s)."""
    import copy
    import gc

    import torch

    from lightning_synflow import compute_masks, select_prunable
    from lightning_synflow.models import get_model

    torch.set_num_threads(args.threads)
    authors = method.startswith("authors")
    if authors:
        sys.path.insert(0, str(check_authors_code(args.authors_code)))
        import importlib

        for module in ("prune", "Pruners.pruners", "Utils.generator", "Models.lottery_vgg"):
            importlib.import_module(module)  # before the measurement, as everything else
    torch.manual_seed(args.seed)
    plain = get_model(model_name, num_classes=10)
    names = select_prunable(plain)
    prunable_mb = sum(p.numel() * 4 for n, p in plain.named_parameters() if n in names) / 2**20
    x = torch.ones(1, 3, 32, 32)
    model = _authors_model(model_name, plain) if authors else plain

    def run(target: Any, iterations: int) -> Any:
        if not authors:
            return compute_masks(target, "synflow", compression=args.compression, iterations=iterations, example_input=x)
        return _authors_prune(target, args.compression, iterations, x)

    if method.endswith("warm"):
        run(copy.deepcopy(model), 2)
        gc.collect()
        release_free_memory()
    with PeakMemory() as memory:
        faults, start = minor_faults(), time.perf_counter()
        masks = run(model, args.iterations)
        seconds, faults = time.perf_counter() - start, minor_faults() - faults
    if authors:  # their float masks, in the order of our names, as bool masks (outside the measurement)
        masks = _their_masks(masks, names, plain)
    torch.manual_seed(args.seed)
    floor = _floor(get_model(model_name, num_classes=10), x, args.iterations)
    row = {
        "model": model_name,
        "method": method,
        "pruned_model": f"their lottery_vgg.{model_name} (masked layers)" if authors else f"plain {model_name}",
        "threads": torch.get_num_threads(),
        "iterations": args.iterations,
        "compression": args.compression,
        "seconds": seconds,
        "floor_s": floor,
        "ratio": seconds / floor,
        "faults_per_round": faults / args.iterations,
        "peak_mb": memory.mb,
        "code_mb": memory.code_mb,
        "memory_method": memory.method,
        "prunable_mb": prunable_mb,
        "peak_x_prunable": memory.mb / prunable_mb,
        "kept": sum(int(m.sum()) for m in masks.values()),
        "total": sum(m.numel() for m in masks.values()),
        "torch": torch.__version__,
    }
    if authors:
        row["own_floor_s"] = _floor(_authors_model(model_name, get_model(model_name, num_classes=10)), x, args.iterations)
    if masks_out:
        torch.save(masks, masks_out)
    return row


def _run_child(model: str, method: str, args: argparse.Namespace, masks_out: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", model, method, "--masks-out", masks_out,
           "--authors-code", str(args.authors_code), "--threads", str(args.threads), "--iterations",
           str(args.iterations), "--compression", str(args.compression), "--seed", str(args.seed)]
    row = run_json_child(cmd, args.threads)
    return {"model": model, "method": method, **row} if "error" in row else row


def _not_in_reference(masks_dir: Path, model: str, method: str) -> Optional[int]:
    import torch

    ref, path = masks_dir / f"{model}-{REFERENCE}.pt", masks_dir / f"{model}-{method}.pt"
    if not (ref.exists() and path.exists()):
        return None
    ref_masks, masks = torch.load(ref), torch.load(path)
    return sum(int((masks[n] & ~ref_masks[n]).sum()) for n in ref_masks)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by time, with the min-max of time, ratio and memory over all runs."""
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["seconds"])
    if not ok:
        return runs[0]
    row = dict(ok[(len(ok) - 1) // 2])
    for key in ("seconds", "ratio", "peak_x_prunable", "peak_mb"):
        row[key + "_range"] = (min(r[key] for r in ok), max(r[key] for r in ok))
    row["runs"] = len(ok)
    return row


def _paired(by_method: dict[str, list[dict[str, Any]]], a: str, b: str, key: str) -> Optional[tuple[float, float, float]]:
    """Median, min and max over the repeats of ``a``'s ``key`` over ``b``'s in the same repeat."""
    pairs = [ra[key] / rb[key] for ra, rb in zip(by_method.get(a, []), by_method.get(b, []))
             if "error" not in ra and "error" not in rb and rb[key] > 0]
    if not pairs:
        return None
    return statistics.median(pairs), min(pairs), max(pairs)


def _range(row: dict[str, Any], key: str, fmt: str) -> str:
    lo, hi = row.get(key + "_range", (row[key], row[key]))
    return f" ({format(lo, fmt)}-{format(hi, fmt)})" if row.get("runs", 1) > 1 else ""


def markdown(rows: list[dict[str, Any]], ratios: list[str], args: argparse.Namespace) -> str:
    torch_version = next((r["torch"] for r in rows if "torch" in r), "?")
    lines = [
        f"SynFlow against the authors' code (ganguli-lab/Synaptic-Flow): {args.iterations} rounds, compression"
        f" {args.compression:g}, exponential schedule, float32, {args.threads} thread(s), fresh process per run, {args.repeat}"
        f" run(s) per row (the median by time; min-max); {cpu_model()}, {os.cpu_count()} cores, torch {torch_version},"
        f" Python {platform.python_version()}, {allocator_settings()}, load average {load_average()} at the end."
        f"{' QUICK RUN: not for reporting.' if args.quick else ''}",
        "",
        "| model | method | model pruned | pruning (s) | floor: plain model, bare fwd+bwd (s) | pruning / floor |"
        " floor of the pruned model (s) | page faults per round | peak memory (MB) | x prunable bytes | of which code (MB) |"
        " kept not kept by lightning_synflow |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | | error: {r['error']} | | | | | | | | |")
            continue
        diff = "" if r.get("not_in_reference") is None else f"{r['not_in_reference']:,} of {r['kept']:,}"
        own = f"{r['own_floor_s']:.2f}" if "own_floor_s" in r else "(the plain model)"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['pruned_model']} | {r['seconds']:.2f}{_range(r, 'seconds', '.1f')} |"
            f" {r['floor_s']:.2f} | {r['ratio']:.2f}{_range(r, 'ratio', '.2f')} | {own} | {r['faults_per_round']:,.0f} |"
            f" {r['peak_mb']:.0f} | {r['peak_x_prunable']:.2f}{_range(r, 'peak_x_prunable', '.2f')} |"
            f" {'?' if r.get('code_mb') is None else format(r['code_mb'], '.1f')} | {diff} |"
        )
    if ratios:
        lines += ["", "Paired runs (the same repeat, one after the other; median, min-max over the repeats):", "", *ratios]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-code", default=os.environ.get(ENV),
                        help=f"a checkout of ganguli-lab/Synaptic-Flow (default: ${ENV}); {CLONE}")
    add_pruning_run_arguments(parser, ["vgg16_bn"], list(METHODS), "2 rounds on vgg11_bn, one run: a smoke test",
                              choices=MODELS)
    args = parser.parse_args(argv)
    check_pruning_run_arguments(parser, args)
    try:
        args.authors_code = str(check_authors_code(args.authors_code))
    except ValueError as err:
        parser.error(str(err))
    if args.quick:
        args.models, args.iterations, args.repeat = ["vgg11_bn"], 2, 1
    if args.child:
        print(json.dumps(measure(*args.child, args, args.masks_out)))
        return 0

    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
            diffs: dict[str, Optional[int]] = {}
            for i in range(args.repeat):
                for method in args.methods:  # interleaved: every repeat runs each method once, in turn
                    print(f"{model} / {method} run {i + 1} ...", end=" ", file=sys.stderr, flush=True)
                    row = _run_child(model, method, args, str(Path(tmp) / f"{model}-{method}.pt"))
                    print(row.get("error") or f"{row['seconds']:.1f} s ({row['ratio']:.2f}x floor), {row['peak_mb']:.0f} MB",
                          file=sys.stderr, flush=True)
                    by_method[method].append(row)
                if i == 0:  # masks are deterministic: compare those of the first repeat
                    diffs = {m: _not_in_reference(Path(tmp), model, m) for m in args.methods}
            for method in args.methods:
                row = _summary(by_method[method])
                if "error" not in row and diffs.get(method) is not None:
                    row["not_in_reference"] = diffs[method]
                rows.append(row)
            pairs = [(a, b) for a in args.methods if a.startswith("authors") for b in args.methods
                     if b.startswith("lightning") and not (a.endswith("warm") and b.endswith("cold"))]
            for a, b in pairs:
                t, per_floor = _paired(by_method, a, b, "seconds"), _paired(by_method, a, b, "ratio")
                mem = _paired(by_method, a, b, "peak_mb")
                if t and per_floor and mem:
                    ratios.append(f"- {model}: {a} / {b}: time {t[0]:.2f}x ({t[1]:.2f}-{t[2]:.2f}); time over each process's"
                                  f" floor {per_floor[0]:.2f}x ({per_floor[1]:.2f}-{per_floor[2]:.2f}); peak memory"
                                  f" {mem[0]:.1f}x ({mem[1]:.1f}-{mem[2]:.1f})")
    return report(markdown(rows, ratios, args), rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
