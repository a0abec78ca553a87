"""The examples as a user runs them: ``examples/train.py`` (LightningCLI) with the YAML configs.

Whatever trains or prints help runs as a subprocess of ``examples/train.py`` from the repository root,
with one OpenMP thread and a timeout. Checks that stop before training (invalid values, the CIFAR-10
config, which cannot download here) call the script's ``main(args)`` in this process, to save the
seconds each new Python process spends importing Lightning.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_synflow import PruneAtInit, available_scorers, num_kept

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"
DIGITS = ROOT / "examples" / "configs" / "digits_synflow.yaml"
CIFAR = ROOT / "examples" / "configs" / "cifar10_resnet20_synflow.yaml"
# A quick fit: one epoch of two batches, one validation batch.
QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


def train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(TRAIN), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cli_main(monkeypatch):
    """``examples/train.py``'s ``main(args, run=True)``, imported as the script sees its folder."""
    monkeypatch.syspath_prepend(str(TRAIN.parent))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [str(TRAIN)])  # pytest's own arguments are not the script's
    import train as script

    return script.main


def digits_config(tmp_path: Path, **prune_args) -> Path:
    """The digits config with its PruneAtInit arguments updated, written into ``tmp_path``."""
    config = yaml.safe_load(DIGITS.read_text())
    (prune,) = [c for c in config["trainer"]["callbacks"] if c["class_path"] == "lightning_synflow.PruneAtInit"]
    prune["init_args"].update(prune_args)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load_checkpoint(root: Path) -> dict:
    (path,) = root.rglob("last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=False)


def check_pruned(checkpoint: dict, sparsity: float) -> tuple[int, int]:
    """The checkpoint's weights are zero exactly where PruneAtInit's saved masks prune them, and the
    masks keep exactly round((1 - sparsity) * N) of the N prunable weights. Returns (kept, N)."""
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("PruneAtInit")]
    masks, weights = state["masks"], checkpoint["state_dict"]
    assert set(masks) == {k for k in weights if k.startswith("backbone.") and k.endswith(".weight")}  # every Linear
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == num_kept(1.0 - sparsity, total)
    assert all(not weights[n][~m].any() for n, m in masks.items())  # pruned weights are exactly zero
    assert sum(int(weights[n].count_nonzero()) for n in masks) == kept  # and the kept ones trained
    return kept, total


