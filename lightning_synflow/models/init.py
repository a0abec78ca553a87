"""The initialisation of the SynFlow code's lottery_resnet / lottery_vgg models, shared by both."""

from torch import nn


def kaiming_init_(model: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU gain) conv and linear weights, zero biases, BatchNorm weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
