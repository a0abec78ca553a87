"""CIFAR-style networks used in the SynFlow paper (Tanaka et al. 2020), in plain PyTorch.

Every constructor is ``f(num_classes=10, **kw) -> nn.Module`` and accepts ``in_channels`` (default 3).
Look one up by name with :func:`get_model`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lightning_synflow.models.cifar_resnet import (
    resnet18,
    resnet20,
    resnet32,
    resnet56,
    resnet110,
)
from lightning_synflow.models.cifar_vgg import vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn

#: Name -> constructor ``(num_classes=10, **kw) -> nn.Module``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg11_bn": vgg11_bn,
    "vgg13_bn": vgg13_bn,
    "vgg16_bn": vgg16_bn,
    "vgg19_bn": vgg19_bn,
}


def get_model(name: str, num_classes: int = 10, **kw) -> nn.Module:
    """Build the model registered as ``name`` (case-insensitive) in :data:`MODELS`.

    Extra keyword arguments (e.g. ``in_channels=1``) go to the constructor.
    Raises ``ValueError`` naming the unknown value and the valid names.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[key](num_classes=num_classes, **kw)


__all__ = [
    "MODELS",
    "get_model",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
]
