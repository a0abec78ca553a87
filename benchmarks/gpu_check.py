"""The device check: what only a GPU can show, in one run of at most 5 minutes, one table and one report.

Nothing of the library had run on CUDA before this script (issue 27): the NCCL collectives, the fused
``_foreach_mul_`` of the masks on the GPU, AMP on CUDA, ``to_semi_structured``. A GPU is at hand only now and
then, for minutes, so this script is ready before one is and runs in the test suite on CPU (``--quick``) so
that it cannot rot.

Where a GPU is at hand (and the package's dependencies are installed)::

    make gpu-check                                   # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --authors-code /tmp/Synaptic-Flow     # also the authors' SynFlow loop
    python benchmarks/gpu_check.py --parts masks semi_structured          # some parts again
    python benchmarks/gpu_check.py --quick           # tiny sizes (the test suite's run)

Without a GPU only ``--quick`` runs: the CPU is then the device under test (its comparisons with the CPU check
the script, not CUDA) and the CUDA-only rows are skipped, saying so.

On a lent device machine (no network there, so no virtualenv can be built; its ``python3`` has torch,
lightning, numpy and tqdm): the working tree is copied there, so run from the repository root with the
repository on the path and the report written where it comes back::

    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out-dir $OUT

Carrying ``.venv`` does not work: a CUDA torch alone is about 5 GB, and what travels is limited to 64 MiB.
The authors' code (``git clone https://github.com/ganguli-lab/Synaptic-Flow``; only its ``prune.py``,
``Pruners/``, ``Layers/``, ``Models/`` and ``Utils/`` are read) can travel inside the tree, in a folder that
``.git/info/exclude`` ignores, named in ``carry``.

Parts (``--parts``; each under a time limit, ``--limit PART=SECONDS``; all within ``--budget`` seconds):

- ``masks``: masks on the GPU against masks on the CPU, from the same initial weights (CIFAR ResNet-20),
  99% sparsity. Bit for bit where the arithmetic is the same: ``magnitude`` (``|w|``), and the selection of
  ``random``, ``erk`` and ``uniform`` (seed 0). Those three draw their scores where the masks live, and CUDA's
  generator is another stream than the CPU's, so their GPU masks are other random masks by design: the check
  is that the GPU's masks are exactly the CPU's selection from the GPU's own scores, with the CPU's counts
  (per tensor for erk and uniform). Not bit for bit where scores come from convolutions and matrix products
  (float sums in another order): ``synflow`` (100 rounds), ``ntksap`` (5 rounds; its random networks and
  inputs drawn on the CPU for both devices) and ``snip`` (two fixed batches of 64). For those the report gives
  the largest error of one round's scores relative to each tensor's largest score, and the masks: exact kept
  count and overlap with the CPU's (kept on both / kept), *pass* at overlap >= 0.9 (iterative) or >= 0.99
  (SNIP's one round), with TF32 off. Torch's default lets cuDNN convolutions use TF32 (10-bit mantissa):
  rows "TF32 as set" show what users get with it, measured, without a verdict. One more row: two GPU runs
  of SynFlow, identical or not (cuDNN may pick non-deterministic algorithms).
- ``synflow``: 100 rounds of ``compute_masks(model, "synflow", compression=100)`` on VGG-16-bn and
  ResNet-18 (CIFAR), after a two-round warm-up on a copy: time, and ``torch.cuda.max_memory_allocated``
  above what was allocated before, against the model's own 100 forward+backward passes (batch 1, the
  floor of ``synflow_authors.py``); given ``--authors-code``, their ``prune_loop`` with their SynFlow on their
  masked VGG-16-bn holding the same weights, on the GPU, and how many of their kept weights ours does not
  keep. They have no CIFAR ResNet-18: skipped.
- ``mask_overhead``: ``mask_overhead.py``'s three training steps (dense, lightning_synflow's masks,
  ``torch.nn.utils.prune``) on VGG-16-bn and ResNet-18, batch 128, under ``bf16-mixed`` and ``16-mixed``
  (GradScaler), interleaved, each step ended by a synchronisation; pruned weights exactly zero afterwards.
- ``fit``: two short ``Trainer.fit`` runs with ``PruneAtInit`` on every GPU there is, one after the other in
  one fresh process (Lightning starts the other ranks, which run this script too): ``strategy="ddp"`` with
  SNIP (batches drawn from the training loader) under ``16-mixed`` (``bf16-mixed`` on CPU, where Lightning
  has no float16 AMP), then ``ModelParallelStrategy`` (FSDP2 over all ranks) with SynFlow under
  ``bf16-mixed`` (it takes no ``16-mixed``); a 32-1024-1024-10 MLP, 20 steps, sparsity 0.9. NCCL on GPUs (one
  GPU: a world of one still sets up the process group and, sharded, runs the collectives), gloo on CPU.
  Pass: pruned weights exactly zero after every step on every rank, exactly ``round(d * N)`` kept, the same
  masks on every rank, and no momentum on a pruned weight (with SGD, masking the gradients or re-masking
  after each step alone keeps pruned weights at zero; the momentum check sees the gradients' masking).
- ``semi_structured``: 2:4 pruning (``granularity="2:4"``) leaves every Linear eligible for
  ``to_semi_structured``; on a CPU ``to_semi_structured`` refuses and changes nothing. On a GPU of compute
  capability >= 8.0: a Linear 4096x4096 at 4096 and 16384 tokens and the MLP layers of ViT-B (768-3072) and
  ViT-L (1024-4096) at 4096 tokens, bf16 and fp16, forward, forward+backward with the weight trainable
  (as converted) and with the weight frozen (input gradients only), against the same pruned weights dense;
  "SLOWER" where 2:4 loses. Its outputs must match the dense layer's (relative error <= 2%).

Statuses: ``pass`` and ``fail`` (a check with a verdict), ``measured`` (a figure, no verdict), ``skipped``
(with the reason: CUDA only, no clone given), ``error`` (the check raised: the message is the result),
``timeout`` (the part ran past its limit: the rows before it are what finished; a part not started for
want of budget is one too). One part's failure is a row, never the end of the run. A part stuck in native
code (a CUDA call, a collective) past its limit plus 20 s stops the run with the report written. Exit
status 1 if any row failed, erred or timed out.

The report goes to ``--out-dir`` (default ``results/gpu_check/``, which git ignores: a run's report is of
one machine; what is worth keeping goes into docs/performance.md by hand) as ``gpu_check.json`` and
``gpu_check.md`` (``gpu_check-quick.*`` with ``--quick``); the table is also printed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import mask_overhead
import synflow_authors
from _machine import cpu_model
from lightning_synflow import (
    ERKRandom,
    NTKSAP,
    PruneAtInit,
    Random,
    UniformRandom,
    apply_masks,
    compute_masks,
    compute_scores,
    select_masks,
    select_prunable,
    semi_structured_plan,
    sparsity_report,
    to_semi_structured,
)
from lightning_synflow.models import get_model
from lightning_synflow.schedules import num_kept, resolve_density
from lightning_synflow.scorers.ntksap import NTKSAPDraw
from lightning_synflow.distributed.sharding import local

PARTS = ("masks", "synflow", "mask_overhead", "fit", "semi_structured")
#: Seconds each part may take on one GPU; what is left of the budget bounds each as well.
LIMITS = {"masks": 50, "synflow": 60, "mask_overhead": 40, "fit": 90, "semi_structured": 40}
#: Seconds for all parts together: with starting Python, torch and Lightning (~15 s), under 5 minutes.
BUDGET = 270
#: After its limit, a part has this long to return to Python before the watchdog stops the run.
GRACE = 20
STATUSES = ("pass", "fail", "measured", "skipped", "error", "timeout")
FAILED = ("fail", "error", "timeout")
SPARSITY = 0.99
COMPRESSION = 100.0
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sizes:
    """How big each part's work is: the GPU's sizes, or tiny ones for ``--quick``."""

    mask_model: str = "resnet20"
    synflow_rounds: int = 100
    ntksap_rounds: int = 5
    ntksap_batch: int = 16
    snip_batch: int = 64
    speed_models: tuple[str, ...] = ("vgg16_bn", "resnet18")
    speed_rounds: int = 100
    overhead_models: tuple[str, ...] = ("vgg16_bn", "resnet18")
    overhead: dict[str, int] = field(default_factory=lambda: dict(mask_overhead.FULL))
    fit_width: int = 1024
    fit_steps: int = 20
    fit_synflow_rounds: int = 20
    semi_shapes: tuple[tuple[str, int, int, int], ...] = (
        ("4096x4096", 4096, 4096, 4096),
        ("4096x4096", 4096, 4096, 16384),
        ("ViT-B MLP fc1", 768, 3072, 4096),
        ("ViT-B MLP fc2", 3072, 768, 4096),
        ("ViT-L MLP fc1", 1024, 4096, 4096),
        ("ViT-L MLP fc2", 4096, 1024, 4096),
    )
    semi_iterations: int = 20


QUICK = Sizes(
    synflow_rounds=3,
    ntksap_rounds=2,
    ntksap_batch=4,
    snip_batch=8,
    speed_models=("resnet20", "vgg11_bn"),
    speed_rounds=2,
    overhead_models=("resnet20",),
    overhead={"batch_size": 2, "steps": 2, "warmup": 0},  # float16 autocast on a CPU is slow
    fit_width=32,
    fit_steps=3,
    fit_synflow_rounds=3,
    semi_shapes=(("128x256", 128, 256, 256),),
    semi_iterations=3,
)


@dataclass
class Row:
    """One line of the report."""

    part: str
    check: str
    status: str
    result: str
    seconds: float = 0.0
    device: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    seed: int
    authors_code: Optional[str]
    quick: bool


class PartTimeout(BaseException):
    """A part ran past its limit (a BaseException, so that a check's ``except Exception`` lets it through)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`PartTimeout` in the main thread after ``seconds`` (at the next Python instruction)."""

    def expire(signum: int, frame: Any) -> None:
        raise PartTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def synchronize(device: torch.device) -> None:
    mask_overhead.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def checked(part: str, check: str, device: torch.device, fn: Callable[[], tuple[str, str, dict[str, Any]]]) -> Row:
    """Run one check, ``fn() -> (status, result, data)``; an exception becomes an ``error`` row."""
    start = time.perf_counter()
    try:
        status, result, data = fn()
    except Exception as err:  # noqa: BLE001 - every failure is a row of the report
        status, result = "error", f"{type(err).__name__}: {err}"
        data = {"traceback": traceback.format_exc(limit=-6)}
    return Row(part, check, status, result, time.perf_counter() - start, str(device), data)


@contextmanager
def tf32_off() -> Iterator[None]:
    """Plain float32 convolutions and matrix products on CUDA for the block (no TF32), then the settings as they were."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def tf32_setting() -> str:
    return f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}"


# ---------------------------------------------------------------------------------------------- masks


def on_cpu(masks: dict[str, Tensor]) -> dict[str, Tensor]:
    return {n: m.cpu() for n, m in masks.items()}


def compare_masks(reference: dict[str, Tensor], other: dict[str, Tensor]) -> dict[str, Any]:
    """Kept counts, weights kept by both, and whether the two are identical."""
    reference, other = on_cpu(reference), on_cpu(other)
    kept = sum(int(m.sum()) for m in reference.values())
    common = sum(int((reference[n] & other[n]).sum()) for n in reference)
    return {
        "kept_cpu": kept,
        "kept_device": sum(int(m.sum()) for m in other.values()),
        "common": common,
        "overlap": common / kept if kept else 1.0,
        "identical": all(torch.equal(reference[n], other[n]) for n in reference),
    }


def score_error(reference: dict[str, Tensor], other: dict[str, Tensor]) -> float:
    """The largest ``|other - reference|`` of any tensor relative to that tensor's largest ``|reference|``."""
    worst = 0.0
    for name, ref in reference.items():
        ref, got = ref.double(), other[name].detach().cpu().double()
        scale = float(ref.abs().max()) or 1.0
        worst = max(worst, float((got - ref).abs().max()) / scale)
    return worst


class HostDrawnNTKSAP(NTKSAP):
    """NTK-SAP whose random networks, perturbations and inputs are drawn from one seeded CPU generator whatever
    the model's device, so that runs on two devices score the same draws (CUDA's generators are another stream)."""

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._host = torch.Generator().manual_seed(seed)

    def draw(self, model: nn.Module, masks: Any, example_input: Any, generator: Any) -> NTKSAPDraw:
        drawn = super().draw(model, masks, example_input.cpu(), self._host)
        return NTKSAPDraw(drawn.params, drawn.perturbation, drawn.inputs.to(example_input.device))


def part_masks(ctx: Context) -> Iterator[Row]:
    dev, sizes = ctx.device, ctx.sizes
    same = dev.type == "cpu"
    note = " (no GPU: the CPU compared with itself)" if same else ""
    torch.manual_seed(ctx.seed)
    cpu_model = get_model(sizes.mask_model, num_classes=10)
    dev_model = copy.deepcopy(cpu_model).to(dev)
    x = torch.zeros(1, 3, 32, 32)
    density = resolve_density(sparsity=SPARSITY)
    total = sum(p.numel() for n, p in cpu_model.named_parameters() if n in select_prunable(cpu_model))
    exact = num_kept(density, total)
    where = f"{sizes.mask_model}, sparsity {SPARSITY}"

    def magnitude() -> tuple[str, str, dict[str, Any]]:
        c = compare_masks(compute_masks(cpu_model, "magnitude", sparsity=SPARSITY),
                          compute_masks(dev_model, "magnitude", sparsity=SPARSITY))
        ok = c["identical"] and c["kept_device"] == exact
        return ("pass" if ok else "fail"), f"{'identical' if c['identical'] else 'DIFFERENT'}: kept {c['kept_device']:,} of {total:,}{note}", c

    yield checked("masks", f"magnitude, {where}: bit for bit", dev, magnitude)

    for name, cls in (("random", Random), ("erk", ERKRandom), ("uniform", UniformRandom)):
        def random_kind(cls: type = cls) -> tuple[str, str, dict[str, Any]]:
            on_device = compute_masks(dev_model, cls(seed=0), sparsity=SPARSITY)
            scores = compute_scores(dev_model, cls(seed=0))
            distribution = cls(seed=0).distribution or "global"
            again = select_masks(on_cpu(scores), density, distribution=distribution)
            on_host = compute_masks(cpu_model, cls(seed=0), sparsity=SPARSITY)
            selection = compare_masks(again, on_device)
            counts_dev = {n: int(m.sum()) for n, m in on_device.items()}
            counts_cpu = {n: int(m.sum()) for n, m in on_host.items()}
            per_tensor = distribution != "global"
            counts_ok = counts_dev == counts_cpu if per_tensor else sum(counts_dev.values()) == sum(counts_cpu.values()) == exact
            draws = compare_masks(on_host, on_device)
            ok = selection["identical"] and counts_ok
            result = (
                f"selection from the device's scores {'identical to' if selection['identical'] else 'DIFFERENT from'} the CPU's;"
                f" {'per-tensor' if per_tensor else 'total'} counts {'equal' if counts_ok else 'DIFFER'}"
                f" ({sum(counts_dev.values()):,} kept); masks {'equal' if draws['identical'] else 'differ from'} the CPU's"
                f" ({'same generator stream' if same else 'CUDA draws its own stream: by design'})"
            )
            return ("pass" if ok else "fail"), result, {"selection": selection, "draws": draws, "counts_device": counts_dev, "counts_cpu": counts_cpu}

        yield checked("masks", f"{name} (seed 0), {where}: selection bit for bit", dev, random_kind)

    batches = []
    g = torch.Generator().manual_seed(ctx.seed + 1)
    for _ in range(2):
        batches.append((torch.randn(sizes.snip_batch, 3, 32, 32, generator=g), torch.randint(10, (sizes.snip_batch,), generator=g)))

    float_scorers = {
        "synflow": (lambda: "synflow", dict(example_input=x), sizes.synflow_rounds, 0.9),
        "ntksap": (lambda: HostDrawnNTKSAP(ctx.seed, batch_size=sizes.ntksap_batch), dict(example_input=x), sizes.ntksap_rounds, 0.9),
        "snip": (lambda: "snip", dict(dataloader=batches, num_batches=len(batches)), 1, 0.99),
    }
    for name, (make, inputs, rounds, threshold) in float_scorers.items():
        label = f"{name}, {rounds} round{'s' if rounds > 1 else ''}, {where}"
        cpu: dict[str, Any] = {}

        def compare(verdict: bool, make: Callable = make, inputs: dict = inputs, rounds: int = rounds,
                    threshold: float = threshold, cpu: dict = cpu) -> tuple[str, str, dict[str, Any]]:
            if not cpu:  # the CPU's scores and masks, once for both rows
                cpu.update(scores=compute_scores(cpu_model, make(), **inputs),
                           masks=compute_masks(cpu_model, make(), sparsity=SPARSITY, iterations=rounds, **inputs))
            error = score_error(cpu["scores"], compute_scores(dev_model, make(), **inputs))
            c = compare_masks(cpu["masks"], compute_masks(dev_model, make(), sparsity=SPARSITY, iterations=rounds, **inputs))
            ok = c["kept_device"] == c["kept_cpu"] == exact and c["overlap"] >= threshold
            result = (
                f"one round's scores: largest error {error:.2g} of the tensor's largest score; masks: kept"
                f" {c['kept_device']:,} (CPU {c['kept_cpu']:,}), overlap {c['overlap']:.4f}"
                f"{'' if not verdict else f' (pass at >= {threshold})'}; {tf32_setting()}{note}"
            )
            status = ("pass" if ok else "fail") if verdict else "measured"
            return status, result, {**c, "score_error": error, "threshold": threshold}

        def compare_tf32_off() -> tuple[str, str, dict[str, Any]]:
            with tf32_off():
                return compare(True)

        yield checked("masks", f"{label}: TF32 off", dev, compare_tf32_off)
        if dev.type == "cuda":
            yield checked("masks", f"{label}: TF32 as set", dev, lambda: compare(False))
        else:
            yield Row("masks", f"{label}: TF32 as set", "skipped", "CUDA only: TF32 is a setting of CUDA's kernels", device=str(dev))
        if name == "synflow":
            def twice(rounds: int = rounds) -> tuple[str, str, dict[str, Any]]:
                first = compute_masks(dev_model, "synflow", sparsity=SPARSITY, iterations=rounds, example_input=x)
                c = compare_masks(first, compute_masks(dev_model, "synflow", sparsity=SPARSITY, iterations=rounds, example_input=x))
                return "measured", ("identical" if c["identical"] else f"DIFFER: {c['kept_cpu'] - c['common']:,} of {c['kept_cpu']:,} kept weights") + f"{note}", c

            yield checked("masks", f"{label}: two runs on the device", dev, twice)


# ---------------------------------------------------------------------------------------------- synflow


def reset_peak(device: torch.device) -> Optional[int]:
    """Reset the peak of allocated GPU memory; returns what is allocated now (None on CPU)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_above(device: torch.device, base: Optional[int]) -> Optional[int]:
    if device.type != "cuda" or base is None:
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float, Optional[int]]:
    """``fn()``'s result, seconds until the device finished, and its peak GPU memory above what was allocated before."""
    base = reset_peak(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start, peak_above(device, base)


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def part_synflow(ctx: Context) -> Iterator[Row]:
    for model_name in ctx.sizes.speed_models:
        yield from synflow_speed(ctx, model_name)


def synflow_speed(ctx: Context, model_name: str) -> Iterator[Row]:
    dev, rounds = ctx.device, ctx.sizes.speed_rounds
    torch.manual_seed(ctx.seed)
    plain = get_model(model_name, num_classes=10)  # on the CPU: the authors' model copies its weights
    model = copy.deepcopy(plain).to(dev)
    names = select_prunable(model)
    prunable = sum(p.numel() * 4 for n, p in model.named_parameters() if n in names)
    x = torch.ones(1, 3, 32, 32, device=dev)
    ours: dict[str, Any] = {}

    def measure_ours() -> tuple[str, str, dict[str, Any]]:
        compute_masks(copy.deepcopy(model), "synflow", compression=COMPRESSION, iterations=2, example_input=x)  # warm-up
        gc.collect()  # the caching allocator keeps what the warm-up freed, as it would for a user's second call
        masks, seconds, peak = timed(dev, lambda: compute_masks(model, "synflow", compression=COMPRESSION, iterations=rounds, example_input=x))
        floor_peak_base = reset_peak(dev)
        floor = synflow_authors._floor(model, x, rounds)
        floor_peak = peak_above(dev, floor_peak_base)
        ours.update(masks=masks, seconds=seconds)
        data = {"seconds": seconds, "floor_s": floor, "ratio": seconds / floor, "peak_bytes": peak, "floor_peak_bytes": floor_peak,
                "prunable_bytes": prunable, "kept": sum(int(m.sum()) for m in masks.values())}
        memory = "; peak GPU memory: CUDA only" if peak is None else f"; peak {mb(peak)} = {peak / prunable:.2f}x the prunable bytes (floor {mb(floor_peak)})"
        result = f"{seconds:.3f} s = {seconds / floor:.2f}x the floor ({floor:.3f} s for {rounds} bare forward+backward passes){memory}"
        return "measured", result, data

    yield checked("synflow", f"ours, {model_name}, {rounds} rounds", dev, measure_ours)
    check = f"authors' code, {model_name}, {rounds} rounds"
    if ctx.authors_code is None:
        yield Row("synflow", check, "skipped", "no clone of the authors' code given (--authors-code PATH or SYNFLOW_AUTHORS_CODE)", device=str(dev))
        return
    if model_name not in synflow_authors.MODELS:
        yield Row("synflow", check, "skipped", f"their code has no CIFAR {model_name} of this architecture (they share {', '.join(synflow_authors.MODELS)})", device=str(dev))
        return

    def measure_theirs() -> tuple[str, str, dict[str, Any]]:
        if str(Path(ctx.authors_code)) not in sys.path:
            sys.path.insert(0, str(Path(ctx.authors_code)))
        theirs = synflow_authors._authors_model(model_name, plain).to(dev)
        synflow_authors._authors_prune(copy.deepcopy(theirs), COMPRESSION, 2, x)  # warm-up
        gc.collect()
        pruner, seconds, peak = timed(dev, lambda: synflow_authors._authors_prune(theirs, COMPRESSION, rounds, x))
        masks = synflow_authors._their_masks(pruner, names, plain)
        own_floor = synflow_authors._floor(synflow_authors._authors_model(model_name, plain).to(dev), x, rounds)
        kept = sum(int(m.sum()) for m in masks.values())
        data = {"seconds": seconds, "own_floor_s": own_floor, "peak_bytes": peak, "kept": kept, "prunable_bytes": prunable}
        result = f"{seconds:.3f} s"
        if "seconds" in ours:
            not_ours = sum(int((masks[n] & ~ours["masks"][n].cpu()).sum()) for n in names)
            data.update(ratio_to_ours=seconds / ours["seconds"], not_kept_by_ours=not_ours)
            result += f" = {seconds / ours['seconds']:.2f}x ours; {not_ours:,} of their {kept:,} kept weights not kept by ours"
        result += f"; their masked model's floor {own_floor:.3f} s"
        if peak is not None:
            result += f"; peak {mb(peak)} = {peak / prunable:.2f}x the prunable bytes"
        return "measured", result, data

    yield checked("synflow", check, dev, measure_theirs)


# ---------------------------------------------------------------------------------------------- mask overhead


def part_mask_overhead(ctx: Context) -> Iterator[Row]:
    args = argparse.Namespace(seed=ctx.seed, **ctx.sizes.overhead)
    for model_name in ctx.sizes.overhead_models:
        for precision in ("bf16-mixed", "16-mixed"):
            measured: dict[str, Any] = {}

            def overhead(model_name: str = model_name, precision: str = precision, measured: dict = measured) -> tuple[str, str, dict[str, Any]]:
                result = mask_overhead.measure(model_name, args, ctx.device, precision)
                measured.update(result)
                rows = {r["variant"]: r for r in result["rows"]}
                ops = result["mask_ops"]
                text = (
                    f"masks {rows['lightning_synflow']['overhead_pct']:+.1f}% per step (median {rows['lightning_synflow']['median_ms']:.2f} ms"
                    f" vs dense {rows['dense']['median_ms']:.2f} ms; IQR {rows['lightning_synflow']['overhead_iqr_pct'][0]:+.1f}%"
                    f" .. {rows['lightning_synflow']['overhead_iqr_pct'][1]:+.1f}%); mask ops alone {ops['both_median_ms']:.3f} ms ="
                    f" {ops['pct_of_dense_step']:.2f}% of a dense step; torch.nn.utils.prune {rows['torch.nn.utils.prune']['overhead_pct']:+.1f}%;"
                    f" batch {args.batch_size}, {args.steps} rounds after {args.warmup}"
                )
                if precision == "16-mixed":
                    text += "; GradScaler skipped " + ", ".join(f"{r['variant']} {r['skipped_steps']}" for r in result["rows"])
                return "measured", text, {"rows": result["rows"], "mask_ops": ops}

            yield checked("mask_overhead", f"{model_name}, {precision}: step time against dense", ctx.device, overhead)

            def zero(measured: dict = measured) -> tuple[str, str, dict[str, Any]]:
                if not measured:
                    return "error", "the steps did not run (see the row above)", {}
                z = measured["zero_check"]
                counts = ", ".join(f"{k} {v}" for k, v in z["nonzero"].items())
                return ("pass" if z["passed"] else "fail"), f"non-zero pruned weights (of {z['pruned']:,}): {counts}", z

            yield checked("mask_overhead", f"{model_name}, {precision}: pruned weights zero after the steps", ctx.device, zero)
            free_memory(ctx.device)


# ---------------------------------------------------------------------------------------------- fits


class FitNet(LightningModule):
    """A three-layer MLP on random data, sharded over every rank (FSDP2) under ModelParallelStrategy."""

    def __init__(self, width: int, sharded: bool) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same initial weights on every rank
        self.sharded = sharded
        self.net = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
        self.example_input_array = torch.zeros(1, 32)

    def configure_model(self) -> None:
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        return DataLoader(TensorDataset(torch.randn(512, 32, generator=g), torch.randint(10, (512,), generator=g)), batch_size=32)


class FitWatch(Callback):
    """After every training batch: are this rank's pruned weights exactly zero; at the end: kept count, a digest of
    the full masks (every rank), and momentum of pruned weights."""

    def __init__(self, pruner: PruneAtInit) -> None:
        self.pruner = pruner
        self.zero_after_step: list[bool] = []
        self.optimizer_steps = 0
        self.summary: dict[str, Any] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(self._count)

    def _count(self, *args: Any) -> None:
        self.optimizer_steps += 1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        params = dict(pl_module.named_parameters())
        self.zero_after_step.append(all(
            bool((local(params[n]).detach()[~local(m)] == 0).all()) for n, m in self.pruner.masks.items()
        ))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        masks = self.pruner.masks
        report = sparsity_report(pl_module, masks, frozen=())  # collectives on a sharded model: every rank calls it
        full = [(m.full_tensor() if hasattr(m, "full_tensor") else m).detach().cpu() for m in masks.values()]
        digest = hashlib.sha256(b"".join(f.numpy().tobytes() for f in full)).hexdigest()
        params = dict(pl_module.named_parameters())
        momentum_zero = True
        for optimizer in trainer.optimizers:
            for n, m in masks.items():
                buffer = optimizer.state.get(params[n], {}).get("momentum_buffer")
                if buffer is not None:
                    momentum_zero &= bool((local(buffer)[~local(m)] == 0).all())
        self.summary = {"kept": report.kept, "total": report.total, "density": self.pruner.density, "digest": digest,
                        "momentum_zero": momentum_zero}


FIT_STRATEGIES = ("ddp", "model_parallel")


def fit_child(out: str, sizes: Sizes, device_type: str) -> None:
    """The fits in this process (and, on several GPUs, in the ranks Lightning starts, which run this too), one
    after the other; each rank writes one JSON per fit, or the error that fit raised."""
    import torch.distributed as dist
    from lightning.pytorch.strategies import ModelParallelStrategy

    cuda = device_type == "cuda"
    world = torch.cuda.device_count() if cuda else 1
    for name in FIT_STRATEGIES:
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
        try:
            if name == "ddp":
                strategy, precision, scorer, iterations = "ddp", ("16-mixed" if cuda else "bf16-mixed"), "snip", 1
            else:
                strategy = ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)
                precision, scorer, iterations = "bf16-mixed", "synflow", sizes.fit_synflow_rounds
            pruner = PruneAtInit(scorer=scorer, sparsity=0.9, iterations=iterations, verbose=False)
            watch = FitWatch(pruner)
            trainer = Trainer(
                accelerator="gpu" if cuda else "cpu", devices=world, strategy=strategy, precision=precision,
                max_steps=sizes.fit_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, callbacks=[watch, pruner],
            )
            trainer.fit(FitNet(sizes.fit_width, sharded=name != "ddp"))
            rank = trainer.global_rank
            record = {
                "rank": rank, "world_size": trainer.world_size, "precision": precision, "scorer": scorer,
                "iterations": iterations, "backend": dist.get_backend() if dist.is_initialized() else None,
                "zero_after_step": watch.zero_after_step, "optimizer_steps": watch.optimizer_steps, **watch.summary,
            }
        except Exception as err:  # noqa: BLE001 - the parent reports it; the next fit still runs
            record = {"rank": rank, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=-6)}
        Path(out, f"{name}-rank{rank}.json").write_text(json.dumps(record))


