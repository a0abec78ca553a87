"""Small LightningModules and callbacks the callback tests (and the DDP scripts) share."""

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def random_data(n=64, features=8, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g))


class DriftingSGD(torch.optim.SGD):
    """SGD that also moves every weight after its step, whatever the gradient: only re-applying the
    masks after the step can keep pruned weights at zero."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(0.01)
        return loss


class MLP(LightningModule):
    """An MLP whose optimizer, optimization mode and input shape hint the tests choose."""

    def __init__(self, optimizer="sgd", manual=False, example_input=True, inf_loss_at_step=None, batches="pairs"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.optimizer = optimizer
        self.automatic_optimization = not manual
        self.inf_loss_at_step = inf_loss_at_step
        self.batches = batches
        if example_input:
            self.example_input_array = torch.zeros(1, 8)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
        loss = F.cross_entropy(self(x), y)
        if self.inf_loss_at_step is not None and self.global_step == self.inf_loss_at_step:
            loss = loss * float("inf")
        if self.automatic_optimization:
            return loss
        first, second = self.optimizers()
        for opt in (first, second):
            opt.zero_grad()
        self.manual_backward(loss)
        first.step()
        second.step()
        return loss

    def configure_optimizers(self):
        if not self.automatic_optimization:
            return [
                torch.optim.SGD(self.net[0].parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2),
                torch.optim.Adam([*self.net[2].parameters(), *self.net[4].parameters()], lr=1e-2),
            ]
        if self.optimizer == "drift":
            return DriftingSGD(self.parameters(), lr=0.1)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-2)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)

    def train_dataloader(self):
        data = random_data()
        if self.batches == "dicts":
            return DataLoader([{"x": x, "y": y} for x, y in data], batch_size=8)
        return DataLoader(data, batch_size=8)


class AssertPrunedStayZero(Callback):
    """After every training batch: each pruned weight, and its optimizer state, is exactly zero."""

    def __init__(self, pruner):
        self.pruner = pruner
        self.checks = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.named_parameters())
        for name, mask in self.pruner.masks.items():
            p = params[name]
            assert (p[~mask] == 0).all(), f"pruned weights of {name} moved at step {trainer.global_step}"
            for opt in trainer.optimizers:
                for value in opt.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        assert (value[~mask] == 0).all(), f"optimizer state of pruned {name} is not zero"
        self.checks += 1


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call."""

    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def values(self, key):
        return [m[key] for _, m in self.rows if key in m]


class FigureLogger(MemoryLogger):
    """Stands in for TensorBoard: its experiment takes figures."""

    def __init__(self):
        super().__init__()
        self.figures = []

    @property
    def experiment(self):
        return self

    def add_figure(self, tag, figure, step):
        self.figures.append((tag, figure, step))
