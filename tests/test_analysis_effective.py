import pytest
import torch
from torch import nn

from lightning_synflow.analysis import effective_masks, effective_sparsity_report

from conftest import BiasFreeCNN, TinyCNN


def _full(model):
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n.endswith("weight")}


def test_input_side_and_output_side_cuts_in_an_mlp():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))  # biases are non-zero
    masks = _full(mlp)
    masks["0.weight"][2] = False  # hidden unit 2 has no input: its 3 outgoing weights are dead
    masks["2.weight"][:, 4] = False  # hidden unit 4 has no output: its 4 incoming weights are dead
    eff = effective_masks(mlp, masks, example_input=torch.zeros(1, 4))
    expected0 = masks["0.weight"].clone()
    expected0[4] = False
    expected2 = masks["2.weight"].clone()
    expected2[:, 2] = False
    assert torch.equal(eff["0.weight"], expected0) and torch.equal(eff["2.weight"], expected2)
    report = effective_sparsity_report(mlp, masks, effective=eff)
    assert (report.nominal.kept, report.effective.kept, report.dead) == (28, 21, 7)
    assert [r["effective"] for r in report.rows()] == [12, 9]
    assert report.as_metrics()["sparsity/effective"] == pytest.approx(1 - 21 / 35)
    assert "7 dead weights" in str(report)
    # plain SynFlow (biases as sources): the bias of unit 2 keeps its outgoing weights alive
    with_bias = effective_masks(mlp, masks, example_input=torch.zeros(1, 4), bias_paths=True)
    assert torch.equal(with_bias["2.weight"], masks["2.weight"]) and torch.equal(with_bias["0.weight"], expected0)


def test_cascade_through_three_layers():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    masks = _full(net)
    masks["0.weight"][0] = False  # unit a0 has no input
    masks["2.weight"][0, 1:] = False  # unit b0 reads only a0 -> b0 dead -> its outgoing weights dead
    eff = effective_masks(net, masks, example_input=torch.zeros(1, 3))
    dead = {n: int((masks[n] & ~eff[n]).sum()) for n in masks}
    # a0's outgoing (4 weights, incl. the one into b0) and b0's outgoing (2)
    assert dead == {"0.weight": 0, "2.weight": 4, "4.weight": 2}


def test_conv_channel_cut_and_a_collapsed_layer():
    torch.manual_seed(0)
    net = BiasFreeCNN()
    masks = _full(net)
    masks["c1.weight"][2] = False  # channel 2 of c1 has no input: c2 reading it is dead (5 x 9 weights)
    eff = effective_masks(net, masks, example_input=torch.zeros(1, 3, 8, 8))
    assert int((masks["c2.weight"] & ~eff["c2.weight"]).sum()) == 5 * 9
    assert all(torch.equal(eff[n], masks[n]) for n in ("c1.weight", "c3.weight", "fc.weight"))
    masks["c3.weight"][:] = False  # a collapsed layer kills every weight of the network
    report = effective_sparsity_report(net, masks, example_input=torch.zeros(1, 3, 8, 8))
    assert report.effective.kept == 0 and len(report.effective.collapsed) == 4


def test_model_is_not_changed_and_batchnorm_statistics_do_not_matter():
    torch.manual_seed(0)
    net = TinyCNN()
    with torch.no_grad():  # a "trained" look: biases, shifts and running statistics away from init
        net.bn1.running_mean.uniform_(-1, 1)
        net.bn1.bias.uniform_(-1, 1)
        net.conv1.bias.uniform_(-1, 1)
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    masks = _full(net)
    eff = effective_masks(net, masks, example_input=torch.zeros(2, 3, 8, 8))
    assert all(torch.equal(eff[n], masks[n]) for n in masks)  # dense: everything on a path
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items()) and net.training



def test_maxpool_paths_is_a_superset_and_leaves_the_model_alone():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    from lightning_synflow import compute_masks

    masks = compute_masks(net, "random", compression=8)
    x = torch.zeros(1, 3, 8, 8)
    plain = effective_masks(net, masks, example_input=x)
    with_or = effective_masks(net, masks, example_input=x, maxpool_paths=True)
    for n in masks:  # OR semantics through the pools can only add paths
        assert not (plain[n] & ~with_or[n]).any() and not (with_or[n] & ~masks[n]).any()
    assert isinstance(net[2], nn.MaxPool2d) and isinstance(net[5], nn.MaxPool2d)