def part_fit(ctx: Context) -> Iterator[Row]:
    """Both fits in one fresh process (one start of torch and Lightning), ended with every rank it started
    if the part's time runs out."""
    out = tempfile.mkdtemp(prefix="gpu_check_fit_")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--fit-out", out, "--fit-device", ctx.device.type]
    cmd += ["--quick"] if ctx.quick else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        output, _ = proc.communicate()
    finally:
        if proc.poll() is None:  # the part's time ran out meanwhile: end the fits and every rank they started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.perf_counter() - start
    tail = "\n".join(output.strip().splitlines()[-8:])
    if proc.returncode != 0:
        yield Row("fit", "fresh process for the fits", "error", f"exit {proc.returncode}: {tail}", seconds, str(ctx.device), {"output_tail": tail})
    for name in FIT_STRATEGIES:
        yield from fit_rows(ctx, name, [json.loads(p.read_text()) for p in sorted(Path(out).glob(f"{name}-rank*.json"))], seconds)
        seconds = 0.0


def fit_rows(ctx: Context, name: str, ranks: list[dict[str, Any]], seconds: float) -> Iterator[Row]:
    """The checks of one fit, from what its ranks wrote."""
    part, dev = "fit", str(ctx.device)
    failed = [r for r in ranks if "error" in r]
    if not ranks or failed:
        message = "; ".join(f"rank {r['rank']}: {r['error']}" for r in failed) or "no rank wrote a report (see the row above)"
        yield Row(part, f"{name}: PruneAtInit fit", "error", message, seconds, dev, {"ranks": ranks})
        return
    first = ranks[0]
    setup = (f"world size {first['world_size']} ({first['backend']}), {first['precision']}, {first['scorer']}"
             f" ({first['iterations']} round{'s' if first['iterations'] > 1 else ''}), {len(first['zero_after_step'])} steps,"
             f" {first['optimizer_steps']} optimizer steps taken")
    complete = len(ranks) == first["world_size"]
    zero = complete and all(r["zero_after_step"] and all(r["zero_after_step"]) for r in ranks)
    yield Row(part, f"{name}: pruned weights exactly zero after every step, every rank", "pass" if zero else "fail",
              f"{'yes' if zero else 'NO'}: {setup}; {len(ranks)} of {first['world_size']} rank reports", seconds, dev, {"ranks": ranks})
    expected = num_kept(first["density"], first["total"])
    kept = [r["kept"] for r in ranks]
    yield Row(part, f"{name}: kept exactly round(d * N)", "pass" if set(kept) == {expected} else "fail",
              f"kept {', '.join(f'{k:,}' for k in kept)} of {first['total']:,}, expected {expected:,}", 0.0, dev)
    digests = {r["digest"] for r in ranks}
    same = complete and len(digests) == 1
    yield Row(part, f"{name}: the same masks on every rank", "pass" if same else "fail",
              "one rank: nothing to compare" if len(ranks) == 1 else f"{len(digests)} distinct mask digest(s) over {len(ranks)} ranks", 0.0, dev)
    momentum = all(r["momentum_zero"] for r in ranks)
    yield Row(part, f"{name}: no momentum on a pruned weight", "pass" if momentum else "fail",
              "zero on every rank" if momentum else "NON-ZERO momentum on pruned weights", 0.0, dev)


