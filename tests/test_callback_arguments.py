"""Issue 26 ("arguments checked when the callback is built") and issue 24.5's shrunk checkpoints, channel
metrics and CLI validation: refused at construction, or at setup before any weight changes; and no failure in
``on_fit_start`` leaves the model changed."""

import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

import lightning_synflow.lightning.callback as callback_module
import lightning_synflow.lightning.fit_pruning as fit_pruning
from lightning_synflow import PruneAtInit, PruningDiagnostics
from lightning_helpers import MLP, MemoryLogger, random_data

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)


def fit(model, pruner, root, *, ckpt_path=None, steps=1, logger=False, save=False, callbacks=()):
    saver = [ModelCheckpoint(dirpath=root, save_last=True)] if save else []
    trainer = Trainer(max_steps=steps, default_root_dir=root, logger=logger, enable_checkpointing=save,
                      callbacks=[pruner, *saver, *callbacks], **QUIET)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize(("key", "value", "masks"), [
    ("include_names", "net.0.bias", ["net.0.weight", "net.0.bias", "net.2.weight", "net.4.weight"]),
    ("exclude_names", "net.4.*", ["net.0.weight", "net.2.weight"]),
    ("include_types", "Linear", ["net.0.weight", "net.2.weight", "net.4.weight"]),
])
def test_a_string_where_a_list_is_expected_is_one_pattern(tmp_path, key, value, masks):
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.5, **{key: value})
    assert getattr(pruner, key) == [value]  # not list("net.4.*"), whose "*" would select every tensor
    fit(MLP(), pruner, tmp_path)
    assert list(pruner.masks) == masks


def test_exclude_types_as_a_string_is_one_type_name(tmp_path):
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.5, include_names="net.*.bias", exclude_types="Linear")
    assert pruner.exclude_types == ["Linear"]
    with pytest.raises(ValueError, match=r"found no prunable parameters in MLP"):
        fit(MLP(), pruner, tmp_path)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sparsity": 0.5, "include_names": [1, 2]}, r"`include_names` must be a glob pattern or a list of them, got \[1, 2\]"),
    ({"sparsity": 0.5, "exclude_types": {"Linear": 1}}, r"`exclude_types` must be a layer class name or a list of them, got \{'Linear': 1\}"),
    ({"granularity": "2:4", "distribution": "erk"}, r"granularity '2:4' keeps 2 of every 4 weights of each tensor it groups, which distribution ERK\(power_scale=1.0\) does not at density 0.5; use 'global' or 'uniform'"),
    ({"granularity": "2:4", "shuffle": True}, r"granularity '2:4' is not supported with shuffle=True"),
    ({"sparsity": 0.5, "granularity": "channel", "shuffle": True}, r"granularity 'channel' is not supported with shuffle=True"),
    ({"sparsity": 0.5, "granularity": "channel", "isometry_steps": 5}, r"granularity='channel'\) keeps or removes whole channels, which isometry_steps=5 does not"),
])
def test_combinations_and_types_fit_would_refuse_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneAtInit(**kwargs)


# ---------------------------------------------------------------- no failure in on_fit_start changes the model


class Net(LightningModule):
    """Buffers (BatchNorm), hyperparameters read back through ``self.hparams``."""

    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        self.example_input_array = torch.zeros(2, 8)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        return DataLoader(random_data(n=16), batch_size=8)


class Boom(RuntimeError):
    pass


def _after(original):
    def wrapped(*args, **kwargs):
        original(*args, **kwargs)
        raise Boom("forced failure")
    return wrapped


class FailingDiagnostics(PruningDiagnostics):
    def after_pruning(self, trainer, pl_module, masks):
        raise Boom("forced failure")


FAILURES = {
    # after reinit drew fresh weights
    "reinit": (dict(reinit=True), lambda mp: mp.setattr(callback_module, "reinitialize_on_ranks", _after(callback_module.reinitialize_on_ranks))),
    # after the masks were applied
    "report": (dict(), lambda mp: mp.setattr(callback_module, "report_masks", _after(callback_module.report_masks))),
    # in an observer told of the pruning
    "observer": (dict(), None),
    # after the isometry steps moved the kept weights
    "isometry": (dict(isometry_steps=3), lambda mp: mp.setattr(callback_module, "isometry_on_ranks", _after(callback_module.isometry_on_ranks))),
    # after the network was shrunk
    "shrink": (dict(granularity="channel", shrink=True), lambda mp: mp.setattr(fit_pruning, "shrink_", _after(fit_pruning.shrink_))),
}


