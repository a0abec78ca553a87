"""Issue 24, items 2-5: what each Trainer entry point does with a checkpoint's masks, and which checkpoints are
refused before any weight changes."""

import re
import warnings

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_synflow import PruneAtInit, load_shrunk, num_kept
from lightning_helpers import MLP, MemoryLogger, random_data

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
N_PRUNABLE = 8 * 32 + 32 * 32 + 32 * 4
NAMES = ["net.0.weight", "net.2.weight", "net.4.weight"]


class EvalMLP(MLP):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", torch.nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])


def fit(model, pruner, root, *, ckpt_path=None, steps=1, save=False, logger=False, callbacks=(), **kwargs):
    saver = [ModelCheckpoint(dirpath=root, save_last=True, **kwargs.pop("checkpoint", {}))] if save else []
    trainer = Trainer(max_steps=steps, default_root_dir=root, logger=logger, enable_checkpointing=save,
                      callbacks=[pruner, *saver, *callbacks], **QUIET, **kwargs)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def synflow_checkpoint(tmp_path_factory):
    """A checkpoint of MLP pruned by SynFlow to density 0.1 (weights of one step)."""
    root = tmp_path_factory.mktemp("synflow")
    torch.manual_seed(0)
    fit(MLP(), PruneAtInit(sparsity=0.9, iterations=3, distribution={"net.0.*": 0.5}), root, save=True)
    return root / "last.ckpt"


def kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def edited(checkpoint, tmp_path, edit):
    ckpt = torch.load(checkpoint, weights_only=False)
    edit(ckpt["callbacks"]["PruneAtInit"])
    torch.save(ckpt, tmp_path / "edited.ckpt")
    return tmp_path / "edited.ckpt", ckpt


# ---------------------------------------------------------------- 2. validate / test / predict do not leak


@pytest.mark.parametrize("entry", ["validate", "test", "predict"])
def test_a_checkpoint_read_by_validate_test_or_predict_does_not_leak_into_a_later_fit(tmp_path, synflow_checkpoint, entry):
    torch.manual_seed(0)
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.5)
    trainer = Trainer(max_steps=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False, callbacks=[pruner], **QUIET)
    getattr(trainer, entry)(EvalMLP(), dataloaders=DataLoader(random_data(n=8), batch_size=8), ckpt_path=synflow_checkpoint)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*PruneAtInit.*")  # no "resuming" warning: nothing is resumed
        trainer.fit(EvalMLP())
    assert kept(pruner.masks) == num_kept(0.5, N_PRUNABLE)  # scored now, at the density asked for


def test_only_the_fit_that_resumes_uses_the_checkpoints_masks(tmp_path, synflow_checkpoint):
    stored = torch.load(synflow_checkpoint, weights_only=False)["callbacks"]["PruneAtInit"]["masks"]
    pruner = PruneAtInit(sparsity=0.9, iterations=3, distribution={"net.0.*": 0.5})
    fit(MLP(), pruner, tmp_path, ckpt_path=synflow_checkpoint, steps=2)
    assert all(torch.equal(pruner.masks[n], m) for n, m in stored.items())


# ---------------------------------------------------------------- 3. stored masks are checked


def _weights_of(checkpoint):
    return torch.load(checkpoint, weights_only=False)["state_dict"]


