"""Per-training-step cost of keeping a model sparse: lightning_synflow's masks against torch.nn.utils.prune.

Three variants of one training step run side by side in one process, on CPU, each on its own deep copy
of the same freshly initialised model with its own optimizer (SGD, lr 0.01, momentum 0.9, weight decay
5e-4), on one fixed random CIFAR-shaped batch (N(0, 1) images 3x32x32, uniform labels over 10 classes):

* ``dense``: zero_grad, forward, cross-entropy, backward, ``optimizer.step()``; no masks.
* ``lightning_synflow``: the same plus exactly what ``PruneAtInit`` adds per step: ``BoundMasks.mask_grads_()``
  before ``optimizer.step()`` and ``BoundMasks.apply_()`` in an optimizer step post-hook after it.
* ``torch.nn.utils.prune``: the model re-parametrised with ``prune.custom_from_mask`` on every prunable
  tensor, as Lightning's ``ModelPruning`` does: a forward pre-hook recomputes ``weight = weight_orig *
  weight_mask`` every forward (and autograd multiplies the gradient by the mask on the way back).

The masks (random, 99% of the weights of ``select_prunable(model)`` pruned; their values do not matter
for timing) are the same for both sparse variants. After ``--warmup`` rounds, ``--steps`` rounds are
measured; a round is one step of each variant, in an order rotated every round, so that drift of the
machine (other load, clocks, caches) falls on all variants alike. Step time is the wall clock of one
whole step. Overhead vs dense is median(variant) / median(dense) - 1; its spread is the interquartile
range over rounds of the per-round ratio variant / dense. The mask operations alone are ``mask_grads_``
and ``apply_`` timed on their own inside the measured lightning_synflow steps. After the run the pruned
weights of both sparse variants are checked to be exactly zero (exit status 1 otherwise): a benchmark
of broken masking would mean nothing.

    OMP_NUM_THREADS=1 python benchmarks/mask_overhead.py --threads 1     # one thread
    python benchmarks/mask_overhead.py                                  # all cores
    python benchmarks/mask_overhead.py --quick --models resnet18        # smoke test, seconds

Measure on an otherwise idle machine (the header prints the load average); ``--quick`` numbers (batch
8, 2 rounds after 1 warm-up) are for checking that the script runs, not for reporting.

The command line measures float32 on CPU. :func:`measure` also takes a device and a mixed precision
(``"bf16-mixed"``, ``"16-mixed"``: autocast, and for the latter a GradScaler): ``benchmarks/gpu_check.py``
measures the same steps on a GPU that way.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import prune

from _machine import cpu_model, load_average
from lightning_synflow import BoundMasks, select_prunable
from lightning_synflow.models import get_model

DEFAULT_MODELS = ("vgg16_bn", "resnet18")
VARIANTS = ("dense", "lightning_synflow", "torch.nn.utils.prune")
SPARSITY = 0.99
NUM_CLASSES = 10
LR = 0.01  # small enough that random labels keep every variant finite; timing does not depend on it
QUICK = {"batch_size": 8, "steps": 2, "warmup": 1}
FULL = {"batch_size": 128, "steps": 20, "warmup": 3}


#: Lightning's precision flags and the autocast dtype each trains under (None: no autocast).
AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}

#: A point in time: ``time.perf_counter()`` on CPU, a recorded CUDA event on a GPU (read after a synchronize).
Mark = Union[float, "torch.cuda.Event"]


def mark(device: torch.device) -> Mark:
    """Now, on ``device``'s clock: a CUDA event in its stream (no synchronisation), else the wall clock."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def seconds_between(a: Mark, b: Mark) -> float:
    """Seconds from mark ``a`` to mark ``b`` (CUDA events: once both have completed)."""
    return a.elapsed_time(b) / 1e3 if isinstance(a, torch.cuda.Event) else b - a


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``, so that the wall clock covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One variant: its model copy, its optimizer, and the step times it has recorded.

    ``precision`` is Lightning's flag: ``"bf16-mixed"`` and ``"16-mixed"`` run forward and loss under autocast,
    ``"16-mixed"`` with a GradScaler whose unscaling comes before the masking of gradients, as in
    ``Trainer(precision="16-mixed")`` (a step the scaler skips fires no step post-hook: its re-masking counts as 0 s, and ``skipped`` counts it). A step ends with a
    synchronisation of the model's device, so that its wall clock covers the GPU's work; the mask operations
    alone are timed with CUDA events there."""

    def __init__(self, name: str, model: nn.Module, bound: Optional[BoundMasks] = None, precision: str = "32-true") -> None:
        self.name = name
        self.model = model.train()
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        self.bound = bound
        self.autocast = AUTOCAST[precision]
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "16-mixed" else None
        if bound is not None:  # as PruneAtInit: re-mask in a post-hook, which fires only for steps that happened
            self.optimizer.register_step_post_hook(self._after_step)
        self.reset()

    def reset(self) -> None:
        """Forget the warm-up."""
        self.step_s: list[float] = []
        self.skipped = 0  # steps the GradScaler skipped (inf/NaN gradients): no update, no re-masking
        self._mask_grads: list[tuple[Mark, Mark]] = []
        self._apply: list[tuple[Mark, Mark]] = []

    @property
    def mask_grads_s(self) -> list[float]:
        return [seconds_between(a, b) for a, b in self._mask_grads]

    @property
    def apply_s(self) -> list[float]:
        return [seconds_between(a, b) for a, b in self._apply]

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        start = mark(self.device)
        self.bound.apply_()
        self._apply.append((start, mark(self.device)))

    def step(self, x: Tensor, y: Tensor) -> None:
        scale = None if self.scaler is None else self.scaler.get_scale()  # before the clock starts: a sync on a GPU
        applied = len(self._apply)
        start = time.perf_counter()
        self.optimizer.zero_grad()
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            loss = F.cross_entropy(self.model(x), y)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        if self.bound is not None:  # PruneAtInit.on_before_optimizer_step
            t = mark(self.device)
            self.bound.mask_grads_()
            self._mask_grads.append((t, mark(self.device)))
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        synchronize(self.device)
        self.step_s.append(time.perf_counter() - start)
        if scale is not None and self.scaler.get_scale() < scale:
            self.skipped += 1
        if self.bound is not None and len(self._apply) == applied:  # a skipped step re-masks nothing: it cost 0
            self._apply.append((0.0, 0.0))


def random_masks(model: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """Random bool masks over the prunable tensors, about 1% kept: cheaper than a scorer, same cost to apply."""
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=generator) >= SPARSITY for n in select_prunable(model)}


def torch_pruned(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """``model`` re-parametrised in place by ``prune.custom_from_mask``. A module pruned this way cannot be
    deep-copied any more (its ``weight`` is a non-leaf tensor), so callers copy before pruning."""
    for name, mask in masks.items():
        module_name, _, attr = name.rpartition(".")
        prune.custom_from_mask(model.get_submodule(module_name), attr, mask)
    return model


def build_runners(
    model_name: str, seed: int, device: Union[str, torch.device] = "cpu", precision: str = "32-true"
) -> tuple[list[Runner], dict[str, Tensor]]:
    """The three variants, each on its own copy of one initial model on ``device``, and the masks both sparse
    ones use (on ``device``)."""
    torch.manual_seed(seed)
    initial = get_model(model_name, num_classes=NUM_CLASSES)
    masks = {n: m.to(device) for n, m in random_masks(initial, torch.Generator().manual_seed(seed)).items()}
    sparse = copy.deepcopy(initial).to(device)
    bound = BoundMasks(sparse, masks)
    bound.apply_()  # PruneAtInit.on_fit_start
    runners = [
        Runner("dense", copy.deepcopy(initial).to(device), precision=precision),
        Runner("lightning_synflow", sparse, bound, precision=precision),
        Runner("torch.nn.utils.prune", torch_pruned(copy.deepcopy(initial).to(device), masks), precision=precision),
    ]
    return runners, masks


def run_rounds(runners: list[Runner], x: Tensor, y: Tensor, rounds: int, offset: int = 0) -> None:
    """One step of each runner per round, the order rotated by one every round."""
    for r in range(rounds):
        k = (offset + r) % len(runners)
        for runner in runners[k:] + runners[:k]:
            runner.step(x, y)


@torch.no_grad()
def pruned_nonzero(runner: Runner, masks: dict[str, Tensor], x: Tensor) -> int:
    """How many pruned positions of the weights the model computes with are non-zero (should be 0)."""
    if runner.name == "torch.nn.utils.prune":
        runner.model.eval()(x)  # the pre-hook recomputes weight from weight_orig as the next step would see it
    # For the torch-pruned model these are the plain ``weight`` attributes the pre-hook set, not parameters.
    weights = {n: getattr(runner.model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in masks}
    return sum(int(torch.count_nonzero(weights[n][~m])) for n, m in masks.items())


def _quartiles(xs: list[float]) -> tuple[float, float]:
    q = torch.quantile(torch.tensor(xs, dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64))
    return q[0].item(), q[1].item()


def measure(
    model_name: str, args: argparse.Namespace, device: Union[str, torch.device] = "cpu", precision: str = "32-true"
) -> dict[str, Any]:
    """Time the three variants on one model (on ``device``, at Lightning's ``precision``); rows for both
    tables and the zero check."""
    runners, masks = build_runners(model_name, args.seed, device, precision)
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=g).to(device)

    run_rounds(runners, x, y, args.warmup)
    for runner in runners:
        runner.reset()
    gc.collect()
    gc.disable()  # a collection would land on whichever variant happens to run
    try:
        run_rounds(runners, x, y, args.steps, offset=args.warmup)
    finally:
        gc.enable()

    threads = torch.get_num_threads()
    by_name = {r.name: r for r in runners}
    dense = by_name["dense"].step_s
    dense_median = statistics.median(dense)
    rows = []
    for runner in runners:
        median = statistics.median(runner.step_s)
        row = {
            "model": model_name,
            "threads": threads,
            "device": str(runner.device),
            "precision": precision,
            "variant": runner.name,
            "skipped_steps": runner.skipped,
            "median_ms": median * 1e3,
            "mean_ms": statistics.fmean(runner.step_s) * 1e3,
            "step_ms": [s * 1e3 for s in runner.step_s],
        }
        if runner.name != "dense":
            q1, q3 = _quartiles([s / d for s, d in zip(runner.step_s, dense)])
            row.update(overhead_pct=(median / dense_median - 1) * 100, overhead_iqr_pct=[(q1 - 1) * 100, (q3 - 1) * 100])
        rows.append(row)

    ls = by_name["lightning_synflow"]
    both = [a + b for a, b in zip(ls.mask_grads_s, ls.apply_s)]
    mask_ops = {
        "model": model_name,
        "threads": threads,
        "mask_grads_median_ms": statistics.median(ls.mask_grads_s) * 1e3,
        "apply_median_ms": statistics.median(ls.apply_s) * 1e3,
        "both_median_ms": statistics.median(both) * 1e3,
        "pct_of_dense_step": statistics.median(both) / dense_median * 100,
    }
    pruned = sum(int((~m).sum()) for m in masks.values())
    zero_check = {
        "model": model_name,
        "pruned": pruned,
        "total": sum(m.numel() for m in masks.values()),
        "nonzero": {r.name: pruned_nonzero(r, masks, x) for r in runners if r.name != "dense"},
    }
    zero_check["passed"] = not any(zero_check["nonzero"].values())
    return {"rows": rows, "mask_ops": mask_ops, "zero_check": zero_check}


def _pct(x: float) -> str:
    return f"{x:+.1f}%"


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"CPU {meta['cpu']}, {meta['cores']} cores; torch {meta['torch']}, {meta['threads']} thread(s); Python"
        f" {meta['python']}; load average {meta['load_start']} at the start, {meta['load_end']} at the end."
        f" Batch {meta['batch_size']}, {meta['steps']} interleaved rounds after {meta['warmup']} warm-up,"
        f" {SPARSITY:.0%} of the prunable weights pruned.{' QUICK RUN: not for reporting.' if meta['quick'] else ''}",
        "",
        "| model | threads | variant | median step (ms) | mean step (ms) | overhead vs dense |",
        "|---|---:|---|---:|---:|---|",
    ]
    for res in results:
        for r in res["rows"]:
            overhead = "baseline" if r["variant"] == "dense" else (
                f"{_pct(r['overhead_pct'])} (IQR {_pct(r['overhead_iqr_pct'][0])} .. {_pct(r['overhead_iqr_pct'][1])})"
            )
            lines.append(
                f"| {r['model']} | {r['threads']} | {r['variant']} | {r['median_ms']:.1f} | {r['mean_ms']:.1f} | {overhead} |"
            )
    lines += [
        "",
        "lightning_synflow's mask operations alone (medians over the measured steps):",
        "",
        "| model | threads | mask_grads_ (ms) | apply_ (ms) | both (ms) | % of dense step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        m = res["mask_ops"]
        lines.append(
            f"| {m['model']} | {m['threads']} | {m['mask_grads_median_ms']:.2f} | {m['apply_median_ms']:.2f} |"
            f" {m['both_median_ms']:.2f} | {m['pct_of_dense_step']:.2f}% |"
        )
    lines.append("")
    for res in results:
        z = res["zero_check"]
        counts = ", ".join(f"{name} {n}" for name, n in z["nonzero"].items())
        verdict = "passed" if z["passed"] else "FAILED"
        lines.append(f"Zero check {z['model']}: non-zero pruned weights (of {z['pruned']:,}): {counts}: {verdict}.")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="names from lightning_synflow.models.MODELS")
    parser.add_argument("--steps", type=int, default=None, help=f"measured rounds (default {FULL['steps']}, {QUICK['steps']} with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help=f"warm-up rounds (default {FULL['warmup']}, {QUICK['warmup']} with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help=f"images per batch (default {FULL['batch_size']}, {QUICK['batch_size']} with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own, all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny batch, 2 rounds: a smoke test")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    for key, default in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    for key in ("steps", "batch_size", "threads"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be a positive integer, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be a non-negative integer, got {args.warmup}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    load_start = load_average()
    results = []
    for model_name in args.models:
        print(f"{model_name} ...", end=" ", file=sys.stderr, flush=True)
        start = time.perf_counter()
        results.append(measure(model_name, args))
        print(f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    meta = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "load_start": load_start,
        "load_end": load_average(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "quick": args.quick,
        "sparsity": SPARSITY,
    }
    print(markdown(results, meta))
    passed = all(r["zero_check"]["passed"] for r in results)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "meta": meta,
            "rows": [row for r in results for row in r["rows"]],
            "mask_ops": [r["mask_ops"] for r in results],
            "zero_check": [r["zero_check"] for r in results],
            "zero_check_passed": passed,
        }, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
