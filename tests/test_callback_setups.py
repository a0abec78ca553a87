"""The Trainer set-ups users bring: true half precision, several loaders, a callback that leaves no trace,
a life cycle over several fits and resumes, and strategies the callback refuses."""

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceXLAStrategy
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_helpers import MLP, MemoryLogger, random_data
from lightning_synflow import PruneAtInit, PruningDiagnostics, SynFlow, available_scorers, num_kept
from lightning_synflow.lightning.strategies import check_strategy

SPAWN_SCRIPT = Path(__file__).parent / "scripts" / "spawn_fit.py"
QUIET = dict(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False)


class Indexed(Dataset):
    """Random (x, y) pairs that also say which example they are, so that the order training sees is known."""

    def __init__(self, n=48):
        self.data = random_data(n)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x, y, i


class Busy(LightningModule):
    """A module whose training step has every side effect scoring must not leave behind: dropout (RNG), a
    torchmetrics update, a counter, a list of what it saw, a buffer it moves, and logging."""

    def __init__(self, num_workers=0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
        self.accuracy = MulticlassAccuracy(num_classes=4)
        self.register_buffer("examples_seen", torch.zeros((), dtype=torch.long))
        self.steps = 0
        self.seen = []
        self.num_workers = num_workers
        self.example_input_array = torch.zeros(1, 8)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        logits = self(x)
        self.accuracy(logits, y)
        self.steps += 1
        self.seen.extend(index.tolist())
        self.examples_seen += len(y)
        self.log("train_acc", self.accuracy)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        workers = dict(num_workers=self.num_workers, persistent_workers=True) if self.num_workers else {}
        return DataLoader(Indexed(), batch_size=8, shuffle=True, **workers)


class ChildProcesses(Callback):
    """The worker processes alive when training starts: the loop's own persistent loader workers."""

    def on_train_start(self, trainer, pl_module):
        self.children = len(multiprocessing.active_children())


def run_busy(tmp_path, callbacks, num_workers=0):
    seed_everything(0)
    model = Busy(num_workers)
    logger = MemoryLogger()
    trainer = Trainer(max_steps=9, logger=logger, log_every_n_steps=1, default_root_dir=tmp_path,
                      enable_checkpointing=False, callbacks=callbacks, **QUIET)
    trainer.fit(model)
    logged = [(step, {k: v for k, v in m.items() if not k.startswith("pruning/")}) for step, m in logger.rows]
    return model, [(s, m) for s, m in logged if m]


@pytest.mark.parametrize("scorer", available_scorers())
def test_at_sparsity_zero_every_scorer_leaves_the_run_bit_identical(tmp_path, scorer):
    reference, reference_logs = run_busy(tmp_path, [])
    model, logs = run_busy(tmp_path, [PruneAtInit(scorer=scorer, sparsity=0.0, iterations=2, num_batches=2)])
    assert model.seen == reference.seen  # the same data in the same order
    assert model.steps == reference.steps == 9 and int(model.examples_seen) == int(reference.examples_seen) == 72
    assert logs == reference_logs  # loss and torchmetrics accuracy, step by step
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name


def test_scoring_with_worker_processes_leaves_none_behind_and_the_run_unchanged(tmp_path):
    reference_probe, probe = ChildProcesses(), ChildProcesses()
    reference, reference_logs = run_busy(tmp_path, [reference_probe], num_workers=2)
    model, logs = run_busy(tmp_path, [PruneAtInit(scorer="snip", sparsity=0.0, num_batches=3), probe], num_workers=2)
    assert probe.children == reference_probe.children == 2
    assert model.seen == reference.seen and logs == reference_logs
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)


class TwoLoaders(MLP):
    """Trains on a dict or a list of loaders: ``training_step`` gets the combined batch."""

    def __init__(self, combined):
        super().__init__()
        self.combined = combined

    def training_step(self, batch, batch_idx):
        parts = batch.values() if isinstance(batch, dict) else batch
        return sum(F.cross_entropy(self(x), y) for x, y in parts)

    def train_dataloader(self):
        loaders = [DataLoader(random_data(seed=s), batch_size=8) for s in (0, 1)]
        return dict(zip(("a", "b"), loaders)) if self.combined == "dict" else loaders