@pytest.mark.parametrize("where", list(FAILURES))
def test_no_failure_in_on_fit_start_leaves_the_model_changed(tmp_path, monkeypatch, where):
    kwargs, patch = FAILURES[where]
    if patch is not None:
        patch(monkeypatch)
    torch.manual_seed(0)
    model = Net()
    model.net[1].running_mean.add_(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    hparams, layers = model.hparams, list(model.modules())
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.5, **kwargs)
    diagnostics = [FailingDiagnostics(log_jacobian=False, log_effective_sparsity=False, log_per_tensor=False)] if where == "observer" else []
    with pytest.raises(Boom):
        fit(model, pruner, tmp_path, callbacks=diagnostics)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items()), [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert dict(model.named_parameters()) == params and list(model.modules()) == layers  # the same objects
    assert model.hparams is hparams and model.hparams.lr == 0.05
    assert pruner.masks is None


# ---------------------------------------------------------------- shrunk checkpoints and channel metrics


@pytest.fixture(scope="module")
def shrunk_run(tmp_path_factory):
    """examples/train.py fit on digits with PruneAtInit(granularity=channel, shrink=True): its config and checkpoint."""
    root = tmp_path_factory.mktemp("shrunk")
    config = yaml.safe_load((ROOT / "examples" / "configs" / "digits_synflow.yaml").read_text())
    config["trainer"].update(default_root_dir=str(root), max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                             logger=False, enable_progress_bar=False)
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(root)
    config["trainer"]["callbacks"][-1]["init_args"] = {"scorer": "magnitude", "sparsity": 0.5, "granularity": "channel", "shrink": True}
    (root / "input").mkdir()
    path = root / "input" / "config.yaml"  # LightningCLI saves each run's own config.yaml into default_root_dir
    path.write_text(yaml.safe_dump(config))
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import train as script
        script.main(["fit", "--config", str(path), "--seed_everything=0"])
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return script, path, root / "last.ckpt"


def test_the_cli_tests_and_resumes_a_shrunk_checkpoint(shrunk_run, monkeypatch):
    script, config, ckpt = shrunk_run
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    shapes = {k: v.shape for k, v in torch.load(ckpt, weights_only=False)["state_dict"].items()}
    cli = script.main(["test", "--config", str(config), "--ckpt_path", str(ckpt)])
    assert {k: v.shape for k, v in cli.model.state_dict().items()} == shapes
    assert 0 <= cli.trainer.callback_metrics["test/acc"] <= 1
    cli = script.main(["fit", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.max_epochs=2"])
    assert cli.trainer.current_epoch == 2
    assert {k: v.shape for k, v in cli.model.state_dict().items()} == shapes


def test_load_from_checkpoint_rebuilds_a_shrunk_classifier(shrunk_run, monkeypatch):
    _, _, ckpt = shrunk_run
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from classifier import ImageClassifier

    checkpoint = torch.load(ckpt, weights_only=False)
    model = ImageClassifier.load_from_checkpoint(ckpt)
    assert all(torch.equal(v, checkpoint["state_dict"][k]) for k, v in model.state_dict().items())


def test_a_shrunk_checkpoint_without_an_example_input_names_load_shrunk(shrunk_run, monkeypatch):
    _, _, ckpt = shrunk_run
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from classifier import ImageClassifier

    hparams = torch.load(ckpt, weights_only=False)["hyper_parameters"]
    with pytest.raises(ValueError, match=r"shrunk by PruneAtInit\(shrink=True\).*lightning_synflow.load_shrunk\(model, ckpt_path, example_input\)"):
        ImageClassifier.load_from_checkpoint(ckpt, input_shape=None, backbone=__import__("classifier").MLP(**hparams["backbone"]["init_args"]))


def test_channel_pruning_logs_channels_weights_and_parameters_under_their_own_names(tmp_path):
    logger = MemoryLogger()
    torch.manual_seed(0)
    model = MLP()
    fit(model, PruneAtInit(scorer="magnitude", sparsity=0.5, granularity="channel", shrink=True), tmp_path, logger=logger)
    # MLP: Linear(8, 32), Linear(32, 32), Linear(32, 4): the two hidden layers' 64 channels are removable, half go
    assert logger.values("pruning/channel_sparsity") == [pytest.approx(0.5)]
    hidden = [model.net[0].out_features, model.net[2].out_features]
    assert sum(hidden) == 32
    zeroed = (32 - hidden[0]) * 8 + (32 - hidden[1]) * 32  # the masks zero the removed channels' rows
    assert logger.values("pruning/weight_sparsity") == [pytest.approx(zeroed / (8 * 32 + 32 * 32 + 32 * 4))]
    before = 8 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4
    after = sum(p.numel() for p in model.parameters())
    assert logger.values("pruning/parameters") == [after] and logger.values("pruning/parameters_before_shrink") == [before]
    assert logger.values("pruning/parameter_sparsity") == [pytest.approx(1 - after / before)]


# ---------------------------------------------------------------- the CLI refuses bad values when it parses


@pytest.mark.parametrize(("value", "message"), [
    ("sparsity=1.5", "`sparsity` must be a number in [0, 1)"),
    ("granularity=3:2", "`granularity` must be 'weight', 'channel' or 'N:M' with 0 < N < M"),
    ("scorer=synflw", "`scorer` must be one of ["),
    ("iterations=0", "`iterations` must be a positive integer"),
    ("distribution=local", "`distribution` must be one of ['global', 'uniform', 'erk']"),
    ("input_shape=[1,-8,8]", "`input_shape` must be a non-empty list of positive ints"),
])
def test_print_config_refuses_bad_values(monkeypatch, capsys, value, message):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import train as script

    args = ["fit", "--config", str(ROOT / "examples" / "configs" / "digits_synflow.yaml"), f"--trainer.callbacks.init_args.{value}", "--print_config"]
    with pytest.raises(SystemExit) as exit_:
        script.main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
