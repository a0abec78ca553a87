import csv
import json
import subprocess
import sys

import pytest

from lightning_synflow.analysis import cli


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_runs_on_a_tiny_config_and_writes_csv(tmp_path, capsys):
    out = tmp_path / "run"
    metrics = cli.main([
        "resnet20", "--input-size", "8", "--scorers", "synflow", "random", "--iterations", "2",
        "--grid", "0.5", "1.0", "1.5", "--search", "full", "--compression", "10",
        "--jacobian-examples", "2", "--isometry-steps", "3", "--no-figures", "--out", str(out),
    ])
    summary = {r["scorer"]: r for r in _read(out / "critical_summary.csv")}
    assert set(summary) == {"synflow", "random"}
    long = _read(out / "critical_compression.csv")
    assert {float(r["log10"]) for r in long} == {0.5, 1.0, 1.5}  # "full": every grid point, per tensor
    assert {r["tensor"] for r in long} >= {"stem.0.weight", "fc.weight"}
    sparsity = _read(out / "sparsity.csv")
    assert {r["scorer"] for r in sparsity} == {"synflow", "random"}
    assert all(int(r["effective"]) <= int(r["kept"]) <= int(r["total"]) for r in sparsity)
    assert [r["label"] for r in _read(out / "jacobian.csv")] == [
        "init", "pruned_synflow", "isometry_synflow", "pruned_random", "isometry_random"
    ]
    assert _read(out / "conservation.csv")
    saved = json.loads((out / "summary.json").read_text())
    assert saved["metrics"] == pytest.approx(metrics)
    assert "critical_compression/synflow/log10" in metrics and "isometry/random/penalty_after" in metrics
    assert not list(out.glob("*.png"))
    assert "wrote" in capsys.readouterr().out


def test_cli_step_bisection_stand_in_data_and_no_jacobian(tmp_path, capsys):
    out = tmp_path / "s"
    metrics = cli.main([
        "resnet20", "--input-size", "8", "--scorers", "magnitude", "snip", "--step", "1.0", "--ignore", "*shortcut*",
        "--compression", "10", "--jacobian-examples", "0", "--no-figures", "--out", str(out),
    ])
    summary = {r["scorer"]: r for r in _read(out / "critical_summary.csv")}
    assert {k: (r["data"], r["search"]) for k, r in summary.items()} == {
        "magnitude": ("none", "bisect"), "snip": ("stand-in", "bisect")
    }
    assert {float(r["log10"]) for r in _read(out / "critical_compression.csv")} <= {1.0, 2.0, 3.0, 4.0}  # --step 1
    assert not (out / "jacobian.csv").exists() and not any(k.startswith("jacobian_sv/") for k in metrics)
    printed = capsys.readouterr().out
    assert "note: ['snip'] get Gaussian images with random labels" in printed and "[snip seed=0] x=" in printed
    saved = json.loads((out / "summary.json").read_text())
    assert saved["args"]["step"] == "1.0" and saved["args"]["ignore"] == "['*shortcut*']"
    assert list(saved["metrics"]) == list(metrics)


def test_cli_figures_for_the_diagnostics(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import numpy as np
    from matplotlib.image import imread

    from lightning_synflow.analysis import figures

    drawn = {}  # what each plotting function drew during the run, by the file the CLI is to write it to
    for plot, name in [("plot_layer_densities", "densities_magnitude"), ("plot_singular_values", "jacobian_spectra"),
                       ("plot_conservation", "conservation")]:
        def record(*args, _plot=getattr(figures, plot), _name=name, **kwargs):
            drawn[_name] = _plot(*args, **kwargs)
            return drawn[_name]
        monkeypatch.setattr(figures, plot, record)
    out = tmp_path / "d"
    cli.main(["resnet20", "--input-size", "8", "--scorers", "magnitude", "--skip-sweep",
                  "--jacobian-examples", "1", "--out", str(out)])
    assert not (out / "critical_summary.csv").exists() and (out / "sparsity.csv").exists()
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{n}.png" for n in drawn) and len(drawn) == 3
    assert drawn["densities_magnitude"].axes[0].get_title().startswith("resnet20, magnitude, compression 100\n")
    assert drawn["jacobian_spectra"].axes[0].get_title() == "resnet20: Jacobian singular values"
    assert drawn["conservation"].get_suptitle() == "resnet20"
    images = {}
    for name, fig in drawn.items():  # each file is its own figure, as the plotting function drew it
        images[name] = imread(out / f"{name}.png")
        again = imread(figures.save_figure(fig, tmp_path / "again" / f"{name}.png"))
        assert images[name].shape == again.shape and np.array_equal(images[name], again), name
    a, b, c = images.values()
    assert not any(x.shape == y.shape and np.array_equal(x, y) for x, y in [(a, b), (a, c), (b, c)])


def test_cli_rejects_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["resnet20", "--scorers", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["not_a_model", "--out", str(tmp_path)])


def test_works_without_matplotlib(tmp_path):
    """Our analysis code and the CLI import and run with matplotlib unavailable (figures skipped).

    torchmetrics (via lightning) imports matplotlib itself when it is installed, so the core package is
    imported first; then matplotlib is unloaded and blocked before the analysis modules are imported.
    """
    code = (
        "import sys\n"
        "import lightning_synflow\n"
        "for m in [m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.')]: del sys.modules[m]\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'matplotlib': raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import lightning_synflow.analysis, lightning_synflow.analysis.figures\n"
        "from lightning_synflow.analysis import cli\n"
        f"cli.main(['resnet20', '--input-size', '8', '--scorers', 'random', '--skip-sweep', '--jacobian-examples', '0', '--out', {str(tmp_path)!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "no figures" in proc.stderr
    assert (tmp_path / "sparsity.csv").exists() and not list(tmp_path.glob("*.png"))