@pytest.mark.parametrize("combined", ["dict", "list"])
@pytest.mark.parametrize("scorer", ["snip", "grasp"])
def test_data_driven_scorers_see_the_combined_batch_of_several_loaders(tmp_path, combined, scorer):
    torch.manual_seed(0)
    model = TwoLoaders(combined)
    pruner = PruneAtInit(scorer=scorer, sparsity=0.9)
    Trainer(max_steps=2, logger=False, enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[pruner], **QUIET).fit(model)
    assert sum(int(m.sum()) for m in pruner.masks.values()) == num_kept(0.1, 8 * 32 + 32 * 32 + 32 * 4)


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "bf16-mixed"])
@pytest.mark.parametrize("scorer", ["snip", "grasp", "force", "synflow"])
def test_scoring_in_true_half_precision_sees_the_batch_as_training_does(tmp_path, precision, scorer):
    torch.manual_seed(0)
    model = MLP()
    pruner = PruneAtInit(scorer=scorer, sparsity=0.9, iterations=2)
    Trainer(max_steps=2, precision=precision, logger=False, enable_checkpointing=False, default_root_dir=tmp_path,
            callbacks=[pruner], **QUIET).fit(model)
    assert sum(int(m.sum()) for m in pruner.masks.values()) == num_kept(0.1, 8 * 32 + 32 * 32 + 32 * 4)
    params = dict(model.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in pruner.masks.items())


class CountingSynFlow(SynFlow):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def score_round(self, model, living, state, context):  # the pruning loop's call, once per round
        self.calls += 1
        return super().score_round(model, living, state, context)


def fit_once(model, pruner, tmp_path, ckpt_path=None, callbacks=(), **kwargs):
    settings = dict(max_steps=2, logger=False, enable_checkpointing=False, default_root_dir=tmp_path, **QUIET)
    trainer = Trainer(callbacks=[pruner, *callbacks], **{**settings, **kwargs})
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer


def test_the_same_model_fitted_again_keeps_its_masks(tmp_path):
    torch.manual_seed(0)
    model, pruner = MLP(), PruneAtInit(scorer="random", sparsity=0.9)
    fit_once(model, pruner, tmp_path)
    first = {n: m.clone() for n, m in pruner.masks.items()}
    fit_once(model, pruner, tmp_path)  # `random` would cut another set if it scored again
    assert all(torch.equal(first[n], m) for n, m in pruner.masks.items())


def test_a_different_model_is_pruned_afresh(tmp_path):
    torch.manual_seed(0)
    scorer = CountingSynFlow()
    pruner = PruneAtInit(scorer=scorer, sparsity=0.9, iterations=3)
    fit_once(MLP(), pruner, tmp_path)
    first = {n: m.clone() for n, m in pruner.masks.items()}
    other = MLP()
    fit_once(other, pruner, tmp_path)
    assert scorer.calls == 6
    assert any(not torch.equal(first[n], m) for n, m in pruner.masks.items())
    params = dict(other.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in pruner.masks.items())


def test_resuming_keeps_the_checkpoints_masks_and_warns_when_the_arguments_differ(tmp_path):
    torch.manual_seed(0)
    pruner = PruneAtInit(scorer="random", sparsity=0.9)
    fit_once(MLP(), pruner, tmp_path, enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    other = PruneAtInit(scorer="magnitude", sparsity=0.5)
    with pytest.warns(UserWarning, match=r"scorer: checkpoint 'random', callback 'magnitude'; density: checkpoint 0.1, callback 0.5"):
        fit_once(MLP(), other, tmp_path, max_steps=4, ckpt_path=tmp_path / "last.ckpt")
    assert all(torch.equal(pruner.masks[n], m) for n, m in other.masks.items())


def test_adding_the_callback_to_a_resumed_unpruned_run_warns_that_trained_weights_are_pruned(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(max_steps=2, logger=False, default_root_dir=tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], **QUIET)
    trainer.fit(MLP())
    with pytest.warns(UserWarning, match=r"resuming from .*last.ckpt, which holds no pruning state: the weights it restored"):
        fit_once(MLP(), PruneAtInit(sparsity=0.9, iterations=2), tmp_path, max_steps=4, ckpt_path=tmp_path / "last.ckpt")


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_notebook"])
def test_spawned_fits_bring_the_masks_back_to_the_main_process(tmp_path, strategy):
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(SPAWN_SCRIPT), str(tmp_path), strategy], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(tmp_path / "spawn.pt", weights_only=False)
    first, second = out["first"], out["second"]
    assert list(first) == ["net.0.weight", "net.2.weight", "net.4.weight"]
    assert sum(int(m.sum()) for m in first.values()) == num_kept(0.1, 8 * 32 + 32 * 32 + 32 * 4)
    for name, mask in first.items():
        assert (out["weights_after_first"][name][~mask] == 0).all()
        assert torch.equal(second[name], mask), name  # kept: scored again, they would differ


