import logging
import re

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from torch import nn

from lightning_synflow import PruneAtInit, Scorer, SynFlow, num_kept
from lightning_helpers import MLP, AssertPrunedStayZero, MemoryLogger

N_PRUNABLE = 8 * 32 + 32 * 32 + 32 * 4


class CountingSynFlow(SynFlow):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.input_shapes = []

    def score_round(self, model, living, state, context):  # the pruning loop's call, once per round
        self.calls += 1
        self.input_shapes.append(tuple(context.example_input.shape[1:]))
        return super().score_round(model, living, state, context)


def fit(model, pruner, tmp_path, *, steps=6, **trainer_kwargs):
    checker = AssertPrunedStayZero(pruner)
    kwargs = dict(
        max_steps=steps, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    kwargs.update(trainer_kwargs)
    trainer = Trainer(callbacks=[pruner, checker, *kwargs.pop("callbacks", [])], **kwargs)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model)
    return trainer, checker, initial


def assert_kept_weights_trained(model, pruner, initial):
    params = dict(model.named_parameters())
    moved = [not torch.equal(params[n][m], initial[n][m]) for n, m in pruner.masks.items()]
    assert all(moved), "training did not update the kept weights"


@pytest.mark.parametrize(("optimizer", "trainer_kwargs"), [
    ("drift", {}),  # moves pruned weights regardless of their (masked) gradient
    ("sgd", {}),
    ("adam", {}),
    ("adamw", {}),
    ("sgd", {"accumulate_grad_batches": 3}),
    ("sgd", {"gradient_clip_val": 0.05}),
    ("adamw", {"precision": "bf16-mixed"}),
    ("adam", {"plugins": [MixedPrecision("16-mixed", "cpu")]}),
])
def test_pruned_weights_and_their_optimizer_state_stay_zero(tmp_path, optimizer, trainer_kwargs):
    torch.manual_seed(0)
    model = MLP(optimizer=optimizer)
    pruner = PruneAtInit(sparsity=0.9, iterations=10)
    trainer, checker, initial = fit(model, pruner, tmp_path, **trainer_kwargs)
    assert trainer.global_step == 6
    # 8 batches an epoch; with accumulation over 3 the epoch's last batch also steps: 6 steps = 16 batches
    assert checker.checks == {1: 6, 3: 16}[trainer_kwargs.get("accumulate_grad_batches", 1)]
    assert sum(int(m.sum()) for m in pruner.masks.values()) == num_kept(0.1, N_PRUNABLE)
    assert_kept_weights_trained(model, pruner, initial)


def test_manual_optimization_with_two_optimizers(tmp_path):
    torch.manual_seed(0)
    model = MLP(manual=True)
    pruner = PruneAtInit(sparsity=0.9, iterations=10)
    trainer, checker, initial = fit(model, pruner, tmp_path)
    assert checker.checks == 3  # in manual optimization each optimizer's step counts in global_step
    assert_kept_weights_trained(model, pruner, initial)


def test_skipped_amp_steps_keep_masks(tmp_path):
    torch.manual_seed(0)
    model = MLP(optimizer="sgd", inf_loss_at_step=2)
    pruner = PruneAtInit(sparsity=0.9, iterations=10)
    # Lightning turns precision="16-mixed" into bf16 on CPU; the plugin keeps fp16 with a real GradScaler.
    trainer, checker, initial = fit(model, pruner, tmp_path, plugins=[MixedPrecision("16-mixed", "cpu")])
    scaler = trainer.precision_plugin.scaler
    assert scaler.get_scale() < 2.0 ** 16  # the scaler did skip (at least) the infinite step
    assert checker.checks == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_keeps_plain_keys_loads_strictly_and_resume_does_not_rescore(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    pruner = PruneAtInit(sparsity=0.95, iterations=10)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit(model, pruner, tmp_path, enable_checkpointing=True, callbacks=[ckpt_cb])
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)

    assert set(ckpt["state_dict"]) == set(MLP().state_dict())  # no weight_orig / weight_mask
    plain = MLP()
    plain.load_state_dict(ckpt["state_dict"], strict=True)
    params = dict(plain.named_parameters())
    state = ckpt["callbacks"][pruner.state_key]
    assert all(m.dtype == torch.bool for m in state["masks"].values())
    assert all((params[n][~m] == 0).all() for n, m in state["masks"].items())

    spy = CountingSynFlow()
    resumed = PruneAtInit(scorer=spy, sparsity=0.95)
    trainer = Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[resumed, AssertPrunedStayZero(resumed)])
    trainer.fit(MLP(), ckpt_path=tmp_path / "last.ckpt")
    assert spy.calls == 0
    assert trainer.global_step == 10
    assert all(torch.equal(resumed.masks[n].cpu(), m) for n, m in state["masks"].items())