@pytest.mark.parametrize(("edit", "match"), [
    (lambda s: s["masks"].pop("net.2.weight"), r"missing \(they would train dense\): \['net.2.weight'\]"),
    (lambda s: s["masks"].update({"net.0.bias": torch.zeros(32, dtype=torch.bool)}),
     r"not prunable under the selection \(a bias or norm would be zeroed\): \['net.0.bias'\]"),
    (lambda s: s["masks"].clear(), r"missing \(they would train dense\): \['net.0.weight', 'net.2.weight', 'net.4.weight'\]"),
    (lambda s: s.update(masks=None), r"`masks` must be a mapping of parameter name to bool tensor, got NoneType"),
    (lambda s: s.update(masks=[torch.ones(3, dtype=torch.bool)]), r"`masks` must be a mapping of parameter name to bool tensor, got list"),
    (lambda s: s["masks"].update({"net.0.weight": s["masks"]["net.0.weight"].float()}), r"mask 'net.0.weight' must be a bool tensor"),
], ids=["missing", "extra-bias", "empty", "none", "list", "float"])
def test_restored_masks_are_refused_before_any_weight_changes(tmp_path, synflow_checkpoint, edit, match):
    path, _ = edited(synflow_checkpoint, tmp_path, edit)
    model = MLP()
    with pytest.raises(ValueError, match=match):
        fit(model, PruneAtInit(sparsity=0.9, iterations=3, distribution={"net.0.*": 0.5}), tmp_path, ckpt_path=path)
    expected = _weights_of(synflow_checkpoint)  # what Lightning restored, untouched by the callback
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_a_collapsed_restored_mask_is_warned_as_in_a_fresh_pruning(tmp_path, synflow_checkpoint):
    path, _ = edited(synflow_checkpoint, tmp_path, lambda s: s["masks"]["net.4.weight"].zero_())
    with pytest.warns(UserWarning, match=r"1 tensor\(s\) collapsed \(no weight kept\): \['net.4.weight'\]"):
        fit(MLP(), PruneAtInit(sparsity=0.9, iterations=3, distribution={"net.0.*": 0.5}), tmp_path, ckpt_path=path, steps=2)


def test_masks_of_another_stored_selection_are_kept_with_a_warning_naming_the_difference(tmp_path):
    torch.manual_seed(0)
    fit(MLP(), PruneAtInit(scorer="magnitude", sparsity=0.5, exclude_names=["net.4.*"]), tmp_path, save=True)
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.5)
    with pytest.warns(UserWarning, match=(
        r"another selection of tensors \(exclude_names: checkpoint \['net.4.\*'\], callback \[\]\); they are kept as"
        r" stored: left dense, though this selection would prune them: \['net.4.weight'\]"
    )):
        fit(MLP(), pruner, tmp_path, ckpt_path=tmp_path / "last.ckpt", steps=2)
    assert list(pruner.masks) == ["net.0.weight", "net.2.weight"]


@pytest.fixture(scope="module")
def channel_checkpoint(tmp_path_factory):
    """A checkpoint of MLP with half its 64 hidden channels pruned (masks on net.0 and net.2, weights and biases)."""
    root = tmp_path_factory.mktemp("channel")
    torch.manual_seed(0)
    fit(MLP(), PruneAtInit(scorer="magnitude", sparsity=0.5, granularity="channel"), root, save=True)
    return root / "last.ckpt"


def _invert(masks, name):
    masks[name] = ~masks[name]


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m.pop("net.2.weight"), r"missing \(they would train dense\): \['net.2.weight'\]"),
    (lambda m: m.pop("net.0.bias"), r"missing \(they would train dense\): \['net.0.bias'\]"),
    (lambda m: m.update({"net.4.bias": torch.zeros(4, dtype=torch.bool)}), r"channel pruning never masks them .*: \['net.4.bias'\]"),
    (lambda m: m.update({"net.4.weight": torch.tensor([True, False, True, True])[:, None].expand(4, 32).clone()}),
     r"channel pruning never masks them .*: \['net.4.weight'\]"),
    (lambda m: _invert(m, "net.2.bias"), r"keeping other channels than the rest of their coupled group .*: \['net.2.bias'\]"),
], ids=["weight-dropped", "bias-dropped", "output-bias", "output-rows", "inverted-bias"])
def test_restored_channel_masks_must_be_ones_channel_pruning_makes(tmp_path, channel_checkpoint, edit, match):
    path, _ = edited(channel_checkpoint, tmp_path, lambda s: edit(s["masks"]))
    model = MLP()
    with pytest.raises(ValueError, match=match):
        fit(model, PruneAtInit(scorer="magnitude", sparsity=0.5, granularity="channel"), tmp_path, ckpt_path=path)
    expected = _weights_of(channel_checkpoint)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_unedited_channel_masks_are_resumed(tmp_path, channel_checkpoint):
    stored = torch.load(channel_checkpoint, weights_only=False)["callbacks"]["PruneAtInit"]["masks"]
    assert list(stored) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.5, granularity="channel")
    fit(MLP(example_input=False), pruner, tmp_path, ckpt_path=channel_checkpoint, steps=2)  # traced on a training batch
    assert pruner.masks.keys() == stored.keys() and all(torch.equal(pruner.masks[n], m) for n, m in stored.items())


