"""Scoring without a trace: random streams and module state come back exactly as they were."""

import random

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_synflow.lightning.isolation import preserved_attributes, preserved_rng


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_preserved_rng_restores_python_numpy_and_torch_streams():
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    expected = draws()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    with preserved_rng(torch.device("cpu")):
        draws(), draws()
    assert draws() == expected


def test_preserved_rng_restores_even_when_the_body_raises():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    try:
        with preserved_rng(torch.device("cpu")):
            torch.rand(5)
            raise RuntimeError
    except RuntimeError:
        pass
    assert torch.equal(torch.rand(3), expected)


class Stateful(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.accuracy = MulticlassAccuracy(num_classes=2)
        self.register_buffer("seen", torch.zeros(()))
        self.steps = 0
        self.outputs = []

    def step(self, x, y):
        logits = self.fc(x)
        self.accuracy(logits, y)
        self.seen += len(y)
        self.steps += 1
        self.outputs.append(logits.sum())


def test_preserved_attributes_undoes_a_steps_side_effects_in_place():
    model = Stateful()
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    model.step(x, y)
    outputs, accuracy_state = model.outputs, {k: getattr(model.accuracy, k).clone() for k in model.accuracy._defaults}
    seen = model.seen
    with preserved_attributes(model):
        for _ in range(3):
            model.step(x, 1 - y)
        model.extra = "added while scoring"
    assert model.steps == 1 and float(model.seen) == 4 and model.seen is seen
    assert model.outputs is outputs and len(outputs) == 1  # the same list object, as others may hold it
    assert not hasattr(model, "extra")
    for k, v in accuracy_state.items():
        assert torch.equal(getattr(model.accuracy, k), v), k
    assert model.accuracy._update_count == 1
    model.step(x, y)  # the metric goes on as if scoring never happened: 8 of 8 right
    assert model.accuracy.compute() == MulticlassAccuracy(num_classes=2)(torch.cat([model.fc(x)] * 2), torch.cat([y, y]))


def test_parameters_are_not_copied_or_restored():
    model = Stateful()
    with preserved_attributes(model):
        with torch.no_grad():
            model.fc.weight.zero_()
    assert (model.fc.weight == 0).all()
