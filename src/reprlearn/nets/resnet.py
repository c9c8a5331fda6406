"""ResNet-18 / ResNet-50 trunks written from scratch (no torchvision).

Widths and block counts follow the standard ImageNet ResNets; there is no fc
layer, the features are the globally average-pooled last stage.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .registry import register_backbone


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = conv3x3(cin, width, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, cout), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    # Stride sits on the 3x3 conv ("ResNet v1.5"), as in torchvision.
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = conv1x1(cin, width), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, width, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, cout), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(cin, cout, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a 1x1 projection (+BN)."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """A ResNet trunk: stem, four stages (64/128/256/512 widths), global average pool.

    ``cifar_stem`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv so small
    images are not downsampled 4x before the first stage. ``zero_init_residual``
    starts each residual branch at zero, so every block begins as an identity.
    """

    def __init__(self, block: type, layers: Sequence[int], in_channels: int = 3,
                 cifar_stem: bool = False, zero_init_residual: bool = False):
        super().__init__()
        if cifar_stem:
            self.stem = nn.Sequential(conv3x3(in_channels, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages, cin = [], 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, stride=2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin
        self._init_weights(zero_init_residual)
        self.to(memory_format=torch.channels_last)  # faster convs on CPU (oneDNN) and GPU

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


def _use_cifar_stem(cifar_stem: bool | None, image_size: int) -> bool:
    return image_size <= 64 if cifar_stem is None else bool(cifar_stem)


@register_backbone("resnet18")
def resnet18(in_channels: int, image_size: int, cifar_stem: bool | None = None,
             zero_init_residual: bool = False) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, _use_cifar_stem(cifar_stem, image_size),
                  zero_init_residual)


@register_backbone("resnet50")
def resnet50(in_channels: int, image_size: int, cifar_stem: bool | None = None,
             zero_init_residual: bool = False) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, _use_cifar_stem(cifar_stem, image_size),
                  zero_init_residual)
