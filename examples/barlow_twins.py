"""Barlow Twins (Zbontar et al. 2021) as a method in your own file.

Train it like a built-in method; its options become flags:

    reprlearn train examples/barlow_twins.py:BarlowTwins --epochs 20 --lambda-offdiag 0.02
    reprlearn eval runs/barlowtwins-...            # the file is imported again from the recorded path

or from Python: ``reprlearn.train(BarlowTwins, epochs=20)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from reprlearn.config import option
from reprlearn.methods import Method
from reprlearn.nets import MLPHead


def barlow_twins_loss(z_a: Tensor, z_b: Tensor, lambda_offdiag: float) -> Tensor:
    """Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², C = (1/N) ẑ_aᵀ ẑ_b, ẑ standardised over the batch.

    The cross-correlation C of the two views' embeddings is pulled to the identity: its
    diagonal makes the views agree, its off-diagonal decorrelates the dimensions.
    """
    n = z_a.shape[0]
    z_a = (z_a - z_a.mean(0)) / z_a.std(0, unbiased=False).clamp_min(1e-6)
    z_b = (z_b - z_b.mean(0)) / z_b.std(0, unbiased=False).clamp_min(1e-6)
    c = z_a.T @ z_b / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag


@dataclass
class BarlowTwinsConfig:
    proj_hidden: int = option(512, "projector hidden width", min=1, max=65536)
    proj_dim: int = option(256, "projector output width D (the correlation matrix is D x D)", min=2, max=65536)
    lambda_offdiag: float = option(0.02, "λ, weight of the off-diagonal (redundancy) term; the paper's 0.005 "
                                   "is for D = 8192, about 1/D scales it to smaller projectors", min=0.0, max=10.0)


class BarlowTwins(Method):
    Config = BarlowTwinsConfig

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)  # two augmented views by default
        self.projector = MLPHead(encoder.feature_dim, config.proj_hidden, config.proj_dim, num_layers=3)

    def loss(self, views):
        x_a, x_b = views
        value = barlow_twins_loss(self.projector(self.encoder(x_a)), self.projector(self.encoder(x_b)),
                                  self.config.lambda_offdiag)
        return {"loss": value}
