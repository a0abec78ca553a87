import pytest
import torch
from torch import nn

from lightning_synflow import select_prunable


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3)
        self.deconv = nn.ConvTranspose2d(2, 2, 3)
        self.conv3d = nn.Conv3d(1, 1, 1)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


class MyConv(nn.Conv2d):
    pass


def test_default_selects_every_linear_and_conv_weight_first_and_last_included():
    assert select_prunable(Mixed()) == ["conv.weight", "deconv.weight", "conv3d.weight", "head.0.weight", "head.2.weight"]


def test_exclude_by_name_pattern_keeps_the_classifier_dense():
    assert select_prunable(Mixed(), exclude_names=["head.*"]) == ["conv.weight", "deconv.weight", "conv3d.weight"]


def test_select_by_type_names_classes_and_subclasses():
    m = nn.Sequential(MyConv(1, 1, 1), nn.Linear(1, 1))
    assert select_prunable(m, include_types=["Conv2d"]) == ["0.weight"]
    assert select_prunable(m, include_types=[nn.Linear]) == ["1.weight"]
    assert select_prunable(m, include_types=["torch.nn.modules.conv.Conv2d"]) == ["0.weight"]
    assert select_prunable(m, exclude_types=["Linear"]) == ["0.weight"]


def test_include_names_adds_any_parameter():
    assert select_prunable(Mixed(), include_types=[], include_names=["emb.weight", "head.*.bias"]) == [
        "emb.weight", "head.0.bias", "head.2.bias",
    ]


def test_tied_weights_are_selected_once():
    m = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    m[1].weight = m[0].weight
    assert select_prunable(m) == ["0.weight"]
    assert [n for n, _ in m.named_parameters()] == ["0.weight"]


def test_nothing_prunable_gives_an_empty_list():
    assert select_prunable(nn.Sequential(nn.BatchNorm1d(3))) == []
