"""Hierarchical VAE with N latent groups and top-down inference (Sønderby et al. 2016, Ladder VAE).

    generative (top-down):  z_N ~ N(0, I),  z_i ~ p(z_i|z_{i+1}) = N(μ_p,i, σ_p,i²),  x ~ p(x|z_1)
    bottom-up (deterministic): u_1 = backbone(x),  u_i = ReLU(W_i u_{i-1});  d_i = N(μ̂_i, σ̂_i²) from u_i
    inference (shares the top-down path):
        q(z_i|z_{i+1}, x) ∝ p(z_i|z_{i+1}) · d_i(z_i)        (p(z_N) = N(0, I) at the top)
        σ_q² = 1 / (σ_p⁻² + σ̂⁻²),   μ_q = σ_q² (μ_p σ_p⁻² + μ̂ σ̂⁻²)     (precision-weighted)
    L = −log p(x|z_1) + β_t · Σ_i KL(q(z_i|z_{i+1}, x) ‖ p(z_i|z_{i+1}))

Each KL is closed form between two Gaussians, taken at the sampled z_{i+1}, so the sum
is an unbiased one-sample estimate of KL(q(z_1..N|x) ‖ p(z_1..N)). An uninformative
d_i (σ̂_i → ∞) leaves q equal to the prior. ``--groups`` sets N (1 = a VAE whose posterior
is the prior times one Gaussian factor); z_1 has ``latent-dim`` units, the others
``top-dim``. ``encode`` returns μ_q of z_1 along the mean path (every z_i = μ_q,i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import option
from ..losses import gaussian_kl_between, gaussian_log_prob
from .vae import VAEConfig, VAEMethod
from .base import METHODS


@dataclass
class HVAEConfig(VAEConfig):
    groups: int = option(2, "latent groups N: z_1 (the decoder's input) .. z_N (the top)", min=1, max=64)
    top_dim: int = option(8, "size of each group above z_1 (latent-dim is z_1)", min=1, max=65536)
    hidden: int = option(128, "width of the bottom-up layers and of the MLPs of p(z_i|z_{i+1})", min=1, max=65536)


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_out))


def precision_weighted(mu_p: Tensor, logvar_p: Tensor, mu_d: Tensor, logvar_d: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, log σ²) of the normalised product N(μ_p, σ_p²) · N(μ_d, σ_d²):

        σ² = 1 / (σ_p⁻² + σ_d⁻²),   μ = σ² (μ_p σ_p⁻² + μ_d σ_d⁻²) = w μ_p + (1 − w) μ_d

    with the prior's share of the precision w = σ_p⁻² / (σ_p⁻² + σ_d⁻²) = sigmoid(log σ_d² − log σ_p²),
    so log σ² = log σ_p² + log w, stable for any pair of log-variances.
    """
    t = logvar_d - logvar_p
    w = torch.sigmoid(t)
    return w * mu_p + (1 - w) * mu_d, logvar_p + F.logsigmoid(t)


@METHODS.register("hvae")
class HVAE(VAEMethod):
    Config = HVAEConfig

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)  # to_code: u_1 -> d_1
        n, d1, dt, hid = config.groups, config.latent_dim, config.top_dim, config.hidden
        # bottom-up: u_i = ReLU(W_i u_{i-1}) and its head d_i, for the groups above z_1
        self.up = nn.ModuleList(nn.Sequential(nn.Linear(encoder.feature_dim if i == 0 else hid, hid),
                                              nn.ReLU(inplace=True)) for i in range(n - 1))
        self.up_head = nn.ModuleList(nn.Linear(hid, 2 * dt) for _ in range(n - 1))
        # top-down: p(z_i|z_{i+1}) for i = 1..N-1 (index i-1)
        self.down = nn.ModuleList(mlp(dt, hid, 2 * (d1 if i == 0 else dt)) for i in range(n - 1))

    @property
    def dims(self) -> list[int]:
        """Sizes of z_1 .. z_N."""
        return [self.config.latent_dim] + [self.config.top_dim] * (self.config.groups - 1)

    @property
    def noise_dim(self) -> int:
        return sum(self.dims)  # ε for z_1, then z_2 .. z_N

    def bottom_up(self, h: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(μ̂_i, log σ̂_i²) of d_1 .. d_N."""
        d, u = [self.to_code(h).chunk(2, dim=1)], h
        for up, head in zip(self.up, self.up_head):
            u = up(u)
            d.append(head(u).chunk(2, dim=1))
        return d

    def top_down(self, h: Tensor, eps: Tensor | None) -> list[dict[str, Tensor]]:
        """Groups N .. 1 of q, each {z, mu_q, logvar_q, mu_p, logvar_p}; eps=None: z_i = μ_q,i."""
        d = self.bottom_up(h)
        noise = eps.split(self.dims, dim=1) if eps is not None else [None] * len(self.dims)
        out, z = [], None
        for i in reversed(range(len(self.dims))):
            if z is None:  # the top: p(z_N) = N(0, I)
                mu_p = torch.zeros_like(d[i][0])
                logvar_p = torch.zeros_like(mu_p)
            else:
                mu_p, logvar_p = self.down[i](z).chunk(2, dim=1)
            mu_q, logvar_q = precision_weighted(mu_p, logvar_p, *d[i])
            z = mu_q if noise[i] is None else mu_q + (0.5 * logvar_q).exp() * noise[i]
            out.append({"z": z, "mu_q": mu_q, "logvar_q": logvar_q, "mu_p": mu_p, "logvar_p": logvar_p})
        return out

    def posterior(self, h: Tensor, c=None) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q(z_1|z_2, x) along the mean path, for ``encode``."""
        g = self.top_down(h, None)[-1]
        return g["mu_q"], g["logvar_q"]

    def prior_latents(self, n: int, c, generator) -> Tensor:
        dev = self._device()
        z = torch.randn(n, self.dims[-1], generator=generator, device=dev)
        for i in reversed(range(len(self.dims) - 1)):
            mu_p, logvar_p = self.down[i](z).chunk(2, dim=1)
            z = mu_p + (0.5 * logvar_p).exp() * torch.randn(n, self.dims[i], generator=generator, device=dev)
        return z

    def elbo_terms(self, h: Tensor, x: Tensor, c, eps: Tensor) -> dict[str, Tensor]:
        groups = self.top_down(h, eps)[::-1]  # z_1 .. z_N
        out = {f"kl_z{i + 1}": gaussian_kl_between(g["mu_q"], g["logvar_q"], g["mu_p"], g["logvar_p"])
               for i, g in enumerate(groups)}
        log_p = sum(gaussian_log_prob(g["z"], g["mu_p"], 0.5 * g["logvar_p"]) for g in groups)
        log_q = sum(gaussian_log_prob(g["z"], g["mu_q"], 0.5 * g["logvar_q"]) for g in groups)
        out["kl"] = sum(out.values())
        out["log_px"] = self.log_likelihood(x, self.logits(groups[0]["z"], c))
        out["log_ratio"] = log_p - log_q
        return out
