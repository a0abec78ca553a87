"""Channel granularity: coupled channels found by tracing, exact channel counts for every scorer, biases and
norms following their channel, the classes never removed, and shrink() computing what the masked model does."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from conftest import TinyCNN
from lightning_synflow import PruneAtInit, apply_masks, available_scorers, compute_masks, num_kept
from lightning_synflow.selection.channels import channel_groups, select_channels, shrink
from lightning_synflow.models import cifar_resnet, cifar_vgg

_G = torch.Generator().manual_seed(0)
X = torch.randn(2, 3, 32, 32, generator=_G)
DATA = [(torch.randn(4, 3, 32, 32, generator=_G), torch.randint(4, (4,), generator=_G))]


class Concat(nn.Module):
    """Two branches concatenated: the second conv's input channels map onto both."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


def kept_channels(masks, name):
    rows = masks[name].reshape(masks[name].shape[0], -1)
    assert bool((rows.all(1) | ~rows.any(1)).all()), "whole channels only"
    return rows.all(1)


def groups_of(model, x=X):
    model.eval()
    return {g.name: g for g in channel_groups(model, x, [n for n, p in model.named_parameters() if p.dim() > 1])}


def test_a_residual_add_couples_the_channels_it_adds():
    groups = groups_of(torchvision.models.resnet18(num_classes=4))
    stem = groups["conv1.weight"]  # layer1 adds to the stem's channels, twice
    members = {name for name, _ in stem.rows}
    assert {"conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv2.weight", "layer1.0.bn2.weight",
            "layer1.1.conv2.weight", "layer1.1.bn2.bias"} <= members
    assert set(stem.scored) == {"conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight"}
    assert "fc.weight" not in {name for g in groups.values() for name, _ in g.rows}  # the classes stay


def test_a_depthwise_convolution_couples_its_channels_with_the_layer_before():
    groups = groups_of(torchvision.models.mobilenet_v3_small(num_classes=4), torch.randn(1, 3, 64, 64))
    # 1x1 expansion, the 5x5 depthwise conv on its channels, and the squeeze-excitation scale multiplying them
    (coupled,) = [g for g in groups.values() if "features.4.block.0.0.weight" in g.scored]
    assert set(coupled.scored) == {"features.4.block.0.0.weight", "features.4.block.1.0.weight",
                                   "features.4.block.2.fc2.weight"}
    assert coupled.size == 96


def test_a_concatenation_maps_channels_through():
    groups = groups_of(Concat())
    a, b = dict(groups["a.weight"].rows), dict(groups["b.weight"].rows)
    assert a["bn.weight"].tolist() == [0, 1, 2, 3] and b["bn.weight"].tolist() == [4, 5, 6, 7, 8, 9]
    assert "fc.weight" not in groups


CHANNEL_SCORERS = sorted(set(available_scorers()) - {"erk"})


@pytest.mark.parametrize("scorer", CHANNEL_SCORERS)
@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_exact_channel_counts_for_every_scorer(scorer, distribution):
    if scorer == "uniform" and distribution == "global":
        pytest.skip("the uniform scorer has its own distribution")
    torch.manual_seed(0)
    model = TinyCNN()
    kwargs = {} if scorer == "uniform" else {"distribution": distribution}
    masks = compute_masks(model, scorer, sparsity=0.5, granularity="channel", example_input=X[:, :, :8, :8],
                          dataloader=[(DATA[0][0][:, :, :8, :8], DATA[0][1])], iterations=2, **kwargs)
    conv1, conv2 = kept_channels(masks, "conv1.weight"), kept_channels(masks, "conv2.weight")
    if distribution == "uniform":
        assert (int(conv1.sum()), int(conv2.sum())) == (4, 8)
    else:
        assert int(conv1.sum()) + int(conv2.sum()) == num_kept(0.5, 8 + 16)
    assert torch.equal(masks["conv1.bias"], conv1) and torch.equal(masks["bn1.weight"], conv1)
    assert torch.equal(masks["bn1.bias"], conv1)
    assert "fc.weight" not in masks  # the classes are never removed


def test_every_group_keeps_a_channel_and_counts_stay_exact():
    scores = {"a": torch.tensor([0.0, 0.0, 0.0]), "b": torch.tensor([5.0, 4.0, 3.0, 1.0])}
    kept = select_channels(scores, 4)
    assert kept["a"].tolist() == [True, False, False] and kept["b"].tolist() == [True, True, True, False]
    assert select_channels(scores, {"a": 0, "b": 2})["a"].tolist() == [True, False, False]
    with pytest.raises(ValueError, match=r"cannot keep 1 channels and one in each of the 2 groups of coupled channels"):
        select_channels(scores, 1)


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, nn.Dropout) or type(m).__name__ == "StochasticDepth":
            m.eval()
    return model