def test_fsdp1_deepspeed_and_xla_are_refused_before_any_work_and_model_parallel_is_not():
    # The hooks are called directly: a fit would set up a process group in the test process itself.
    for strategy in (FSDPStrategy(), DeepSpeedStrategy.__new__(DeepSpeedStrategy)):
        with pytest.raises(ValueError, match=f"does not support strategy {type(strategy).__name__}, which holds"
                                             r" parameters as flattened or partitioned views; shard the model with"
                                             r" ModelParallelStrategy"):
            check_strategy(strategy)
    with pytest.raises(ValueError, match=r"does not support strategy SingleDeviceXLAStrategy: it runs on a single"):
        check_strategy(SingleDeviceXLAStrategy.__new__(SingleDeviceXLAStrategy))
    for strategy in ("ddp", "ddp_spawn", "ddp_notebook", "auto"):
        check_strategy(Trainer(strategy=strategy, logger=False, **QUIET).strategy)
    check_strategy(ModelParallelStrategy())


def test_what_a_sharded_model_cannot_be_pruned_with_is_refused_in_setup():
    # setup is called directly: a fit would set up a process group in the test process itself.
    trainer = Trainer(strategy=ModelParallelStrategy(), logger=False, **QUIET)
    with pytest.raises(ValueError, match=r"PruneAtInit\(isometry_steps=5, reinit=True\) needs whole tensors on one"
                                         r" process, which ModelParallelStrategy never holds; set isometry_steps=0,"
                                         r" reinit=False to prune a sharded model"):
        PruneAtInit(sparsity=0.9, isometry_steps=5, reinit=True).setup(trainer, MLP(), "fit")
    with pytest.raises(ValueError, match=r"scorer GraSP\(temperature=200.0, mode='train'\) cannot score a sharded model"
                                         r" \(under ModelParallelStrategy\); scorers that can: \['erk', 'force'"):
        PruneAtInit(scorer="grasp", sparsity=0.9).setup(trainer, MLP(), "fit")
    with pytest.raises(ValueError, match=r"PruningDiagnostics\(log_jacobian=True, log_effective_sparsity=True\) runs the"
                                         r" whole model in one process,"
                                         r" which a model under ModelParallelStrategy is not; there, only log_per_tensor"):
        PruningDiagnostics(log_jacobian=True).setup(trainer, MLP(), "fit")
    per_tensor = PruningDiagnostics(log_jacobian=False, log_effective_sparsity=False, log_per_tensor=True)
    with pytest.raises(ValueError, match=r"PruningDiagnostics under ModelParallelStrategy measures the masks PruneAtInit"
                                         r" makes; add PruneAtInit to the Trainer's callbacks"):
        per_tensor.setup(trainer, MLP(), "fit")
    pruner = PruneAtInit(scorer="synflow", sparsity=0.9)
    with_pruner = Trainer(strategy=ModelParallelStrategy(), logger=False, callbacks=[per_tensor, pruner], **QUIET)
    per_tensor.setup(with_pruner, MLP(), "fit")
    pruner.setup(with_pruner, MLP(), "fit")


class ChannelsLastCNN(LightningModule):
    """A convolutional network in channels-last memory format, a common speed setting for convnets."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
        self.example_input_array = torch.zeros(1, 3, 8, 8)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x.contiguous(memory_format=torch.channels_last)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(list(zip(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g))), batch_size=4)


@pytest.mark.parametrize("scorer", ["synflow", "snip"])
def test_a_channels_last_model_is_pruned_and_stays_pruned(tmp_path, scorer):
    torch.manual_seed(0)
    model = ChannelsLastCNN().to(memory_format=torch.channels_last)
    pruner = PruneAtInit(scorer=scorer, sparsity=0.9, iterations=3)
    Trainer(max_steps=4, logger=False, enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[pruner], **QUIET).fit(model)
    assert not model.net[0].weight.is_contiguous()  # still channels-last after pruning and training
    params = dict(model.named_parameters())
    assert sum(int(m.sum()) for m in pruner.masks.values()) == num_kept(0.1, 8 * 27 + 16 * 72 + 4 * 16)
    assert all((params[n][~m] == 0).all() for n, m in pruner.masks.items())
