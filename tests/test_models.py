"""CIFAR-style model zoo: exact parameter counts, layer counts, shapes, init, registry errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_synflow import select_prunable
from lightning_synflow.models import (
    MODELS,
    get_model,
    resnet18,
    resnet20,
    resnet32,
    resnet56,
    resnet110,
    vgg11_bn,
    vgg13_bn,
    vgg16_bn,
    vgg19_bn,
)
from lightning_synflow.models.cifar_vgg import MIN_INPUT_SIZE, PLANS

# Exact counts for num_classes=10, in_channels=3, measured here and cross-checked below against
# closed-form counts, torchvision, and the published numbers.
PARAMS_10 = {
    "resnet20": 272_474,
    "resnet32": 466_906,
    "resnet56": 855_770,
    "resnet110": 1_730_714,
    "resnet18": 11_173_962,
    "vgg11_bn": 9_231_114,
    "vgg13_bn": 9_416_010,
    "vgg16_bn": 14_728_266,
    "vgg19_bn": 20_040_522,
}

# name -> (3x3 convs, 1x1 shortcut convs, Linear, BatchNorm2d)
LAYERS = {
    "resnet20": (19, 2, 1, 21),
    "resnet32": (31, 2, 1, 33),
    "resnet56": (55, 2, 1, 57),
    "resnet110": (109, 2, 1, 111),
    "resnet18": (17, 3, 1, 20),
    "vgg11_bn": (8, 0, 1, 8),
    "vgg13_bn": (10, 0, 1, 10),
    "vgg16_bn": (13, 0, 1, 13),
    "vgg19_bn": (16, 0, 1, 16),
}

HE_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}
VGG_DEPTHS = {"vgg11_bn": 11, "vgg13_bn": 13, "vgg16_bn": 16, "vgg19_bn": 19}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def he_resnet_params(depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> int:
    """Closed-form count: stem, 3 stages of (depth-2)/6 basic blocks, 1x1+BN projections, Linear."""
    n = (depth - 2) // 6
    total = in_channels * 9 * width + 2 * width
    cin = width
    for out in (width, 2 * width, 4 * width):
        for _ in range(n):
            total += cin * 9 * out + 2 * out + out * 9 * out + 2 * out
            if cin != out:
                total += cin * out + 2 * out
            cin = out
    return total + cin * num_classes + num_classes


def he_shortcut_params(width: int = 16) -> int:
    """Parameters of the two 1x1 conv + BN projections (absent in He et al.'s option A)."""
    return sum(cin * out + 2 * out for cin, out in ((width, 2 * width), (2 * width, 4 * width)))


def vgg_params(plan, num_classes: int = 10, in_channels: int = 3) -> int:
    total, cin = 0, in_channels
    for spec in plan:
        if spec != "M":
            total += cin * 9 * spec + spec + 2 * spec  # conv weight + bias, BN weight + bias
            cin = spec
    return total + cin * num_classes + num_classes


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_names_and_functions():
    assert set(MODELS) == set(PARAMS_10)
    assert MODELS["resnet20"] is resnet20 and MODELS["resnet32"] is resnet32
    assert MODELS["resnet56"] is resnet56 and MODELS["resnet110"] is resnet110
    assert MODELS["resnet18"] is resnet18
    assert MODELS["vgg11_bn"] is vgg11_bn and MODELS["vgg13_bn"] is vgg13_bn
    assert MODELS["vgg16_bn"] is vgg16_bn and MODELS["vgg19_bn"] is vgg19_bn
    for fn in MODELS.values():
        assert fn.__doc__ and fn.__doc__.strip()


def test_get_model_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_model("resnet19")
    msg = str(err.value)
    assert "'resnet19'" in msg
    for name in MODELS:
        assert name in msg


def test_get_model_non_string_name():
    with pytest.raises(ValueError, match="None"):
        get_model(None)  # type: ignore[arg-type]


def test_get_model_builds_with_num_classes_and_kwargs():
    m = get_model("ResNet20", num_classes=100)  # case-insensitive
    assert m.fc.out_features == 100
    assert n_params(m) == he_resnet_params(20, num_classes=100)
    m1 = get_model("vgg11_bn", 10, in_channels=1)
    assert m1(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError):
        resnet20(10, bogus=1)
    with pytest.raises(TypeError):
        get_model("vgg16_bn", 10, bogus=1)


# ---------------------------------------------------------------------------------------------
# Parameter and layer counts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PARAMS_10))
def test_exact_parameter_count(name):
    assert n_params(get_model(name, 10)) == PARAMS_10[name]


@pytest.mark.parametrize("name", sorted(HE_DEPTHS))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_he_resnet_counts_match_closed_form(name, num_classes):
    assert n_params(get_model(name, num_classes)) == he_resnet_params(HE_DEPTHS[name], num_classes)


def test_he_resnet_counts_match_paper():
    # He et al. 2016, Table 6 (option A, parameter-free shortcuts): 0.27M, 0.46M, 0.85M, 1.7M.
    # Ours use 1x1-conv projections (OpenLTH/SynFlow), which add exactly 2,752 parameters.
    paper = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet56": 0.85e6, "resnet110": 1.7e6}
    assert he_shortcut_params() == 2_752
    for name, published in paper.items():
        option_a = PARAMS_10[name] - he_shortcut_params()
        assert abs(option_a - published) / published < 0.02, (name, option_a)
    assert PARAMS_10["resnet20"] - he_shortcut_params() == 269_722  # the commonly quoted exact figure


@pytest.mark.parametrize("name", sorted(VGG_DEPTHS))
@pytest.mark.parametrize("num_classes", [10, 200])
def test_vgg_counts_match_closed_form(name, num_classes):
    assert n_params(get_model(name, num_classes)) == vgg_params(PLANS[VGG_DEPTHS[name]], num_classes)


@pytest.mark.parametrize("name,cfg", [("vgg11_bn", "A"), ("vgg13_bn", "B"), ("vgg16_bn", "D"), ("vgg19_bn", "E")])
def test_vgg_features_match_torchvision(name, cfg):
    vgg = pytest.importorskip("torchvision.models.vgg")
    features = vgg.make_layers(vgg.cfgs[cfg], batch_norm=True)  # conv stack only, no 4096-wide head
    assert PARAMS_10[name] == n_params(features) + 512 * 10 + 10


def test_vgg16_bn_is_about_14_7m():
    assert round(PARAMS_10["vgg16_bn"] / 1e6, 1) == 14.7


def test_resnet18_matches_torchvision_but_for_the_stem():
    tvm = pytest.importorskip("torchvision.models")
    tv = tvm.resnet18(num_classes=10)  # ImageNet stem: 7x7 conv (max-pool has no params)
    assert PARAMS_10["resnet18"] == n_params(tv) - 3 * 64 * 7 * 7 + 3 * 64 * 3 * 3
    assert PARAMS_10["resnet18"] == 11_173_962  # the usual CIFAR ResNet-18 figure (~11.2M)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_counts(name):
    m = get_model(name)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    n3 = sum(c.kernel_size == (3, 3) for c in convs)
    n1 = sum(c.kernel_size == (1, 1) for c in convs)
    n_lin = sum(isinstance(x, nn.Linear) for x in m.modules())
    n_bn = sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert (n3, n1, n_lin, n_bn) == LAYERS[name]
    assert n3 + n1 == len(convs)
    if name in HE_DEPTHS:  # 6n+2 weighted layers: 6n+1 3x3 convs + the Linear head
        assert n3 + n_lin == HE_DEPTHS[name]
    if name in VGG_DEPTHS:  # depth counts the 3 FC layers of the ImageNet net; here one Linear
        assert n3 + 3 == VGG_DEPTHS[name]
        assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 4


def test_shortcut_convs_are_stride_2_and_bias_free():
    for name in ("resnet20", "resnet18"):
        for c in get_model(name).modules():
            if isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1):
                assert c.stride == (2, 2) and c.bias is None


