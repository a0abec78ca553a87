"""The analysis figures show the data they are given (read back from the returned matplotlib Figures), and
``save_figure`` writes them as images of the figure's size that are not blank."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from lightning_synflow import compute_masks  # noqa: E402
from lightning_synflow.analysis import (  # noqa: E402
    conservation,
    critical_compression,
    effective_sparsity_report,
    jacobian_singular_values,
)
from lightning_synflow.analysis.figures import (  # noqa: E402
    plot_conservation,
    plot_critical_compression,
    plot_layer_densities,
    plot_singular_values,
    plot_sweep_densities,
    save_figure,
)
from lightning_synflow.report import SparsityReport, TensorSparsity  # noqa: E402

from conftest import BiasFreeCNN  # noqa: E402

NAMES = ["c1", "c2", "c3", "fc"]  # BiasFreeCNN's prunable tensors, as the figures label them
SCORER_COLORS = {"synflow": "tab:blue", "random": "tab:gray", "magnitude": "tab:orange"}
REFERENCE = {"synflow": 2.0, "random": 1.0}


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    net = BiasFreeCNN()
    x = torch.zeros(1, 3, 8, 8)
    masks = compute_masks(net, "random", compression=30)
    inputs = torch.randn(4, 3, 8, 8)
    return SimpleNamespace(
        report=effective_sparsity_report(net, masks, example_input=x),
        sweep=critical_compression(
            BiasFreeCNN, ["synflow", "random"], seeds=[0, 1], example_input=x, iterations=3, search="full", step=0.5
        ),
        spectra={
            "dense": jacobian_singular_values(net, inputs),
            "pruned": jacobian_singular_values(net, inputs, masks=compute_masks(net, "magnitude", compression=2)),
        },
        conservation=[conservation(net, "synflow", example_input=x), conservation(net, "magnitude")],
    )


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _same_color(a, b):
    return np.allclose(to_rgba(a)[:3], to_rgba(b)[:3])


def test_layer_densities_are_bars_of_the_reports_nominal_and_effective_densities(data):
    report = data.report
    fig = plot_layer_densities(report, title="random 30x")
    (ax,) = fig.axes
    nominal, effective = ax.containers
    assert [nominal.get_label(), effective.get_label()] == ["nominal", "effective"]
    assert [p.get_height() for p in nominal.patches] == pytest.approx([t.density for t in report.nominal.tensors])
    assert [p.get_height() for p in effective.patches] == pytest.approx([t.density for t in report.effective.tensors])
    assert all(_same_color(p.get_facecolor(), "tab:blue") for p in nominal.patches)
    assert all(_same_color(p.get_facecolor(), "tab:orange") for p in effective.patches)
    for i, (a, b) in enumerate(zip(nominal.patches, effective.patches)):  # side by side over each tensor's tick
        assert i - 0.5 < a.get_x() < a.get_x() + a.get_width() <= b.get_x() + 1e-9 < b.get_x() + b.get_width() < i + 0.5
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES and list(ax.get_xticks()) == [0, 1, 2, 3]
    assert ax.get_ylabel() == "density (fraction kept)"
    assert min(t.density for t in report.effective.tensors) < 0.01 and ax.get_yscale() == "log"
    assert ax.get_title() == (
        f"random 30x\nnominal {report.nominal.density:.3%}, effective {report.effective.density:.3%}"
    )
    assert _legend(ax) == ["nominal", "effective"]
    assert report.nominal.density != report.effective.density  # the two series differ

    (nominal_only,) = plot_layer_densities(report.nominal).axes
    (bars,) = nominal_only.containers
    assert [p.get_height() for p in bars.patches] == pytest.approx([t.density for t in report.nominal.tensors])
    assert min(t.density for t in report.nominal.tensors) >= 0.01 and nominal_only.get_yscale() == "linear"
    assert nominal_only.get_title() == f"nominal {report.nominal.density:.3%}" and _legend(nominal_only) == ["nominal"]


def test_layer_densities_mark_empty_tensors_at_the_bottom_of_a_log_axis():
    report = SparsityReport((
        TensorSparsity("a.weight", "a", (10, 10), 0, 100),
        TensorSparsity("b.weight", "b", (20, 20), 1, 400),
        TensorSparsity("c.weight", "c", (10, 10), 50, 100),
    ))
    (ax,) = plot_layer_densities(report).axes
    floor = 0.0025 / 3  # a third of the smallest positive density
    (bars,) = ax.containers
    assert [p.get_height() for p in bars.patches] == pytest.approx([floor, 0.0025, 0.5])
    (cross,) = ax.lines
    assert cross.get_marker() == "x" and _same_color(cross.get_color(), "red")
    assert list(cross.get_xdata()) == [bars.patches[0].get_x() + bars.patches[0].get_width() / 2]
    assert list(cross.get_ydata()) == pytest.approx([floor])
    assert ax.get_yscale() == "log" and sorted(_legend(ax)) == ["nominal", "nominal: empty"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_critical_compression_curves_and_bars_are_the_sweeps(data):
    sweep = data.sweep
    fig = plot_critical_compression(sweep, reference=REFERENCE, title="t")
    ax, bx = fig.axes
    curves = [line for line in ax.lines if line.get_marker() == "o"]
    expected = []
    for name, result in sweep.items():
        for run in result.runs:
            points = sorted(run.points, key=lambda p: p.log10)
            expected.append((name, [p.log10 for p in points], [len(p.collapsed) for p in points]))
    assert len(curves) == len(expected) == 4
    for line, (name, xs, ys) in zip(curves, expected):
        assert list(line.get_xdata()) == pytest.approx(xs) and list(line.get_ydata()) == ys
        assert _same_color(line.get_color(), SCORER_COLORS[name])
    assert any(ys[-1] > 0 for _, _, ys in expected)  # the sweep reached a collapse
    vertical = [line for line in ax.lines if line.get_marker() != "o"]  # each scorer's critical x, then the maximum
    max_log10 = sweep["synflow"].max_log10
    assert [line.get_xdata()[0] for line in vertical] == pytest.approx(
        [sweep["synflow"].log10, sweep["random"].log10, max_log10]
    )
    assert _legend(ax) == ["synflow", "random", f"max possible 10^{max_log10:.2f}"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("compression ratio (log10)", "collapsed tensors")

    bars = [patch for container in bx.containers for patch in container.patches]
    assert [p.get_width() for p in bars] == pytest.approx(
        [sweep["synflow"].log10, REFERENCE["synflow"], sweep["random"].log10, REFERENCE["random"]]
    )
    for p, name in zip(bars, ["synflow", "synflow", "random", "random"]):
        assert _same_color(p.get_facecolor(), SCORER_COLORS[name])
    assert [p.get_hatch() for p in bars] == [None, "//", None, "//"]  # the reference bars are hatched
    dots = [line for line in bx.lines if line.get_marker() == "."]
    assert [list(d.get_xdata()) for d in dots] == [sweep["synflow"].log10_per_run, sweep["random"].log10_per_run]
    assert sweep["random"].log10_per_run[0] != sweep["random"].log10_per_run[1]  # seeds differ: the mean is not a seed
    assert [t.get_text() for t in bx.get_yticklabels()] == ["synflow", "random"]
    assert sorted(_legend(bx)) == ["ours (mean)", "ours (per seed)", "paper"]
    assert bx.get_xlabel() == "critical compression (log10)" and bx.get_title() == "critical compression vs paper"
    assert bx.get_xlim() == pytest.approx((0, max_log10 + 0.6))
    assert fig.get_suptitle() == "t"

    _, single = plot_critical_compression(sweep["random"]).axes
    (bar,) = [p for c in single.containers for p in c.patches]
    assert bar.get_width() == pytest.approx(sweep["random"].log10) and single.get_title() == "critical compression"
    assert [t.get_text() for t in single.get_yticklabels()] == ["random"]


def test_sweep_densities_are_one_line_per_compression_of_the_first_run(data):
    run = data.sweep["synflow"].runs[0]
    (ax,) = plot_sweep_densities(data.sweep["synflow"]).axes
    points = sorted(run.points, key=lambda p: p.log10)
    floor = 0.5 / max(points[0].total.values())
    assert len(ax.lines) == len(points) == 4
    for line, p in zip(ax.lines, points):
        densities = [p.kept[n] / p.total[n] for n in p.kept]
        assert list(line.get_xdata()) == [0, 1, 2, 3]
        assert list(line.get_ydata()) == pytest.approx([d if d > 0 else floor for d in densities])
        assert line.get_label() == f"10^{p.log10:.2f}" + (" (collapsed)" if p.is_collapsed else "")
        assert line.get_marker() == ("x" if p.is_collapsed else "o")
    assert points[-1].is_collapsed and not points[0].is_collapsed
    assert ax.get_yscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert ax.get_title() == f"synflow per-layer density along the sweep (critical 10^{run.log10:.2f})"
    assert _legend(ax) == [line.get_label() for line in ax.lines]


def test_singular_value_histograms_are_one_per_label_over_the_positive_values(data):
    (ax,) = plot_singular_values(data.spectra, title="spectra").axes
    labels = [
        f"{k}: mean {float(v[v > 0].mean()):.3g}, max {float(v.max()):.3g}" for k, v in data.spectra.items()
    ]
    assert [p.get_label() for p in ax.patches] == labels and _legend(ax) == labels
    assert ax.get_xscale() == "log" and ax.get_title() == "spectra"
    assert ax.get_xlabel() == "singular value of the input-output Jacobian" and ax.get_ylabel() == "count"
    values = torch.cat([v.reshape(-1) for v in data.spectra.values()]).double()
    values = values[values > 0]
    for patch in ax.patches:  # every histogram spans the bins from the smallest to the largest value
        assert patch.get_xy()[:, 0].min() == pytest.approx(float(values.min()))
        assert patch.get_xy()[:, 0].max() == pytest.approx(float(values.max()))

    # Exact counts: zeros are left out, and the top of each step histogram is its fullest bin.
    (ax,) = plot_singular_values({"a": torch.tensor([1.0, 10.0, 100.0, 100.0]), "b": torch.tensor([0.0, 10.0])}).axes
    a, b = ax.patches
    assert [a.get_label(), b.get_label()] == ["a: mean 52.8, max 100", "b: mean 10, max 10"]
    assert a.get_xy()[:, 1].max() == 2 and b.get_xy()[:, 1].max() == 1
    assert _same_color(a.get_facecolor(), "C0") and _same_color(b.get_facecolor(), "C1")


def test_conservation_scatters_each_neurons_scores_and_plots_mean_score_per_layer_size(data):
    synflow, magnitude = data.conservation
    ax, bx = plot_conservation(data.conservation, title="c").axes
    scatters = ax.collections
    assert [s.get_label() for s in scatters] == [n.layer.removesuffix(".weight") for n in synflow.neurons]
    for s, n in zip(scatters, synflow.neurons):
        a, b = n.incoming.double(), n.outgoing.double()
        keep = (a > 0) & (b > 0)
        assert keep.any()
        assert s.get_offsets().data == pytest.approx(np.stack([a[keep].numpy(), b[keep].numpy()], axis=1))
    (diagonal,) = ax.lines  # y = x over the range of the points
    xs, ys = diagonal.get_xdata(), diagonal.get_ydata()
    assert list(xs) == list(ys) and diagonal.get_linestyle() == "--"
    every = np.concatenate([s.get_offsets().data for s in scatters])
    assert xs == pytest.approx([every.min(), every.max()])
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert ax.get_title() == f"synflow: per-neuron conservation (max rel. error {synflow.max_relative_error:.1e})"
    assert synflow.max_relative_error < 1e-4  # bias-free ReLU network: incoming = outgoing

    for line, result in zip(bx.lines, data.conservation):
        layers = [layer for layer in result.layers if layer.mean > 0]
        assert list(line.get_xdata()) == [layer.size for layer in layers] and len(layers) == 4
        assert list(line.get_ydata()) == pytest.approx([layer.mean for layer in layers])
        assert _same_color(line.get_color(), SCORER_COLORS[result.scorer])
    assert len(bx.lines) == 2
    assert _legend(bx) == [f"{r.scorer} (slope {r.size_slope:.2f})" for r in data.conservation]
    assert (bx.get_xscale(), bx.get_yscale()) == ("log", "log")
    assert (bx.get_xlabel(), bx.get_ylabel()) == ("layer size (weights)", "average score per weight")
    assert ax.figure.get_suptitle() == "c"


def _blend(color, alpha):
    """``color`` drawn with ``alpha`` over white."""
    return tuple(alpha * np.array(to_rgba(color)[:3]) + (1 - alpha))


@pytest.mark.parametrize("dpi", [60, 120])
def test_every_figure_is_written_as_an_image_of_its_size_that_shows_its_data(data, tmp_path, dpi):
    figures = {  # each figure, and colours its data is drawn in (at full opacity, or blended as drawn)
        "densities": (plot_layer_densities(data.report, title="random 30x"), ["tab:blue", "tab:orange"]),
        "critical": (plot_critical_compression(data.sweep, reference=REFERENCE, title="t"), ["tab:blue", "tab:gray"]),
        "sweep": (plot_sweep_densities(data.sweep["synflow"]), [colormaps["viridis"](0.0), colormaps["viridis"](1.0)]),
        "spectra": (plot_singular_values(data.spectra), [_blend("C0", 0.45), _blend("C1", 0.45)]),
        "conservation": (plot_conservation(data.conservation), ["tab:blue", "tab:orange"]),
    }
    for name, (fig, colors) in figures.items():
        path = save_figure(fig, tmp_path / "sub" / f"{name}.png", dpi=dpi)
        assert path == tmp_path / "sub" / f"{name}.png"
        image = imread(path)
        width, height = fig.get_size_inches()
        assert image.shape == (round(height * dpi), round(width * dpi), 4), name
        rgb = image[..., :3]
        assert 0.02 < (rgb < 0.95).any(axis=-1).mean() < 0.9, name  # some ink, on a white background
        for color in colors:
            pixels = (np.abs(rgb - np.array(to_rgba(color)[:3])).max(axis=-1) < 3 / 255).sum()
            assert pixels >= 10, (name, color, pixels)
    svg = save_figure(figures["spectra"][0], tmp_path / "spectra.svg")  # the suffix picks the format
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
