"""Sweep pruning methods x compressions x seeds and write one CSV row per finished training run.

The SynFlow paper's Fig. 6 study (accuracy after training against compression 10^x, per method, over
seeds), for any LightningCLI config of ``examples/train.py``: every run is that config with the pruning
callback's ``scorer`` and ``compression`` and ``seed_everything`` replaced. Runs execute in this process
(no per-run interpreter start; ``--jobs N`` runs N of them at a time in worker processes) and the sweep
is **resumable**: runs whose row is already in the CSV are skipped, so an interrupted sweep is continued
by running the same command again. A row is keyed by method, compression, seed and a ``protocol`` hash of
everything else that changes the result (model, data, epochs, optimiser, pruning options); changing the
epochs, say, starts a fresh set of rows instead of mixing them with the old ones.

    # The CPU study on Fashion-MNIST (LeNet-5 with 1024-256 FC layers, offline; PRESETS gives its grid and time):
    OMP_NUM_THREADS=1 python examples/sweep.py --preset fashion-mnist --jobs 2 \\
        --out docs/results/fashion_mnist_lenet5.csv
    python examples/plot_sweep.py docs/results/fashion_mnist_lenet5.csv --out docs/results/fashion_mnist_lenet5.png

    # The paper's grid on a GPU (160 epochs per run; trim with --methods/--compressions/--seeds):
    python examples/sweep.py --preset cifar10-vgg16 --set data.init_args.data_dir=~/data
    # Any config, any grid; --dry-run lists what would run:
    python examples/sweep.py --config my.yaml --methods synflow random --sparsities 0.9 0.99 --seeds 0 1 --dry-run

Columns (``COLUMNS``): dataset, model, method, log10_compression, compression, sparsity (target), seed,
epochs; test_acc_final (``trainer.test`` after the last epoch) and test_acc_best (the best per-epoch value of
the validation metric; the configs validate on the test set as the papers do, so this is the optimistic
best-epoch test accuracy) with best_epoch; kept / total prunable weights, collapsed_tensors (tensors left
empty), measured_sparsity (zeros counted in the trained weights), effective_kept / effective_sparsity
(kept weights on an input-output path at initialization, from ``lightning_synflow.analysis.effective_masks``
when it exists; empty otherwise); prune_s (the callback's pruning time), fit_s, run_s (wall seconds) and
cpu_s (CPU seconds of the process running it: the machine-independent cost on a busy machine); protocol,
config, device, finished_at. Method ``dense`` is the unpruned baseline (compression 1).

Approximate isometry (Lee et al., ICLR 2020) is one more axis (``--isometry-steps 0 1000``: each run without
and with that many ``PruneAtInit(isometry_steps=...)`` steps after pruning); its columns: isometry_steps,
isometry_s, penalty_before / penalty_after (the isometry penalty), and the input-output Jacobian's singular
values on a fixed probe batch (the first 32 training images) after pruning (``jsv_pruned_*``) and after the
isometry steps (``jsv_isometry_*``): mean, min, max and the fraction below 1e-3. A CSV written before these
columns existed is rewritten with them (its runs had no isometry steps) before new rows are appended.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import gc
import hashlib
import importlib
import json
import logging
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES))  # classifier.py and datamodules.py sit here

import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

import datamodules  # noqa: E402,F401  (resolvable by class name from the configs)
import lightning_synflow  # noqa: E402
from classifier import ImageClassifier  # noqa: E402
from memory_logger import MemoryLogger  # noqa: E402
from lightning_synflow import PruneAtInit, select_prunable, sparsity_report  # noqa: E402

# Scorers being added to the package may not be imported by `lightning_synflow` yet: importing their modules
# registers them by name. Missing ones are simply absent (the sweep then refuses methods it does not know).
for _module in ("snip", "grasp", "force", "snip_it", "erk"):
    try:
        importlib.import_module(f"lightning_synflow.scorers.{_module}")
    except ImportError:
        pass
try:  # effective sparsity and Jacobian spectra, where the analysis module exists
    from lightning_synflow.analysis import effective_masks, jacobian_singular_values
    from lightning_synflow.lightning.isolation import preserved_attributes, preserved_rng
except ImportError:  # pragma: no cover - depends on the package version
    effective_masks = jacobian_singular_values = None

CONFIGS = EXAMPLES / "configs" / "paper"
_SCOPE_OF = {"global": "global", "uniform": "layerwise"}
#: CSV columns from the metrics PruneAtInit logs for its isometry steps.
_ISOMETRY_METRICS = {"isometry_s": "isometry/seconds", "penalty_before": "isometry/penalty_before", "penalty_after": "isometry/penalty_after"}
DENSE = "dense"

COLUMNS = [
    "dataset", "model", "method", "log10_compression", "compression", "sparsity", "seed", "epochs",
    "test_acc_final", "test_acc_best", "best_epoch",
    "kept", "total", "collapsed_tensors", "measured_sparsity", "effective_kept", "effective_sparsity",
    "isometry_steps", "isometry_s", "penalty_before", "penalty_after",
    *(f"jsv_{stage}_{stat}" for stage in ("pruned", "isometry") for stat in ("mean", "min", "max", "below_1e-3")),
    "prune_s", "fit_s", "run_s", "cpu_s",
    "protocol", "config", "device", "finished_at",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Preset:
    """A config plus the grid to sweep on it."""

    config: Path
    dataset: str
    model: str
    methods: tuple[str, ...]
    log10_compressions: tuple[float, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    dense: bool = True
    jobs: int = 1
    extend: float = 0.0  # log10 step beyond the grid while a method still trains (0: off)
    extend_max: float = 4.0
    isometry_steps: tuple[int, ...] = (0,)
    note: str = ""


PAPER_METHODS = ("synflow", "snip", "grasp", "magnitude", "random")  # Fig. 6's five
ISOMETRY_STEPS = 100  # approximate-isometry steps of the isometry study: the step sweep in docs/analysis.md
PAPER_GRID = tuple(x / 4 for x in range(1, 13))  # 10^0.25 ... 10^3 (10^0 is the dense run)

PRESETS: dict[str, Preset] = {
    # The CPU study (2 cores, offline): LeNet-5 with 1024-256 fully connected layers (676,854 prunable
    # weights), 4 epochs on 30,000 training images, validated on the 10,000 test images every epoch.
    # 6 methods x 5 compressions x 3 seeds + 3 dense = 93 runs of ~45 CPU s each, plus 3 runs per method and
    # step that still trains beyond 10^3 (--extend): the committed study was 108 runs, 82 CPU-minutes, 55 min
    # wall with --jobs 2 on this 2-core machine (which was doing other work too).
    "fashion-mnist": Preset(
        config=CONFIGS / "fashion_mnist_lenet5.yaml",
        dataset="fashion-mnist",
        model="lenet5-wide",
        methods=("synflow", "snip", "grasp", "force", "magnitude", "random"),
        log10_compressions=(1.0, 1.5, 2.0, 2.5, 3.0),
        jobs=2,
        extend=0.5,
        extend_max=4.0,
        note="LeNet-5 (FC 1024-256), 4 epochs on 30k images; 10^1..10^3 (90%..99.9%), further while a method trains",
    ),
    # Approximate isometry as one more axis of the same study (same config, protocol and CSV): the methods of
    # Lee et al.'s comparison and SynFlow, without and with AI steps after pruning (the runs without are the
    # study's own rows where they are in the CSV already).
    "fashion-mnist-isometry": Preset(
        config=CONFIGS / "fashion_mnist_lenet5.yaml",
        dataset="fashion-mnist",
        model="lenet5-wide",
        methods=("random", "magnitude", "snip", "grasp", "synflow"),
        log10_compressions=(1.0, 1.5, 2.0, 2.5, 3.0),
        jobs=2,
        isometry_steps=(0, ISOMETRY_STEPS),
        note="the fashion-mnist study without and with approximate isometry after pruning",
    ),
    # Channel pruning on the same model and data (issue: structured sparsity): the same channel density in every
    # layer, at 2x, 4x and 8x fewer forward FLOPs (channel densities 0.70068, 0.46875, 0.30664, found by
    # bisection with torch's FLOP counter on the shrunk network), and the unstructured study's protocol at the
    # parameter counts those keep (48.5%, 21.2%, 9.6% of the prunable weights).
    "fashion-mnist-channels": Preset(
        config=CONFIGS / "fashion_mnist_lenet5_channels.yaml",
        dataset="fashion-mnist",
        model="lenet5-wide",
        methods=("synflow", "snip", "magnitude", "random"),
        log10_compressions=(0.1545, 0.3291, 0.5134),
        jobs=2,
        note="channel pruning at 2x, 4x and 8x fewer FLOPs (uniform channel density)",
    ),
    "fashion-mnist-equal-params": Preset(
        config=CONFIGS / "fashion_mnist_lenet5.yaml",
        dataset="fashion-mnist",
        model="lenet5-wide",
        methods=("synflow", "snip", "magnitude", "random"),
        log10_compressions=(0.3139, 0.6739, 1.0166),
        jobs=2,
        note="unstructured pruning at the parameter counts of fashion-mnist-channels",
    ),
    # A smoke test: the 8x8 digits with an MLP, seconds per run.
    "digits": Preset(
        config=EXAMPLES / "configs" / "digits_synflow.yaml",
        dataset="digits",
        model="mlp",
        methods=("synflow", "magnitude", "random"),
        log10_compressions=(1.0, 2.0),
        seeds=(0,),
    ),
}
for _ds, _dsname in (("cifar10", "cifar10"), ("cifar100", "cifar100"), ("tinyimagenet", "tinyimagenet")):
    for _model in ("vgg11_bn", "vgg16_bn", "resnet18"):
        PRESETS[f"{_ds}-{_model.replace('_bn', '')}"] = Preset(
            config=CONFIGS / f"{_ds}_{_model}.yaml",
            dataset=_dsname,
            model=_model,
            methods=PAPER_METHODS,
            log10_compressions=PAPER_GRID,
            note="the paper's grid: 5 methods x 10^0.25..10^3 x 3 seeds + dense; a GPU and the data set needed",
        )

# Data module / backbone class names to the names the paper's reference CSV uses.
DATASET_NAMES = {
    "DigitsDataModule": "digits",
    "FashionMNISTDataModule": "fashion-mnist",
    "CIFAR10DataModule": "cifar10",
    "CIFAR100DataModule": "cifar100",
    "TinyImageNetDataModule": "tinyimagenet",
}

# Keys of the config that do not change a run's result (left out of its protocol hash).
_IO_DATA_KEYS = {"data_dir", "download", "num_workers"}
_IO_TRAINER_KEYS = {
    "default_root_dir", "logger", "callbacks", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
    "enable_checkpointing", "devices", "accelerator", "num_nodes", "strategy",
}  # fmt: skip
_PRUNE_PATH = "lightning_synflow.PruneAtInit"
_DROPPED_CALLBACKS = {"ModelCheckpoint", "LearningRateMonitor", "RichProgressBar", "TQDMProgressBar"}


# ---------------------------------------------------------------------------------------------- grid


@dataclasses.dataclass(frozen=True)
class RunSpec:
    method: str
    log10_compression: float
    seed: int
    isometry_steps: int = 0

    @property
    def compression(self) -> float:
        return 10.0**self.log10_compression

    @property
    def sparsity(self) -> float:
        return 1.0 - 10.0 ** (-self.log10_compression)

    def key(self, protocol: str) -> tuple[str, str, str, str, str]:
        return (protocol, self.method, f"{self.log10_compression:.4f}", str(self.seed), str(self.isometry_steps))

    def __str__(self) -> str:
        ai = f" + {self.isometry_steps} isometry steps" if self.isometry_steps else ""
        return f"{self.method} 10^{self.log10_compression:g} (sparsity {self.sparsity:.4%}){ai} seed {self.seed}"


def grid(
    methods: Sequence[str], log10s: Sequence[float], seeds: Sequence[int], dense: bool, isometry: Sequence[int] = (0,)
) -> list[RunSpec]:
    """Seed-major order: an interrupted sweep leaves whole seeds done rather than whole methods."""
    runs = []
    for seed in seeds:
        if dense:
            runs.append(RunSpec(DENSE, 0.0, seed))
        for method in methods:
            for steps in isometry:
                runs.extend(RunSpec(method, float(x), seed, steps) for x in log10s)
    return runs


def log10_from_sparsity(sparsity: float) -> float:
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return round(-math.log10(1.0 - sparsity), 6)


# ---------------------------------------------------------------------------------------------- config


def load_config(path: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML config with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    config = yaml.safe_load(Path(path).read_text())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value (e.g. trainer.max_epochs=2), got {item!r}")
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return config


def _prune_entry(config: dict[str, Any]) -> Optional[dict[str, Any]]:
    entries = [c for c in config.get("trainer", {}).get("callbacks") or [] if isinstance(c, dict) and c.get("class_path") == _PRUNE_PATH]
    if len(entries) > 1:
        raise ValueError(f"the config has {len(entries)} {_PRUNE_PATH} callbacks; the sweep needs at most one")
    return entries[0] if entries else None


def protocol_of(config: dict[str, Any]) -> str:
    """A short hash of everything in ``config`` that changes a run's result, except method, compression, seed."""
    trainer = {k: v for k, v in config.get("trainer", {}).items() if k not in _IO_TRAINER_KEYS}
    data = copy.deepcopy(config.get("data", {}))
    if isinstance(data, dict) and isinstance(data.get("init_args"), dict):
        data["init_args"] = {k: v for k, v in data["init_args"].items() if k not in _IO_DATA_KEYS}
    prune = _prune_entry(config)
    prune_args = {
        k: v for k, v in (prune or {}).get("init_args", {}).items()
        if k not in ("scorer", "sparsity", "compression", "verbose", "isometry_steps")
    }  # fmt: skip
    # `distribution: global/uniform` is what `scope: global/layerwise` was: hashed under the old name, so the
    # protocols of rows written before the rename stay theirs.
    if prune_args.get("distribution") in _SCOPE_OF and "scope" not in prune_args:
        prune_args["scope"] = _SCOPE_OF[prune_args.pop("distribution")]
    other = [c.get("class_path") for c in config.get("trainer", {}).get("callbacks") or [] if isinstance(c, dict) and c.get("class_path", "").rpartition(".")[2] not in _DROPPED_CALLBACKS | {"PruneAtInit"}]
    blob = json.dumps({"model": config.get("model"), "data": data, "trainer": trainer, "prune": prune_args, "callbacks": other}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def run_config(config: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    """``config`` set up for one run: its scorer and compression (or no pruning for ``dense``), its seed, and
    no checkpoints, loggers, progress bars or sanity validation."""
    config = copy.deepcopy(config)
    config["seed_everything"] = spec.seed
    trainer = config.setdefault("trainer", {})
    prune = copy.deepcopy(_prune_entry(config) or {"class_path": _PRUNE_PATH, "init_args": {}})
    kept_callbacks = [
        c for c in trainer.get("callbacks") or []
        if not (isinstance(c, dict) and c.get("class_path", "").rpartition(".")[2] in _DROPPED_CALLBACKS | {"PruneAtInit"})
    ]  # fmt: skip
    if spec.method != DENSE:
        args = {k: v for k, v in prune.get("init_args", {}).items() if k not in ("sparsity", "compression")}
        if args.get("scorer") != spec.method or not isinstance(args.get("scorer"), str):
            args.pop("iterations", None)  # another scorer: its own default number of iterations
        args.update(scorer=spec.method, compression=spec.compression, verbose=False, isometry_steps=spec.isometry_steps)
        kept_callbacks.append({"class_path": _PRUNE_PATH, "init_args": args})
    trainer.update(
        callbacks=kept_callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return config


def names_of(config: dict[str, Any]) -> tuple[str, str]:
    """(dataset, model) names for a config: the reference CSV's names where they exist."""
    data_cls = str(config.get("data", {}).get("class_path", "")).rpartition(".")[2]
    backbone = config.get("model", {}).get("backbone", {})
    model = str(backbone.get("class_path", "model") if isinstance(backbone, dict) else "model").rpartition(".")[2]
    return DATASET_NAMES.get(data_cls, data_cls.replace("DataModule", "").lower() or "data"), model.lower()


# ---------------------------------------------------------------------------------------------- one run


#: Examples of the training set (the first ones, in its order) on which every run's Jacobian is taken.
PROBE_EXAMPLES = 32


class SweepProbe(Callback):
    """After pruning: kept weights, collapsed tensors and effective sparsity (on the initial weights), and the
    Jacobian's singular values on a fixed probe batch after pruning and after the isometry steps. After every
    validation: the validation metric, for the best-epoch accuracy."""

    def __init__(self, val_metric: str) -> None:
        self.val_metric = val_metric
        self.history: list[float] = []
        self.pruning: dict[str, Any] = {}
        self._initial: dict[str, torch.Tensor] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Before any on_fit_start: where isometry steps will move the kept weights, the initial ones, from which
        # the network "after pruning" is rebuilt for its spectrum. Without such steps it is the model as it is.
        prune = next((c for c in trainer.callbacks if isinstance(c, PruneAtInit)), None)
        if prune is not None and prune.isometry_steps:
            self._initial = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        prune = next((c for c in trainer.callbacks if isinstance(c, PruneAtInit)), None)
        if prune is None or prune.masks is None:
            total = sum(dict(pl_module.named_parameters())[n].numel() for n in select_prunable(pl_module))
            self.pruning = {"kept": total, "total": total, "collapsed_tensors": 0, "effective_kept": "", "effective_sparsity": ""}
            return
        report = sparsity_report(pl_module, prune.masks)
        self.pruning = {"kept": report.kept, "total": report.total, "collapsed_tensors": len(report.collapsed)}
        self.pruning.update(self._spectra(trainer, pl_module, prune))
        self.pruning["effective_kept"] = self.pruning["effective_sparsity"] = ""
        example = pl_module.example_input_array
        if example is None and prune.input_shape is not None:
            example = torch.zeros(1, *prune.input_shape)
        if effective_masks is not None and isinstance(example, torch.Tensor):
            try:
                alive = effective_masks(pl_module, prune.masks, example_input=example.to(pl_module.device))
                kept = sum(int(m.sum()) for m in alive.values())
                self.pruning.update(effective_kept=kept, effective_sparsity=f"{1.0 - kept / report.total:.6g}")
            except Exception as err:  # a diagnostic: never lose the run for it
                warnings.warn(f"effective sparsity not computed: {type(err).__name__}: {err}")

    def _spectra(self, trainer: Trainer, pl_module: LightningModule, prune: PruneAtInit) -> dict[str, str]:
        """``jsv_<stage>_{mean,min,max,below_1e-3}`` after pruning (the initial weights, masked) and, where
        isometry steps ran, after them (the weights as they are now), on the first training examples."""
        dataset = getattr(trainer.datamodule, "train_set", None)
        if dataset is None or jacobian_singular_values is None:
            return {}
        params = dict(pl_module.named_parameters())
        out: dict[str, str] = {}
        with preserved_rng(pl_module.device), preserved_attributes(pl_module):
            # inside the isolation: a dataset that augments draws random numbers
            probe = torch.stack([dataset[i][0] for i in range(min(PROBE_EXAMPLES, len(dataset)))]).to(pl_module.device)

            def measure(stage: str) -> None:
                sv = jacobian_singular_values(pl_module, probe, masks=prune.masks)
                out.update({
                    f"jsv_{stage}_mean": f"{float(sv.mean()):.6g}", f"jsv_{stage}_min": f"{float(sv.min()):.6g}",
                    f"jsv_{stage}_max": f"{float(sv.max()):.6g}", f"jsv_{stage}_below_1e-3": f"{float((sv < 1e-3).double().mean()):.6g}",
                })  # fmt: skip

            if not prune.isometry_steps:
                measure("pruned")  # the weights as pruned: nothing has moved them
                return out
            measure("isometry")
            moved = {n: params[n].detach().clone() for n in prune.masks}  # isometry moves only the masked tensors
            with torch.no_grad():
                for n in moved:
                    params[n].copy_(self._initial[n])
            measure("pruned")
            with torch.no_grad():
                for n, w in moved.items():
                    params[n].copy_(w)
        self._initial = {}
        return out

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and self.val_metric in trainer.callback_metrics:
            self.history.append(float(trainer.callback_metrics[self.val_metric]))


def build_cli(config: dict[str, Any]) -> LightningCLI:
    """Model, data module and Trainer from a config dict, as ``examples/train.py`` builds them."""
    argv, sys.argv = sys.argv, sys.argv[:1]  # the sweep's own arguments are not the CLI's
    try:
        return LightningCLI(ImageClassifier, subclass_mode_data=True, save_config_callback=None, args=config, run=False)
    finally:
        sys.argv = argv


def run_one(config: dict[str, Any], spec: RunSpec, *, val_metric: str = "val/acc", test_metric: str = "test/acc") -> dict[str, Any]:
    """Train and test one run in this process and return its CSV row (without dataset/model/protocol)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    cli = build_cli(run_config(config, spec))
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    memory, probe = MemoryLogger(), SweepProbe(val_metric)
    trainer.loggers = [memory]
    trainer.callbacks.append(probe)  # after PruneAtInit: its on_fit_start sees the masks
    fit_start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_s = time.perf_counter() - fit_start
    test = trainer.test(model, datamodule=data, verbose=False)[0]
    if test_metric not in test:
        raise KeyError(f"the test loop logged no {test_metric!r} (it logged {sorted(test)}); pass --test-metric")
    history = probe.history
    best = max(range(len(history)), key=history.__getitem__) if history else None
    device = str(trainer.strategy.root_device)
    if trainer.strategy.root_device.type == "cuda":
        device = torch.cuda.get_device_name(trainer.strategy.root_device)
    measured = memory.metrics.get("pruning/measured_sparsity")
    return {
        "method": spec.method,
        "log10_compression": round(spec.log10_compression, 6),
        "compression": f"{spec.compression:.6g}",
        "sparsity": f"{spec.sparsity:.6g}",
        "seed": spec.seed,
        "epochs": trainer.current_epoch,
        "test_acc_final": f"{test[test_metric]:.6f}",
        "test_acc_best": "" if best is None else f"{history[best]:.6f}",
        "best_epoch": "" if best is None else best + 1,
        **probe.pruning,
        "isometry_steps": spec.isometry_steps,
        **{column: f"{memory.metrics[key]:.6g}" for column, key in _ISOMETRY_METRICS.items() if key in memory.metrics},
        "measured_sparsity": "" if measured is None else f"{measured:.6g}",
        "prune_s": f"{memory.metrics['pruning/time_s']:.3f}" if "pruning/time_s" in memory.metrics else "",
        "fit_s": f"{fit_s:.2f}",
        "run_s": f"{time.perf_counter() - start:.2f}",
        "cpu_s": f"{time.process_time() - cpu_start:.2f}",
        "device": device,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------- CSV


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows in this sweep's columns; those of a CSV written before some columns existed get them
    (no isometry steps, the rest empty)."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if fields != COLUMNS and not set(fields) <= set(COLUMNS):
            raise ValueError(
                f"{path} has the columns {fields}, not this sweep's {COLUMNS}; write to a new --out file"
            )
        return [{c: row.get(c) or ("0" if c == "isometry_steps" else "") for c in COLUMNS} for row in reader]


def migrate(path: Path) -> bool:
    """Rewrite a CSV of an earlier set of columns in this sweep's (see :func:`read_rows`); True if it did."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open(newline="") as f:
        if next(csv.reader(f)) == COLUMNS:
            return False
    rows = read_rows(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return True


def done_keys(rows: Sequence[dict[str, str]]) -> set[tuple[str, str, str, str, str]]:
    return {
        (r["protocol"], r["method"], f"{float(r['log10_compression']):.4f}", str(int(r["seed"])), str(int(r["isometry_steps"] or 0)))
        for r in rows
    }


def append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------- driver


def _quiet() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_synflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (".*does not have many workers.*", ".*LeafSpec.*", ".*GPU available but not used.*", ".*collapsed.*",
                    ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", pattern)


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    _quiet()


def _worker(config: dict[str, Any], spec: RunSpec, val_metric: str, test_metric: str) -> tuple[RunSpec, Optional[dict], str]:
    try:
        return spec, run_one(config, spec, val_metric=val_metric, test_metric=test_metric), ""
    except Exception:  # reported by the parent; the run is retried by the next invocation
        return spec, None, traceback.format_exc()
    finally:  # runs share the process: give back what this one held
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets:\n" + "\n".join(f"  {k:<22} {p.note or p.config.name}" for k, p in PRESETS.items()),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS), help="a config and its grid (below)")
    source.add_argument("--config", type=Path, help="any examples/train.py config (grid from the options)")
    parser.add_argument("--out", type=Path, help="the CSV (appended to; default sweeps/<preset or config name>.csv)")
    parser.add_argument("--methods", nargs="+", help="scorer names (and/or 'dense'); default the preset's")
    grid_group = parser.add_mutually_exclusive_group()
    grid_group.add_argument("--compressions", nargs="+", type=float, metavar="LOG10", help="log10 compressions, e.g. 1 2 3")
    grid_group.add_argument("--sparsities", nargs="+", type=float, help="sparsities, e.g. 0.9 0.99 0.999")
    parser.add_argument("--seeds", nargs="+", type=int, help="default the preset's (0 1 2)")
    parser.add_argument("--isometry-steps", nargs="+", type=int, metavar="STEPS",
                        help="approximate-isometry steps after pruning, one run each, e.g. 0 1000 (default the preset's, else 0)")
    parser.add_argument("--no-dense", action="store_true", help="skip the unpruned baseline run per seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. trainer.max_epochs=2 or data.init_args.data_dir=~/data (repeatable)")  # fmt: skip
    parser.add_argument("--epochs", type=int, help="shorthand for --set trainer.max_epochs=N")
    parser.add_argument("--dataset-name", help="dataset name in the CSV (default the preset's or from the data module)")
    parser.add_argument("--model-name", help="model name in the CSV (default the preset's or from the backbone)")
    parser.add_argument("--jobs", type=int, help="runs at a time, each in its own process (default the preset's, else 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--val-metric", default="val/acc", help="per-epoch metric for the best accuracy")
    parser.add_argument("--test-metric", default="test/acc", help="metric of trainer.test for the final accuracy")
    parser.add_argument("--extend", type=float, metavar="STEP",
                        help="after the grid, go STEP (log10) further for every method whose mean final accuracy at its"
                             " highest compression is still >= --extend-threshold; repeat (default the preset's, else 0: off)")  # fmt: skip
    parser.add_argument("--extend-max", type=float, metavar="LOG10", help="highest log10 compression to extend to (default the preset's, else 4)")
    parser.add_argument("--extend-threshold", type=float, metavar="ACC", help="'still trains': mean final accuracy >= this (default 2 / num_classes)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs of the grid to do and stop")
    return parser.parse_args(argv)


def extension(rows: Sequence[dict[str, str]], protocol: str, methods: Sequence[str], seeds: Sequence[int],
              step: float, max_log10: float, threshold: float, isometry: Sequence[int] = (0,)) -> list[RunSpec]:
    """The next compression (``step`` beyond its highest one in ``rows``) for every method (and number of
    isometry steps) that still trains there: all ``seeds`` finished at that compression with a mean final test
    accuracy >= ``threshold``."""
    runs = []
    for method, steps in ((m, i) for m in methods for i in isometry):
        mine = [r for r in rows if r["protocol"] == protocol and r["method"] == method and int(r.get("isometry_steps") or 0) == steps]
        if not mine:
            continue
        top = max(float(r["log10_compression"]) for r in mine)
        accs = [float(r["test_acc_final"]) for r in mine if abs(float(r["log10_compression"]) - top) < 1e-6 and int(r["seed"]) in seeds]
        nxt = round(top + step, 6)
        if len(accs) >= len(seeds) and sum(accs) / len(accs) >= threshold and nxt <= max_log10 + 1e-9:
            runs.extend(RunSpec(method, nxt, seed, steps) for seed in seeds)
    return runs


class _Runner:
    """Runs specs (in this process or ``jobs`` worker processes) and appends their rows to the CSV."""

    def __init__(self, config: dict[str, Any], out: Path, common: dict[str, Any], args: argparse.Namespace, jobs: int) -> None:
        self.config, self.out, self.common, self.args, self.jobs = config, out, common, args, jobs
        self.failures = 0
        self.start = time.perf_counter()

    def _record(self, i: int, n: int, spec: RunSpec, row: Optional[dict], error: str) -> None:
        elapsed = time.perf_counter() - self.start
        if row is None:
            self.failures += 1
            print(f"[{i}/{n}] {spec}: FAILED\n{error}", file=sys.stderr, flush=True)
            return
        append_row(self.out, {**row, **self.common})
        best = f", best {float(row['test_acc_best']):.2%}" if row["test_acc_best"] != "" else ""
        print(
            f"[{i}/{n}] {spec}: test {float(row['test_acc_final']):.2%}{best}, kept {row['kept']:,}/{row['total']:,}"
            f" ({row['run_s']} s, {row['cpu_s']} CPU s); {elapsed / 60:.1f} min so far",
            flush=True,
        )

    def run(self, todo: Sequence[RunSpec]) -> None:
        args, n = self.args, len(todo)
        if self.jobs <= 1 or n == 1:
            _worker_init(args.threads)
            for i, spec in enumerate(todo, 1):
                self._record(i, n, *_worker(self.config, spec, args.val_metric, args.test_metric))
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch/OpenMP state
        pool = ProcessPoolExecutor(min(self.jobs, n), mp_context=context, initializer=_worker_init, initargs=(args.threads,))
        try:
            futures = [pool.submit(_worker, self.config, spec, args.val_metric, args.test_metric) for spec in todo]
            for i, future in enumerate(as_completed(futures), 1):
                self._record(i, n, *future.result())
        except BaseException:  # Ctrl-C: drop the queued runs; finished ones are in the CSV already
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(EXAMPLES.parent))
    except ValueError:
        return str(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    preset = PRESETS.get(args.preset) if args.preset else None
    config_path = preset.config if preset else args.config
    overrides = list(args.overrides) + ([f"trainer.max_epochs={args.epochs}"] if args.epochs else [])
    config = load_config(config_path, overrides)
    dataset, model = names_of(config)
    dataset = args.dataset_name or (preset.dataset if preset else dataset)
    model = args.model_name or (preset.model if preset else model)
    methods = list(args.methods or (preset.methods if preset else ["synflow", "magnitude", "random"]))
    dense = not args.no_dense and (preset.dense if preset else True)
    if DENSE in methods:
        methods.remove(DENSE)
        dense = True
    unknown = [m for m in methods if m not in lightning_synflow.available_scorers()]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}: the scorers available are {lightning_synflow.available_scorers()} and {DENSE!r}")
    if args.sparsities:
        log10s = [log10_from_sparsity(s) for s in args.sparsities]
    else:
        log10s = [float(x) for x in (args.compressions or (preset.log10_compressions if preset else [1.0, 2.0, 3.0]))]
    if any(x <= 0 for x in log10s):
        raise SystemExit(f"log10 compressions must be > 0 (10^0 is the dense run), got {log10s}")
    seeds = list(args.seeds if args.seeds is not None else (preset.seeds if preset else [0, 1, 2]))
    isometry = list(args.isometry_steps if args.isometry_steps is not None else (preset.isometry_steps if preset else [0]))
    if any(n < 0 for n in isometry):
        raise SystemExit(f"--isometry-steps must be integers >= 0 (0: none), got {isometry}")
    jobs = args.jobs or (preset.jobs if preset else 1)
    step = args.extend if args.extend is not None else (preset.extend if preset else 0.0)
    max_log10 = args.extend_max if args.extend_max is not None else (preset.extend_max if preset else 4.0)
    num_classes = int(config.get("model", {}).get("num_classes", 10))
    threshold = args.extend_threshold if args.extend_threshold is not None else 2.0 / num_classes
    out = args.out or Path("sweeps") / f"{args.preset or Path(config_path).stem}.csv"

    protocol = protocol_of(config)
    if not args.dry_run and migrate(out):
        print(f"{out}: rewritten with this sweep's columns (its runs had no isometry steps)", flush=True)
    finished = done_keys(read_rows(out))
    runs = grid(methods, log10s, seeds, dense, isometry)
    todo = [r for r in runs if r.key(protocol) not in finished]
    epochs = config.get("trainer", {}).get("max_epochs")
    print(
        f"sweep {dataset}/{model} ({Path(config_path).name}, {epochs} epochs, protocol {protocol}): {len(runs)} runs,"
        f" {len(runs) - len(todo)} already in {out}, {len(todo)} to do; {jobs} at a time, {args.threads} thread(s) each"
        + (f"; then 10^+{step:g} steps (up to 10^{max_log10:g}) for methods still at >= {threshold:.1%}" if step > 0 else ""),
        flush=True,
    )
    if args.dry_run:
        for spec in todo:
            print(f"  {spec}")
        return 0

    common = {"dataset": dataset, "model": model, "protocol": protocol, "config": _display_path(config_path)}
    runner = _Runner(config, out, common, args, jobs)
    runner.run(todo)
    done = len(todo)
    while step > 0:  # beyond the grid, while a method still trains
        more = [
            r for r in extension(read_rows(out), protocol, methods, seeds, step, max_log10, threshold, isometry)
            if r.key(protocol) not in done_keys(read_rows(out))
        ]  # fmt: skip
        if not more:
            break
        print(f"still training at their highest compression: {sorted({r.method for r in more})}; {len(more)} more runs", flush=True)
        runner.run(more)
        done += len(more)
        if runner.failures:
            break
    minutes = (time.perf_counter() - runner.start) / 60
    print(f"done: {done - runner.failures} runs written to {out}, {runner.failures} failed; {minutes:.1f} min", flush=True)
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main())
