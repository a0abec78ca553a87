"""Issue 24, item 1: scoring gives every attribute back as the same object of the same type, so that
``self.hparams.lr`` and everything else a LightningModule keeps work after pruning."""

import dataclasses
from collections import OrderedDict, defaultdict

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.fabric.utilities.data import AttributeDict  # the class save_hyperparameters() makes
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from lightning_synflow import PruneAtInit, PruningDiagnostics
from lightning_synflow.lightning.isolation import preserved_attributes
from lightning_helpers import random_data

QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


@dataclasses.dataclass
class Config:
    width: int = 3
    history: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Frozen:
    scale: torch.Tensor


class Keeper(nn.Module):
    """Attributes of every kind a step may change in place or replace."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.accuracy = MulticlassAccuracy(num_classes=2)
        self.hp = AttributeDict(lr=0.1)
        self.ordered = OrderedDict(a=1, b=2)
        self.counts = defaultdict(int, seen=1)
        self.config = Config()
        self.frozen = Frozen(torch.ones(2))
        self.outputs = [torch.zeros(1)]
        self.total = torch.zeros(())

    def step(self, x, y):
        self.accuracy(self.fc(x), y)
        self.hp["lr"] = 5.0
        self.hp = dict(self.hp)  # replaced by a plain dict
        self.ordered.move_to_end("a")
        self.ordered["c"] = 3
        self.counts["new"] += 1
        self.config.width = 7
        self.config.history.append("step")
        self.frozen.scale.mul_(3)
        self.outputs.append(torch.ones(1))
        self.outputs[0].add_(1)
        self.total = self.total + 1  # replaced by a new tensor


def test_every_attribute_comes_back_as_the_same_object_of_the_same_type_with_its_contents():
    model = Keeper()
    before = {k: v for k, v in vars(model).items() if not k.startswith("_") and k != "training"}
    metric_state = {k: getattr(model.accuracy, k).clone() for k in model.accuracy._defaults}
    history, outputs0, scale = model.config.history, model.outputs[0], model.frozen.scale
    with preserved_attributes(model):
        model.step(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
    for key, value in before.items():
        assert getattr(model, key) is value, key
    assert type(model.hp) is AttributeDict and model.hp.lr == 0.1
    assert type(model.ordered) is OrderedDict and list(model.ordered.items()) == [("a", 1), ("b", 2)]
    assert type(model.counts) is defaultdict and dict(model.counts) == {"seen": 1} and model.counts["x"] == 0
    assert model.config == Config() and model.config.history is history
    assert torch.equal(model.frozen.scale, torch.ones(2)) and model.frozen.scale is scale
    assert len(model.outputs) == 1 and model.outputs[0] is outputs0 and float(outputs0) == 0
    assert float(model.total) == 0
    for k, v in metric_state.items():
        assert torch.equal(getattr(model.accuracy, k), v), k







class Net(LightningModule):
    """Reads its learning rate through ``self.hparams``, as ``save_hyperparameters`` users do."""

    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        self.example_input_array = torch.zeros(1, 8)
        self.configured = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        self.configured += 1
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(random_data(n=16), batch_size=8)


@pytest.mark.parametrize("callbacks", [
    pytest.param(lambda: [PruneAtInit(scorer="magnitude", sparsity=0.5)], id="magnitude"),
    pytest.param(lambda: [PruneAtInit(scorer="synflow", sparsity=0.5, iterations=2)], id="synflow"),
    pytest.param(lambda: [PruneAtInit(scorer="snip", sparsity=0.0)], id="snip-sparsity0"),
    pytest.param(lambda: [PruningDiagnostics(log_jacobian=True, log_effective_sparsity=False, log_per_tensor=False)], id="diagnostics-alone"),
    pytest.param(lambda: [PruneAtInit(scorer="magnitude", sparsity=0.5, granularity="channel", shrink=True)], id="shrink"),
])
def test_hparams_stay_an_attribute_dict_through_pruning(tmp_path, callbacks):
    torch.manual_seed(0)
    model = Net()
    hparams = model.hparams
    Trainer(max_steps=1, default_root_dir=tmp_path, callbacks=callbacks(), **QUIET).fit(model)
    assert model.hparams is hparams and type(model.hparams) is AttributeDict
    assert model.hparams.lr == 0.05
    assert model.configured in (1, 2)  # shrink=True configures the optimizers a second time, through self.hparams.lr
