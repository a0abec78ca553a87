"""Residual networks for CIFAR-sized images (plain PyTorch, no Lightning).

Two families, as in the SynFlow experiments (Tanaka et al. 2020):

* :func:`resnet20`, :func:`resnet32`, :func:`resnet56`, :func:`resnet110`: the CIFAR ResNets of
  He et al. 2016 (Sec. 4.2), laid out as in OpenLTH's ``cifar_resnet`` and SynFlow's
  ``lottery_resnet.py``: a 3x3 stem conv, three stages of ``n`` basic blocks with 16/32/64 filters
  (6n+2 weighted layers), global average pool and one Linear head. Where a block changes shape its
  shortcut is a 1x1 conv (stride 2) + BatchNorm ("option B"), not the parameter-free zero padding
  ("option A") of the paper, so these nets have ~1% more parameters than the paper's table
  (ResNet-20: 272,474 against 0.27M).
* :func:`resnet18`: the CIFAR variant of ResNet-18 (3x3 stride-1 stem, no max-pool, basic blocks
  [2, 2, 2, 2] with 64..512 filters, 1x1 conv + BatchNorm projection shortcuts), as in SynFlow's
  ``tinyimagenet_resnet.py`` which its CIFAR/Tiny ImageNet ResNet-18 runs use.

All convs are bias-free and followed by BatchNorm. Downsampling is by stride-2 convs (no pooling
layers) and the pool before the head is adaptive, so the input size is free: 32x32 CIFAR, 64x64
Tiny ImageNet and 28x28 (Fashion-)MNIST with ``in_channels=1`` all give ``(N, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_synflow.models.init import kaiming_init_

__all__ = ["BasicBlock", "CifarResNet", "ResNet18", "resnet18", "resnet20", "resnet32", "resnet56", "resnet110"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers around a residual connection (ReLU after the sum).

    The shortcut is the identity when shape is kept, else a 1x1 conv with the block's stride + BN.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out-of-place sum and ReLU: safe under functional_call and double backward.
        return self.relu(out + self.shortcut(x))


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class _ResNetBase(nn.Module):
    """Stem conv-BN-ReLU, stages, adaptive average pool, flatten, Linear."""

    stem: nn.Sequential
    stages: nn.Sequential
    fc: nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


class CifarResNet(_ResNetBase):
    """He et al. 2016 CIFAR ResNet with ``depth = 6n + 2`` layers and stage widths ``width * (1, 2, 4)``.

    Initialisation as in SynFlow's ``lottery_resnet.py``: Kaiming-normal (fan-in, ReLU gain) for every
    conv and Linear weight, zero biases, BatchNorm weight 1 and bias 0.
    """

    def __init__(self, depth: int, num_classes: int = 10, *, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(
            _stage(width, width, n, 1),
            _stage(width, 2 * width, n, 2),
            _stage(2 * width, 4 * width, n, 2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        kaiming_init_(self)


class ResNet18(_ResNetBase):
    """CIFAR ResNet-18/34-style network built from basic blocks, widths 64, 128, 256, 512.

    Initialisation as in SynFlow's ``tinyimagenet_resnet.py``: Kaiming-normal (fan-out, ReLU) for
    convs, BatchNorm weight 1 and bias 0, and PyTorch's default init for the Linear head.
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        *,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        widths = (64, 128, 256, 512)
        if len(num_blocks) != len(widths):
            raise ValueError(f"num_blocks must have {len(widths)} entries, got {list(num_blocks)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        stages, in_planes = [], 64
        for i, (planes, blocks) in enumerate(zip(widths, num_blocks)):
            stages.append(_stage(in_planes, planes, blocks, 1 if i == 0 else 2))
            in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def resnet20(num_classes: int = 10, **kw) -> nn.Module:
    """ResNet-20 for CIFAR (He et al. 2016; n=3, 1x1-conv shortcuts as in OpenLTH/SynFlow): 272,474 params."""
    return CifarResNet(20, num_classes, **kw)


def resnet32(num_classes: int = 10, **kw) -> nn.Module:
    """ResNet-32 for CIFAR (He et al. 2016; n=5, 1x1-conv shortcuts as in OpenLTH/SynFlow): 466,906 params."""
    return CifarResNet(32, num_classes, **kw)


def resnet56(num_classes: int = 10, **kw) -> nn.Module:
    """ResNet-56 for CIFAR (He et al. 2016; n=9, 1x1-conv shortcuts as in OpenLTH/SynFlow): 855,770 params."""
    return CifarResNet(56, num_classes, **kw)


def resnet110(num_classes: int = 10, **kw) -> nn.Module:
    """ResNet-110 for CIFAR (He et al. 2016; n=18, 1x1-conv shortcuts as in OpenLTH/SynFlow): 1,730,714 params."""
    return CifarResNet(110, num_classes, **kw)


def resnet18(num_classes: int = 10, **kw) -> nn.Module:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool; as in SynFlow's CIFAR runs): 11,173,962 params."""
    return ResNet18((2, 2, 2, 2), num_classes, **kw)