@pytest.mark.parametrize(("granularity", "missing"), [
    ("weight", "['net.5.weight']"),
    ("channel", "['net.4.weight', 'net.4.bias']"),  # the old output layer is a hidden one now
])
def test_a_model_that_gained_a_prunable_layer_is_not_refitted_with_its_old_masks(tmp_path, granularity, missing):
    model = MLP()
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.5, granularity=granularity)
    fit(model, pruner, tmp_path)
    model.net.append(torch.nn.Linear(4, 4))  # e.g. a new head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"the masks of its previous fit do not cover \(they would train dense\): " + re.escape(missing)):
        fit(model, pruner, tmp_path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_dense_checkpoint_resumed_with_masks_of_a_previous_fit_is_warned(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(max_steps=1, default_root_dir=tmp_path, logger=False, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], **QUIET)
    trainer.fit(MLP())  # no pruning state in it
    model, pruner = MLP(), PruneAtInit(scorer="magnitude", sparsity=0.5)
    fit(model, pruner, tmp_path / "first")
    with pytest.warns(UserWarning, match=r"holds no pruning state: the weights it restored .* are masked now with the masks of this model's previous fit"):
        fit(model, pruner, tmp_path / "again", ckpt_path=tmp_path / "last.ckpt", steps=2)


# ---------------------------------------------------------------- 4. checkpoints tell the truth


def test_a_resaved_checkpoint_describes_its_masks_and_a_resumed_run_logs_them_again(tmp_path, synflow_checkpoint):
    logger = MemoryLogger()
    with pytest.warns(UserWarning, match=r"scorer: checkpoint 'synflow', callback 'magnitude'"):
        fit(MLP(), PruneAtInit(scorer="magnitude", sparsity=0.5), tmp_path, ckpt_path=synflow_checkpoint, steps=2,
            save=True, logger=logger)
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]["PruneAtInit"]
    assert state["scorer"] == "synflow" and state["density"] == pytest.approx(0.1)
    assert kept(state["masks"]) == kept(torch.load(synflow_checkpoint, weights_only=False)["callbacks"]["PruneAtInit"]["masks"])
    assert logger.values("pruning/kept") == [kept(state["masks"])]
    assert logger.values("pruning/total") == [N_PRUNABLE]
    with pytest.warns(UserWarning, match=r"scorer: checkpoint 'synflow', callback 'magnitude'; density: checkpoint 0.1, callback 0.5"):
        fit(MLP(), PruneAtInit(scorer="magnitude", sparsity=0.5), tmp_path / "again", ckpt_path=tmp_path / "last.ckpt", steps=3)


def test_float_noise_between_stored_and_given_arguments_is_no_difference(tmp_path, synflow_checkpoint):
    # sparsity=0.9 stored final_density=0.09999999999999998 in the distribution's description; compression=10 says 0.1
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*other arguments.*")
        fit(MLP(), PruneAtInit(compression=10, iterations=3, distribution={"net.0.*": 0.5}), tmp_path, ckpt_path=synflow_checkpoint, steps=2)


# ---------------------------------------------------------------- 5. other holes