def test_digits_config_trains_pruned(tmp_path):
    sparsity = yaml.safe_load(DIGITS.read_text())["trainer"]["callbacks"][-1]["init_args"]["sparsity"]
    result = train("fit", "--config", str(DIGITS), f"--trainer.default_root_dir={tmp_path}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(tmp_path)
    kept, total = check_pruned(checkpoint, sparsity)
    assert [v["scorer"] for k, v in checkpoint["callbacks"].items() if k.startswith("PruneAtInit")] == ["synflow"]
    # The sparsity table went to the output, and the run's full config was saved next to its logs.
    output = result.stdout + result.stderr
    assert "backbone.net.1.weight" in output and f"{kept:,}" in output
    assert f"sparsity {1 - kept / total:.4%}" in output
    (saved,) = tmp_path.rglob("config.yaml")
    assert yaml.safe_load(saved.read_text())["trainer"]["callbacks"][-1]["class_path"] == "lightning_synflow.PruneAtInit"


def test_callback_help_documents_every_argument():
    result = train("fit", "--trainer.callbacks.help", "lightning_synflow.PruneAtInit", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    text = " ".join(result.stdout.split())  # help text is wrapped: compare with whitespace collapsed
    for name in inspect.signature(PruneAtInit).parameters:
        assert f"--trainer.callbacks.{name} " in text, name
    assert "Fraction of the prunable weights to remove, in [0, 1)" in text
    assert "Glob patterns of parameter names never pruned" in text
    assert "lightning_synflow.Random" in text  # the known Scorer subclasses are listed for `scorer`


def test_scorer_given_by_class_path(tmp_path):
    config = digits_config(
        tmp_path, scorer={"class_path": "lightning_synflow.Random", "init_args": {"seed": 3}}, sparsity=0.9
    )
    result = train("fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Random(seed=3)" in result.stdout + result.stderr  # the callback's report names the scorer
    check_pruned(load_checkpoint(tmp_path), 0.9)


@pytest.mark.parametrize(
    "distribution",
    [{"class_path": "lightning_synflow.distributions.ERK", "init_args": {"power_scale": 0.5}}, {"backbone.net.3.*": 0.5}],
    ids=["class_path", "mapping"],
)
def test_distribution_from_yaml(tmp_path, distribution):
    """A distribution by class path, or a mapping of tensor-name patterns to densities, from the YAML file."""
    from lightning_synflow.distributions import ERK

    config = digits_config(tmp_path, distribution=distribution, scorer="magnitude", sparsity=0.9)
    result = train("fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(tmp_path)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("PruneAtInit")]
    counts = {n: int(m.sum()) for n, m in state["masks"].items()}
    shapes = {n: tuple(m.shape) for n, m in state["masks"].items()}
    if "class_path" in distribution:
        assert counts == ERK(0.5).budget(shapes, 0.1, None) and state["distribution"] == "ERK(power_scale=0.5)"
        check_pruned(checkpoint, 0.9)
    else:
        assert counts == {n: num_kept(0.5 if n == "backbone.net.3.weight" else 0.1, m.numel()) for n, m in state["masks"].items()}


@pytest.mark.parametrize(
    "prune_args, messages",
    [
        ({"sparsity": 1.5}, ['Parser key "sparsity"', "`sparsity` must be a number in [0, 1) (the fraction of weights removed)", "Given value: 1.5"]),
        ({"scorer": "nope"}, ["`scorer` must be one of [", *map(repr, available_scorers()), "got 'nope'"]),
        ({"scope": "per-layer"}, ['Parser key "scope"', "Literal['global', 'layerwise']", "per-layer"]),
        ({"distribution": "per-layer"}, ["`distribution` must be one of ['global', 'uniform', 'erk']", "got 'per-layer'"]),
        ({"distribution": {"head.*": 0.5}}, ["`distribution` patterns ['head.*'] match no prunable tensor"]),
    ],
    ids=["sparsity", "scorer", "scope", "distribution", "distribution-pattern"],
)
def test_invalid_argument_fails_clearly(tmp_path, cli_main, capsys, prune_args, messages):
    config = digits_config(tmp_path, **prune_args)
    # Values of the right type are checked by PruneAtInit while the CLI builds it (a ValueError);
    # values of the wrong type by the parser (exit status 2). Either way, before anything trains.
    args = ["fit", "--config", str(config), "--seed_everything=false", f"--trainer.default_root_dir={tmp_path}"]
    with pytest.raises((ValueError, SystemExit)) as error:
        cli_main(args)
    text = str(error.value) if error.type is ValueError else capsys.readouterr().err
    if error.type is SystemExit:
        assert error.value.code == 2
    for message in messages:  # the argument, what it allows and the value given
        assert message in text
    assert not list(tmp_path.rglob("*.ckpt"))


def test_cifar_config_parses(cli_main, capsys):
    # CIFAR-10 cannot be downloaded here: check that the config is complete and valid.
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", str(CIFAR), "--print_config"])
    assert exit_.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["backbone"]["class_path"] == "lightning_synflow.models.resnet20"
    assert config["model"]["backbone"]["init_args"]["num_classes"] == 10
    assert config["data"]["class_path"] == "datamodules.CIFAR10DataModule"
    assert config["data"]["init_args"]["download"] is False
    prune = config["trainer"]["callbacks"][-1]
    assert prune["class_path"] == "lightning_synflow.PruneAtInit"
    assert prune["init_args"]["scorer"] == "synflow" and prune["init_args"]["sparsity"] == 0.99


def test_cifar_config_builds(cli_main, tmp_path):
    # Everything but the data loading: the ResNet-20 backbone, the data module and the callback are built.
    cli = cli_main(
        ["--config", str(CIFAR), "--seed_everything=false", f"--trainer.default_root_dir={tmp_path}",
         "--trainer.accelerator=cpu", "--trainer.logger=false", f"--data.init_args.data_dir={tmp_path}"],
        run=False,
    )
    assert type(cli.model.backbone).__module__.startswith("lightning_synflow.models")
    assert cli.model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    (prune,) = [c for c in cli.trainer.callbacks if isinstance(c, PruneAtInit)]
    assert prune.density == pytest.approx(0.01) and prune.scorer.name == "synflow"
    with pytest.raises(RuntimeError, match="download=true"):
        cli.datamodule.setup("fit")  # no CIFAR-10 in an empty folder: the error says how to get it
