"""VICReg (Bardes, Ponce and LeCun 2022): variance-invariance-covariance regularisation.

Two views -> backbone -> expander (Linear-BN-ReLU, Linear-BN-ReLU, Linear) -> z_a, z_b, and

    L = λ s(Z_a, Z_b) + μ [v(Z_a) + v(Z_b)] / 2 + ν [c(Z_a) + c(Z_b)]

with s the mean squared distance of the two views' embeddings (invariance), v the hinge
(1/D) Σ_j max(0, 1 − sqrt(Var(z^j) + ε)) keeping every dimension's standard deviation at 1
(variance: no collapse to a point) and c the squared off-diagonal covariances over D
(covariance: no dimensional collapse); :func:`~reprlearn.losses.vicreg_loss`, λ = μ = 25,
ν = 1 as in the paper. Under DDP all three terms are over the global batch. Deviation from the
paper: its expander is 8192-8192-8192; ours is ``proj_hidden``-``proj_hidden``-``proj_dim``.
``--var-weight 0 --cov-weight 0`` leaves the invariance alone (the paper's collapsing ablation;
on digits with the cnn the projections shrink but the backbone's features keep their spread
over 8 epochs: the projector absorbs the collapse).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..losses import vicreg_terms
from ..nets import MLPHead
from .base import METHODS, Method


@dataclass
class VICRegConfig:
    proj_hidden: int = option(512, "expander hidden width (8192 in the paper)", min=1, max=65536)
    proj_dim: int = option(512, "expander output width D (8192 in the paper)", min=2, max=65536)
    sim_weight: float = option(25.0, "λ, weight of the invariance (MSE) term", min=0.0, max=1e4)
    var_weight: float = option(25.0, "μ, weight of the variance hinge", min=0.0, max=1e4)
    cov_weight: float = option(1.0, "ν, weight of the covariance term", min=0.0, max=1e4)


@METHODS.register("vicreg")
class VICReg(Method):
    Config = VICRegConfig
    run_defaults = {"epochs": 40, "batch_size": 256, "lr": 2e-3, "warmup_epochs": 5}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.projector = MLPHead(encoder.feature_dim, config.proj_hidden, config.proj_dim, num_layers=3)

    def loss(self, views):
        c = self.config
        x_a, x_b = views
        z_a = self.projector(self.encoder(x_a))
        z_b = self.projector(self.encoder(x_b))
        s, v, cov = vicreg_terms(z_a, z_b)
        value = c.sim_weight * s + c.var_weight * v + c.cov_weight * cov
        return {"loss": value, "invariance": s.detach(), "variance": v.detach(), "covariance": cov.detach()}