def test_a_weights_only_checkpoint_is_refused_before_any_weight_changes(tmp_path):
    torch.manual_seed(0)
    fit(MLP(), PruneAtInit(sparsity=0.9, iterations=3), tmp_path, save=True, checkpoint={"save_weights_only": True})
    model = MLP()
    with pytest.raises(ValueError, match=r"holds the model's weights alone \(saved with ModelCheckpoint\(save_weights_only=True\)\).*Nothing was pruned"):
        fit(model, PruneAtInit(scorer="magnitude", sparsity=0.5), tmp_path, ckpt_path=tmp_path / "last.ckpt", steps=2)
    expected = _weights_of(tmp_path / "last.ckpt")
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_names_and_types_that_match_nothing_are_told(tmp_path):
    with pytest.warns(UserWarning, match=r"`exclude_names` pattern\(s\) \['fc.\*'\] match no parameter name of MLP"):
        fit(MLP(), PruneAtInit(scorer="magnitude", sparsity=0.5, exclude_names=["fc.*"]), tmp_path)
    for key in ("include_types", "exclude_types"):
        model = MLP()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match=rf"`{key}` \['Conv2D'\]: no layer of MLP is of that type; allowed are .*'Linear'"):
            fit(model, PruneAtInit(scorer="magnitude", sparsity=0.5, **{key: ["Linear", "Conv2D"] if key == "include_types" else ["Conv2D"]}), tmp_path)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_more_batches_than_the_loader_has_is_said_once(tmp_path):
    model = MLP()
    model.train_dataloader = lambda: DataLoader(random_data(n=16), batch_size=8)
    with pytest.warns(UserWarning) as record:
        fit(model, PruneAtInit(scorer="snip", sparsity=0.5, num_batches=10), tmp_path)
    said = [str(w.message) for w in record if "num_batches" in str(w.message)]
    assert said == ["PruneAtInit(scorer='snip'): `num_batches` is 10, but the training loader gives 2 batch(es) per rank; scoring uses those 2"]


def test_a_layer_frozen_since_the_checkpoint_keeps_its_mask(tmp_path, synflow_checkpoint):
    stored = torch.load(synflow_checkpoint, weights_only=False)["callbacks"]["PruneAtInit"]["masks"]
    model = MLP()
    model.net[0].requires_grad_(False)  # fine-tuning: the first layer frozen on resume
    pruner = PruneAtInit(sparsity=0.9, iterations=3, distribution={"net.0.*": 0.5})
    fit(model, pruner, tmp_path, ckpt_path=synflow_checkpoint, steps=2)
    assert list(pruner.masks) == NAMES and torch.equal(pruner.masks["net.0.weight"], stored["net.0.weight"])


class SubclassedPruner(PruneAtInit):
    """A user's own PruneAtInit: Lightning stores its state under this class's name."""


@pytest.fixture(scope="module")
def shrunk_checkpoint(tmp_path_factory):
    """A checkpoint of MLP shrunk to half its hidden channels by a subclass of PruneAtInit."""
    root = tmp_path_factory.mktemp("shrunk")
    torch.manual_seed(0)
    fit(MLP(), SubclassedPruner(scorer="magnitude", sparsity=0.5, granularity="channel", shrink=True), root, save=True)
    return root / "last.ckpt"


def test_load_shrunk_finds_the_state_of_a_pruneatinit_subclass(shrunk_checkpoint):
    checkpoint = torch.load(shrunk_checkpoint, weights_only=False)
    assert "SubclassedPruner" in checkpoint["callbacks"]
    model = load_shrunk(MLP(), shrunk_checkpoint)
    model.load_state_dict(checkpoint["state_dict"])  # strict: every name and shape
    assert model.net[0].out_features + model.net[2].out_features == 32  # half of the 64 hidden channels


def test_a_shrunk_checkpoint_that_cannot_load_leaves_the_model_unshrunk(tmp_path, shrunk_checkpoint):
    model = EvalMLP()
    model.extra = torch.nn.Linear(2, 2)  # a layer the checkpoint does not hold
    shapes = {n: p.shape for n, p in model.named_parameters()}
    trainer = Trainer(default_root_dir=tmp_path, logger=False, callbacks=[SubclassedPruner(scorer="magnitude", sparsity=0.5, granularity="channel", shrink=True)], **QUIET)
    with pytest.raises(ValueError, match=r"holds a shrunk EvalMLP whose weights do not load into this one \(missing from the checkpoint: \['extra.bias', 'extra.weight'\]; not in the model: \[\]\); the model was not shrunk"):
        trainer.validate(model, dataloaders=DataLoader(random_data(n=8), batch_size=8), ckpt_path=shrunk_checkpoint)
    assert {n: p.shape for n, p in model.named_parameters()} == shapes

