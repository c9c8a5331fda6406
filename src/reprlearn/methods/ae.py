"""Undercomplete autoencoder: a code smaller than the input, trained to reconstruct it.

With ``--linear`` (and ``--backbone linear --recon mse``) it is the linear autoencoder of
centred data, as PCA: with m the mean training image (a running average of the batches
seen in training, kept in the checkpoint) and φ the encoder (a linear map of the
channel-normalised pixels), the code is z = W_e (φ(x − m) − φ(0)) + b_e, the
reconstruction x̂ = m + W_d z + b_d (no output sigmoid), the loss Σ_pixels (x̂ − x)². Its
minima span the top ``latent_dim`` principal components of the data (Baldi & Hornik 1989):
the columns of W_d span the PCA subspace. Centring matters for the optimiser, not for the
minimum: uncentred, the biases can absorb the mean, but Adam then spends one code unit on
the mean image for thousands of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import option
from ..errors import fail
from ..nets.mlp import LinearBackbone
from .autoencoder import AutoencoderConfig, AutoencoderMethod, reconstruction_error
from .base import METHODS


@dataclass
class AEConfig(AutoencoderConfig):
    linear: bool = option(False, "linear autoencoder: one linear decoder layer whose outputs are the pixels (no "
                          "sigmoid); needs --backbone linear and --recon mse (it learns the PCA subspace)")


class LinearDecoder(nn.Module):
    """x̂ = W z + b, reshaped to (N, C, H, W)."""

    def __init__(self, latent_dim: int, channels: int, image_size: int):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.linear = nn.Linear(latent_dim, channels * image_size * image_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z).view(len(z), *self.shape)


@METHODS.register("ae")
class Autoencoder(AutoencoderMethod):
    Config = AEConfig

    def __init__(self, config: AEConfig, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        if config.linear:
            if config.recon != "mse":
                raise fail(f"ae --linear reconstructs pixels with squared error, not --recon {config.recon}; "
                           "add --recon mse")
            if not isinstance(encoder.backbone, LinearBackbone):
                raise fail(f"ae --linear needs a linear encoder, got backbone {type(encoder.backbone).__name__}; "
                           "add --backbone linear")
            self.decoder = LinearDecoder(config.latent_dim, info.channels, info.image_size)
            shape = (info.channels, info.image_size, info.image_size)
            self.register_buffer("pixel_mean", torch.zeros(shape))  # m: the mean of the training images seen
            self.register_buffer("images_seen", torch.zeros(()))

    def encode(self, x: Tensor) -> Tensor:
        if not self.config.linear:
            return super().encode(x)
        # φ(x − m) − φ(0): the centred image, through the normalisation's scale and the linear map only
        return self.to_code(self.encoder(x - self.pixel_mean) - self.encoder(torch.zeros_like(x[:1])))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z) + self.pixel_mean if self.config.linear else self.decoder(z)

    @torch.no_grad()
    def _update_mean(self, x: Tensor) -> None:
        """m ← running average of every training image seen: m + (Σ_batch x − n·m) / (count + n)."""
        n = len(x)
        self.images_seen += n
        self.pixel_mean += (x.sum(0) - n * self.pixel_mean) / self.images_seen

    def error(self, out: Tensor, x: Tensor) -> Tensor:
        """Per-image reconstruction loss; the linear AE's outputs are pixels, the others' logits."""
        if self.config.linear:
            return (out - x).pow(2).flatten(1).sum(1)
        return reconstruction_error(out, x, self.config.recon)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        out = self.decode(self.encode(x))
        return out.clamp(0, 1) if self.config.linear else torch.sigmoid(out)

    @torch.no_grad()
    def anomaly_score(self, x: Tensor) -> Tensor:
        return self.error(self.decode(self.encode(x)), x)

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        if self.config.linear and self.training:
            self._update_mean(x)
        recon = self.error(self.decode(self.encode(x)), x).mean()
        return {"loss": recon, "recon": recon.detach()}