def test_restored_masks_that_do_not_fit_the_model_are_rejected(tmp_path):
    torch.manual_seed(0)
    pruner = PruneAtInit(sparsity=0.9, iterations=2)
    fit(MLP(), pruner, tmp_path, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    ckpt["callbacks"][pruner.state_key]["masks"]["net.2.weight"] = torch.ones(3, 3, dtype=torch.bool)
    torch.save(ckpt, tmp_path / "bad.ckpt")
    trainer = Trainer(max_steps=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[PruneAtInit(sparsity=0.9)])
    with pytest.raises(ValueError, match=r"masks restored from the checkpoint do not fit MLP: mask 'net.2.weight' has shape \(3, 3\) but the parameter has shape \(32, 32\)"):
        trainer.fit(MLP(), ckpt_path=tmp_path / "bad.ckpt")


def test_logs_pruning_metrics_and_measured_sparsity_to_every_logger(tmp_path, caplog):
    torch.manual_seed(0)
    loggers = [MemoryLogger(), MemoryLogger()]
    with pytest.warns(DeprecationWarning, match=r"PruneAtInit\(log_per_tensor=True\) is deprecated"):
        pruner = PruneAtInit(sparsity=0.9, iterations=5, log_per_tensor=True)  # today's YAML keeps working
    with caplog.at_level(logging.INFO):
        fit(MLP(), pruner, tmp_path, steps=16, logger=loggers, log_every_n_steps=1)
    kept = num_kept(0.1, N_PRUNABLE)
    for logger in loggers:
        assert logger.values("pruning/kept") == [kept]
        assert logger.values("pruning/total") == [N_PRUNABLE]
        assert logger.values("pruning/sparsity") == [pytest.approx(1 - kept / N_PRUNABLE)]
        assert logger.values("pruning/density") == [pytest.approx(kept / N_PRUNABLE)]
        assert logger.values("pruning/collapsed") == [0]
        assert logger.values("pruning/time_s")[0] > 0
        assert logger.values("pruning/density/net.0.weight") == [pytest.approx(int(pruner.masks["net.0.weight"].sum()) / 256)]
        # two epochs of 8 batches, each followed by the sparsity read off the weights
        assert logger.values("pruning/measured_sparsity") == [pytest.approx(1 - kept / N_PRUNABLE)] * 2
    assert "net.2.weight" in caplog.text and f"sparsity {1 - kept / N_PRUNABLE:.4%}" in caplog.text


def test_collapse_is_warned_once(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning) as record:
        fit(MLP(), PruneAtInit(scorer="magnitude", sparsity=0.997, distribution="uniform"), tmp_path, steps=2)
    collapsed = [str(w.message) for w in record if "collapsed" in str(w.message)]
    assert len(collapsed) == 1, collapsed
    assert re.search(r"1 tensor\(s\) collapsed \(no weight kept\): \['net.4.weight'\]", collapsed[0])


@pytest.mark.parametrize("enabled", [True, False])
def test_progress_bar_follows_the_trainer(tmp_path, capsys, enabled):
    fit(MLP(), PruneAtInit(sparsity=0.5, iterations=3), tmp_path, steps=1, enable_progress_bar=enabled)
    assert ("pruning (synflow)" in capsys.readouterr().err) == enabled


@pytest.mark.parametrize(("model_kwargs", "pruner_kwargs", "shape"), [
    ({"example_input": True}, {}, (8,)),
    ({"example_input": False}, {"input_shape": [8]}, (8,)),
    ({"example_input": False}, {}, (8,)),  # from the first training batch
])
def test_input_shape_comes_from_the_module_the_argument_or_the_first_batch(tmp_path, model_kwargs, pruner_kwargs, shape):
    spy = CountingSynFlow()
    fit(MLP(**model_kwargs), PruneAtInit(scorer=spy, sparsity=0.5, iterations=2, **pruner_kwargs), tmp_path, steps=2)
    assert spy.input_shapes == [shape, shape]


def test_missing_input_shape_says_what_to_provide(tmp_path):
    model = MLP(example_input=False, batches="dicts")
    with pytest.raises(ValueError, match=r"needs the model's input shape: set `example_input_array` on MLP, pass `input_shape=\[...\]`"):
        fit(model, PruneAtInit(sparsity=0.5), tmp_path)
    assert all((p != 0).all() for n, p in model.named_parameters() if n.endswith("weight"))  # nothing half-pruned


def test_selection_arguments_from_yaml_style_strings(tmp_path):
    pruner = PruneAtInit(sparsity=0.9, iterations=2, exclude_names=["net.4.*"])
    fit(MLP(), pruner, tmp_path, steps=1)
    assert list(pruner.masks) == ["net.0.weight", "net.2.weight"]
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.9, include_types=["Linear"], exclude_types=["Linear"])
    with pytest.raises(ValueError, match=r"found no prunable parameters in MLP with include_types=\['Linear'\], exclude_types=\['Linear'\]"):
        fit(MLP(), pruner, tmp_path, steps=1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sparsity": 1.5}, r"`sparsity` must be a number in \[0, 1\).*got 1.5"),
    ({"sparsity": 0.5, "compression": 10}, r"exactly one of `sparsity`.*`compression`"),
    ({}, r"exactly one of"),
    ({"scorer": "synflw", "sparsity": 0.5}, r"`scorer` must be one of \[.*'synflow'.*\].*got 'synflw'"),
    ({"sparsity": 0.5, "iterations": 0}, r"`iterations` must be a positive integer, got 0"),
    ({"sparsity": 0.5, "schedule": "cosine"}, r"`schedule` must be one of \('exponential', 'linear'\), got 'cosine'"),
    ({"sparsity": 0.5, "distribution": "local"}, r"`distribution` must be one of \['global', 'uniform', 'erk'\].*got 'local'"),
    ({"sparsity": 0.5, "input_shape": [3, -1]}, r"`input_shape` must be a non-empty list of positive ints.*got \[3, -1\]"),
])
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneAtInit(**kwargs)


def test_masks_property_is_none_before_fit_and_keyed_by_module_names(tmp_path):
    pruner = PruneAtInit(sparsity=0.5, iterations=2)
    assert pruner.masks is None
    fit(MLP(), pruner, tmp_path, steps=1)
    assert list(pruner.masks) == ["net.0.weight", "net.2.weight", "net.4.weight"]
