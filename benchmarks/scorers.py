"""Time and peak memory of every registered scorer: one ``compute_masks`` call at compression 100.

Each (model, scorer) pair runs in a fresh Python process on ``--threads`` threads (default 1:
``OMP_NUM_THREADS`` and ``torch.set_num_threads``), with the scorer's default arguments, iterations and
number of batches.
Data-driven scorers get random CIFAR-shaped batches (N(0, 1) images 3x32x32, uniform labels over 10
classes) of ``--batch-size`` (128) images, as many batches as the scorer's default ``num_batches``
except GraSP and GraSP-abs, which get 2 (256 images, the published-code timing's setting); data-free
scorers that need an input get an all-ones ``1x3x32x32`` tensor. Model and batches are built before the
measurement.

Time: wall clock of the ``compute_masks`` call (scoring, ranking, every iteration).
Memory: peak resident set size (RSS) of the process during the call minus its RSS just before it. On
Linux the kernel's peak counter (``VmHWM``) is reset right before the call (``/proc/self/clear_refs``),
so the number is the call's own high-water mark and counts everything torch allocates on the CPU
(tracemalloc would not see torch's allocations). Where that reset is unavailable the lifetime peak
``getrusage(RUSAGE_SELF).ru_maxrss`` is used instead (the "method" line says which); it can then hide
a call that peaks below the import-time peak.

Scorer modules present in ``lightning_synflow/scorers/`` are all imported first, so scorers that land
later are picked up without editing this file. ``grasp_published`` (not a registered scorer) times the
operations of the published GraSP scoring on the same data for comparison (see :func:`published_grasp`).

    OMP_NUM_THREADS=1 python benchmarks/scorers.py                      # every scorer, resnet20 + vgg16_bn
    OMP_NUM_THREADS=1 python benchmarks/scorers.py --models resnet20 --scorers synflow snip
    OMP_NUM_THREADS=1 python benchmarks/scorers.py --models resnet18 --scorers grasp grasp_published
    python benchmarks/scorers.py --threads 2 --models resnet18 --scorers snip grasp   # both cores here
    python benchmarks/scorers.py --quick --models resnet20 --scorers magnitude   # smoke test, seconds
    git worktree add /tmp/before <commit>   # then, the same scorers before and after a change:
    OMP_NUM_THREADS=1 python benchmarks/scorers.py --baseline /tmp/before --repeat 3 --scorers synflow snip

``--baseline DIR`` runs every row also with the ``lightning_synflow`` package of another checkout (``DIR`` first
on ``PYTHONPATH``), alternating the two ``--repeat`` times so that drifts of the machine fall on both alike; the
table shows the median time of each, their ratio, and whether the two made the same masks (a digest of them).

Measure on an otherwise idle machine (the header prints the load average); ``--quick`` numbers (at most
2 iterations, 1 batch of 16) are for checking that the script runs, not for reporting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from _machine import PeakMemory, cpu_model, load_average, report, run_json_child

DEFAULT_MODELS = ("resnet20", "vgg16_bn")
COMPRESSION = 100.0
NUM_CLASSES = 10
QUICK_ITERATIONS = 2
QUICK_BATCH_SIZE = 16
#: Batches where the benchmark departs from the scorer's default: GraSP on 256 images (2 x 128), the
#: setting of the published-code timing in ALGORITHMS.md (51 s, 3.4 GB on ResNet-18).
BENCH_NUM_BATCHES = {"grasp": 2, "grasp_abs": 2, "grasp_published": 2}


# ---------------------------------------------------------------- measured in the child process


def _import_scorer_modules() -> dict[str, str]:
    """Import every module of ``lightning_synflow.scorers`` (registering their scorers); failures by name."""
    import importlib
    import pkgutil

    import lightning_synflow.scorers as pkg

    failed = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        try:
            importlib.import_module(f"{pkg.__name__}.{info.name}")
        except Exception as err:  # a module another developer is still writing must not stop the others
            failed[info.name] = f"{type(err).__name__}: {err}"
    return failed


def published_grasp(model: Any, batches: list[Any], names: list[str], density: float, temperature: float = 200.0) -> dict[str, Any]:
    """The published GraSP scoring's operations (the SynFlow code base's pruner, which follows the official
    GraSP code): ``g`` from one pass over the batches without a graph, then per batch a gradient with
    ``create_graph`` dotted with ``g`` and back-propagated on the model's own parameters, scores
    ``grad * param`` concatenated, and a global ``kthvalue`` threshold. Train mode, logits divided by
    ``temperature``, as our ``"grasp"`` default. Returns bool masks keeping the highest ``density``."""
    import torch
    import torch.nn.functional as F

    params = dict(model.named_parameters())
    weights = [params[n] for n in names]
    model.train()
    stopped = 0
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x) / temperature, y), weights)
        stopped = stopped + torch.cat([g.reshape(-1) for g in grads])
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x) / temperature, y), weights, create_graph=True)
        (stopped * torch.cat([g.reshape(-1) for g in grads])).sum().backward()
    scores = [(w.grad * w.detach()).detach() for w in weights]
    flat = torch.cat([s.reshape(-1) for s in scores])
    threshold = torch.kthvalue(flat, flat.numel() - round(density * flat.numel())).values
    return {n: s > threshold for n, s in zip(names, scores)}


def measure(
    model_name: str,
    scorer_name: str,
    quick: bool,
    batch_size: int,
    seed: int,
    num_batches: Optional[int] = None,
    threads: int = 1,
) -> dict[str, Any]:
    """One ``compute_masks`` call on a fresh model; the caller runs this in a fresh process."""
    import gc

    import torch

    torch.set_num_threads(threads)
    failed = _import_scorer_modules()
    from lightning_synflow import compute_masks, get_scorer, num_kept, select_prunable
    from lightning_synflow.models import get_model

    torch.manual_seed(seed)
    model = get_model(model_name, num_classes=NUM_CLASSES)
    published = scorer_name == "grasp_published"
    try:
        scorer = get_scorer("grasp" if published else scorer_name)
    except ValueError as err:
        raise ValueError(f"{err} (modules that failed to import: {failed})" if failed else str(err)) from None
    iterations = min(scorer.default_iterations, QUICK_ITERATIONS) if quick else None
    if not scorer.needs_data:
        num_batches = None
    elif num_batches is None:
        num_batches = 1 if quick else BENCH_NUM_BATCHES.get(scorer_name, scorer.default_num_batches)
    batches = None
    if scorer.needs_data:
        g = torch.Generator().manual_seed(seed + 1)
        batches = [
            (torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (batch_size,), generator=g))
            for _ in range(num_batches)
        ]
    example_input = torch.ones(1, 3, 32, 32) if scorer.needs_input else None
    with torch.no_grad():  # loads the convolution kernels: resident once per process, not the scorer's memory
        model.eval()(batches[0][0] if batches else torch.ones(1, 3, 32, 32))  # eval: BatchNorm statistics stay
        model.train()

    gc.collect()
    with PeakMemory() as memory:
        start = time.perf_counter()
        if published:
            masks = published_grasp(model, batches, select_prunable(model), 1 / COMPRESSION)
        else:
            masks = compute_masks(
                model,
                scorer,
                compression=COMPRESSION,
                iterations=iterations,
                example_input=example_input,
                dataloader=batches,
                num_batches=num_batches,
            )
        seconds = time.perf_counter() - start

    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    digest = hashlib.sha256()
    for name, mask in masks.items():
        digest.update(name.encode() + mask.contiguous().numpy().tobytes())
    assert published or kept == num_kept(1 / COMPRESSION, total), (kept, total)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "model": model_name,
        "scorer": scorer_name,
        "iterations": scorer.default_iterations if iterations is None else iterations,
        "needs_data": scorer.needs_data,
        "num_batches": num_batches,
        "batch_size": batch_size if scorer.needs_data else None,
        "seconds": seconds,
        "peak_mb": memory.mb,
        "rss_before_mb": memory.before_kb / 1024,
        "model_mb": params / 2**20,
        "kept": kept,
        "total": total,
        "masks_sha256": digest.hexdigest()[:16],
        "package": str(Path(sys.modules["lightning_synflow"].__file__).parent.parent),
        "memory_method": memory.method,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- the parent: one child per pair, the table


def _list_scorers() -> tuple[list[str], dict[str, str]]:
    failed = _import_scorer_modules()
    from lightning_synflow import available_scorers

    return available_scorers(), failed


def _run_child(model: str, scorer: str, args: argparse.Namespace, code: Optional[Path] = None) -> dict[str, Any]:
    """One measurement in a fresh process, with the package of this checkout or of ``code``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", model, scorer, "--batch-size", str(args.batch_size),
           "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.quick:
        cmd.append("--quick")
    if args.num_batches is not None:
        cmd += ["--num-batches", str(args.num_batches)]
    env = None if code is None else {"PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    row = run_json_child(cmd, threads=args.threads, timeout=args.timeout, env=env)
    row = {"model": model, "scorer": scorer, **row} if "error" in row else row
    return {**row, "code": "baseline" if code is not None else "this checkout"}


def comparison(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Median time and peak memory of each (model, scorer) with the baseline's package and this checkout's."""
    lines = [
        f"Before (`{args.baseline}`) and after (this checkout), alternating, {args.repeat} fresh process(es) each;"
        f" medians. {args.threads} thread(s), {cpu_model()}, load average {load_average()} at the end.",
        "",
        "| model | scorer | before (s) | after (s) | after / before | before (MB) | after (MB) | same masks |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for model in args.models:
        for scorer in sorted({r["scorer"] for r in rows if r["model"] == model}):
            runs = {c: [r for r in rows if (r["model"], r["scorer"], r["code"]) == (model, scorer, c) and "error" not in r]
                    for c in ("baseline", "this checkout")}
            if not all(runs.values()):
                lines.append(f"| {model} | {scorer} | error | | | | | |")
                continue
            t = {c: statistics.median(r["seconds"] for r in rs) for c, rs in runs.items()}
            mb = {c: statistics.median(r["peak_mb"] for r in rs) for c, rs in runs.items()}
            same = {r["masks_sha256"] for rs in runs.values() for r in rs}
            lines.append(
                f"| {model} | {scorer} | {t['baseline']:.2f} | {t['this checkout']:.2f} |"
                f" {t['this checkout'] / t['baseline']:.3f} | {mb['baseline']:.0f} | {mb['this checkout']:.0f} |"
                f" {'yes' if len(same) == 1 else 'NO'} |"
            )
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ok = [r for r in rows if "error" not in r]
    method = ok[0]["memory_method"] if ok else "n/a"
    torch_version = ok[0]["torch"] if ok else "n/a"
    lines = [
        f"Compression {COMPRESSION:g} (density 1%), one `compute_masks` call per row, {args.threads} thread(s), fresh process per row;"
        f" torch {torch_version}, Python {platform.python_version()}, {cpu_model()},"
        f" load average {load_average()} at the end; peak memory = peak RSS during the call minus RSS before it"
        f" ({method}).{' QUICK RUN: not for reporting.' if args.quick else ''}",
        "",
        "| model | scorer | iterations | data | time (s) | peak memory (MB) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            error = r["error"].replace("|", "\\|")
            lines.append(f"| {r['model']} | {r['scorer']} | | | error: {error} | |")
            continue
        data = f"{r['num_batches']} x {r['batch_size']}" if r["needs_data"] else "none"
        lines.append(
            f"| {r['model']} | {r['scorer']} | {r['iterations']} | {data} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |"
        )
    models = {r["model"]: r["model_mb"] for r in ok}
    if models:
        lines += ["", "Parameters: " + ", ".join(f"{m} {mb:.1f} MB" for m, mb in models.items()) + " (float32)."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="names from lightning_synflow.models.MODELS")
    parser.add_argument("--scorers", nargs="+", default=None, help="registered scorer names (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"at most {QUICK_ITERATIONS} iterations, 1 batch of {QUICK_BATCH_SIZE}: a smoke test")
    parser.add_argument("--batch-size", type=int, default=None, help=f"images per batch (default 128, {QUICK_BATCH_SIZE} with --quick)")
    parser.add_argument("--num-batches", type=int, default=None, help="batches for data-driven scorers (default: the scorer's own; 2 for GraSP)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per (model, scorer) run")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows to this file")
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout to compare with (its package on PYTHONPATH)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh runs per row (per side with --baseline); medians")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SCORER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = QUICK_BATCH_SIZE if args.quick else 128
    if args.batch_size < 1:
        parser.error(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.num_batches is not None and args.num_batches < 1:
        parser.error(f"--num-batches must be a positive integer, got {args.num_batches}")
    if args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    if args.repeat < 1:
        parser.error(f"--repeat must be a positive integer, got {args.repeat}")
    if args.baseline is not None and not (args.baseline / "lightning_synflow" / "__init__.py").is_file():
        parser.error(f"--baseline must be a checkout of this repository (with lightning_synflow/), got {args.baseline}")

    if args.child:
        print(json.dumps(measure(*args.child, quick=args.quick, batch_size=args.batch_size, seed=args.seed, num_batches=args.num_batches, threads=args.threads)))
        return 0

    if args.scorers is None:  # only listing needs the package in this process; the children measure
        scorers, failed = _list_scorers()
        for name, err in failed.items():
            print(f"warning: scorer module {name!r} failed to import and is skipped: {err}", file=sys.stderr)
    else:
        scorers = args.scorers
    rows = []
    codes = [args.baseline, None] if args.baseline is not None else [None]
    for model in args.models:
        for scorer in scorers:
            for _ in range(args.repeat):
                for code in codes:
                    print(f"{model} / {scorer} ({code or 'this checkout'}) ...", end=" ", file=sys.stderr, flush=True)
                    row = _run_child(model, scorer, args, code)
                    print(row.get("error") or f"{row['seconds']:.2f} s, {row['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
                    rows.append(row)
    table = markdown(rows, args) if args.baseline is None else comparison(rows, args)
    return report(table, rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