# ---------------------------------------------------------------------------------------------- semi-structured


def time_per_call(device: torch.device, fn: Callable[[], Any], iterations: int, repeats: int = 3) -> float:
    """Seconds per call of ``fn``, the fastest of ``repeats`` timings of ``iterations`` calls after a warm-up."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / iterations)
    return best


def pruned_two_four(fin: int, fout: int, device: torch.device, dtype: torch.dtype, bias: bool = True) -> nn.Sequential:
    """A Linear pruned 2:4 by magnitude (on ``device``, in float32), then cast to ``dtype``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(fin, fout, bias=bias)).to(device)
    apply_masks(model, compute_masks(model, "magnitude", granularity="2:4"))
    return model.to(dtype)


def part_semi_structured(ctx: Context) -> Iterator[Row]:
    dev, sizes = ctx.device, ctx.sizes
    _, fin, fout, _ = sizes.semi_shapes[0]

    def plan() -> tuple[str, str, dict[str, Any]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(fin, fout), nn.ReLU(), nn.Linear(fout, fin)).to(dev)
        masks = compute_masks(model, "magnitude", granularity="2:4")
        apply_masks(model, masks)
        result = semi_structured_plan(model.to(torch.bfloat16))
        ok = result.eligible == ["0", "2"] and not result.skipped
        return ("pass" if ok else "fail"), f"eligible {result.eligible}, skipped {result.skipped or 'none'}", asdict(result)

    yield checked("semi_structured", f"2:4 pruning ({fin}-{fout}-{fin} MLP, bf16) leaves every Linear eligible", dev, plan)
    capable = dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 0)
    if not capable:
        def refuses() -> tuple[str, str, dict[str, Any]]:
            model = pruned_two_four(fin, fout, dev, torch.bfloat16)
            before = model[0].weight.detach().clone()
            try:
                to_semi_structured(model)
            except RuntimeError as err:
                unchanged = type(model[0].weight.data) is Tensor and torch.equal(model[0].weight.detach(), before)
                ok = "'0'" in str(err) and unchanged
                return ("pass" if ok else "fail"), f"refused{', model unchanged' if unchanged else ', MODEL CHANGED'}: {err}", {}
            return "fail", "converted on a device without semi-structured kernels", {}

        yield checked("semi_structured", f"to_semi_structured on {dev.type} refuses before any change", dev, refuses)
        yield Row("semi_structured", "2:4 kernels against dense: forward, forward+backward", "skipped",
                  "CUDA only: needs a GPU of compute capability 8.0 or higher", device=str(dev))
        return
    backend = semi_structured_backend()
    for label, fin, fout, tokens in sizes.semi_shapes:
        for dtype in (torch.bfloat16, torch.float16):
            name = f"{label} ({fin}->{fout}), {tokens} tokens, {str(dtype).removeprefix('torch.')}"
            yield checked("semi_structured", name, dev, lambda fin=fin, fout=fout, tokens=tokens, dtype=dtype: semi_timings(
                dev, fin, fout, tokens, dtype, sizes.semi_iterations, backend))
            free_memory(dev)


