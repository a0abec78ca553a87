"""PruningDiagnostics: the Jacobian spectrum, per-tensor densities and effective sparsity of a pruned network,
logged beside any pruning (driven by a pruner, or alone on a model as it is), without changing training."""

import copy

import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelPruning
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_helpers import MLP, FigureLogger, MemoryLogger, random_data
from lightning_synflow import PruneAtInit, apply_masks
from lightning_synflow.analysis import effective_sparsity_report, jacobian_singular_values, singular_value_stats
from lightning_synflow.lightning.diagnostics import PruningDiagnostics, nonzero_masks

PRUNABLE = ("net.0.weight", "net.2.weight", "net.4.weight")


def fit(model, callbacks, loggers, tmp_path, ckpt_path=None, **kwargs):
    trainer = Trainer(
        accelerator="cpu", logger=loggers, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, default_root_dir=tmp_path, callbacks=callbacks,
        **{"max_steps": 1, **kwargs},
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def hand_prune(model):
    """Zeros by hand: hidden units 0-3 lose every input (their outgoing weights in net.2 are then dead), a
    block of net.2 goes; the classifier stays dense."""
    with torch.no_grad():
        model.net[0].weight[:4] = 0
        model.net[0].weight[4:, :2] = 0
        model.net[2].weight[:, 20:] = 0
    return {n: p.detach() != 0 for n, p in model.named_parameters() if n in PRUNABLE}


def logged_at(logger, step):
    """Every metric logged at ``step``, merged."""
    merged = {}
    for s, metrics in logger.rows:
        if s == step:
            merged.update(metrics)
    return merged


def first_probe(n=8):
    return next(iter(DataLoader(random_data(), batch_size=8)))[0][:n]


def spectrum_metrics(model, probe, stage):
    return singular_value_stats(jacobian_singular_values(model, probe)).as_metrics(f"jacobian_sv/{stage}")


class DrivingPruner(Callback):
    """Drives the protocol as PruneAtInit does in on_fit_start: before pruning, after pruning (masks by
    magnitude, applied), and after "isometry" (here: the kept weights scaled by 1.5)."""

    def __init__(self, diagnostics=None, isometry=True):
        self.diagnostics = diagnostics
        self.isometry = isometry
        self.masks = None

    def on_fit_start(self, trainer, pl_module):
        diagnostics = self.diagnostics
        if diagnostics:
            diagnostics.before_pruning(trainer, pl_module)
        params = dict(pl_module.named_parameters())
        self.masks = {n: params[n].detach().abs() > params[n].detach().abs().median() for n in PRUNABLE}
        apply_masks(pl_module, self.masks)
        if diagnostics:
            diagnostics.after_pruning(trainer, pl_module, self.masks)
        if self.isometry:
            with torch.no_grad():
                for n in PRUNABLE:
                    params[n].mul_(1.5)
            if diagnostics:
                diagnostics.after_isometry(trainer, pl_module, self.masks)


# ---------------------------------------------------------------------- alone


def test_alone_measures_a_hand_pruned_model_as_it_is(tmp_path):
    torch.manual_seed(0)
    model, logger = MLP(), MemoryLogger()
    masks = hand_prune(model)
    initial = copy.deepcopy(model)
    fit(model, [PruningDiagnostics()], [logger], tmp_path)
    logged = logged_at(logger, 0)

    for name, mask in masks.items():  # exact densities, from the weights' zeros
        assert logged[f"pruning/density/{name}"] == int(mask.sum()) / mask.numel()
    assert logged["pruning/density/net.4.weight"] == 1.0
    expected = effective_sparsity_report(initial, masks, example_input=torch.zeros(1, 8)).as_metrics("pruning/sparsity")
    assert {k: logged[k] for k in expected} == expected
    assert expected["pruning/sparsity/effective"] > expected["pruning/sparsity/nominal"]  # the inputless units' weights
    spectrum = spectrum_metrics(initial, first_probe(), "pruned")
    assert {k: logged[k] for k in spectrum} == pytest.approx(spectrum, rel=1e-6)
    assert not any(k.startswith(("jacobian_sv/init", "jacobian_sv/isometry")) for _, m in logger.rows for k in m)

    # Nothing keeps a hand-pruned model pruned: after the step it grew back, and the end of training says so.
    later = logged_at(logger, 1)
    assert later["pruning/density/net.0.weight"] > logged["pruning/density/net.0.weight"]


@pytest.mark.parametrize("diagnostics_first", [False, True], ids=["after_model_pruning", "before_model_pruning"])
def test_alone_follows_model_pruning_epoch_by_epoch_whatever_the_callback_order(tmp_path, diagnostics_first):
    torch.manual_seed(0)
    logger = MemoryLogger()
    pruning = ModelPruning("l1_unstructured", amount=0.5, parameter_names=["weight"], use_global_unstructured=False, verbose=0)
    diagnostics = PruningDiagnostics(log_jacobian=False)
    callbacks = [diagnostics, pruning] if diagnostics_first else [pruning, diagnostics]
    model = MLP()
    fit(model, callbacks, [logger], tmp_path, max_steps=-1, max_epochs=2, limit_train_batches=2)
    densities = [(step, m["pruning/density/net.0.weight"]) for step, m in logger.rows if "pruning/density/net.0.weight" in m]
    # Dense at the start; halved at each epoch end (torch's `weight_orig` named as the weight it stands for),
    # logged at the step where it happened; nothing more when ModelPruning makes the pruning permanent.
    assert densities == [(0, 1.0), (2, 0.5), (4, 0.25)]
    nominal = [m["pruning/sparsity/nominal"] for _, m in logger.rows if "pruning/sparsity/nominal" in m]
    assert nominal[-1] == pytest.approx(1 - (64 + 256 + 32) / (256 + 1024 + 128))
    assert [n for n, _ in model.named_parameters() if n.endswith("weight")] == list(PRUNABLE)  # made permanent


def test_nonzero_masks_of_a_torch_pruned_layer_are_its_mask_and_its_nonzeros():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4, 3))
    torch.nn.utils.prune.random_unstructured(layer[0], "weight", amount=0.5)
    with torch.no_grad():
        layer[0].weight_orig[0, 0] = 0
    (name, mask), = nonzero_masks(layer).items()
    assert name == "0.weight_orig"
    layer(torch.zeros(1, 4))  # the pruning hook computes the weight the forward uses
    assert torch.equal(mask, layer[0].weight != 0)
    assert int(mask.sum()) == 6 - int(layer[0].weight_mask[0, 0])


