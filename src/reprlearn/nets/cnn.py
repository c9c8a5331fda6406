"""A small, fast CNN for tiny images (8x8 digits up to 32x32 CIFAR)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import fail
from .registry import register_backbone


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """One conv3x3-BN-ReLU stage per width, then global average pooling.

    Every stage after the first halves the resolution with a stride-2 conv,
    but only while the map stays at least 2x2, so the same net works on 8x8
    and 32x32 inputs without collapsing tiny images to nothing. An optional
    final Linear maps to ``feature_dim`` when a fixed width is wanted.
    """

    def __init__(self, in_channels: int, image_size: int, widths: Sequence[int] = (32, 64, 128),
                 feature_dim: int | None = None):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise fail(f"cnn widths must be a non-empty list of positive ints, got {widths}")
        layers: list[nn.Module] = []
        cin, size = in_channels, image_size
        for i, w in enumerate(widths):
            stride = 2 if i > 0 and size // 2 >= 2 else 1
            size = (size + 1) // 2 if stride == 2 else size
            layers.append(conv_bn_relu(cin, w, stride))
            cin = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if feature_dim is not None:
            layers.append(nn.Linear(cin, int(feature_dim)))
            cin = int(feature_dim)
        self.net = nn.Sequential(*layers)
        self.feature_dim = cin
        # Channels-last conv weights and inputs avoid layout copies in oneDNN
        # (about 1.5x faster on CPU) and are neutral-to-faster on GPU.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


@register_backbone("cnn")
def cnn(in_channels: int, image_size: int, widths: Sequence[int] = (32, 64, 128),
        feature_dim: int | None = None) -> SmallCNN:
    return SmallCNN(in_channels, image_size, widths, feature_dim)