def semi_structured_backend() -> str:
    from torch.sparse import SparseSemiStructuredTensor

    cusparselt = getattr(torch.backends, "cusparselt", None)
    available = bool(cusparselt and cusparselt.is_available())
    return "CUTLASS (forced)" if SparseSemiStructuredTensor._FORCE_CUTLASS else f"cuSPARSELt{'' if available else ' (NOT available)'}"


def semi_timings(device: torch.device, fin: int, fout: int, tokens: int, dtype: torch.dtype, iterations: int, backend: str) -> tuple[str, str, dict[str, Any]]:
    """Forward, forward+backward (weight trainable) and forward+backward (weight frozen) of one 2:4 Linear against dense."""
    dense = pruned_two_four(fin, fout, device, dtype)
    sparse = copy.deepcopy(dense)
    plan = to_semi_structured(sparse)
    if plan.eligible != ["0"]:
        return "fail", f"not converted: {plan.skipped}", {}
    x = torch.randn(tokens, fin, device=device, dtype=dtype)
    with torch.no_grad():
        want, got = dense(x).float(), sparse(x).float()
        error = float((got - want).abs().max() / want.abs().max())
    grad = torch.randn(tokens, fout, device=device, dtype=dtype)

    def forward(model: nn.Module) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                model(x)
        return run

    def forward_backward(model: nn.Module) -> Callable[[], Any]:
        def run() -> None:
            xg = x.detach().requires_grad_(True)
            model(xg).backward(grad)
            for p in model.parameters():
                p.grad = None
        return run

    modes = {}
    errors = {}
    for mode, make in (("forward", forward), ("forward+backward", forward_backward), ("forward+backward, weight frozen", forward_backward)):
        try:
            if mode.endswith("frozen"):
                for model in (dense, sparse):
                    model[0].weight.requires_grad_(False)
            d = time_per_call(device, make(dense), iterations)
            s = time_per_call(device, make(sparse), iterations)
            modes[mode] = {"dense_ms": d * 1e3, "sparse_ms": s * 1e3, "speedup": d / s}
        except Exception as err:  # noqa: BLE001 - one mode failing is part of the row, the others still run
            errors[mode] = f"{type(err).__name__}: {err}"
    parts = []
    for mode, m in modes.items():
        verdict = f"{m['speedup']:.2f}x faster" if m["speedup"] >= 1 else f"SLOWER ({m['speedup']:.2f}x)"
        parts.append(f"{mode} {m['sparse_ms']:.3f} vs dense {m['dense_ms']:.3f} ms: {verdict}")
    parts += [f"{mode}: {e}" for mode, e in errors.items()]
    text = f"{'; '.join(parts)}; output error {error:.1e} of the largest; {backend}"
    status = "error" if errors else ("fail" if error > 0.02 else "measured")
    return status, text, {"modes": modes, "errors": errors, "output_error": error, "backend": backend}


