"""The encoder a run hands out: per-channel normalisation in front of a backbone.

Keeping the data's mean/std inside the module means ``reprlearn.load(run)`` gives
something that takes plain float images in [0, 1] (N, C, H, W), with nothing else
to remember.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Encoder(nn.Module):
    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(backbone.feature_dim)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        """Float images in [0, 1], (N, C, H, W) -> features (N, feature_dim)."""
        return self.backbone(self.normalize(x))
