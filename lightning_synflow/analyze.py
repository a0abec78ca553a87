"""Command line: critical-compression sweep and pruning diagnostics for a named model.

    python -m lightning_synflow.analyze vgg16_bn --num-classes 100 --scorers synflow magnitude random \\
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
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_synflow import available_scorers, compute_masks
from lightning_synflow.analysis import (
    approximate_isometry,
    conservation,
    critical_compression,
    effective_sparsity_report,
    jacobian_singular_values,
    singular_value_stats,
)
from lightning_synflow.models import MODELS, get_model

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
        prog="python -m lightning_synflow.analyze",
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


def main(argv: Optional[Sequence[str]] = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [s for s in args.scorers if s not in available_scorers()]
    if unknown:
        build_parser().error(f"unknown scorers {unknown}; registered: {available_scorers()}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    shape = (args.in_channels, args.input_size, args.input_size)
    example = torch.zeros(1, *shape)
    log = lambda s: print(s, flush=True)  # noqa: E731
    metrics: dict[str, float] = {}
    figures: dict[str, Any] = {}
    plots = None
    if not args.no_figures:
        try:
            import matplotlib  # noqa: F401  (figures import it lazily; fail here, before any work)

            from lightning_synflow.analysis import figures as plots
        except ImportError as e:  # matplotlib missing
            print(f"no figures: {e}", file=sys.stderr)

    def make():
        return get_model(args.model, args.num_classes, in_channels=args.in_channels)

    def data_for(name: str, seed: int):
        if name in DATA_FREE:
            return None
        return _stand_in_data(shape, args.num_classes, args.data_batches, args.batch_size, seed)

    stand_in = [s for s in args.scorers if s not in DATA_FREE]
    if stand_in:
        log(f"note: {stand_in} get Gaussian images with random labels as a stand-in for data")

    # 1. critical-compression sweep
    if not args.skip_sweep:
        results = {}
        for name in args.scorers:
            t0 = time.perf_counter()
            res = critical_compression(
                make, name, seeds=args.seeds, grid=args.grid, step=args.step, search=args.search,
                iterations=args.iterations, example_input=example,
                dataloader=(lambda n=name: data_for(n, args.seeds[0])), log=log, ignore=args.ignore,
            )
            results[name] = res
            metrics.update(res.as_metrics())
            log(f"{res} [{time.perf_counter() - t0:.0f} s]")
        _write_csv(out / "critical_compression.csv", [row for r in results.values() for row in r.rows()])
        _write_csv(
            out / "critical_summary.csv",
            [
                {"scorer": k, "seeds": " ".join(map(str, args.seeds)),
                 "critical_log10_per_seed": " ".join(f"{x:.3f}" for x in r.log10_per_run),
                 "critical_log10": r.log10, "max_log10": r.max_log10, "search": r.search, "seconds": r.seconds,
                 "data": "stand-in" if k in stand_in else "none"}
                for k, r in results.items()
            ],
        )
        if plots is not None:
            figures["critical_compression"] = plots.plot_critical_compression(results, title=args.model)
            for k, r in results.items():
                figures[f"sweep_{k}"] = plots.plot_sweep_densities(r)

    # 2. diagnostics at one compression, on the first seed's model
    torch.manual_seed(args.seeds[0])
    model = make()
    sparsity_rows: list[dict[str, Any]] = []
    jac_rows: list[dict[str, Any]] = []
    spectra: dict[str, torch.Tensor] = {}
    inputs = None
    if args.jacobian_examples > 0:
        inputs = torch.randn(args.jacobian_examples, *shape, generator=torch.Generator().manual_seed(args.seeds[0]))
        spectra["init"] = jacobian_singular_values(model, inputs)

    def add_spectrum(label: str, sv: torch.Tensor) -> None:
        spectra[label] = sv
        stats = singular_value_stats(sv)
        metrics.update(stats.as_metrics(f"jacobian_sv/{label}"))
        jac_rows.append({"label": label, "mean": stats.mean, "std": stats.std, "min": stats.min, "max": stats.max,
                         "count": stats.count})

    if inputs is not None:
        add_spectrum("init", spectra["init"])
    cons = []
    for name in args.scorers:
        torch.manual_seed(args.seeds[0])
        data = data_for(name, args.seeds[0])
        t0 = time.perf_counter()
        masks = compute_masks(model, name, compression=args.compression, iterations=args.iterations,
                              example_input=example, dataloader=data)
        report = effective_sparsity_report(model, masks, example_input=example)
        metrics.update(report.as_metrics(f"sparsity/{name}"))
        sparsity_rows += [{"scorer": name, "compression": args.compression, **r} for r in report.rows()]
        log(f"{name} at compression {args.compression:g}: {report.nominal.sparsity:.4%} nominal, "
            f"{report.effective.sparsity:.4%} effective sparsity, {len(report.nominal.collapsed)} collapsed "
            f"[{time.perf_counter() - t0:.1f} s]")
        if plots is not None:
            figures[f"densities_{name}"] = plots.plot_layer_densities(report, title=f"{args.model}, {name}, compression {args.compression:g}")
        if inputs is not None:
            add_spectrum(f"pruned_{name}", jacobian_singular_values(model, inputs, masks=masks))
        if args.isometry_steps > 0:
            pruned = make()
            pruned.load_state_dict(model.state_dict())
            iso = approximate_isometry(pruned, masks, steps=args.isometry_steps, lr=args.isometry_lr)
            metrics.update(iso.as_metrics(f"isometry/{name}"))
            log(f"{name}: {iso}")
            if inputs is not None:
                add_spectrum(f"isometry_{name}", jacobian_singular_values(pruned, inputs))
        c = conservation(model, name, example_input=example, dataloader=data)
        cons.append(c)
        metrics.update(c.as_metrics())
    _write_csv(out / "sparsity.csv", sparsity_rows)
    _write_csv(out / "jacobian.csv", jac_rows)
    _write_csv(out / "conservation.csv", [row for c in cons for row in c.rows()])
    if plots is not None:
        if spectra:
            figures["jacobian_spectra"] = plots.plot_singular_values(spectra, title=f"{args.model}: Jacobian singular values")
        if cons:
            figures["conservation"] = plots.plot_conservation(cons, title=args.model)
        for k, fig in figures.items():
            plots.save_figure(fig, out / f"{k}.png")
    (out / "summary.json").write_text(json.dumps({"model": args.model, "args": {k: str(v) for k, v in vars(args).items()},
                                                  "metrics": metrics}, indent=1))
    log(f"wrote {out}/ ({len(figures)} figures)")
    return metrics


def cli() -> None:
    """Console-script entry point (returns nothing, so the exit status is 0 on success)."""
    main()


if __name__ == "__main__":
    cli()