# ---------------------------------------------------------------------------------------------- the run


def environment(device: torch.device, quick: bool) -> dict[str, Any]:
    import lightning

    env = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "quick": quick,
        "tf32": tf32_setting(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name, gpus=torch.cuda.device_count(), capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
        )
        try:
            env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:  # noqa: BLE001 - a build without NCCL; the fits will say what fails
            env["nccl"] = None
    return env


class Run:
    """The rows so far, and how to write them out (also from the watchdog, if a part hangs)."""

    def __init__(self, args: argparse.Namespace, ctx: Context) -> None:
        self.args, self.ctx = args, ctx
        self.rows: list[Row] = []
        self.env = environment(ctx.device, ctx.quick)
        self.started = time.monotonic()
        self.current: Optional[tuple[str, float]] = None  # the part running and its deadline (monotonic)

    def paths(self) -> tuple[Path, Path]:
        stem = "gpu_check-quick" if self.ctx.quick else "gpu_check"
        return self.args.out_dir / f"{stem}.json", self.args.out_dir / f"{stem}.md"

    def table(self, rows: list[Row]) -> str:
        lines = ["| part | check | device | status | result | s |", "|---|---|---|---|---|---:|"]
        for r in rows:
            result = r.result.replace("|", "/").replace("\n", " ")
            lines.append(f"| {r.part} | {r.check} | {r.device} | {r.status} | {result} | {r.seconds:.1f} |")
        return "\n".join(lines)

    def markdown(self, rows: list[Row]) -> str:
        e = self.env
        where = (f"{e['gpu']} ({e['gpus']} GPU(s), compute capability {e['capability']}, {e['gpu_memory_gb']} GiB), CUDA {e['cuda']},"
                 f" cuDNN {e['cudnn']}, NCCL {e['nccl']}" if "gpu" in e else "no GPU: the CPU is the device under test")
        counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
        return "\n".join([
            f"GPU check ({e['date']}, commit {e['commit']}): {where}; {e['cpu']}, {e['cores']} cores, {e['threads']} torch threads;"
            f" torch {e['torch']}, Lightning {e['lightning']}, Python {e['python']}; {e['tf32']}."
            f"{' QUICK RUN (tiny sizes): checks that the script runs, not for reporting.' if e['quick'] else ''}",
            "",
            f"`{e['command']}`: {time.monotonic() - self.started:.0f} s; "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
            "",
            self.table(rows),
            "",
        ])

    def write(self) -> int:
        rows = list(self.rows)
        json_path, md_path = self.paths()
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"environment": self.env, "parts": list(self.args.parts), "rows": [asdict(r) for r in rows]}, indent=1, default=str))
        text = self.markdown(rows)
        md_path.write_text(text)
        print(text, flush=True)
        print(f"report: {json_path} and {md_path}", file=sys.stderr, flush=True)
        return 1 if any(r.status in FAILED for r in rows) else 0

    def stop_hung(self, part: str) -> int:
        """Write the report as it stands with ``part`` timed out and the parts after it not run: the watchdog's
        way out when a part is stuck where the alarm cannot reach it. Returns the exit status."""
        self.rows.append(Row(part, "time limit", "timeout", f"did not return within {GRACE} s after its limit (stuck in native code:"
                             " a CUDA call or a collective); the run stopped here", device=str(self.ctx.device)))
        done = {r.part for r in self.rows}
        self.rows += [Row(p, "not run", "timeout", f"not started: the run stopped in {part}", device=str(self.ctx.device))
                      for p in self.args.parts if p not in done]
        return self.write()


