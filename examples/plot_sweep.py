"""Plot a sweep's CSV in the style of the SynFlow paper's Fig. 6: top-1 test accuracy against compression
per method, the mean over seeds as a line and the min-max over seeds as a band, the dense run at 10^0.

The paper's curves (``synflow_fig6_accuracy.csv``: dataset, model, method, log10_compression, sparsity,
top1_mean, top1_min, top1_max) are overlaid, dashed, on a panel whose dataset and model they match. When
none matches (Fashion-MNIST, say), they are drawn in a panel of their own, titled as a reference from a
different data set and model, on the same axes and colours.

    python examples/plot_sweep.py docs/results/fashion_mnist_lenet5.csv --out docs/results/fashion_mnist_lenet5.png
    python examples/plot_sweep.py sweeps/cifar10-vgg16.csv --reference path/to/synflow_fig6_accuracy.csv

It also prints a Markdown table of the same numbers (mean and min-max over seeds, in %); ``--table FILE``
writes it to a file.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_NAME = "synflow_fig6_accuracy.csv"
#: Where the paper's Fig. 6 data is looked for when --reference is not given, in order.
REFERENCE_CANDIDATES = (
    ROOT / "docs" / "reference" / REFERENCE_NAME,
    ROOT.parent / "shared" / "reference" / REFERENCE_NAME,
)
DEFAULT_REFERENCE_GROUP = ("cifar10", "vgg16_bn")
METHOD_ORDER = ("synflow", "snip", "grasp", "force", "iter_snip", "magnitude", "random")
COLORS = {
    "synflow": "tab:blue",
    "snip": "tab:orange",
    "grasp": "tab:green",
    "force": "tab:purple",
    "iter_snip": "tab:pink",
    "magnitude": "tab:brown",
    "random": "tab:gray",
    "dense": "black",
}
LABELS = {"synflow": "SynFlow", "snip": "SNIP", "grasp": "GraSP", "force": "FORCE", "iter_snip": "Iter-SNIP",
          "magnitude": "Magnitude", "random": "Random", "dense": "dense"}  # fmt: skip
DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tinyimagenet": "Tiny ImageNet",
                  "fashion-mnist": "Fashion-MNIST", "digits": "digits (8x8)"}  # fmt: skip
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "fashion-mnist": 10, "digits": 10}

# One curve: x -> (mean, min, max, n) in %.
Curve = dict[float, tuple[float, float, float, int]]


def find_reference(path: Optional[Path] = None) -> Optional[Path]:
    """``path``, else ``$SYNFLOW_FIG6_CSV``, else the first of :data:`REFERENCE_CANDIDATES` that exists."""
    if path is not None:
        return path
    env = os.environ.get("SYNFLOW_FIG6_CSV")
    candidates = ([Path(env)] if env else []) + list(REFERENCE_CANDIDATES)
    return next((p for p in candidates if p.is_file()), None)


def read_csv(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def series_of(row: dict[str, str]) -> str:
    """A row's curve: its method, or ``<method> + AI`` for runs with approximate-isometry steps after pruning."""
    return row["method"] + (" + AI" if int(row.get("isometry_steps") or 0) else "")


def sweep_curves(
    rows: Sequence[dict[str, str]], metric: str = "final", isometry: str = "all"
) -> dict[tuple[str, str], dict[str, Curve]]:
    """Per (dataset, model), per method (and ``<method> + AI`` for runs with isometry steps; ``isometry``:
    ``"all"``, ``"without"`` or ``"with"`` such runs): the curve over seeds of the test accuracy (``final`` or
    ``best``), in %.

    Where one (dataset, model) holds rows of several protocols, the protocol with the most rows is used
    (a warning names the others)."""
    column = {"final": "test_acc_final", "best": "test_acc_best"}[metric]
    keep = {"all": lambda r: True, "without": lambda r: "+" not in series_of(r), "with": lambda r: "+" in series_of(r) or r["method"] == "dense"}[isometry]
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        if keep(r):
            groups[(r["dataset"], r["model"])].append(r)
    result: dict[tuple[str, str], dict[str, Curve]] = {}
    for group, members in groups.items():
        counts: dict[str, int] = defaultdict(int)
        for r in members:
            counts[r.get("protocol", "")] += 1
        protocol = max(counts, key=counts.__getitem__)
        if len(counts) > 1:
            print(f"warning: {group[0]}/{group[1]}: plotting protocol {protocol} ({counts[protocol]} rows); ignoring"
                  f" {', '.join(f'{p} ({n} rows)' for p, n in counts.items() if p != protocol)}", file=sys.stderr)  # fmt: skip
        values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in members:
            if r.get("protocol", "") == protocol and r.get(column, "") != "":
                values[series_of(r)][round(float(r["log10_compression"]), 6)].append(100.0 * float(r[column]))
        result[group] = {
            method: {x: (statistics.fmean(v), min(v), max(v), len(v)) for x, v in sorted(by_x.items())}
            for method, by_x in values.items()
        }
    return result


