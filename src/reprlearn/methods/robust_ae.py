"""Adversarially robust autoencoder: reconstruct x from the worst input in an L∞ ball around it.

    δ* ≈ argmax_{‖δ‖∞ ≤ ε, x+δ ∈ [0,1]} recon(x, f(g(x + δ)))     (PGD, Madry et al. 2018)
    L = recon(x, f(g(x + δ*)))

The inner maximum is found by a few projected signed-gradient steps from a random
start in the ball; δ* is then a constant for the outer step. Training against it
makes the code stable under small worst-case perturbations, not only random ones
(cf. the denoising AE).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import option
from ..data.pixels import unit_float
from .autoencoder import AutoencoderConfig, AutoencoderMethod, reconstruction_error
from .base import METHODS


@dataclass
class RobustAEConfig(AutoencoderConfig):
    epsilon: float = option(0.1, "radius ε of the L∞ ball, in pixel units of [0, 1]", min=0.0, max=1.0)
    pgd_steps: int = option(3, "PGD steps of the inner maximisation", min=1, max=1000)
    pgd_step_size: float | None = option(None, "PGD step size (default 2.5 ε / pgd-steps)", above=0.0, max=1.0)


@contextmanager
def frozen_running_stats(module: nn.Module):
    """Restore BatchNorm running statistics afterwards: the attack's passes must not count as data."""
    saved = [(b, b.clone()) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@METHODS.register("robust-ae")
class RobustAutoencoder(AutoencoderMethod):
    Config = RobustAEConfig
    # each step costs pgd_steps + 2 forward/backward passes; fewer epochs keep a run near the others' time
    run_defaults = {"epochs": 50}

    def views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x, δ₀): the PGD start, uniform in the ε ball, from the engine's generator (reproducible)."""
        x = unit_float(images)
        eps = self.config.epsilon
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
        return x, (x + delta).clamp(0.0, 1.0) - x

    def attack(self, x: Tensor, delta: Tensor) -> Tensor:
        """PGD from δ₀ = ``delta``: δ ← Π(δ + α sign ∇_δ recon), Π onto ‖δ‖∞ ≤ ε and x+δ ∈ [0, 1].

        Gradients are taken w.r.t. δ only (no parameter .grad accumulates), with the
        networks in their current mode; BatchNorm running stats are left as found.
        """
        c = self.config
        step = c.pgd_step_size if c.pgd_step_size is not None else 2.5 * c.epsilon / c.pgd_steps
        x = x.detach()
        delta = delta.detach()
        with frozen_running_stats(self):
            for _ in range(c.pgd_steps):
                delta.requires_grad_(True)
                # summed, not averaged: each image ascends its own error at the same pace
                err = reconstruction_error(self.decode(self.encode(x + delta)), x, c.recon).sum()
                (grad,) = torch.autograd.grad(err, delta)
                delta = (delta.detach() + step * grad.sign()).clamp(-c.epsilon, c.epsilon)
                delta = (x + delta).clamp(0.0, 1.0) - x
        return delta.detach()

    def loss(self, views) -> dict[str, Tensor]:
        x, delta = views if isinstance(views, tuple) else (views, torch.zeros_like(views))
        delta = self.attack(x, delta)
        # the clean error is a readout only; it runs before the outer pass, whose backward
        # needs the BatchNorm running buffers that frozen_running_stats writes back
        with torch.no_grad(), frozen_running_stats(self):
            recon_clean = reconstruction_error(self.decode(self.encode(x)), x, self.config.recon).mean()
        recon = reconstruction_error(self.decode(self.encode(x + delta)), x, self.config.recon).mean()
        return {"loss": recon, "recon": recon.detach(), "recon_clean": recon_clean}