def watchdog(run: Run) -> None:
    """Stop the whole run (report written) once a part is ``GRACE`` seconds past its limit."""
    while True:
        time.sleep(0.5)
        current = run.current
        if current is not None and time.monotonic() > current[1] + GRACE:
            os._exit(run.stop_hung(current[0]))


def run_part(run: Run, part: str, generate: Callable[[], Iterator[Row]], limit: float) -> None:
    """Add the part's rows to ``run`` as they finish; an overrun ends it with a ``timeout`` row, an exception
    outside its checks with an ``error`` row."""
    print(f"[{part}] up to {limit:.0f} s ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    run.current = (part, time.monotonic() + limit)
    try:
        with time_limit(limit):
            for row in generate():
                run.rows.append(row)
                print(f"[{part}] {row.check}: {row.status} ({row.seconds:.1f} s)", file=sys.stderr, flush=True)
    except PartTimeout:
        run.rows.append(Row(part, "time limit", "timeout", f"ran past its limit of {limit:.3g} s; the rows above are what finished",
                            time.perf_counter() - start, str(run.ctx.device)))
    except Exception as err:  # noqa: BLE001 - a part's failure is a row, and the run goes on
        run.rows.append(Row(part, "part", "error", f"{type(err).__name__}: {err}", time.perf_counter() - start, str(run.ctx.device),
                            {"traceback": traceback.format_exc(limit=-6)}))
    finally:
        run.current = None
        free_memory(run.ctx.device)


GENERATORS: dict[str, Callable[[Context], Iterator[Row]]] = {
    "masks": part_masks,
    "synflow": part_synflow,
    "mask_overhead": part_mask_overhead,
    "fit": part_fit,
    "semi_structured": part_semi_structured,
}


def parse_limits(parser: argparse.ArgumentParser, given: list[str]) -> dict[str, float]:
    limits = dict(LIMITS)
    for item in given:
        part, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = float("nan")
        if part not in PARTS or not value > 0:
            parser.error(f"--limit takes PART=SECONDS with PART one of {', '.join(PARTS)} and SECONDS > 0, got {item!r}")
        limits[part] = value
    return limits


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the test suite's run (on CPU the CUDA-only parts are skipped)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="the parts to run (default: all, in this order)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "results" / "gpu_check", help="where the JSON and Markdown reports go")
    parser.add_argument("--authors-code", default=os.environ.get(synflow_authors.ENV),
                        help=f"a checkout of ganguli-lab/Synaptic-Flow (default: ${synflow_authors.ENV}); without it their rows are skipped")
    parser.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS", help=f"a part's time limit (defaults: {LIMITS})")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole run; a part gets at most what is left")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-out", help=argparse.SUPPRESS)
    parser.add_argument("--fit-device", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.fit_out:  # the fits' own process (and its ranks)
        fit_child(args.fit_out, sizes, args.fit_device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return 0
    limits = parse_limits(parser, args.limit)
    if not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    if args.authors_code is not None:
        try:
            args.authors_code = str(synflow_authors.check_authors_code(args.authors_code))
        except ValueError as err:
            parser.error(str(err))
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        parser.error("no CUDA device here: the full check is for a GPU; --quick runs the tiny sizes on the CPU")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    run = Run(args, Context(device, sizes, args.seed, args.authors_code, args.quick))
    threading.Thread(target=watchdog, args=(run,), daemon=True).start()
    for part in args.parts:
        left = args.budget - (time.monotonic() - run.started)
        if left < 1:
            run.rows.append(Row(part, "not run", "timeout", f"not started: the run's budget of {args.budget:.0f} s is spent", device=str(device)))
            continue
        run_part(run, part, lambda part=part: GENERATORS[part](run.ctx), min(limits[part], left))
    return run.write()


if __name__ == "__main__":
    sys.exit(main())
