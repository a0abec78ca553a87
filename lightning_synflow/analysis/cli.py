"""Command line: critical-compression sweep and pruning diagnostics for a named model.

    python -m lightning_synflow.analysis vgg16_bn --num-classes 100 --scorers synflow magnitude random \\
        --compression 100 --out analysis/vgg16

For the model from :mod:`lightning_synflow.models` (seed ``--seeds[0]`` for the diagnostics) it writes to
``--out``:

* ``critical_summary.csv`` / ``critical_compression.csv``: critical exponent x per scorer and seed, and the
  per-tensor kept counts and densities at every evaluated x (``--search``, ``--step`` or ``--grid``);
* ``sparsity.csv``: per-tensor nominal and effective density of each scorer's masks at ``--compression``;
* ``jacobian.csv``: input-output Jacobian singular values (mean/std/min/max) at init, after each scorer's
  pruning, and after approximate isometry when ``--isometry-steps`` > 0 (Gaussian inputs);
* ``conservation.csv``: per-layer total and mean score of each scorer on the dense network;
* ``summary.json``: every metric above as one flat dict;
* PNG figures (unless ``--no-figures`` or matplotlib is missing): ``critical_compression.png``,
  ``sweep_<scorer>.png``, ``densities_<scorer>.png``, ``jacobian_spectra.png``, ``conservation.png``.

Data-driven scorers (e.g. ``snip``, ``grasp`` when registered) get Gaussian images with random labels as
a stand-in for data (this command has no dataset); their results are marked as such.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_synflow.analysis import (
    approximate_isometry,
    conservation,
    critical_compression,
    effective_sparsity_report,
    jacobian_singular_values,
    singular_value_stats,
)
from lightning_synflow.models import MODELS, get_model
from lightning_synflow.pruning import compute_masks
from lightning_synflow.scorers.base import available_scorers

DATA_FREE = ("synflow", "magnitude", "random")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _stand_in_data(shape: tuple[int, ...], num_classes: int, batches: int, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(10_000 + seed)
    return [
        (torch.randn(batch_size, *shape, generator=g), torch.randint(0, num_classes, (batch_size,), generator=g))
        for _ in range(batches)
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lightning_synflow.analysis",
        description="Critical-compression sweep and pruning diagnostics (isometry, Jacobian spectra, effective "
        "sparsity, conservation) for a model of lightning_synflow.models; writes CSVs and PNG figures.",
    )
    p.add_argument("model", choices=sorted(MODELS), help="model name")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--input-size", type=int, default=32, help="square input side (CIFAR: 32)")
    p.add_argument("--scorers", nargs="+", default=list(DATA_FREE), help=f"registered: {', '.join(available_scorers())}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one fresh initialisation per seed for the sweep")
    p.add_argument("--iterations", type=int, default=None, help="pruning rounds (default: each scorer's own)")
    p.add_argument("--search", choices=["bisect", "grid", "full"], default="bisect")
    p.add_argument("--step", type=float, default=0.25, help="grid step in log10 compression")
    p.add_argument("--grid", type=float, nargs="+", default=None, help="explicit exponents x (overrides --step)")
    p.add_argument("--ignore", nargs="+", default=[], help="glob patterns of tensors whose emptying is not collapse (e.g. '*shortcut*')")
    p.add_argument("--skip-sweep", action="store_true", help="diagnostics only")
    p.add_argument("--compression", type=float, default=100.0, help="compression of the masks the diagnostics use")
    p.add_argument("--jacobian-examples", type=int, default=4, help="Gaussian inputs for the Jacobian spectra (0: skip)")
    p.add_argument("--isometry-steps", type=int, default=0, help="approximate-isometry SGD steps after pruning (0: skip)")
    p.add_argument("--isometry-lr", type=float, default=0.1)
    p.add_argument("--data-batches", type=int, default=1, help="stand-in batches for data-driven scorers")
    p.add_argument("--batch-size", type=int, default=64, help="stand-in batch size for data-driven scorers")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("analysis_out"))
    p.add_argument("--no-figures", action="store_true")
    return p


def _log(message: str) -> None:
    print(message, flush=True)


@dataclass
class _Session:
    """What the steps of one invocation share: the parsed arguments, the model and its inputs, and what the
    steps collect for the final write (metrics, figures)."""

    args: argparse.Namespace
    plots: Any  # lightning_synflow.analysis.figures, or None: no figures
    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.args.out

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.args.in_channels, self.args.input_size, self.args.input_size)

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(1, *self.shape)

    @property
    def seed(self) -> int:
        """The seed of the diagnostics and of the sweep's stand-in data."""
        return self.args.seeds[0]

    @property
    def stand_in(self) -> list[str]:
        """The scorers that need data, which this command can only give Gaussian stand-ins."""
        return [s for s in self.args.scorers if s not in DATA_FREE]

    def make(self) -> torch.nn.Module:
        return get_model(self.args.model, self.args.num_classes, in_channels=self.args.in_channels)

    def data_for(self, name: str, seed: int):
        """Stand-in batches for a data-driven scorer, ``None`` for a data-free one."""
        if name in DATA_FREE:
            return None
        return _stand_in_data(self.shape, self.args.num_classes, self.args.data_batches, self.args.batch_size, seed)


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The arguments, with unknown scorer names rejected before any work (argparse's exit status 2)."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [s for s in args.scorers if s not in available_scorers()]
    if unknown:
        build_parser().error(f"unknown scorers {unknown}; registered: {available_scorers()}")
    return args


def _load_plots(no_figures: bool) -> Any:
    """The figures module, or ``None`` when figures are off or matplotlib is missing: checked here, before
    any work, because the figures module imports matplotlib only when a figure is drawn."""
    if no_figures:
        return None
    try:
        import matplotlib  # noqa: F401

        from lightning_synflow.analysis import figures as plots
    except ImportError as e:  # matplotlib missing
        print(f"no figures: {e}", file=sys.stderr)
        return None
    return plots


def _sweep(s: _Session) -> None:
    """Critical compression of every scorer (one fresh model per seed), to the two CSVs and its figures."""
    args = s.args
    results = {}
    for name in args.scorers:
        t0 = time.perf_counter()
        res = critical_compression(
            s.make, name, seeds=args.seeds, grid=args.grid, step=args.step, search=args.search, ignore=args.ignore,
            log=_log, iterations=args.iterations, example_input=s.example,
            dataloader=(lambda n=name: s.data_for(n, s.seed)),
        )
        results[name] = res
        s.metrics.update(res.as_metrics())
        _log(f"{res} [{time.perf_counter() - t0:.0f} s]")
    _write_csv(s.out / "critical_compression.csv", [row for r in results.values() for row in r.rows()])
    _write_csv(s.out / "critical_summary.csv", [_summary_row(s, k, r) for k, r in results.items()])
    if s.plots is not None:
        s.figures["critical_compression"] = s.plots.plot_critical_compression(results, title=args.model)
        for k, r in results.items():
            s.figures[f"sweep_{k}"] = s.plots.plot_sweep_densities(r)


def _summary_row(s: _Session, scorer: str, r: Any) -> dict[str, Any]:
    return {"scorer": scorer, "seeds": " ".join(map(str, s.args.seeds)),
            "critical_log10_per_seed": " ".join(f"{x:.3f}" for x in r.log10_per_run),
            "critical_log10": r.log10, "max_log10": r.max_log10, "search": r.search, "seconds": r.seconds,
            "data": "stand-in" if scorer in s.stand_in else "none"}


class _Spectra:
    """Jacobian singular values by label (for the figure), their statistics as metrics and as rows of
    ``jacobian.csv``. Without inputs (``--jacobian-examples 0``) it records nothing."""

    def __init__(self, s: _Session) -> None:
        self.session, self.values, self.rows = s, {}, []
        n = s.args.jacobian_examples
        self.inputs = torch.randn(n, *s.shape, generator=torch.Generator().manual_seed(s.seed)) if n > 0 else None

    def add(self, label: str, model: torch.nn.Module, masks: Optional[dict[str, torch.Tensor]] = None) -> None:
        if self.inputs is None:
            return
        sv = self.values[label] = jacobian_singular_values(model, self.inputs, masks=masks)
        stats = singular_value_stats(sv)
        self.session.metrics.update(stats.as_metrics(f"jacobian_sv/{label}"))
        self.rows.append({"label": label, "mean": stats.mean, "std": stats.std, "min": stats.min, "max": stats.max,
                          "count": stats.count})


def _diagnostics(s: _Session) -> None:
    """What each scorer's masks at ``--compression`` do to the first seed's model (sparsity, Jacobian
    spectra, isometry, conservation): the sweep says where a method collapses, these say how the network it
    leaves behaves. Each scorer starts from ``torch.manual_seed`` and its steps keep their order, because
    "random" and the isometry's fresh model draw from torch's global generator."""
    torch.manual_seed(s.seed)
    model = s.make()
    spectra = _Spectra(s)
    spectra.add("init", model)
    sparsity_rows: list[dict[str, Any]] = []
    cons = []
    for name in s.args.scorers:
        torch.manual_seed(s.seed)
        data = s.data_for(name, s.seed)
        t0 = time.perf_counter()
        masks = compute_masks(model, name, compression=s.args.compression, iterations=s.args.iterations,
                              example_input=s.example, dataloader=data)
        sparsity_rows += _sparsity(s, model, name, masks, t0)
        spectra.add(f"pruned_{name}", model, masks)
        if s.args.isometry_steps > 0:
            _isometry(s, model, name, masks, spectra)
        c = conservation(model, name, example_input=s.example, dataloader=data)
        cons.append(c)
        s.metrics.update(c.as_metrics())
    _write_diagnostics(s, sparsity_rows, spectra, cons)


def _write_diagnostics(s: _Session, sparsity_rows: list[dict[str, Any]], spectra: _Spectra, cons: list[Any]) -> None:
    """The diagnostics' three CSVs, and their two figures that cover every scorer at once."""
    _write_csv(s.out / "sparsity.csv", sparsity_rows)
    _write_csv(s.out / "jacobian.csv", spectra.rows)
    _write_csv(s.out / "conservation.csv", [row for c in cons for row in c.rows()])
    if s.plots is not None:
        if spectra.values:
            title = f"{s.args.model}: Jacobian singular values"
            s.figures["jacobian_spectra"] = s.plots.plot_singular_values(spectra.values, title=title)
        if cons:
            s.figures["conservation"] = s.plots.plot_conservation(cons, title=s.args.model)


def _sparsity(
    s: _Session, model: torch.nn.Module, name: str, masks: dict[str, torch.Tensor], t0: float
) -> list[dict[str, Any]]:
    """Nominal against effective sparsity of one scorer's masks: its metrics, log line (timed from ``t0``,
    before the masks were computed), figure and CSV rows."""
    report = effective_sparsity_report(model, masks, example_input=s.example)
    s.metrics.update(report.as_metrics(f"sparsity/{name}"))
    c = s.args.compression
    _log(f"{name} at compression {c:g}: {report.nominal.sparsity:.4%} nominal, "
         f"{report.effective.sparsity:.4%} effective sparsity, {len(report.nominal.collapsed)} collapsed "
         f"[{time.perf_counter() - t0:.1f} s]")
    if s.plots is not None:
        title = f"{s.args.model}, {name}, compression {c:g}"
        s.figures[f"densities_{name}"] = s.plots.plot_layer_densities(report, title=title)
    return [{"scorer": name, "compression": c, **r} for r in report.rows()]


def _isometry(
    s: _Session, model: torch.nn.Module, name: str, masks: dict[str, torch.Tensor], spectra: _Spectra
) -> None:
    """Approximate isometry on a copy of the pruned model (the diagnostics of the next scorers need the
    original weights), and the copy's Jacobian spectrum."""
    pruned = s.make()
    pruned.load_state_dict(model.state_dict())
    iso = approximate_isometry(pruned, masks, steps=s.args.isometry_steps, lr=s.args.isometry_lr)
    s.metrics.update(iso.as_metrics(f"isometry/{name}"))
    _log(f"{name}: {iso}")
    spectra.add(f"isometry_{name}", pruned)


def _write_outputs(s: _Session) -> None:
    """The figures the steps drew, and ``summary.json``: the arguments and every metric as one flat dict."""
    if s.plots is not None:
        for k, fig in s.figures.items():
            s.plots.save_figure(fig, s.out / f"{k}.png")
    args = {k: str(v) for k, v in vars(s.args).items()}
    summary = {"model": s.args.model, "args": args, "metrics": s.metrics}
    (s.out / "summary.json").write_text(json.dumps(summary, indent=1))
    _log(f"wrote {s.out}/ ({len(s.figures)} figures)")


def main(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Run the command (see the module docstring) and return every metric it wrote to ``summary.json``."""
    args = _parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    s = _Session(args, _load_plots(args.no_figures))
    if s.stand_in:
        _log(f"note: {s.stand_in} get Gaussian images with random labels as a stand-in for data")
    if not args.skip_sweep:
        _sweep(s)
    _diagnostics(s)
    _write_outputs(s)
    return s.metrics


def cli() -> None:
    """Console-script entry point (returns nothing, so the exit status is 0 on success)."""
    main()


if __name__ == "__main__":
    cli()
