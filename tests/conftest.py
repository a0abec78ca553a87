"""Shared test setup: one thread (2-core CI machines) and the small networks most tests prune."""

import logging

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


class TinyCNN(nn.Module):
    """Conv (with bias) -> BN -> ReLU -> Conv -> pool -> Linear: every kind of tensor the defaults see."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


class BiasFreeCNN(nn.Module):
    """Homogeneous (bias-free ReLU) network, for which SynFlow's conservation law is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(6, 5, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(5, 4, 3, bias=False)
        self.fc = nn.Linear(4 * 6 * 6, 3, bias=False)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(x.flatten(1))


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def image_batch():
    torch.manual_seed(1)
    return torch.randn(2, 3, 8, 8)


@pytest.fixture(params=["numpy", "torch"])
def ranking_branch(request, monkeypatch):
    """Runs a test through each CPU path of the ranking (and of the masks' bit-packing): NumPy views of the
    tensors (the CPU default) and torch's own kernels (what a GPU, or a dtype NumPy lacks, takes), which must
    give the same masks."""
    if request.param == "torch":
        monkeypatch.setattr("lightning_synflow.selection.topk.as_numpy", lambda t: None)
    return request.param


#: Loggers that the examples' drivers quiet (level ERROR) when a test runs them in this process.
QUIETED_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_synflow")


@pytest.fixture(autouse=True)
def logs_reach_caplog():
    """Tests read Lightning's and this package's log messages from caplog, whatever ran before in the process
    (under pytest-xdist a worker runs the files in another order): the drivers of examples/ set these loggers to
    ERROR, and Lightning stops its logger propagating when the root logger had no handler at its import."""
    loggers = [logging.getLogger(name) for name in QUIETED_LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
    yield
    for logger, (level, propagate) in zip(loggers, saved):
        logger.setLevel(level)
        logger.propagate = propagate
