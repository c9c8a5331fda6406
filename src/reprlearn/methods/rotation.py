"""RotNet (Gidaris et al. 2018): predict which multiple of 90° an image was rotated by.

Every image of the batch is shown in all four rotations k·90°, k = 0..3 (``all_rotations``,
the paper's setting: a 4N batch with exactly balanced labels), or, with
``--all-rotations false``, once with a per-sample k drawn from the engine's generator.
The backbone's features go through an MLP head that predicts k (4-way cross-entropy).
The head is dropped for evaluation, which uses ``self.encoder`` on upright images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..augment import augment
from ..config import option
from ..data.pixels import unit_float
from ..nets import MLPHead
from .base import METHODS, Method


@dataclass
class RotationConfig:
    all_rotations: bool = option(True, "show every image in all four rotations (else one random k per image)")
    head_hidden: int = option(256, "hidden width of the rotation head (0 = a linear head)", min=0, max=65536)
    augment_views: bool = option(False, "apply the run's --augment preset before rotating")


def rotate_batch(x: Tensor, k: Tensor) -> Tensor:
    """Rotate image i of (N, C, H, W) by k[i]·90° counter-clockwise (``torch.rot90`` on dims (2, 3))."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate_batch needs square images, got {tuple(x.shape[-2:])}")
    k = k.to(x.device).long().remainder(4)
    out = torch.empty_like(x)
    for r in range(4):
        idx = (k == r).nonzero().flatten()
        if len(idx):
            out[idx] = torch.rot90(x[idx], r, dims=(2, 3))
    return out


@METHODS.register("rotation")
class Rotation(Method):
    Config = RotationConfig
    run_defaults = {"epochs": 15, "warmup_epochs": 1}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        if config.head_hidden:
            self.head = MLPHead(encoder.feature_dim, config.head_hidden, 4)
        else:
            self.head = torch.nn.Linear(encoder.feature_dim, 4)

    def views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = augment(images, self.view_spec, generator) if self.config.augment_views else unit_float(images)
        n = len(x)
        if self.config.all_rotations:
            k = torch.arange(4, device=x.device).repeat_interleave(n)
            x = x.repeat(4, 1, 1, 1)
        else:
            k = torch.randint(0, 4, (n,), generator=generator, device=x.device)
        return rotate_batch(x, k), k

    def loss(self, views):
        x, k = views
        logits = self.head(self.encoder(x))
        value = F.cross_entropy(logits, k)
        acc = (logits.argmax(1) == k).float().mean()
        return {"loss": value, "ce": value.detach(), "rot_acc": acc.detach()}