MODELS = {  # builder, input shape
    "vgg11_bn": (lambda: cifar_vgg.vgg11_bn(num_classes=10), (4, 3, 32, 32)),
    "resnet20": (lambda: cifar_resnet.resnet20(num_classes=10), (4, 3, 32, 32)),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=10), (4, 3, 64, 64)),  # BatchNorm over >= 16 values
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), (2, 3, 64, 64)),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), (2, 3, 64, 64)),
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                  nn.Linear(32, 10)), (4, 3, 4, 4)),
    "concat": (Concat, (4, 3, 8, 8)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_shrink_computes_what_the_masked_model_computes(name):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    masks = compute_masks(model, "magnitude", sparsity=0.5, granularity="channel", distribution="uniform",
                          example_input=x)
    small = shrink(model, masks, x)
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    for train in (False, True):
        masked.train(train), small.train(train)
        no_dropout(masked), no_dropout(small)
        with torch.no_grad():
            expected, got = masked(x), small(x)
        assert got.shape == expected.shape  # the classes are all there
        # The shrunk layers add fewer terms, in another order: float32 rounding, which 50 layers of BatchNorm on
        # batch statistics amplify to ~1e-5 of the outputs' scale.
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
        assert float(expected.abs().max()) > 0


def test_shrink_refuses_masks_that_are_not_whole_channels_naming_the_layer():
    model = TinyCNN()
    masks = compute_masks(model, "magnitude", sparsity=0.5)
    with pytest.raises(ValueError, match=r"shrink removes whole channels, but the mask of 'conv1.weight' keeps part of"
                                         r" channel\(s\) \[0, 1, 2"):
        shrink(model, masks, X[:, :, :8, :8])
    dense = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    dense["fc.weight"][0] = False  # a class
    with pytest.raises(ValueError, match=r"shrink cannot remove the pruned channels of \['fc.weight'\]: their layers'"
                                         r" outputs are the model's outputs"):
        shrink(model, dense, X[:, :, :8, :8])


def test_channel_pruning_needs_an_input_to_trace():
    with pytest.raises(ValueError, match=r"granularity='channel' traces one forward pass to find coupled channels: pass"
                                         r" `example_input`"):
        compute_masks(TinyCNN(), "magnitude", sparsity=0.5, granularity="channel")


@pytest.mark.parametrize("scorer", ["synflow", "magnitude", "snip"])
@pytest.mark.parametrize("input_from", ["example_input_array", "first batch"])
def test_prune_at_init_with_channels_keeps_whole_channels_through_training(scorer, input_from):
    from lightning.pytorch import Trainer

    from lightning_helpers import MLP, random_data

    model = MLP(example_input=input_from == "example_input_array")  # else traced with the first batch's input
    pruner = PruneAtInit(scorer=scorer, sparsity=0.5, iterations=2, granularity="channel", verbose=False)
    trainer = Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[pruner])
    trainer.fit(model, torch.utils.data.DataLoader(random_data(), batch_size=8))
    params = dict(model.named_parameters())
    for name, mask in pruner.masks.items():
        assert (params[name].detach()[~mask] == 0).all()
        if mask.dim() > 1:
            kept_channels(pruner.masks, name)
    kept = kept_channels(pruner.masks, "net.0.weight").sum() + kept_channels(pruner.masks, "net.2.weight").sum()
    assert int(kept) == num_kept(0.5, 64)


def test_prune_shrink_train_save_and_load_the_smaller_network(tmp_path):
    from lightning.pytorch import Trainer

    from lightning_helpers import MLP, random_data
    from lightning_synflow import load_shrunk

    def trainer(steps, pruner):
        return Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, callbacks=[pruner])

    torch.manual_seed(0)
    model = MLP()
    dense = sum(p.numel() for p in model.parameters())
    pruner = PruneAtInit(scorer="synflow", sparsity=0.5, iterations=4, granularity="channel", shrink=True, verbose=False)
    first = trainer(3, pruner)
    first.fit(model, random_data())
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["net.0.weight"][0] + shapes["net.2.weight"][0] == num_kept(0.5, 64)  # channels kept of 32 + 32
    assert shapes["net.4.weight"] == (4, shapes["net.2.weight"][0])  # the 4 classes stay
    assert sum(p.numel() for p in model.parameters()) < dense
    optimized = {id(p) for group in first.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}  # the optimizer was built for the smaller network
    path = tmp_path / "shrunk.ckpt"
    first.save_checkpoint(path)

    rebuilt = load_shrunk(MLP(), path)
    assert {n: tuple(p.shape) for n, p in rebuilt.named_parameters()} == shapes
    rebuilt.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    x = torch.randn(5, 8)
    torch.testing.assert_close(rebuilt(x), model(x))

    resumed = PruneAtInit(scorer="synflow", sparsity=0.5, iterations=4, granularity="channel", shrink=True, verbose=False)
    trainer(5, resumed).fit(load_shrunk(MLP(), path), random_data(), ckpt_path=path)
    with pytest.raises(ValueError, match=r"PruneAtInit: the masks restored from the checkpoint belong to a shrunk MLP, but"
                                         r" this model has its full shapes; rebuild the smaller one with"
                                         r" lightning_synflow.load_shrunk\(model, ckpt_path\) first"):
        again = PruneAtInit(scorer="synflow", sparsity=0.5, iterations=4, granularity="channel", shrink=True)
        again.load_state_dict(torch.load(path, weights_only=False)["callbacks"]["PruneAtInit"])
        again._start(trainer(5, again), MLP())
    with pytest.raises(ValueError, match=r"PruneAtInit `shrink` removes whole channels: give granularity='channel', got"
                                         r" granularity='weight'"):
        PruneAtInit(sparsity=0.5, shrink=True)


def test_the_classes_are_found_on_a_frozen_model_too():
    model = TinyCNN().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    from lightning_synflow.selection.channels import output_layers

    assert output_layers(model, X[:, :, :8, :8]) == {model.fc}
    assert all(not p.requires_grad for p in model.parameters())
