"""Hierarchical VAE with two latent groups, inferred top-down (Sønderby et al. 2016, Ladder VAE).

    generative:  z2 ~ N(0, I),  z1 ~ p(z1|z2) = N(μ_p(z2), σ_p²(z2)),  x ~ p(x|z1)
    inference:   h = backbone(x)                       (bottom-up)
                 z2 ~ q(z2|x)     = N(μ_2(h), σ_2²(h))
                 z1 ~ q(z1|x, z2) = N(μ_1(h, z2), σ_1²(h, z2))   (top-down: z2 feeds z1)
    L = −log p(x|z1) + β_t · [ KL(q(z2|x) ‖ N(0, I)) + KL(q(z1|x, z2) ‖ p(z1|z2)) ]

Both KLs are closed form between Gaussians; the second is taken at the sampled z2,
so the sum is an unbiased one-sample estimate of the KL of the joint posterior.
``encode`` returns μ_1(h, μ_2(h)), the mean code of the lower group (the decoder's input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import option
from ..losses import gaussian_kl, gaussian_kl_between, gaussian_log_prob
from . import METHODS
from .vae import VAEConfig, VAEMethod


@dataclass
class HVAEConfig(VAEConfig):
    top_dim: int = option(8, "size of the top latent z2 (latent-dim is z1, the decoder's input)", min=1, max=65536)
    hidden: int = option(128, "width of the MLPs of p(z1|z2) and q(z1|x, z2)", min=1, max=65536)


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_out))


@METHODS.register("hvae")
class HVAE(VAEMethod):
    Config = HVAEConfig

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)  # to_code: h -> q(z2|x)
        d1, d2 = config.latent_dim, config.top_dim
        self.q_z1 = mlp(encoder.feature_dim + d2, config.hidden, 2 * d1)
        self.p_z1 = mlp(d2, config.hidden, 2 * d1)

    def code_inputs(self, config) -> int:
        return 2 * config.top_dim  # the bottom-up head gives q(z2|x)

    @property
    def noise_dim(self) -> int:
        return self.config.latent_dim + self.config.top_dim  # ε for z1, then for z2

    def posterior(self, h: Tensor, c=None) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q(z1|x, z2 = μ_2): the deterministic path, for ``encode``."""
        mu2, _ = self.to_code(h).chunk(2, dim=1)
        return self.q_z1(torch.cat([h, mu2], dim=1)).chunk(2, dim=1)

    def prior_latents(self, n: int, c, generator) -> Tensor:
        dev = self._device()
        z2 = torch.randn(n, self.config.top_dim, generator=generator, device=dev)
        mu_p, logvar_p = self.p_z1(z2).chunk(2, dim=1)
        return mu_p + (0.5 * logvar_p).exp() * torch.randn(n, self.config.latent_dim, generator=generator, device=dev)

    def elbo_terms(self, h: Tensor, x: Tensor, c, eps: Tensor) -> dict[str, Tensor]:
        eps1, eps2 = eps.split([self.config.latent_dim, self.config.top_dim], dim=1)
        mu2, logvar2 = self.to_code(h).chunk(2, dim=1)
        z2 = mu2 + (0.5 * logvar2).exp() * eps2
        mu1, logvar1 = self.q_z1(torch.cat([h, z2], dim=1)).chunk(2, dim=1)
        z1 = mu1 + (0.5 * logvar1).exp() * eps1
        mu_p, logvar_p = self.p_z1(z2).chunk(2, dim=1)
        kl_z2 = gaussian_kl(mu2, logvar2)
        kl_z1 = gaussian_kl_between(mu1, logvar1, mu_p, logvar_p)
        zero = torch.zeros_like(z2)
        log_p = gaussian_log_prob(z2, zero, zero) + gaussian_log_prob(z1, mu_p, 0.5 * logvar_p)
        log_q = gaussian_log_prob(z2, mu2, 0.5 * logvar2) + gaussian_log_prob(z1, mu1, 0.5 * logvar1)
        return {"log_px": self.log_likelihood(x, self.logits(z1, c)), "kl": kl_z1 + kl_z2,
                "kl_z1": kl_z1, "kl_z2": kl_z2, "log_ratio": log_p - log_q}
