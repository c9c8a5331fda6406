"""CLIP (Radford et al. 2021): contrastive image-text pre-training.

Symmetric cross-entropy over the B×B similarities of a batch's image and caption
embeddings (:func:`~reprlearn.losses.clip_loss`), scaled by a learned multiplier
``exp(log_scale)`` that starts at 1/0.07 and is clamped at 100. Under DDP the
embeddings of every rank are gathered with gradients, so each image is contrasted
with the whole global batch of captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import option
from ..losses import clip_loss
from .image_text import ImageTextConfig, ImageTextMethod
from .base import METHODS


@dataclass
class CLIPConfig(ImageTextConfig):
    init_temperature: float = option(0.07, "initial softmax temperature (the scale starts at its inverse)",
                                     above=0.0, max=10.0)
    max_scale: float = option(100.0, "upper clamp of the learned logit scale", above=0.0, max=1e6)


@METHODS.register("clip")
class CLIP(ImageTextMethod):
    Config = CLIPConfig

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.config.max_scale)

    def image_text_loss(self, image, text, distributed):
        value = clip_loss(image, text, self.scale(), gather=distributed)
        return {"loss": value, "clip": value.detach(), "logit_scale": self.scale().detach()}

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps):
        self.log_scale.clamp_(max=math.log(self.config.max_scale))  # as CLIP: the parameter itself stays in range
