"""SigLIP (Zhai et al. 2023): sigmoid loss for image-text pre-training.

Every (image, caption) pair of the batch is an independent binary decision, matched
(the diagonal) or not, on the logit ``t·⟨I_i, T_j⟩ + b`` with a learned scale
``t = exp(log_scale)`` (starting at 10) and bias ``b`` (starting at −10, so the many
negatives do not swamp the first steps): :func:`~reprlearn.losses.siglip_loss`. No
softmax over the batch, so under DDP no rank builds the global similarity matrix:
each rank scores its images against its own captions, then against the other ranks'
captions passed around the ring in chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import option
from ..losses import siglip_loss
from .image_text import ImageTextConfig, ImageTextMethod
from .base import METHODS


@dataclass
class SigLIPConfig(ImageTextConfig):
    init_scale: float = option(10.0, "initial logit scale t (learned as log t)", above=0.0, max=1e6)
    init_bias: float = option(-10.0, "initial logit bias b (learned)", min=-1e6, max=1e6)


@METHODS.register("siglip")
class SigLIP(ImageTextMethod):
    Config = SigLIPConfig

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(config.init_bias)))

    def image_text_loss(self, image, text, distributed):
        scale = self.log_scale.exp()
        value = siglip_loss(image, text, scale, self.bias, distributed=distributed)
        return {"loss": value, "siglip": value.detach(), "logit_scale": scale.detach(), "logit_bias": self.bias.detach()}
