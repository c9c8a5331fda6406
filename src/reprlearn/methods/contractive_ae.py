"""Contractive autoencoder (Rifai et al. 2011): penalise the encoder's sensitivity to its input.

    L = recon(x, f(g(x))) + λ ‖∂g(x)/∂x‖_F²

The Frobenius norm of the Jacobian is small when the code barely moves under
small input perturbations; reconstruction keeps it sensitive only along the
directions the data actually varies in (the tangent space of the manifold).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import option
from ..data.pixels import unit_float
from ..losses import contractive_penalty_estimate, contractive_penalty_exact
from .autoencoder import AutoencoderConfig, AutoencoderMethod, reconstruction_error
from .base import METHODS

# auto uses the exact Jacobian when it has at most this many entries per image: the exact
# value costs K vector-Jacobian products (double backward through the backbone), which on
# CPU made 32 x 64 (digits) ~7x slower per step than one projection
EXACT_MAX_ENTRIES = 1024


@dataclass
class ContractiveAEConfig(AutoencoderConfig):
    contractive_weight: float = option(0.1, "weight λ of the Jacobian penalty ‖∂g(x)/∂x‖_F²", min=0.0, max=1e6)
    jacobian: str = option("auto", "exact Jacobian, or its unbiased random-projection estimate; auto: "
                           f"exact when latent-dim x input pixels <= {EXACT_MAX_ENTRIES}",
                           choices=("auto", "exact", "estimate"))
    projections: int = option(1, "random projections per image for --jacobian estimate", min=1, max=4096)
    jacobian_images: int = option(64, "images of each batch the penalty is averaged over (an unbiased "
                                  "estimate of the batch mean: batches are shuffled)", min=1, max=1 << 20)


@METHODS.register("contractive-ae")
class ContractiveAutoencoder(AutoencoderMethod):
    Config = ContractiveAEConfig

    def views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, torch.Generator]:
        # the estimate's projections are drawn from the engine's generator (reproducible runs)
        return unit_float(images), generator

    def use_exact(self) -> bool:
        c, info = self.config, self.info
        if c.jacobian != "auto":
            return c.jacobian == "exact"
        return c.latent_dim * info.channels * info.image_size**2 <= EXACT_MAX_ENTRIES

    def jacobian_penalty(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """‖∂g(x)/∂x‖_F², mean over the batch, of the encoder as it is used: in eval mode.

        Train-mode BatchNorm makes each code depend on the whole batch, so a
        per-image Jacobian is only defined with fixed (running) statistics; that is
        also the function evaluation and ``encode`` at inference compute.
        """
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            if self.use_exact():
                return contractive_penalty_exact(self.encode, x)
            return contractive_penalty_estimate(self.encode, x, self.config.projections, generator)
        finally:
            self.encoder.train(was_training)

    def loss(self, views) -> dict[str, Tensor]:
        x, generator = views if isinstance(views, tuple) else (views, None)
        recon = reconstruction_error(self.decode(self.encode(x)), x, self.config.recon).mean()
        # a penalty is a regulariser: a random sub-batch estimates it without bias at a fraction of the cost
        penalty = self.jacobian_penalty(x[: self.config.jacobian_images], generator)
        loss = recon + self.config.contractive_weight * penalty
        return {"loss": loss, "recon": recon.detach(), "contractive": penalty.detach()}