def reference_curves(rows: Sequence[dict[str, str]]) -> dict[tuple[str, str], dict[str, Curve]]:
    """The paper's Fig. 6 data as curves per (dataset, model) and method (n = 3 seeds)."""
    result: dict[tuple[str, str], dict[str, Curve]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        x = round(float(r["log10_compression"]), 6)
        result[(r["dataset"], r["model"])][r["method"]][x] = (float(r["top1_mean"]), float(r["top1_min"]), float(r["top1_max"]), 3)
    return {g: dict(m) for g, m in result.items()}


def _ordered(methods: Sequence[str]) -> list[str]:
    def rank(series: str) -> tuple[int, str]:
        method = series.partition(" + ")[0]
        return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), series)

    return sorted(methods, key=rank)


def _label(series: str) -> str:
    method, plus, extra = series.partition(" + ")
    return LABELS.get(method, method) + (f" + {extra}" if plus else "")


def _color(series: str, extra: dict[str, Any]) -> Any:
    method = series.partition(" + ")[0]  # a method's runs with isometry steps share its colour
    if method not in COLORS and method not in extra:
        import matplotlib.pyplot as plt

        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        extra[method] = cycle[len(extra) % len(cycle)]
    return COLORS.get(method, extra.get(method))


def _title(group: tuple[str, str]) -> str:
    dataset, model = group
    return f"{DATASET_LABELS.get(dataset, dataset)}, {model}"


def _format_axes(ax: Any, xs: Sequence[float], dataset: str) -> None:
    lo, hi = min(xs, default=0.0), max(xs, default=3.0)
    ticks = [t / 2 for t in range(math.floor(lo * 2), math.ceil(hi * 2) + 1)]
    if len(ticks) > 9:
        ticks = [t for t in ticks if float(t).is_integer()]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"$10^{{{t:g}}}$\n{100 * (1 - 10**-t):.4g}%" if t else "$10^0$\ndense" for t in ticks])
    ax.set_xlim(lo - 0.1, hi + 0.1)
    ax.set_xlabel("compression (sparsity below)")
    ax.set_ylabel("top-1 test accuracy (%)")
    if dataset in NUM_CLASSES:
        ax.axhline(100.0 / NUM_CLASSES[dataset], color="0.6", linestyle=":", linewidth=1, zorder=0)
    ax.grid(True, alpha=0.3)


def _draw(ax: Any, curves: dict[str, Curve], *, dashed: bool, band: bool, colors: dict[str, Any], label_suffix: str = "") -> None:
    dense = curves.get("dense", {}).get(0.0)
    for method in _ordered([m for m in curves if m != "dense"]):
        points = dict(curves[method])
        if dense is not None and 0.0 not in points:
            points[0.0] = dense  # every method starts from the unpruned network, as in the paper
        xs = sorted(points)
        mean = [points[x][0] for x in xs]
        color = _color(method, colors)
        ai = " + " in method
        ax.plot(xs, mean, linestyle="--" if dashed else (":" if ai else "-"), marker="" if dashed else ("^" if ai else "o"), markersize=3.5,
                linewidth=1.2 if dashed else 1.8, color=color, alpha=0.75 if dashed else 1.0,
                label=_label(method) + label_suffix)  # fmt: skip
        if band:
            ax.fill_between(xs, [points[x][1] for x in xs], [points[x][2] for x in xs], color=color, alpha=0.18, linewidth=0)
    if dense is not None:
        ax.plot([0.0], [dense[0]], marker="s", color="black", markersize=5, linestyle="", label="dense" + label_suffix, zorder=5)
        if band and dense[2] > dense[1]:
            ax.errorbar([0.0], [dense[0]], yerr=[[dense[0] - dense[1]], [dense[2] - dense[0]]], color="black", capsize=3, linestyle="")


