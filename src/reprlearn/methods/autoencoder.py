"""Shared machinery of the autoencoder family: encoder -> code -> decoder.

g_φ = (normalise -> backbone -> linear to the code), f_θ = decoder to pixel logits.
Evaluation features are the backbone's (the part every method shares), so the
random-init baseline has the same architecture and feature dimension; the code
itself is ``encode(x)``.

Generative hooks the evaluation harness uses (see ``evaluate/generative.py``):
``reconstruct``, ``encode``/``decode`` (interpolations, 2-D latent grids),
``anomaly_score``; VAEs add ``sample``, ``nelbo`` and ``iwae``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import option
from ..data.pixels import unit_float
from ..nets.decoders import build_decoder
from .base import Interpolates, Method, Reconstructs


@dataclass
class AutoencoderConfig:
    latent_dim: int = option(32, "size of the code (bottleneck)", min=1, max=65536)
    recon: str = option("bce", "reconstruction loss on pixels in [0, 1]", choices=("mse", "bce"))


def reconstruction_error(logits: Tensor, x: Tensor, kind: str) -> Tensor:
    """Per-image reconstruction loss, summed over pixels: (N,)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    return (torch.sigmoid(logits) - x).pow(2).flatten(1).sum(1)


class AutoencoderMethod(Method, Reconstructs, Interpolates):
    """An undercomplete autoencoder; subclasses change the code, the input noise or the penalty."""

    interpolation = "linear"  # VAEs interpolate spherically

    def __init__(self, config: Any, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.to_code = nn.Linear(encoder.feature_dim, self.code_inputs(config))
        self.decoder = build_decoder(config.latent_dim, info.channels, info.image_size)

    def code_inputs(self, config) -> int:
        return config.latent_dim

    # ---------------------------------------------------------------- the networks
    def views(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return unit_float(images)  # autoencoders see the data itself, no augmentation

    def encode(self, x: Tensor) -> Tensor:
        """g_φ(x): the code."""
        return self.to_code(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        """f_θ(z): pixel logits (N, C, H, W)."""
        return self.decoder(z)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decode(self.encode(x)))

    @torch.no_grad()
    def figure_rows(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        """Named rows of the reconstruction figure, each (N, C, H, W) in [0, 1]."""
        return {"input": x, "reconstruction": self.reconstruct(x)}

    @torch.no_grad()
    def anomaly_score(self, x: Tensor) -> Tensor:
        """Per-image reconstruction error (higher = more anomalous)."""
        return reconstruction_error(self.decode(self.encode(x)), x, self.config.recon)

    # ---------------------------------------------------------------- the objective
    def loss(self, x: Tensor) -> dict[str, Tensor]:
        recon = reconstruction_error(self.decode(self.encode(x)), x, self.config.recon).mean()
        return {"loss": recon, "recon": recon.detach()}
