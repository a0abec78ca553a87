import pytest
import torch

pytest.importorskip("matplotlib")

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

from conftest import BiasFreeCNN  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 1000 and data.rstrip().endswith(b"IEND\xaeB`\x82")


def test_every_figure_is_written_as_png(tmp_path):
    torch.manual_seed(0)
    net = BiasFreeCNN()
    x = torch.zeros(1, 3, 8, 8)
    masks = compute_masks(net, "random", compression=30)
    report = effective_sparsity_report(net, masks, example_input=x)
    sweep = critical_compression(
        BiasFreeCNN, ["synflow", "random"], seeds=[0, 1], example_input=x, iterations=3, search="full", step=0.5
    )
    inputs = torch.randn(4, 3, 8, 8)
    figures = {
        "densities": plot_layer_densities(report, title="random 30x"),
        "densities_nominal_only": plot_layer_densities(report.nominal),
        "critical": plot_critical_compression(sweep, reference={"synflow": 2.0, "random": 1.0}, title="t"),
        "critical_single": plot_critical_compression(sweep["random"]),
        "sweep": plot_sweep_densities(sweep["synflow"]),
        "spectra": plot_singular_values(
            {"dense": jacobian_singular_values(net, inputs), "pruned": jacobian_singular_values(net, inputs, masks=masks)}
        ),
        "conservation": plot_conservation([conservation(net, "synflow", example_input=x), conservation(net, "magnitude")]),
    }
    for name, fig in figures.items():
        path = save_figure(fig, tmp_path / "sub" / f"{name}.png")
        assert _is_png(path), name
