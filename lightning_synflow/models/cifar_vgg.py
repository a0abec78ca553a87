"""VGG networks with BatchNorm for CIFAR-sized images (plain PyTorch, no Lightning).

Layout as in OpenLTH's ``cifar_vgg`` and SynFlow's ``lottery_vgg.py`` (Tanaka et al. 2020), from
Simonyan & Zisserman 2015 configurations A/B/D/E: 3x3 convs (padding 1, with bias) each followed by
BatchNorm and ReLU, a 2x2 max-pool at every ``'M'``, then average pooling down to one 512-vector
and a single ``Linear(512, num_classes)`` classifier (no 4096-wide FC layers).

The reference code pools the final 2x2 map of a 32x32 input with ``AvgPool2d(2)``; here the pool
is ``AdaptiveAvgPool2d(1)``, which is the same operation at 32x32 and also accepts other sizes.
There are four max-pools (floor mode), so the input must be at least 16x16: 32x32 CIFAR, 64x64 Tiny
ImageNet and 28x28 (Fashion-)MNIST (28 -> 14 -> 7 -> 3 -> 1, with ``in_channels=1``) all work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

from lightning_synflow.models.init import kaiming_init_

__all__ = ["CifarVGG", "PLANS", "MIN_INPUT_SIZE", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

Plan = Sequence[Union[int, str]]

#: Conv widths per layer, ``'M'`` = 2x2 max-pool; same as OpenLTH / SynFlow (configs A, B, D, E
#: without the last max-pool, which the global average pool replaces).
PLANS: dict[int, list[Union[int, str]]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}

#: Smallest square input side the four floor-mode max-pools accept (16 -> 8 -> 4 -> 2 -> 1).
MIN_INPUT_SIZE = 16


class CifarVGG(nn.Module):
    """VGG-with-BatchNorm feature stack, global average pool and one Linear classifier.

    Initialisation as in SynFlow's ``lottery_vgg.py``: Kaiming-normal (fan-in, ReLU gain) for conv
    and Linear weights, zero biases, BatchNorm weight 1 and bias 0.
    """

    def __init__(self, plan: Plan, num_classes: int = 10, *, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            elif isinstance(spec, int) and spec > 0:
                layers += [
                    nn.Conv2d(channels, spec, kernel_size=3, padding=1, bias=True),
                    nn.BatchNorm2d(spec),
                    nn.ReLU(),
                ]
                channels = spec
            else:
                raise ValueError(f"VGG plan entries must be positive ints or 'M', got {spec!r}")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def vgg11_bn(num_classes: int = 10, **kw) -> nn.Module:
    """VGG-11 (config A) with BatchNorm, CIFAR layout of OpenLTH/SynFlow: 8 convs + Linear(512, C)."""
    return CifarVGG(PLANS[11], num_classes, **kw)


def vgg13_bn(num_classes: int = 10, **kw) -> nn.Module:
    """VGG-13 (config B) with BatchNorm, CIFAR layout of OpenLTH/SynFlow: 10 convs + Linear(512, C)."""
    return CifarVGG(PLANS[13], num_classes, **kw)


def vgg16_bn(num_classes: int = 10, **kw) -> nn.Module:
    """VGG-16 (config D) with BatchNorm, CIFAR layout of OpenLTH/SynFlow: 13 convs + Linear(512, C)."""
    return CifarVGG(PLANS[16], num_classes, **kw)


def vgg19_bn(num_classes: int = 10, **kw) -> nn.Module:
    """VGG-19 (config E) with BatchNorm, CIFAR layout of OpenLTH/SynFlow: 16 convs + Linear(512, C)."""
    return CifarVGG(PLANS[19], num_classes, **kw)
