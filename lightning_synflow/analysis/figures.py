"""Figures for the analysis results, as :class:`matplotlib.figure.Figure` objects (PNG via :func:`save_figure`).

matplotlib is imported only when a figure is made (``pip install lightning-synflow[plot]``); figures are
built with the object API (no pyplot, no global state, no GUI backend), so they are safe in a training
process and can be handed to a logger (e.g. TensorBoard's ``add_figure``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch
from torch import Tensor

from lightning_synflow.analysis.conservation import ConservationResult
from lightning_synflow.analysis.critical import CriticalCompressionResult, CriticalRun
from lightning_synflow.analysis.effective import EffectiveSparsityReport
from lightning_synflow.report import SparsityReport

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

COLORS = {
    "synflow": "tab:blue",
    "magnitude": "tab:orange",
    "random": "tab:gray",
    "snip": "tab:green",
    "grasp": "tab:red",
}


def _figure(width: float, height: float, ncols: int = 1):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'lightning-synflow[plot]'") from e
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _color(name: str, i: int) -> str:
    return COLORS.get(name, f"C{(i + 5) % 10}")


def save_figure(fig: "Figure", path: Union[str, Path], dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (PNG unless the suffix says otherwise), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _short(name: str) -> str:
    return name[:-7] if name.endswith(".weight") else name


def plot_layer_densities(
    nominal: Union[SparsityReport, EffectiveSparsityReport],
    effective: Optional[SparsityReport] = None,
    *,
    title: Optional[str] = None,
) -> "Figure":
    """Per-tensor density bars, nominal (the masks) beside effective (on an input-output path).

    Pass an :class:`EffectiveSparsityReport`, or a nominal :class:`~lightning_synflow.SparsityReport`
    with an optional effective one. The y axis is logarithmic when some density is below 1%; tensors
    with nothing kept are marked with a red cross at the bottom.
    """
    if isinstance(nominal, EffectiveSparsityReport):
        nominal, effective = nominal.nominal, nominal.effective
    names = [_short(t.name) for t in nominal.tensors]
    series = [("nominal", [t.density for t in nominal.tensors], "tab:blue")]
    if effective is not None:
        series.append(("effective", [t.density for t in effective.tensors], "tab:orange"))
    fig, ax = _figure(max(6.0, 0.45 * len(names) + 2), 4.2)
    width = 0.8 / len(series)
    positive = [d for _, ds, _ in series for d in ds if d > 0]
    log = bool(positive) and min(positive) < 0.01
    floor = min(positive) / 3 if (log and positive) else 0.0
    for j, (label, ds, color) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [d if d > 0 else (floor if log else 0.0) for d in ds], width, label=label, color=color,
               bottom=None)
        zeros = [x for x, d in zip(xs, ds) if d == 0]
        if zeros:
            ax.plot(zeros, [floor if log else 0.0] * len(zeros), "x", color="red", markersize=8,
                    label=f"{label}: empty" if j == 0 or effective is not None else None)
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("density (fraction kept)")
    sub = f"nominal {nominal.density:.3%}" + (f", effective {effective.density:.3%}" if effective is not None else "")
    ax.set_title((title + "\n" if title else "") + sub, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _as_results(
    results: Union[CriticalCompressionResult, Sequence[CriticalCompressionResult], Mapping[str, CriticalCompressionResult]],
) -> list[CriticalCompressionResult]:
    if isinstance(results, CriticalCompressionResult):
        return [results]
    if isinstance(results, Mapping):
        return list(results.values())
    return list(results)


def plot_critical_compression(
    results: Union[CriticalCompressionResult, Sequence[CriticalCompressionResult], Mapping[str, CriticalCompressionResult]],
    *,
    reference: Optional[Mapping[str, float]] = None,
    title: Optional[str] = None,
) -> "Figure":
    """Critical-compression curves: left, the number of collapsed tensors at every evaluated 10^x (one
    line per run, the critical x marked); right, critical x per scorer (mean bar, seeds as dots) beside
    ``reference`` values (e.g. the paper's), against the maximum possible compression."""
    res = _as_results(results)
    fig, (ax, bx) = _figure(11.0, 4.2, ncols=2)
    max_x = max(r.max_log10 for r in res)
    for i, r in enumerate(res):
        c = _color(r.scorer, i)
        for k, run in enumerate(r.runs):
            pts = sorted(run.points, key=lambda p: p.log10)
            ax.plot([p.log10 for p in pts], [len(p.collapsed) for p in pts], "o-", color=c, alpha=0.7,
                    markersize=4, linewidth=1, label=r.scorer if k == 0 else None)
        ax.axvline(r.log10, color=c, linestyle=":", linewidth=1.5)
    ax.axvline(max_x, color="black", linestyle="--", linewidth=1, label=f"max possible 10^{max_x:.2f}")
    ax.set_xlabel("compression ratio (log10)")
    ax.set_ylabel("collapsed tensors")
    ax.set_title("layer collapse along the sweep (dotted: critical x)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    labels = [r.scorer for r in res]
    has_ref = reference is not None and any(l in reference for l in labels)
    w = 0.38 if has_ref else 0.6
    for i, r in enumerate(res):
        c = _color(r.scorer, i)
        y = i + (w / 2 if has_ref else 0)
        bx.barh(y, r.log10, w, color=c, label="ours (mean)" if i == 0 else None)
        bx.plot(r.log10_per_run, [y] * len(r.runs), "k.", markersize=6, label="ours (per seed)" if i == 0 else None)
        bx.text(max(r.log10_per_run) + 0.08, y, f"{r.log10:.2f}", va="center", fontsize=8)
        if has_ref and r.scorer in reference:
            bx.barh(i - w / 2, reference[r.scorer], w, color=c, alpha=0.35, hatch="//",
                    label="paper" if i == 0 else None)
            bx.text(reference[r.scorer] + 0.05, i - w / 2, f"{reference[r.scorer]:.2f}", va="center", fontsize=8)
    bx.axvline(max_x, color="black", linestyle="--", linewidth=1)
    bx.set_yticks(range(len(res)))
    bx.set_yticklabels(labels)
    bx.set_xlabel("critical compression (log10)")
    bx.set_xlim(0, max_x + 0.6)
    bx.set_title("critical compression" + (" vs paper" if has_ref else ""), fontsize=10)
    bx.legend(fontsize=8, loc="lower right")
    bx.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_sweep_densities(run: Union[CriticalRun, CriticalCompressionResult], *, title: Optional[str] = None) -> "Figure":
    """Per-tensor density profile at every evaluated x of one run (the first run of a result)."""
    if isinstance(run, CriticalCompressionResult):
        run = run.runs[0]
    pts = sorted(run.points, key=lambda p: p.log10)
    fig, ax = _figure(8.0, 4.2)
    if not pts:
        return fig
    names = list(pts[0].kept)
    cmap_n = max(1, len(pts) - 1)
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    floor = 0.5 / max(pts[0].total.values())
    for j, p in enumerate(pts):
        ds = [p.kept[n] / p.total[n] for n in names]
        ax.plot(range(len(names)), [d if d > 0 else floor for d in ds], "o-" if not p.is_collapsed else "x--",
                color=cmap(j / cmap_n), markersize=4, label=f"10^{p.log10:.2f}" + (" (collapsed)" if p.is_collapsed else ""))
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_short(n) for n in names], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("density (empty tensors drawn at the bottom)")
    ax.set_title(title or f"{run.scorer} per-layer density along the sweep (critical 10^{run.log10:.2f})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return fig


def plot_singular_values(
    spectra: Mapping[str, Tensor], *, bins: int = 50, title: Optional[str] = None
) -> "Figure":
    """Histograms of Jacobian singular values, one per label (e.g. init / pruned / isometry), on a log x axis."""
    fig, ax = _figure(7.0, 4.2)
    vals = {k: v.detach().reshape(-1).double() for k, v in spectra.items()}
    pos = torch.cat([v[v > 0] for v in vals.values()]) if vals else torch.empty(0)
    if pos.numel():
        lo, hi = math.log10(float(pos.min())), math.log10(float(pos.max()))
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        edges = torch.logspace(lo, hi, bins + 1).tolist()
        for i, (k, v) in enumerate(vals.items()):
            v = v[v > 0]
            label = f"{k}: mean {float(v.mean()):.3g}, max {float(v.max()):.3g}" if v.numel() else k
            ax.hist(v.tolist(), bins=edges, histtype="stepfilled", alpha=0.45, color=f"C{i}", label=label)
        ax.set_xscale("log")
    ax.set_xlabel("singular value of the input-output Jacobian")
    ax.set_ylabel("count")
    ax.set_title(title or "Jacobian singular values", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_conservation(
    results: Union[ConservationResult, Sequence[ConservationResult]], *, title: Optional[str] = None
) -> "Figure":
    """Left: per-neuron incoming vs outgoing score (log-log, y = x dashed), colour = layer; right: mean
    score per weight vs layer size, one series per scorer."""
    res = [results] if isinstance(results, ConservationResult) else list(results)
    fig, (ax, bx) = _figure(11.0, 4.4, ncols=2)
    first = res[0]
    lo, hi = math.inf, 0.0
    for j, n in enumerate(first.neurons):
        a, b = n.incoming.double(), n.outgoing.double()
        keep = (a > 0) & (b > 0)
        if keep.any():
            ax.scatter(a[keep].tolist(), b[keep].tolist(), s=6, alpha=0.6, color=f"C{j % 10}", label=_short(n.layer))
            lo = min(lo, float(torch.minimum(a[keep], b[keep]).min()))
            hi = max(hi, float(torch.maximum(a[keep], b[keep]).max()))
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("incoming score (sum over weights into a neuron)")
    ax.set_ylabel("outgoing score")
    ax.set_title(f"{first.scorer}: per-neuron conservation (max rel. error {first.max_relative_error:.1e})", fontsize=10)
    if len(first.neurons) <= 16:
        ax.legend(fontsize=6, ncol=2, markerscale=2)
    ax.grid(alpha=0.3)
    for i, r in enumerate(res):
        sizes = [l.size for l in r.layers if l.mean > 0]
        means = [l.mean for l in r.layers if l.mean > 0]
        bx.plot(sizes, means, "o", color=_color(r.scorer, i), label=f"{r.scorer} (slope {r.size_slope:.2f})")
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("layer size (weights)")
    bx.set_ylabel("average score per weight")
    bx.set_title("average score vs layer size", fontsize=10)
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig
