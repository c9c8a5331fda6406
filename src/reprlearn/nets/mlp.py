"""A flatten + MLP backbone: the simplest baseline, useful for tiny images."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..errors import fail
from .registry import register_backbone


class MLPBackbone(nn.Module):
    """Flatten the image, then Linear-BN-ReLU layers; features are the last hidden layer."""

    def __init__(self, in_features: int, hidden_dims: Sequence[int] = (512, 256)):
        super().__init__()
        hidden_dims = list(hidden_dims)
        if not hidden_dims or any(int(h) < 1 for h in hidden_dims):
            raise fail(f"mlp hidden_dims must be a non-empty list of positive ints, got {hidden_dims}")
        layers: list[nn.Module] = [nn.Flatten()]
        dim = in_features
        for h in hidden_dims:
            layers += [nn.Linear(dim, int(h), bias=False), nn.BatchNorm1d(int(h)), nn.ReLU(inplace=True)]
            dim = int(h)
        self.net = nn.Sequential(*layers)
        self.feature_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_backbone("mlp")
def mlp(in_channels: int, image_size: int, hidden_dims: Sequence[int] = (512, 256)) -> MLPBackbone:
    return MLPBackbone(in_channels * image_size * image_size, hidden_dims)


class LinearBackbone(nn.Module):
    """Flatten, then one linear map (no bias, no activation) to as many features as pixels: the linear
    baseline, and the encoder of ``ae --linear``."""

    def __init__(self, in_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, in_features, bias=False))
        self.feature_dim = in_features

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_backbone("linear")
def linear(in_channels: int, image_size: int) -> LinearBackbone:
    return LinearBackbone(in_channels * image_size * image_size)