def plot(sweep: dict[tuple[str, str], dict[str, Curve]], reference: Optional[dict[tuple[str, str], dict[str, Curve]]] = None,
         reference_group: tuple[str, str] = DEFAULT_REFERENCE_GROUP, metric: str = "final"):  # fmt: skip
    """The figure: one panel per (dataset, model) of the sweep, the paper's curves overlaid where they match,
    and one reference panel for the unmatched (the paper's ``reference_group``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = reference or {}
    groups = sorted(sweep)
    unmatched = [g for g in groups if g not in reference]
    extra_panel = bool(unmatched) and reference_group in reference
    n = len(groups) + int(extra_panel)
    fig, axes = plt.subplots(1, n, figsize=(6.0 * n, 5.0), squeeze=False)
    colors: dict[str, Any] = {}
    for ax, group in zip(axes[0], groups):
        curves = sweep[group]
        xs = {x for c in curves.values() for x in c}
        _draw(ax, curves, dashed=False, band=True, colors=colors)
        seeds = max((v[3] for c in curves.values() for v in c.values()), default=0)
        title = f"{_title(group)}: this sweep\nline: mean, band: min-max of {seeds} seed(s); {metric}-epoch accuracy"
        if group in reference:
            _draw(ax, reference[group], dashed=True, band=False, colors=colors, label_suffix=" (paper)")
            xs |= {x for c in reference[group].values() for x in c}
            title += "\ndashed: the paper's Fig. 6, same data and model (mean of 3 seeds)"
        ax.set_title(title, fontsize=9)
        _format_axes(ax, sorted(xs), group[0])
        ax.legend(fontsize=7, loc="lower left", ncol=2 if group in reference else 1)
    if extra_panel:
        ax = axes[0][-1]
        _draw(ax, reference[reference_group], dashed=False, band=True, colors=colors)
        ax.set_title(
            f"REFERENCE from a different data set and model:\nthe paper's Fig. 6 for {_title(reference_group)}"
            f" (mean, band min-max of 3 seeds)\nnot comparable point by point with the panel(s) on the left",
            fontsize=9,
            color="darkred",
        )
        _format_axes(ax, sorted({x for c in reference[reference_group].values() for x in c}), reference_group[0])
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def table(sweep: dict[tuple[str, str], dict[str, Curve]]) -> str:
    """Markdown: per (dataset, model), methods x compressions, ``mean (min-max)`` over seeds in %."""
    out = []
    for group in sorted(sweep):
        curves = sweep[group]
        xs = sorted({x for c in curves.values() for x in c})
        out.append(f"**{_title(group)}** (top-1 test accuracy %, mean (min-max) over seeds)\n")
        out.append("| method | " + " | ".join(f"10^{x:g} ({1 - 10 ** -x:.2%})" for x in xs) + " |")
        out.append("|---" * (len(xs) + 1) + "|")
        for method in ["dense"] * ("dense" in curves) + _ordered([m for m in curves if m != "dense"]):
            cells = []
            for x in xs:
                v = curves[method].get(x)
                cells.append("" if v is None else f"{v[0]:.1f} ({v[1]:.1f}-{v[2]:.1f})" if v[3] > 1 else f"{v[0]:.1f}")
            out.append(f"| {_label(method)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", type=Path, help="sweep CSV file(s) from examples/sweep.py")
    parser.add_argument("--out", type=Path, help="figure file (.png, .pdf, .svg); default: the first CSV with .png")
    parser.add_argument("--reference", type=Path, help=f"the paper's {REFERENCE_NAME} (default: $SYNFLOW_FIG6_CSV or a known place)")
    parser.add_argument("--no-reference", action="store_true", help="do not draw the paper's curves")
    parser.add_argument("--reference-group", default="/".join(DEFAULT_REFERENCE_GROUP), metavar="DATASET/MODEL",
                        help="the paper's panel shown when no sweep panel matches (default cifar10/vgg16_bn)")  # fmt: skip
    parser.add_argument("--metric", choices=("final", "best"), default="final", help="final-epoch or best-epoch test accuracy")
    parser.add_argument("--table", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--isometry", choices=("all", "without", "with"), default="all",
                        help="runs without and with approximate-isometry steps (curves '<method> + AI'), or only one kind")
    args = parser.parse_args(argv)

    rows = [r for path in args.csv for r in read_csv(path)]
    if not rows:
        raise SystemExit(f"no rows in {', '.join(map(str, args.csv))}")
    sweep = sweep_curves(rows, args.metric, args.isometry)
    reference = None
    if not args.no_reference:
        path = find_reference(args.reference)
        if path is None:
            print(f"note: the paper's {REFERENCE_NAME} was not found (pass --reference); plotting without it", file=sys.stderr)
        else:
            reference = reference_curves(read_csv(path))
    dataset, _, model = args.reference_group.partition("/")
    fig = plot(sweep, reference, (dataset, model), args.metric)
    out = args.out or args.csv[0].with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    text = table(sweep)
    print(text)
    if args.table:
        args.table.write_text(text)
    print(f"wrote {out}" + (f" and {args.table}" if args.table else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
