"""Denoising autoencoder (Vincent et al. 2008): reconstruct the clean x from a corrupted x̃.

    x̃ ~ q(x̃ | x):  x + δ, δ ~ N(0, σ² I), clamped to [0, 1]   (--noise gaussian)
                    x with each pixel zeroed with probability p  (--noise masking)
    L = recon(x, f(g(x̃)))

An identity map no longer solves the task, so the code has to capture the structure
of the data (the manifold the corruption pushes x off) to undo the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import option
from ..data.pixels import unit_float
from .autoencoder import AutoencoderConfig, AutoencoderMethod, reconstruction_error
from .base import METHODS


@dataclass
class DenoisingAEConfig(AutoencoderConfig):
    noise: str = option("gaussian", "corruption of the input", choices=("gaussian", "masking"))
    noise_std: float = option(0.3, "σ of the additive Gaussian noise, in pixel units of [0, 1]", min=0.0, max=10.0)
    mask_prob: float = option(0.3, "probability of zeroing each pixel (masking noise)", min=0.0, max=0.999)


@METHODS.register("denoising-ae")
class DenoisingAutoencoder(AutoencoderMethod):
    Config = DenoisingAEConfig

    def views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(clean, noisy); the noise comes from the engine's generator, so runs are reproducible."""
        x = unit_float(images)
        c = self.config
        if c.noise == "gaussian":
            delta = torch.randn(x.shape, generator=generator, device=x.device) * c.noise_std
            return x, (x + delta).clamp(0.0, 1.0)
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= c.mask_prob
        return x, x * keep

    def loss(self, views: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        clean, noisy = views
        recon = reconstruction_error(self.decode(self.encode(noisy)), clean, self.config.recon).mean()
        return {"loss": recon, "recon": recon.detach()}