def test_conv_bias():
    assert all(c.bias is None for c in resnet20().modules() if isinstance(c, nn.Conv2d))
    assert all(c.bias is None for c in resnet18().modules() if isinstance(c, nn.Conv2d))
    assert all(c.bias is not None for c in vgg11_bn().modules() if isinstance(c, nn.Conv2d))


def test_prunable_selection_sees_every_conv_and_the_head():
    m = resnet20()
    names = select_prunable(m)
    assert len(names) == 19 + 2 + 1
    assert names[-1] == "fc.weight"


# ---------------------------------------------------------------------------------------------
# Forward shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [32, 64])
def test_forward_shape_rgb(name, size):
    torch.manual_seed(0)
    m = get_model(name, num_classes=7).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, size, size))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_one_channel_28x28(name):
    m = get_model(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_minimum_input_size():
    m = vgg19_bn().eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, MIN_INPUT_SIZE, MIN_INPUT_SIZE)).shape == (1, 10)
        with pytest.raises(RuntimeError):
            m(torch.randn(1, 3, MIN_INPUT_SIZE - 1, MIN_INPUT_SIZE - 1))


def test_train_mode_backward_reaches_every_parameter():
    torch.manual_seed(0)
    for m in (resnet20(), vgg11_bn(), resnet18()):
        m.train()
        m(torch.randn(2, 3, 32, 32)).sum().backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------


def test_init_is_seeded():
    torch.manual_seed(123)
    a = resnet20().state_dict()
    torch.manual_seed(123)
    b = resnet20().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "resnet18"])
def test_batchnorm_and_bias_init(name):
    m = get_model(name)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)
        if isinstance(mod, nn.Conv2d) and mod.bias is not None:
            assert torch.all(mod.bias == 0)


def test_kaiming_normal_scale():
    torch.manual_seed(0)
    # He-style ResNets and VGG: fan-in, gain sqrt(2), for conv and Linear weights.
    last = resnet56().stages[2][1].conv2  # 64x64x3x3, fan_in 576
    assert last.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.05)
    fc = vgg16_bn().fc  # fan_in 512
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.1)
    assert torch.all(fc.bias == 0)
    conv = vgg16_bn().features[0]  # 3 -> 64, fan_in 27
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 27), rel=0.1)
    # ResNet-18 (SynFlow's tinyimagenet_resnet): fan-out for convs.
    stem = resnet18().stem[0]  # 3 -> 64, fan_out 576
    assert stem.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.1)
