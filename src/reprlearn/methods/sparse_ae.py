"""Sparse autoencoder (Ng 2011, "Sparse autoencoder" course notes; Lee et al. 2008).

The code h = sigmoid(W · features + b) lives in (0, 1); each unit is asked to fire
rarely: its mean activation over the batch, ρ̂_j, is pulled to a small target ρ by

    L = recon(x, f(h)) + λ Σ_j KL(ρ ‖ ρ̂_j)        (or λ · mean|h| with --sparsity l1)

so every unit specialises on a few inputs instead of all units coding everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import option
from ..losses import kl_sparsity, l1_sparsity
from .autoencoder import AutoencoderConfig, AutoencoderMethod, reconstruction_error
from .base import METHODS


@dataclass
class SparseAEConfig(AutoencoderConfig):
    sparsity: str = option("kl", "sparsity penalty: KL to the target rate per unit, or L1 on the code",
                           choices=("kl", "l1"))
    # ρ 0.1, λ 0.3 on digits: mean code activation 0.13 and a linear probe of 0.975; the textbook
    # ρ 0.05, λ 1 reaches its rate but leaves too little in a 32-unit code (probe 0.953 < random init)
    sparsity_target: float = option(0.1, "target mean activation ρ of each code unit (kl)", above=0.0, max=0.999)
    sparsity_weight: float = option(0.3, "weight λ of the sparsity penalty", min=0.0, max=1e6)


@METHODS.register("sparse-ae")
class SparseAutoencoder(AutoencoderMethod):
    Config = SparseAEConfig

    def encode(self, x: Tensor) -> Tensor:
        """h = sigmoid(to_code(features)): activations in (0, 1), so a "rate" makes sense."""
        return torch.sigmoid(super().encode(x))

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        c = self.config
        h = self.encode(x)
        recon = reconstruction_error(self.decode(h), x, c.recon).mean()
        # ρ̂ is estimated on the batch, so the KL acts on the batch's firing rates
        sparsity = kl_sparsity(h, rho=c.sparsity_target) if c.sparsity == "kl" else l1_sparsity(h)
        return {"loss": recon + c.sparsity_weight * sparsity, "recon": recon.detach(), "sparsity": sparsity.detach()}
