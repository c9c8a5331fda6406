"""Barlow Twins (Zbontar et al. 2021): redundancy reduction between two views.

Two views -> backbone -> projector (Linear-BN-ReLU, Linear-BN-ReLU, Linear) -> z_a, z_b. The
D x D cross-correlation C of the batch-standardised projections is driven to the identity,

    L = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²,   C_ij = (1/N) Σ_b ẑ_a[b, i] ẑ_b[b, j]

(:func:`~reprlearn.losses.barlow_twins_loss`; under DDP C is that of the global batch). No
negatives, no predictor, no momentum encoder. Deviation from the paper: its projector is
8192-8192-8192 with λ = 5·10⁻³; ours is ``proj_hidden``-``proj_hidden``-``proj_dim``
(512-512-512 by default for small images) with λ = 0.02, chosen on digits (kNN / linear, one
seed, λ = 0.002: 0.916 / 0.978, 0.005: 0.933 / 0.978, 0.02: 0.939 / 0.981, 0.05: 0.944 / 0.981,
0.1: 0.897 / 0.969; 0.02 rather than 0.05, away from the drop at 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..losses import barlow_twins_loss
from ..nets import MLPHead
from .base import METHODS, Method


@dataclass
class BarlowTwinsConfig:
    proj_hidden: int = option(512, "projector hidden width (8192 in the paper)", min=1, max=65536)
    proj_dim: int = option(512, "projector output width D: the correlation matrix is D x D (8192 in the paper)",
                           min=2, max=65536)
    lambda_offdiag: float = option(0.02, "λ, weight of the off-diagonal (redundancy) term (5e-3 in the paper for "
                                   "D = 8192; 0.02 measured best on digits with D = 512)", min=0.0, max=10.0)


@METHODS.register("barlow-twins")
class BarlowTwins(Method):
    Config = BarlowTwinsConfig
    run_defaults = {"epochs": 40, "batch_size": 256, "lr": 2e-3, "warmup_epochs": 5}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)  # two augmented views by default
        self.projector = MLPHead(encoder.feature_dim, config.proj_hidden, config.proj_dim, num_layers=3)

    def loss(self, views):
        x_a, x_b = views
        z_a = self.projector(self.encoder(x_a))
        z_b = self.projector(self.encoder(x_b))
        value = barlow_twins_loss(z_a, z_b, lambda_=self.config.lambda_offdiag)
        return {"loss": value, "barlow_twins": value.detach()}
