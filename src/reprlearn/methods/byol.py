"""BYOL (Grill et al. 2020): an online network regresses an EMA target's projections.

online = predictor(projector(encoder(view))); target = EMA copy of encoder + projector
(no gradients). The loss :func:`~reprlearn.losses.byol_loss` (2 − 2 cos, the target
side stop-gradiented) is symmetrised over the two views: each view's prediction
regresses the other view's target projection, and the two terms are averaged. The
EMA momentum rises from ``ema_momentum`` to 1 on a cosine schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import option
from ..losses import byol_loss
from ..nets import MLPHead
from .base import METHODS, Method
from .momentum import EMATeacher


@dataclass
class BYOLConfig:
    ema_momentum: float = option(0.99, "base EMA momentum of the target network (rises to 1, cosine)", min=0.0, max=1.0)
    proj_hidden: int = option(512, "projector and predictor hidden width", min=1, max=65536)
    proj_dim: int = option(128, "projection (loss space) dimension", min=1, max=65536)


@METHODS.register("byol")
class BYOL(Method):
    Config = BYOLConfig
    run_defaults = {"epochs": 60, "batch_size": 256, "lr": 2e-3, "warmup_epochs": 5}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.projector = MLPHead(encoder.feature_dim, config.proj_hidden, config.proj_dim)
        self.predictor = MLPHead(config.proj_dim, config.proj_hidden, config.proj_dim)
        self.target = EMATeacher(nn.Sequential(encoder, self.projector), config.ema_momentum)

    def loss(self, views):
        x_a, x_b = views
        p_a = self.predictor(self.projector(self.encoder(x_a)))
        p_b = self.predictor(self.projector(self.encoder(x_b)))
        with torch.no_grad():
            z_a, z_b = self.target(x_a), self.target(x_b)
        value = 0.5 * (byol_loss(p_a, z_b) + byol_loss(p_b, z_a))
        return {"loss": value, "byol": value.detach()}

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps):
        self.target.update(step, total_steps)