# ---------------------------------------------------------------------- driven by a pruner


@pytest.mark.parametrize("isometry", [True, False])
def test_protocol_in_order_logs_each_stage_on_the_same_probe_and_one_figure(tmp_path, isometry):
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    model, logger = MLP(), FigureLogger()
    initial = copy.deepcopy(model)
    diagnostics = PruningDiagnostics()
    pruner = DrivingPruner(diagnostics, isometry=isometry)
    fit(model, [diagnostics, pruner], [logger], tmp_path)
    logged = logged_at(logger, 0)
    probe = first_probe()

    expected = spectrum_metrics(initial, probe, "init")
    apply_masks(initial, pruner.masks)
    expected.update(spectrum_metrics(initial, probe, "pruned"))
    expected.update(effective_sparsity_report(initial, pruner.masks, example_input=torch.zeros(1, 8)).as_metrics("pruning/sparsity"))
    expected.update({f"pruning/density/{n}": int(m.sum()) / m.numel() for n, m in pruner.masks.items()})
    stages = ["init", "pruned"]
    if isometry:
        with torch.no_grad():
            for n, p in initial.named_parameters():
                if n in PRUNABLE:
                    p.mul_(1.5)
        expected.update(spectrum_metrics(initial, probe, "isometry"))
        stages.append("isometry")
    else:
        assert not any(k.startswith("jacobian_sv/isometry") for k in logged)
    assert {k: logged[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    # Measured once per stage: on_train_start does not measure again after a pruner drove the protocol.
    assert len(logger.values("jacobian_sv/pruned/mean")) == len(logger.values("pruning/density/net.0.weight")) == 1

    ((tag, figure, step),) = logger.figures
    assert (tag, step) == ("jacobian_singular_values", 0)
    labels = [t.get_text().split(":")[0] for t in figure.axes[0].get_legend().get_texts()]
    assert labels == stages


def test_with_prune_at_init_resuming_from_its_checkpoint_nothing_is_measured_again(tmp_path, caplog):
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=[PruneAtInit(scorer="magnitude", sparsity=0.5, verbose=False), checkpoint])
    trainer.fit(MLP())
    logger = MemoryLogger()
    diagnostics = PruningDiagnostics()
    fit(MLP(), [PruneAtInit(scorer="magnitude", sparsity=0.5, verbose=False), diagnostics], [logger], tmp_path,
        ckpt_path=checkpoint.last_model_path, max_steps=4)
    keys = {k for _, m in logger.rows for k in m}
    assert not {k for k in keys if k.startswith(("jacobian_sv/", "pruning/density/", "pruning/sparsity/"))}
    assert "PruneAtInit: kept the masks restored from the checkpoint" in caplog.text
    assert "PruningDiagnostics: PruneAtInit did not prune in this fit" in caplog.text


# ---------------------------------------------------------------------- training does not notice


class NoisyMLP(MLP):
    """Dropout, a shuffled loader and a counter the batch hooks move: anything drawn or changed shows."""

    def __init__(self):
        super().__init__()
        self.batches_seen = 0

    def forward(self, x):
        return F.dropout(self.net(x), 0.3, self.training)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.batches_seen += 1
        return batch

    def train_dataloader(self):
        return DataLoader(random_data(), batch_size=8, shuffle=True)


@pytest.mark.parametrize("mode", ["alone", "driven"])
def test_training_after_diagnostics_is_bit_identical(tmp_path, mode):
    def run(with_diagnostics):
        torch.manual_seed(0)
        model = NoisyMLP()
        diagnostics = [PruningDiagnostics()] if with_diagnostics else []
        if mode == "alone":
            hand_prune(model)
            callbacks = diagnostics
        else:
            callbacks = [DrivingPruner(*diagnostics), *diagnostics]
        fit(model, callbacks, [MemoryLogger()], tmp_path, max_steps=-1, max_epochs=2, limit_train_batches=3)
        return model, torch.random.get_rng_state()

    (plain, plain_rng), (diagnosed, diagnosed_rng) = run(False), run(True)
    assert plain.batches_seen == diagnosed.batches_seen == 6
    for (name, a), b in zip(plain.state_dict().items(), diagnosed.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(plain_rng, diagnosed_rng)


# ---------------------------------------------------------------------- inputs and errors


class TokenModel(LightningModule):
    """Token ids in, next-token logits out: no input-output Jacobian."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 20)

    def forward(self, tokens):
        return self.fc(self.embed(tokens))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        tokens = torch.randint(0, 20, (8, 6), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(tokens, tokens.roll(-1, 1)), batch_size=4)


def test_log_jacobian_on_a_token_model_is_a_clear_error_and_the_rest_works_without_it(tmp_path):
    torch.manual_seed(0)
    model = TokenModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"PruningDiagnostics\(log_jacobian=True\) takes the Jacobian .* TokenModel gets"
                                         r" torch.int64 tensors .*: set log_jacobian=False"):
        fit(model, [PruningDiagnostics()], False, tmp_path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

    logger = MemoryLogger()
    fit(model, [PruningDiagnostics(log_jacobian=False)], [logger], tmp_path)  # the input shape from the token batch
    logged = logged_at(logger, 0)
    assert logged["pruning/density/fc.weight"] == 1.0 and logged["pruning/sparsity/effective"] == 0.0


def test_keyword_batches_need_an_input_shape_and_take_gaussian_probes_of_it(tmp_path):
    with pytest.raises(ValueError, match=r"PruningDiagnostics\(log_jacobian=True\) needs the model's input shape: set"
                                         r" `example_input_array` on MLP, pass `input_shape=\[...\]`"):
        fit(MLP(example_input=False, batches="dicts"), [PruningDiagnostics()], False, tmp_path)
    with pytest.raises(ValueError, match=r"PruningDiagnostics\(log_effective_sparsity=True\) needs the model's input shape"):
        fit(MLP(example_input=False, batches="dicts"), [PruningDiagnostics(log_jacobian=False)], False, tmp_path)
    logger = MemoryLogger()
    fit(MLP(example_input=False, batches="dicts"), [PruningDiagnostics(input_shape=[8], num_probes=3)], [logger], tmp_path)
    logged = logged_at(logger, 0)
    assert logged["jacobian_sv/pruned/max"] >= logged["jacobian_sv/pruned/mean"] > 0
    assert logged["pruning/sparsity/nominal"] == 0.0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"num_probes": 0}, r"`num_probes` must be a positive integer, got 0"),
    ({"num_probes": 2.5}, r"`num_probes` must be a positive integer, got 2.5"),
    ({"num_probes": True}, r"`num_probes` must be a positive integer, got True"),
    ({"input_shape": []}, r"`input_shape` must be a non-empty list of positive ints without the batch dimension, got \[\]"),
    ({"input_shape": [3, -1]}, r"`input_shape` must be a non-empty list of positive ints.*got \[3, -1\]"),
    ({"input_shape": "3x32x32"}, r"`input_shape` must be a non-empty list.*got '3x32x32'"),
    ({"log_jacobian": "yes"}, r"`log_jacobian` must be True or False, got 'yes'"),
    ({"log_per_tensor": 1}, r"`log_per_tensor` must be True or False, got 1"),
])
def test_bad_arguments_fail_at_construction_naming_argument_value_and_what_is_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruningDiagnostics(**kwargs)


def test_all_off_warns_that_nothing_is_logged():
    with pytest.warns(UserWarning, match="logs nothing"):
        PruningDiagnostics(log_jacobian=False, log_effective_sparsity=False, log_per_tensor=False)


# ---------------------------------------------------------------------- LightningCLI


CONFIG = """
trainer:
  callbacks:
    - class_path: lightning_synflow.lightning.diagnostics.PruningDiagnostics
      init_args: {log_jacobian: false, input_shape: [3, 32, 32], num_probes: 4}
"""


def test_built_from_a_lightning_cli_config_with_its_docstring_as_help():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--trainer.callbacks", type=list[Callback])  # as LightningCLI types Trainer(callbacks=...)
    config = parser.parse_string(CONFIG)
    (diagnostics,) = parser.instantiate(config).trainer.callbacks
    assert isinstance(diagnostics, PruningDiagnostics)
    assert (diagnostics.log_jacobian, diagnostics.log_effective_sparsity, diagnostics.log_per_tensor) == (False, True, True)
    assert (diagnostics.input_shape, diagnostics.num_probes) == ([3, 32, 32], 4)

    bad = yaml.safe_load(CONFIG)
    bad["trainer"]["callbacks"][0]["init_args"]["num_probes"] = 0
    with pytest.raises(ValueError, match=r"`num_probes` must be a positive integer, got 0"):
        parser.instantiate(parser.parse_string(yaml.safe_dump(bad)))
    bad["trainer"]["callbacks"][0]["init_args"]["num_probes"] = "many"
    with pytest.raises(jsonargparse.ArgumentError, match="num_probes"):
        parser.parse_string(yaml.safe_dump(bad))

    helper = jsonargparse.ArgumentParser()
    helper.add_class_arguments(PruningDiagnostics, "diagnostics")
    text = " ".join(helper.format_help().split())
    for line in ("Log a pruned network's Jacobian spectrum, per-tensor densities and effective sparsity",
                 "--diagnostics.num_probes NUM_PROBES How many examples the Jacobian is taken on",
                 "--diagnostics.log_per_tensor {true,false} Log each masked tensor's density"):
        assert line in text
