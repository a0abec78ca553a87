"""A generic image classifier for the examples, two small networks for the 8x8 digits data (the VGG-style
``ConvNet`` also fits 28x28 images, e.g. ``ConvNet(1, (32, 64, 128))``), and LeNet-5 for 28x28 images.

``ImageClassifier`` wraps any ``torch.nn.Module`` backbone. From a LightningCLI config the backbone is
given by ``class_path`` (a module class, or a function returning a module such as
``lightning_synflow.models.resnet20``) and ``init_args``::

    model:
      backbone:
        class_path: lightning_synflow.models.resnet20
        init_args: {num_classes: 10}
      lr: 0.1
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from lightning_synflow import shrink_to_checkpoint


class ImageClassifier(LightningModule):
    """Classify images with any backbone: cross-entropy, SGD with momentum and a step learning-rate schedule.

    Args:
        backbone: The network, mapping a batch of images to class logits, e.g.
            ``{class_path: lightning_synflow.models.resnet20, init_args: {num_classes: 10}}``.
        num_classes: Number of classes, for the accuracy metrics; must match the backbone's output.
        lr: Initial learning rate of SGD.
        momentum: SGD momentum (0 disables it).
        nesterov: Use Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added by SGD to every parameter's gradient.
        milestones: Epochs at which the learning rate is multiplied by ``gamma`` (``MultiStepLR``);
            empty for a constant learning rate.
        gamma: Factor applied to the learning rate at each milestone.
        input_shape: Shape of one input without the batch dimension, e.g. ``[3, 32, 32]``. Sets
            ``example_input_array`` (a zero batch of one), which SynFlow uses for its input shape and the
            model summary for its sizes; without it the pruning callback looks at the first training batch.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 10,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        input_shape: Optional[list[int]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone` must be a torch.nn.Module, got {type(backbone).__name__}")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {num_classes}")
        if lr <= 0:
            raise ValueError(f"`lr` must be positive, got {lr}")
        if nesterov and momentum <= 0:
            raise ValueError("`nesterov=True` needs `momentum > 0`")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"`milestones` must be increasing, got {list(milestones)}")
        if input_shape is not None and (not input_shape or any(int(s) <= 0 for s in input_shape)):
            raise ValueError(f"`input_shape` must be a non-empty list of positive sizes, got {input_shape}")
        # Under LightningCLI the saved hyperparameters are the parsed config, where `backbone` is its
        # class_path/init_args (so `ImageClassifier.load_from_checkpoint(path)` rebuilds it). Built in
        # Python, `backbone` is a module object whose weights the checkpoint holds anyway: it is kept out
        # of the hyperparameters (pass `backbone=` to `load_from_checkpoint`).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("backbone"), nn.Module):
            self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.num_classes = num_classes
        self.lr = lr
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.milestones = [int(m) for m in milestones]
        self.gamma = gamma
        self.example_input_array = None if input_shape is None else torch.zeros(1, *(int(s) for s in input_shape))
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean())
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test/loss", F.cross_entropy(logits, y))
        self.log("test/acc", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(1)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint of a network PruneAtInit(shrink=True) shrank: become that smaller network before its
        # weights load, so that `ImageClassifier.load_from_checkpoint(path)` works (needs `input_shape`).
        shrink_to_checkpoint(self, checkpoint, self.example_input_array)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
        )
        if not self.milestones:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=self.milestones, gamma=self.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class MLP(nn.Module):
    """A fully connected ReLU network on flattened images (by default the 1x8x8 digits).

    Args:
        in_features: Number of input values per image (channels x height x width), 64 for digits.
        hidden: Width of each hidden layer, in order.
        num_classes: Number of output logits.
    """

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (256, 256), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """A small VGG-style network for small images: [3x3 conv, BN, ReLU, 2x2 max-pool] per stage, then a
    global average pool and a linear classifier (by default for the 1x8x8 digits).

    Args:
        in_channels: Channels of the input images, 1 for digits.
        channels: Output channels of each stage; each stage halves the resolution.
        num_classes: Number of output logits.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers += [
                nn.Conv2d(width, int(c), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(c)),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            width = int(c)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) for 28x28 images such as (Fashion-)MNIST, with ReLU activations:
    conv 5x5 (padding 2) -> pool -> conv 5x5 -> pool -> three fully connected layers (400-120-84-10 at 28x28).

    With the default widths it has 61,470 prunable weights (the Conv2d and Linear weights: 150, 2,400,
    48,000, 10,080 and 840) and 236 biases. Weights are initialised like the SynFlow paper's models
    (Kaiming-normal, fan-in, ReLU gain), biases at zero.

    Pooling is 2x2 *average* pooling by default, as LeCun's subsampling layers were: unlike max-pooling it
    passes every unit's signal on, so SynFlow's linearised network and the effective-sparsity count (a weight
    is alive iff it lies on an input-output path) see every path; ``pool="max"`` gives the common modern variant.

    Args:
        in_channels: Channels of the input images (1 for grayscale).
        num_classes: Number of output logits.
        channels: Output channels of the two convolutions.
        hidden: Widths of the two hidden fully connected layers.
        input_size: Side of the square input images (28 for MNIST-like data, 32 for CIFAR).
        pool: ``"avg"`` or ``"max"`` 2x2 pooling after each convolution.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
        input_size: int = 28,
        pool: Literal["avg", "max"] = "avg",
    ) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"`pool` must be 'avg' or 'max', got {pool!r}")
        if len(channels) != 2 or len(hidden) != 2:
            raise ValueError(f"LeNet-5 has two convolutions and two hidden layers: got channels={list(channels)}, hidden={list(hidden)}")
        side = (input_size // 2 - 4) // 2  # conv1 keeps the size (padding 2), pool halves, conv2 takes 4, pool halves
        if side < 1:
            raise ValueError(f"`input_size` must be at least 12, got {input_size}")
        Pool = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        c1, c2 = int(channels[0]), int(channels[1])
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),
            nn.ReLU(),
            Pool(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(),
            Pool(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, int(hidden[0])),
            nn.ReLU(),
            nn.Linear(int(hidden[0]), int(hidden[1])),
            nn.ReLU(),
            nn.Linear(int(hidden[1]), num_classes),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
